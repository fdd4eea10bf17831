"""Fixtures of the integration tests: the stack (redis + paper exchange) and engines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.integration.harness import EngineProcess, Stack, open_stack

# Headless Chromium for every browser test of the console, wherever it is written.
from tests.integration.test_console_browser import browser  # noqa: F401


@pytest.fixture
async def stack(redis_url: str) -> AsyncIterator[Stack]:
    """A flushed real Redis with a policy, the paper exchange, and engines stopped after."""
    async with open_stack(redis_url) as s:
        yield s


@pytest.fixture
async def engine_process(
    stack: Stack,
) -> AsyncIterator[Callable[[dict[str, str]], Awaitable[EngineProcess]]]:
    """Factory: start `rotation-fsm run` as a child process, return once it consumes;
    all are killed after."""
    started: list[EngineProcess] = []

    async def start(env: dict[str, str]) -> EngineProcess:
        proc = EngineProcess(env)
        started.append(proc)
        await proc.start()
        await stack.until_groups()
        return proc

    yield start
    for proc in started:
        proc.close()
