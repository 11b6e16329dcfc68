"""Headless Chromium for the tests and the docs' screenshots, driven over WebDriver.

Debian's ``chromium`` and ``chromium-driver`` (``make setup`` installs them), driven
with selenium. Both programs are given by path, so that selenium never looks for
(or downloads) a driver of its own. Chromium's sandbox needs user namespaces that
a container run as root does not have, hence ``--no-sandbox`` there; the pages it
opens are our own, on loopback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

PROGRAMS = ("chromium", "chromedriver")


def missing() -> list[str]:
    """The programs this needs that are not installed."""
    return [program for program in PROGRAMS if shutil.which(program) is None]


@contextlib.contextmanager
def headless_chromium(width: int = 1280, height: int = 900) -> Iterator:
    """A headless Chromium (a selenium ``WebDriver``) that keeps its console log;
    always quit at the end, its profile removed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for argument in (
        "--headless=new",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",  # no updates, no safe browsing: nothing leaves
        "--disable-component-update",
        "--disable-sync",
        "--metrics-recording-only",
    ):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which("chromedriver") or "chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_messages(driver, level: str = "SEVERE") -> list[str]:
    """The browser console's messages at ``level`` since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == level]
