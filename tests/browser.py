"""A real browser for the console tests: Debian's Chromium driven by Selenium through chromedriver.

Like redis-server (tests/servers.py), `chromium` and `chromium-driver` are Debian packages: when
missing and we are root (CI, the dev container) they are installed with apt-get; otherwise the tests
that need them are skipped with the command that installs them. Selenium is a pip package of the
`test` extra. Screenshots go to $EDGEREC_ARTIFACTS (default runs/test-artifacts/console).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGES = ("chromium", "chromium-driver")
ARTIFACTS = Path(os.environ.get("EDGEREC_ARTIFACTS", Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"))


def chromium_binaries() -> tuple[str, str]:
    """(chromium, chromedriver), installing the Debian packages when they are missing and we may."""
    def found():
        return shutil.which("chromium"), shutil.which("chromedriver")

    if all(found()):
        return found()
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        r = subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], capture_output=True, env=env, timeout=900)
        if r.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
            subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], capture_output=True, env=env, timeout=900)
        if all(found()):
            return found()
    pytest.skip("Chromium is not installed: apt-get install chromium chromium-driver")


def chrome(width: int = 1280, height: int = 900):
    """A headless Chromium session (Selenium WebDriver); the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_binaries()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--lang=en-US"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def screenshot(driver, name: str) -> Path:
    """The whole page as a PNG test artifact (the window grown to the page's height first)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    w = driver.execute_script("return document.documentElement.scrollWidth")
    h = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(max(w, 360), min(max(h, 400), 4000))
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
