"""Debian's Chromium driven by Playwright (for the ward-station page tests and
bench/station_load.py). Never `playwright install`: the browser is the system's
(`apt-get install -y chromium`; .ci/run does it)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import Browser, async_playwright

__all__ = ["CHROMIUM", "HEADLESS_FLAGS", "chromium"]

CHROMIUM = Path("/usr/bin/chromium")
HEADLESS_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium; AssertionError naming the fix if it is not installed."""
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 (one stat at start-up)
        found = shutil.which("chromium")
        raise AssertionError(
            f"Chromium is not at {CHROMIUM} (on PATH: {found}); install Debian's: "
            "apt-get install -y chromium"
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=list(HEADLESS_FLAGS)
        )
        try:
            yield browser
        finally:
            await browser.close()
