"""Log lines: values escaped, credentials masked, JSON on demand, libraries quiet."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from rotation_fsm.core.logs import SECRETS, mask_credentials, setup_logging
from rotation_fsm.core.machine import State, fire
from rotation_fsm.core.settings import SettingError, load_settings

FORGED = "p1\r\n2026-12-07 01:00:00,000 INFO rotation_fsm: ALLOW plan=forged"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The root logger writing to a string (restored after)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    yield out
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_a_plan_id_with_a_line_break_cannot_forge_a_text_line(stream):
    setup_logging(stream=stream)
    logging.getLogger("rotation_fsm").info("ALLOW plan=%s symbol=%s", FORGED, "BTC\x1b[2J")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "p1\\r\\n2026" in lines[0] and "BTC\\x1b[2J" in lines[0]


def test_an_exception_message_cannot_forge_a_line_either(stream):
    setup_logging(stream=stream)
    try:
        raise ValueError(FORGED)
    except ValueError:
        logging.getLogger("rotation_fsm").exception("failed")
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("failed")
    assert all(line.startswith("    ") for line in lines[1:])


def test_json_format_writes_one_object_per_line(stream):
    setup_logging(log_format="json", stream=stream)
    logging.getLogger("rotation_fsm").info("ALLOW plan=%s", FORGED)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["msg"] == f"ALLOW plan={FORGED}"
    assert record["level"] == "INFO" and record["logger"] == "rotation_fsm"
    assert record["ts"].endswith("Z")


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("redis://user:hunter2pw@db:6379/0", "hunter2pw"),
        ("redis://:hunter2pw@db:6379/0", "hunter2pw"),
        ("rediss://hunter2pw@db:6379/0", "hunter2pw"),
        ("redis://db:6379/0?password=hunter2pw", "hunter2pw"),
        ("redis://db:6379/0?db=1&Password=hunter2pw&x=1", "hunter2pw"),
        ("https://api.example/v1?apiKey=hunter2pw", "hunter2pw"),
        ("https://api.example/v1?api_key=hunter2pw&signature=abcdef012345", "abcdef012345"),
        ("https://api.example/ws?token=hunter2pw", "hunter2pw"),
        ("wss://fstream.example/ws?listenKey=ok&access_token=hunter2pw", "hunter2pw"),
        ("secret=hunter2pw in a sentence", "hunter2pw"),
        ("wss://fstream.example/private/ws?listenKey=pqrs0123456789abcdef", "pqrs0123456789abcdef"),
        ("wss://fstream.example/ws/" + "Ab12" * 15, "Ab12" * 15),
    ],
)
def test_every_credential_form_in_a_url_is_masked(url, secret):
    assert secret not in mask_credentials(url)


def test_masking_keeps_what_is_not_a_secret():
    assert mask_credentials("redis://db:6379/0?db=1") == "redis://db:6379/0?db=1"
    assert mask_credentials("redis://bob:pw@db/0").startswith("redis://bob:***@db")


def test_a_configured_secret_is_masked_in_any_message(stream):
    settings = load_settings(
        {"REDIS_URL": "redis://db/0?password=pw-literal-1", "GOV_HTTP_TOKEN": "tok-literal-2"}
    )
    SECRETS.add(settings.secrets())
    setup_logging(log_format="json", stream=stream)
    logging.getLogger("x").warning("auth failed for pw-literal-1 and tok-literal-2")
    assert "literal" not in stream.getvalue()


def test_the_state_machine_library_logs_nothing_at_info(stream):
    setup_logging(verbose=True, stream=stream)
    assert fire(State.IDLE, "lock", now_ms=0, deadline_ms=1) is not None
    assert "transitions" not in stream.getvalue()


def test_a_bad_log_format_is_a_bad_setting():
    with pytest.raises(SettingError, match="GOV_LOG_FORMAT"):
        load_settings({"GOV_LOG_FORMAT": "xml"})
    assert load_settings({"GOV_LOG_FORMAT": "JSON"}).log_format == "json"
