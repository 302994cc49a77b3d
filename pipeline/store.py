"""Content-addressed store: `<root>/<stage>/<fingerprint>/` plus `manifest.json`.

A stage writes into a staging folder next to its final place; the manifest is written
last and the folder is renamed into place in one atomic step. No manifest means not
done: an interrupted stage never leaves an entry that looks complete.

`open_store` picks this store for a path (local, or a filesystem every node mounts) and
`pipeline.remote_store.RemoteStore` for an fsspec URI. Both keep scratch folders and build
locks (one `z2h run` builds a fingerprint at a time) under the work dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
_STAGING_PREFIX = ".staging-"


@dataclass
class FileEntry:
    path: str  # relative to the entry folder, '/'-separated
    bytes: int
    sha256: str


@dataclass
class Manifest:
    stage: str
    fingerprint: str
    files: list[FileEntry]
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    run_id: str | None = None  # the MLflow run that produced this entry
    upstream: dict[str, str] = field(default_factory=dict)  # stage -> fingerprint
    created: float = field(default_factory=time.time)
    seconds: float = 0.0
    upload: str = ""  # remote stores: the folder inside the entry holding the files ("" = the entry itself)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)  # metrics keep the order the stage gave them

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        raw["files"] = [FileEntry(**f) for f in raw["files"]]
        return cls(**raw)

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def scan_files(folder: Path) -> list[FileEntry]:
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST:
            continue
        entries.append(FileEntry(rel, path.stat().st_size, sha256_file(path)))
    return entries


@dataclass
class Lookup:
    """Result of looking for an entry: a manifest, or why there is none."""

    manifest: Manifest | None
    reason: str = ""  # why it is a miss ("" on a hit or when never built)

    @property
    def hit(self) -> bool:
        return self.manifest is not None


class Store:
    """A store on a POSIX filesystem (local disk, or NFS/Lustre/... mounted by every node)."""

    def __init__(self, root: Path, scratch_root: Path | None = None):
        self.root = Path(root)
        self.scratch_root = Path(scratch_root) if scratch_root else self.root.parent / "scratch"

    def entry(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / fingerprint

    def location(self, stage: str, fingerprint: str) -> str:
        """Where the entry lives, as recorded in lineage (a path here, a URI for remote stores)."""
        return str(self.entry(stage, fingerprint))

    def materialize(self, stage: str, fingerprint: str) -> Path:
        """A local folder holding the committed entry's files: the entry itself here."""
        return self.entry(stage, fingerprint)

    @property
    def describe(self) -> str:
        return str(self.root)

    def lookup(self, stage: str, fingerprint: str, *, checksums: bool = False) -> Lookup:
        """Find a committed entry and verify it: every listed file present with its size
        (and its sha256 when `checksums`). A failed check is a miss with a reason."""
        folder = self.entry(stage, fingerprint)
        manifest_path = folder / MANIFEST
        if not manifest_path.exists():
            return Lookup(None)
        try:
            manifest = Manifest.from_json(manifest_path.read_text())
        except (ValueError, TypeError, KeyError) as exc:
            return Lookup(None, f"unreadable manifest {manifest_path}: {exc}")
        if manifest.fingerprint != fingerprint or manifest.stage != stage:
            return Lookup(None, f"manifest {manifest_path} names {manifest.stage}/{manifest.fingerprint}")
        for item in manifest.files:
            path = folder / item.path
            if not path.is_file():
                return Lookup(None, f"{path} is listed in the manifest but missing")
            if path.stat().st_size != item.bytes:
                return Lookup(None, f"{path} has {path.stat().st_size} bytes, manifest says {item.bytes}")
            if checksums and sha256_file(path) != item.sha256:
                return Lookup(None, f"{path} does not match its sha256 in the manifest")
        return Lookup(manifest)

    def staging(self, stage: str, fingerprint: str) -> Path:
        """A fresh private folder to write an entry into; committed with `commit`."""
        folder = self.root / stage / f"{_STAGING_PREFIX}{fingerprint}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        return folder

    def commit(self, staging: Path, manifest: Manifest, *, replace: bool = False) -> Path:
        """Write the manifest last, then rename the staging folder into place.

        If another run committed the same fingerprint meanwhile, theirs stays (same
        inputs, same outputs) unless `replace` (a forced rebuild) asks to swap it.
        """
        manifest.files = scan_files(staging)
        manifest.counts.update(files=len(manifest.files), bytes=manifest.total_bytes)
        tmp = staging / f"{MANIFEST}.tmp"
        tmp.write_text(manifest.to_json())
        os.replace(tmp, staging / MANIFEST)
        final = self.entry(manifest.stage, manifest.fingerprint)
        try:
            os.rename(staging, final)
        except OSError:
            if not replace and self.lookup(manifest.stage, manifest.fingerprint).hit:
                self.discard(staging)
                return final
            # Occupied by an entry to replace, or by debris without a manifest: move it
            # aside first so readers never see a half-swapped folder.
            aside = final.with_name(f"{_STAGING_PREFIX}{final.name}-old-{uuid.uuid4().hex[:8]}")
            os.rename(final, aside)
            os.rename(staging, final)
            shutil.rmtree(aside, ignore_errors=True)
        return final

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def clear_staging(self, stage: str, fingerprint: str) -> None:
        """Remove staging folders of this entry left by runs that died; call it holding `lock`."""
        for debris in (self.root / stage).glob(f"{_STAGING_PREFIX}{fingerprint}-*"):
            shutil.rmtree(debris, ignore_errors=True)

    def scratch(self, stage: str, fingerprint: str) -> Path:
        """Per-fingerprint folder that survives crashes (checkpoints, task markers)."""
        folder = self.scratch_root / stage / fingerprint
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def clean_scratch(self, stage: str, fingerprint: str) -> None:
        shutil.rmtree(self.scratch_root / stage / fingerprint, ignore_errors=True)

    def lock(self, stage: str, fingerprint: str, on_wait: Callable[[], None] | None = None):
        return build_lock(self.scratch_root, stage, fingerprint, on_wait)


