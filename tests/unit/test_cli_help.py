"""Every subcommand's help has a description and an example; the texts an operator
needs are where they look (issue 17 item 4), and the ACL password's sources."""

from __future__ import annotations

import argparse
import hashlib
import os

import pytest

from rotation_fsm.core.settings import RULE_SPECS, load_settings
from rotation_fsm.runtime.controls import target
from rotation_fsm.tools.acl import aclfile_line
from rotation_fsm.tools.acl import command as acl_command
from rotation_fsm.tools.cli import COMMANDS, build_parser, main


def help_of(name: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name].format_help()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_help_has_a_description_and_an_example(name: str):
    text = help_of(name)
    assert COMMANDS[name].description.split()[0] in text
    assert f"example:\n  rotation-fsm {name}" in text or "example:\n  REDIS_URL" in text


def test_set_help_lists_every_key_with_what_it_expects():
    text = help_of("set")
    for name, spec in RULE_SPECS.items():
        assert name in text and spec.expected in text
    assert "GOV_ACTIVE_SLOTS_BASE" in text and "(default 4)" in text


def test_extend_help_says_the_deadline_counts_from_now():
    assert "FROM NOW" in help_of("extend")


def test_defaults_are_shown():
    assert "(default: 10.0)" in help_of("demo")
    assert "(default: 3600.0)" in help_of("status")


def test_since_documents_iso_times():
    text = " ".join(help_of("dump").split())
    assert "ISO 8601 time" in text and "2026-12-07T01:00:00" in text


def test_the_target_line_masks_the_redis_password():
    settings = load_settings({"REDIS_URL": "redis://gov:s3cret@db.example:6380/2"})
    line = target(settings)
    assert "s3cret" not in line
    assert line == "redis redis://gov:***@db.example:6380/2, book (default)"


def acl_args(**given: str | None) -> argparse.Namespace:
    base = {
        "user": "u",
        "books": "",
        "password_file": None,
        "password_env": None,
        "format": "setuser",
    }
    return argparse.Namespace(**{**base, "password": None, **given})


def test_acl_reads_the_password_from_a_file(tmp_path, capsys):
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    assert acl_command(acl_args(password_file=str(secret))) == 0
    assert " >from-a-file " in capsys.readouterr().out


def test_acl_reads_the_password_from_the_named_variable(monkeypatch, capsys):
    monkeypatch.setenv("ENGINE_REDIS_PW", "from-the-env")
    assert acl_command(acl_args(password_env="ENGINE_REDIS_PW")) == 0
    assert " >from-the-env " in capsys.readouterr().out


def test_acl_without_a_password_source_off_a_terminal_exits_2(capsys):
    assert not os.isatty(0)  # pytest's stdin is not a terminal: no prompt possible
    assert main(["acl"]) == 2
    assert "--password-file" in capsys.readouterr().err


def test_acl_password_is_not_offered_on_the_command_line():
    assert "--password " not in help_of("acl") and "--password-file" in help_of("acl")


def test_an_acl_file_line_holds_the_password_hash_so_any_password_will_do():
    line = aclfile_line("rotation-fsm", "two words")
    assert "two words" not in line
    assert f" #{hashlib.sha256(b'two words').hexdigest()} " in line
    with pytest.raises(ValueError, match="user name"):
        aclfile_line("two words", "pw")
