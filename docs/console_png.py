"""Make docs/console.png: the web console of `rotation-fsm stack` after a few minutes.

    python docs/console_png.py [--seconds 180]

Runs the stack (its simulator publishing plans, the paper exchange rejecting and
losing some, a short rotation lock so rotations time out too), opens engine-1's
console in Debian's Chromium and saves a full-page screenshot once the charts hold
`--seconds` of history. Needs what the browser tests need (chromium, playwright).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "console.png"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def engine_url(log: Path) -> str:
    """engine-1's address, from the stack's announcement in its log."""
    for _ in range(600):
        if match := re.search(r"(?m)^  engine-1\s+(http://\S+)/healthz", log.read_text()):
            return match.group(1)
        await asyncio.sleep(0.1)  # another process's output: nothing to await
    raise SystemExit(f"engine-1 did not come up; see {log}")


async def shoot(seconds: float) -> None:
    env = {**os.environ, "SIM_RATE": "3", "GOV_ROTATION_LOCK_TTL": "8", "PAPER_LOST_RATE": "0.15"}
    log = Path(tempfile.mkdtemp()) / "stack.log"
    with log.open("w") as out:
        command = [sys.executable, "-m", "rotation_fsm.tools.cli", "stack"]
        stack = subprocess.Popen(
            [*command, "--seconds", str(seconds + 60)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip
    try:
        url = await engine_url(log)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(url + "/")
            await asyncio.sleep(seconds)  # the history the picture shows
            await page.screenshot(path=str(OUTPUT), full_page=False)
            await browser.close()
    finally:
        stack.terminate()
        stack.wait(30)
    sys.stdout.write(f"wrote {OUTPUT}\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    asyncio.run(shoot(parser.parse_args().seconds))
