"""A Chromium for the UI browser test: `$Z2H_CHROMIUM`, one on PATH, or Debian's `chromium` package
installed with apt-get (as root or with password-less sudo). Playwright drives it through its
executable path, so Playwright's own browser download (a CDN this machine may not reach) is never
needed.

`python tests/browser.py` installs it ahead of time (`make browser`) and prints its path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_TIMEOUT = 900  # seconds: a cold apt-get update + ~100 MB of packages


def find() -> str | None:
    forced = os.environ.get("Z2H_CHROMIUM")
    if forced:
        return forced if os.path.isfile(forced) and os.access(forced, os.X_OK) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _privilege() -> list[str] | None:
    """The prefix that makes apt-get work here: nothing as root, `sudo -n` if sudo needs no password."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def install() -> str:
    """apt-get install Debian's chromium; returns why not ("" when it worked)."""
    if shutil.which("apt-get") is None:
        return "this machine has no apt-get"
    prefix = _privilege()
    if prefix is None:
        return "not root and sudo needs a password, so apt-get cannot install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]

    def attempt(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=INSTALL_TIMEOUT)

    try:
        done = attempt(command)
        if done.returncode != 0:  # a fresh machine has no package lists yet
            attempt([*prefix, "apt-get", "update", "-q"])
            done = attempt(command)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"apt-get install chromium failed ({type(exc).__name__}: {exc})"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return f"apt-get install chromium failed: {lines[-1] if lines else f'exit {done.returncode}'}"
    return ""


def chromium(install_missing: bool = True) -> tuple[str | None, str]:
    """(executable, "") or (None, why there is none)."""
    path = find()
    if path or not install_missing:
        return path, "" if path else "no Chromium found"
    if os.environ.get("Z2H_CHROMIUM"):
        return None, f"Z2H_CHROMIUM={os.environ['Z2H_CHROMIUM']} is not an executable"
    problem = install()
    path = find()
    if path:
        return path, ""
    return None, f"no Chromium on PATH and none could be installed: {problem or 'installed, yet not on PATH'}"


if __name__ == "__main__":
    found, why = chromium()
    print(found or f"no browser: {why}")
    sys.exit(0 if found else 1)
