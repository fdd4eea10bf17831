"""`dump` streams history to its file in bounded memory with progress; `replay` of a
file reports its reading (issue 17 item 5)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from rotation_fsm.store import stream_pages
from rotation_fsm.store.keys import Keys
from rotation_fsm.tools import replay
from rotation_fsm.tools.cli import main
from rotation_fsm.tools.progress import progress

ENTRIES_PER_STREAM = 600
STREAMS = ("plans", "decisions")


class CountingRedis:
    """The client, counting XRANGE calls: how far ahead the dump has read."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.xrange_calls = 0

    async def xrange(self, *args: Any, **kwargs: Any) -> Any:
        self.xrange_calls += 1
        return await self.client.xrange(*args, **kwargs)


@pytest.fixture
async def history(redis_client: redis.asyncio.Redis) -> redis.asyncio.Redis:
    """Two streams whose entries interleave in time."""
    keys = Keys()
    async with redis_client.pipeline(transaction=False) as pipe:
        for i in range(ENTRIES_PER_STREAM):
            for stream in STREAMS:
                pipe.xadd(getattr(keys, stream), {"n": str(i), "stream": stream})
        await pipe.execute()
    return redis_client


async def test_the_dump_reads_one_page_per_stream_ahead_not_the_whole_history(
    history: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(stream_pages, "PAGE", 100)
    counting = CountingRedis(history)
    records = replay.merged_records(counting, Keys(), "-", "+")  # type: ignore[arg-type]
    first = await anext(records)
    assert first["stream"] in STREAMS
    assert counting.xrange_calls == len(replay.DUMP_STREAMS)  # each stream's first page only
    rest = [r async for r in records]
    ids = [replay.id_key(r["id"]) for r in [first, *rest]]
    assert ids == sorted(ids) and len(ids) == ENTRIES_PER_STREAM * len(STREAMS)


async def test_dump_off_a_terminal_reports_progress_in_plain_lines(
    history: redis.asyncio.Redis, redis_url: str, tmp_path: Path, capsys
):
    path = tmp_path / "book.jsonl"
    code = await asyncio.to_thread(main, ["dump", "-o", str(path), "--redis-url", redis_url])
    err = capsys.readouterr().err
    total = ENTRIES_PER_STREAM * len(STREAMS)
    assert code == 0
    assert f"dump: {total:,} of {total:,} entries (100%)" in err
    assert "\x1b[" not in err  # no terminal escapes in a log
    assert len(path.read_text().splitlines()) == total


async def test_a_failed_dump_leaves_no_file_behind(tmp_path: Path):
    target = tmp_path / "book.jsonl"
    with pytest.raises(RuntimeError), replay._output(str(target)) as handle:
        handle.write(replay.dump_line({"stream": "plans", "id": "1-0", "fields": {}}))
        raise RuntimeError("Redis went away")
    assert list(tmp_path.iterdir()) == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_draws_a_bar():
    out = Terminal()
    with progress("dump", 40, "entries", out=out) as advance:
        advance(40)
    text = out.getvalue()
    assert "━" in text and "40/40" in text


def test_replay_reading_a_large_file_reports_the_bytes_read(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(replay, "LARGE_FILE_BYTES", 100)
    path = tmp_path / "plans-only.jsonl"
    lines = [json.dumps({"stream": "plans", "id": f"{i}-0", "fields": {}}) for i in range(50)]
    path.write_text("\n".join(lines) + "\n")
    size = path.stat().st_size
    assert replay.read_dump(str(path)) == []
    assert f"of {size:,} bytes (100%)" in capsys.readouterr().err
