"""Debian packages the tests need (coturn, Prosody, Prometheus, Chromium, npm): installed
when missing, with a /usr/sbin/policy-rc.d that exits 101 during the install so that no
packaged service starts on its own. CI starts from a clean machine: a test never skips
for a missing server, it installs it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


class SetupError(Exception):
    """A package could not be installed (no mirror, a broken dpkg …)."""


def run(command: list[str], what: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    if result.returncode != 0:
        raise SetupError(f"{what} failed ({' '.join(command)}):\n{result.stderr[-2000:]}")


def apt_install(*packages: str) -> None:
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # Another install may hold dpkg's lock (tests, or an engineer's bench): wait for it.
        lock = ["-o", "DPkg::Lock::Timeout=600"]
        run(["apt-get", *lock, "update", "-qq"], "apt-get update", env)
        run(["apt-get", *lock, "install", "-y", "-qq", *packages], f"installing {packages}", env)
    finally:
        if ours:
            policy.unlink(missing_ok=True)


def ensure_command(command: str, package: str) -> str:
    """The path of `command`, installing Debian's `package` first when it is missing."""
    path = shutil.which(command)
    if path is None:
        apt_install(package)
        path = shutil.which(command)
    if path is None:
        raise SetupError(f"{package} is installed but {command} is still not on PATH")
    return path
