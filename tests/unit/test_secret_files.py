"""Secrets read from files (`NAME_FILE`), as compose and Kubernetes mount them."""

from __future__ import annotations

from pathlib import Path

import pytest

from rotation_fsm.core.settings import SettingError, load_settings


def test_a_secret_file_is_read_without_its_trailing_newline(tmp_path: Path):
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    settings = load_settings({"BINANCE_API_SECRET_FILE": str(path)})
    assert settings.api_secret == "s3cret"


def test_a_per_book_secret_file_serves_its_book(tmp_path: Path):
    path = tmp_path / "acct7"
    path.write_text("acct-7-secret")
    env = {"GOV_BOOKS": "acct-7,acct-8", "BINANCE_API_SECRET__ACCT_7_FILE": str(path)}
    books = {b.name: b for b in load_settings(env).books}
    assert books["acct-7"].api_secret == "acct-7-secret"
    assert books["acct-8"].api_secret == ""


def test_the_http_token_and_redis_password_come_from_files(tmp_path: Path):
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "pw").write_text("pw\n")
    settings = load_settings(
        {
            "GOV_HTTP_TOKEN_FILE": str(tmp_path / "token"),
            "REDIS_PASSWORD_FILE": str(tmp_path / "pw"),
        }
    )
    assert (settings.http_token, settings.redis_password) == ("tok", "pw")
    assert "pw" not in repr(settings).replace("password", "")


def test_a_missing_secret_file_is_refused_naming_the_variable(tmp_path: Path):
    with pytest.raises(SettingError, match=r"GOV_HTTP_TOKEN_FILE=.*a readable file"):
        load_settings({"GOV_HTTP_TOKEN_FILE": str(tmp_path / "absent")})


def test_a_secret_given_both_ways_is_refused(tmp_path: Path):
    path = tmp_path / "secret"
    path.write_text("a")
    with pytest.raises(SettingError, match="either BINANCE_API_SECRET or BINANCE_API_SECRET_FILE"):
        load_settings({"BINANCE_API_SECRET": "b", "BINANCE_API_SECRET_FILE": str(path)})
