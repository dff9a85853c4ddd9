"""A real Chromium for the console tests and the bench: Debian's chromium + chromium-driver
(scripts/ensure-system-deps.sh installs them), driven by selenium, headless, with a fresh
profile and nothing that phones home."""

from __future__ import annotations

import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                  "--disable-default-apps", "--disable-extensions", "--mute-audio",
                  "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900")


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        raise RuntimeError("chromium and chromedriver are missing (fix: make setup, which runs "
                           "scripts/ensure-system-deps.sh: apt-get install chromium chromium-driver)")
    return browser, driver


def chromium(profile_dir: Path) -> webdriver.Chrome:
    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))