@dataclass
class BuildLock:
    """A held build lock. `previous` is what the last holder recorded and did not clear: it died
    while building (a holder that returns or raises clears its record)."""

    handle: Any
    previous: str

    def record(self, text: str) -> None:
        self.handle.truncate(0)
        self.handle.write(text)
        self.handle.flush()


@contextlib.contextmanager
def build_lock(
    scratch_root: Path, stage: str, fingerprint: str, on_wait: Callable[[], None] | None = None
) -> Iterator[BuildLock]:
    """Held by the one `z2h run` building `stage/fingerprint`: runs sharing a work dir never write
    the same scratch folder at once. An flock, so the kernel releases it when its holder dies
    (and NFSv4 carries it between nodes). `on_wait` is called once if another run holds it."""
    path = scratch_root / stage / f".{fingerprint}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                time.sleep(0.5)
        handle.seek(0)
        held = BuildLock(handle, handle.read().strip())
        try:
            yield held
        finally:
            held.record("")
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_uri(text: str) -> bool:
    """`s3://...`, `gs://...`, `file://...`: a URI with a scheme (not a plain path)."""
    scheme, sep, _ = str(text).partition("://")
    return bool(sep) and scheme.replace("+", "").replace("-", "").isalnum()


def open_store(store: str | Path | None, workdir: Path):
    """The store for `run.store`: a plain path (default `<workdir>/store`) is a `Store`; an fsspec
    URI (`s3://`, `gs://`, `file://`, ...) is a `RemoteStore` that stages and caches under `workdir`."""
    if store is None:
        return Store(workdir / "store", workdir / "scratch")
    if is_uri(str(store)):
        from pipeline.remote_store import RemoteStore

        return RemoteStore(str(store), workdir)
    return Store(Path(store), workdir / "scratch")
