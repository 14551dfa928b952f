"""What the browser tests need, installed by the tests themselves when missing:
Debian's chromium and chromium-driver (apt-get; browsers cannot be downloaded any
other way here), and Converse.js from npm into a cache directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.debian import SetupError, apt_install, run

CONVERSE_VERSION = "14.0.0"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900", "--disable-dev-shm-usage",
                  # Only loopback: the page's links to the Converse site resolve nowhere.
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")


def cache_dir() -> Path:
    base = os.environ.get("RAFTXMPP_TEST_CACHE") or Path.home() / ".cache" / "raftxmpp-tests"
    return Path(base)


def chromium() -> tuple[str, str]:
    """(browser, driver) paths, installing Debian's packages if needed."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        apt_install("chromium", "chromium-driver")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        raise SetupError("chromium and chromedriver are still missing after apt-get install")
    return browser, driver


def converse_dist() -> Path:
    """The dist/ folder of the converse.js npm package, installed into the cache."""
    prefix = cache_dir() / f"converse-{CONVERSE_VERSION}"
    dist = prefix / "node_modules" / "converse.js" / "dist"
    if (dist / "converse.min.js").exists():
        return dist
    if shutil.which("npm") is None:
        apt_install("npm")
    prefix.mkdir(parents=True, exist_ok=True)
    run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
         "--ignore-scripts", f"converse.js@{CONVERSE_VERSION}"], "npm install converse.js")
    if not (dist / "converse.min.js").exists():
        raise SetupError(f"npm installed converse.js but {dist} has no converse.min.js")
    return dist
