"""docker-compose.yml and the Dockerfile as an operator expects them (issue 17 item 8):
pinned images, CPU and memory limits, log rotation, Redis bounded and with the
engines' least-privilege user, secrets from files, health on /readyz."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from rotation_fsm import __version__
from rotation_fsm.core import reasons as R
from rotation_fsm.tools.acl import aclfile_line
from tests.integration.harness import API_SECRET, Stack
from tests.integration.test_stack import DOCKERFILE, ROOT, compose, our_services

SECRET_VARIABLES = ("BINANCE_API_SECRET", "GOV_HTTP_TOKEN", "REDIS_PASSWORD")


def engines() -> dict[str, dict]:
    return {n: s for n, s in our_services().items() if s["command"][-1] == "run"}


def test_every_image_is_pinned_to_a_version():
    for name, svc in compose()["services"].items():
        assert re.search(r":v?\d+\.\d+\.\d+", svc["image"]), f"{name}: {svc['image']}"


def test_our_image_is_tagged_with_the_package_version():
    for name, svc in our_services().items():
        assert svc["image"] == f"rotation-fsm:{__version__}", name


def test_every_service_has_cpu_and_memory_limits():
    for name, svc in compose()["services"].items():
        assert float(svc["cpus"]) > 0, name
        assert re.fullmatch(r"\d+[mg]", str(svc["mem_limit"])), name


def test_every_service_rotates_its_logs():
    for name, svc in compose()["services"].items():
        options = svc["logging"]["options"]
        assert options["max-size"] and int(options["max-file"]) >= 1, name


def test_redis_is_bounded_without_eviction_and_loads_the_engines_user():
    redis_svc = compose()["services"]["redis"]
    command = " ".join(redis_svc["command"])
    assert "--maxmemory 512mb" in command
    assert "--maxmemory-policy noeviction" in command  # evicting would lose engine state
    assert "--aclfile /run/secrets/redis_users_acl" in command
    assert "redis_users_acl" in redis_svc["secrets"]
    assert int(redis_svc["mem_limit"].rstrip("m")) > 512  # room above maxmemory


def test_the_acl_file_is_what_rotation_fsm_acl_prints_for_the_password_file():
    files = {name: ROOT / s["file"] for name, s in compose()["secrets"].items()}
    password = files["redis_password"].read_text().removesuffix("\n")
    acl_file = files["redis_users_acl"].read_text().splitlines()
    assert acl_file == [aclfile_line("rotation-fsm", password)]
    assert password not in "\n".join(acl_file)  # only its hash is on disk


def test_the_engines_read_their_secrets_from_files():
    declared = compose()["secrets"]
    for path in (ROOT / s["file"] for s in declared.values()):
        assert path.is_file(), path
    for name, svc in engines().items():
        env = svc["environment"]
        assert not set(SECRET_VARIABLES) & set(env), f"{name}: a secret in the environment"
        assert "@" not in env["REDIS_URL"].split("@")[0].replace("redis://", "")  # no password
        for variable in SECRET_VARIABLES:
            mounted = env[f"{variable}_FILE"]
            secret = mounted.removeprefix("/run/secrets/")
            assert secret in svc["secrets"] and secret in declared, f"{name}: {variable}"


def test_the_image_reports_health_from_readyz():
    text = DOCKERFILE.read_text()
    check = re.search(r"(?ms)^HEALTHCHECK .*?CMD (.*?)$", text)
    assert check is not None and "/readyz" in check.group(1)
    assert "METRICS_PORT" in check.group(1)  # the port the engine serves, not a guess


def test_services_without_a_server_opt_out_of_the_image_healthcheck():
    for name, svc in our_services().items():
        if svc["command"][-1] != "run":
            assert "healthcheck" in svc, f"{name} would inherit the engine's /readyz check"


@pytest.fixture
def secret_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "REDIS_PASSWORD": "engine-pw-from-a-file",
        "BINANCE_API_SECRET": API_SECRET,
        "GOV_HTTP_TOKEN": "token-from-a-file",
    }
    out = {}
    for variable, value in files.items():
        out[variable] = tmp_path / variable.lower()
        out[variable].write_text(value + "\n")  # as `echo` writes it
    return out


async def test_an_engine_runs_on_secrets_read_from_files(
    stack: Stack, secret_files: dict[str, Path]
):
    password = secret_files["REDIS_PASSWORD"].read_text().strip()
    rules = aclfile_line("gov-files", password).split()[1:]  # as the ACL file says it
    await stack.redis.execute_command("ACL", "SETUSER", *rules)
    try:
        stack.fill_book("BTCUSDT")
        running = await stack.start_engine(
            REDIS_URL=stack.redis_url.replace("redis://", "redis://gov-files@"),
            BINANCE_API_SECRET="",
            **{f"{v}_FILE": str(path) for v, path in secret_files.items()},
        )
        await stack.send_plan("from-files")
        assert (await stack.decision("from-files"))["reason"] == R.SLOTS_AVAILABLE  # signed
        pause = f"http://127.0.0.1:{running.http_port}/api/pause"
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": "Bearer token-from-a-file"}
            async with http.post(pause, headers=headers) as resp:
                assert resp.status == 200
    finally:
        await stack.stop_engines()
        await stack.redis.execute_command("ACL", "DELUSER", "gov-files")
