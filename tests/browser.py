"""Debian's chromium, driven by Playwright (``playwright install`` downloads a browser: not here)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

EXPECT_TIMEOUT_MS = 30_000


@contextmanager
def chromium() -> Iterator:
    """A headless browser; the test is skipped, saying why, without Playwright or chromium."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (requirements-dev.txt has it)"
    )
    if not CHROMIUM.exists():
        pytest.skip(f"no browser to drive: {CHROMIUM} is missing (.ci/run installs Debian's chromium)")
    # The iframes Airflow's UI embeds our console in load after the page; with the test shards
    # sharing two cores that took more than Playwright's 5 s default for `expect` (CI, stop 22).
    # Everything that waits here waits as long as the tab's own default (30 s).
    sync_api.expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
