"""Content-addressed store of stage outputs: `<root>/<stage>/<fingerprint>/` plus `manifest.json`.

`Store` is the one interface the pipeline uses, with two backings: `LocalStore` (a POSIX
filesystem: local disk, or one every node mounts) and `pipeline.remote_store.RemoteStore` (an
fsspec URI). `open_store` picks one for `run.store`.

A stage writes into a private staging folder; the manifest is written last and the entry is
committed in one atomic step (a rename here, one manifest PUT remotely). No manifest means not
done: an interrupted stage never leaves an entry that looks complete.

Staging folders and the build lock that guards them live together under `staging_root`: the run
holding `lock(stage, fingerprint)` is the only live writer of that fingerprint's staging folders,
so it may clear the ones dead runs left.
- `LocalStore`: staging folders sit beside their entries (the commit is a rename), so the lock is
  in the store root too: runs from different work dirs that share one store share its locks.
- `RemoteStore`: an object store has no locks, and its staging folders are local, under
  `<workdir>/staging/` with their locks. A run only ever clears its own work dir's staging; runs
  from other work dirs on the same URI may build one fingerprint at once, and the manifest-last
  commit leaves one complete entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.build_lock import BuildLock, build_lock
from pipeline.errors import EnvironmentProblem

MANIFEST = "manifest.json"
STAGING_PREFIX = ".staging-"
LOCKS = ".locks"  # under staging_root: <stage>/<fingerprint>.lock
_UPLOAD = re.compile(r"[0-9a-f]{12}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A manifest that does not hold up: a field with the wrong type or format, or a path that
    would leave the entry folder (a damaged or tampered store)."""


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
    run_id: str | None = None  # the MLflow run that produced this entry
    upstream: dict[str, str] = field(default_factory=dict)  # stage -> fingerprint
    created: float = field(default_factory=time.time)
    seconds: float = 0.0
    upload: str = ""  # remote stores: the folder inside the entry holding the files ("" = the entry itself)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)  # metrics keep the order the stage gave them

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse and validate; a ValueError (a ManifestError naming the field) for anything else."""
        raw = json.loads(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("files"), list):
            raise ManifestError("not a JSON object with a list of files")
        raw["files"] = [FileEntry(**f) for f in raw["files"]]
        raw.pop("counts", None)  # older manifests: file count and bytes, which `files` holds
        manifest = cls(**raw)
        manifest.validate()
        return manifest

    def validate(self) -> None:
        """Every field that becomes part of a path or a check has its format; file paths stay
        inside the entry folder."""
        if not isinstance(self.upload, str) or (self.upload and not _UPLOAD.fullmatch(self.upload)):
            raise ManifestError(f"field upload {self.upload!r} is not 12 hex digits")
        for index, item in enumerate(self.files):
            where = f"field files[{index}]"
            if not _inside(item.path):
                raise ManifestError(f"{where}.path {item.path!r} is not a relative path inside the entry")
            if isinstance(item.bytes, bool) or not isinstance(item.bytes, int) or item.bytes < 0:
                raise ManifestError(f"{where}.bytes {item.bytes!r} is not a byte count")
            if not isinstance(item.sha256, str) or not _SHA256.fullmatch(item.sha256):
                raise ManifestError(f"{where}.sha256 {item.sha256!r} is not 64 hex digits")

    def list_files(self, folder: Path) -> None:
        """Record the files staged in `folder` (paths, sizes, sha256s)."""
        self.files = scan_files(folder)

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)


def _inside(path: object) -> bool:
    """A '/'-separated relative path with no empty, '.' or '..' part: it cannot leave its folder."""
    if not isinstance(path, str) or "\x00" in path or path == MANIFEST:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


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


def fsync_path(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(folder: Path, manifest: Manifest) -> None:
    """Write the manifest into `folder` last, then flush every file, the manifest and every
    directory to disk: the rename that publishes `folder` never outlives its content in a crash."""
    (folder / MANIFEST).write_text(manifest.to_json())
    for dirpath, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


@dataclass
class Lookup:
    """Result of looking for an entry: a manifest, or why there is none."""

    manifest: Manifest | None
    reason: str = ""  # why it is a miss ("" on a hit or when never built)

    @property
    def hit(self) -> bool:
        return self.manifest is not None


class Store(ABC):
    """Where stage outputs live. Stages read and write local folders: `staging` gives one to write
    an entry into, `commit` publishes it, `materialize` gives a committed entry's files."""

    staging_root: Path  # local: staging folders and the build locks that guard them
    scratch_root: Path  # local: per-fingerprint folders that survive crashes

    @property
    @abstractmethod
    def describe(self) -> str:
        """The store's root, for people."""

    @abstractmethod
    def location(self, stage: str, fingerprint: str) -> str:
        """Where the entry lives, as recorded in lineage (a path, or a URI)."""

    @abstractmethod
    def check(self) -> None:
        """Fail fast (EnvironmentProblem, exit 3) when the store cannot be written."""

    @abstractmethod
    def materialize(self, stage: str, fingerprint: str) -> Path:
        """A local folder holding the committed entry's files."""

    @abstractmethod
    def commit(self, staging: Path, manifest: Manifest, *, replace: bool = False) -> str:
        """List the staged files in the manifest and publish the entry, manifest last; returns its
        location. If another run committed the same fingerprint meanwhile, theirs stays (same
        inputs, same outputs) unless `replace` (a forced rebuild) asks to swap it."""

    # -- what a backing provides for reading -----------------------------------------
    @abstractmethod
    def _manifest_bytes(self, stage: str, fingerprint: str) -> bytes | None:
        """The committed manifest as stored; None when there is none."""

    @abstractmethod
    def _files_location(self, manifest: Manifest) -> str:
        """Where the entry's files are, for messages."""

    @abstractmethod
    def _file_sizes(self, manifest: Manifest) -> dict[str, int]:
        """Every file present in the entry's files folder: relative path -> bytes."""

    @abstractmethod
    def _file_sha256(self, manifest: Manifest, path: str) -> str:
        """The sha256 of one of the entry's files."""

    # -- reading ----------------------------------------------------------------------
    def read_manifest(self, stage: str, fingerprint: str) -> tuple[Manifest | None, str]:
        """The entry's validated manifest, or None and why ("" when it was never committed)."""
        data = self._manifest_bytes(stage, fingerprint)
        if data is None:
            return None, ""
        where = f"{self.location(stage, fingerprint)}/{MANIFEST}"
        try:
            manifest = Manifest.from_json(data.decode())
        except ManifestError as exc:
            return None, f"invalid manifest {where}: {exc}"
        except (ValueError, TypeError, KeyError) as exc:
            return None, f"unreadable manifest {where}: {exc}"
        if manifest.fingerprint != fingerprint or manifest.stage != stage:
            return None, f"manifest {where} names {manifest.stage}/{manifest.fingerprint}"
        return manifest, ""

    def lookup(self, stage: str, fingerprint: str, *, checksums: bool = False) -> Lookup:
        """Find a committed entry and verify it: every listed file present with its size (and its
        sha256 when `checksums`). A failed check is a miss with a reason."""
        manifest, reason = self.read_manifest(stage, fingerprint)
        if manifest is None:
            return Lookup(None, reason)
        sizes = self._file_sizes(manifest)
        where = self._files_location(manifest)
        for item in manifest.files:
            size = sizes.get(item.path)
            if size is None:
                return Lookup(None, f"{where}/{item.path} is listed in the manifest but missing")
            if size != item.bytes:
                return Lookup(None, f"{where}/{item.path} has {size} bytes, manifest says {item.bytes}")
            if checksums and self._file_sha256(manifest, item.path) != item.sha256:
                return Lookup(None, f"{where}/{item.path} does not match its sha256 in the manifest")
        return Lookup(manifest)

    # -- staging, locks, scratch: local folders in both backings ------------------------
    def staging(self, stage: str, fingerprint: str) -> Path:
        """A fresh private folder to write an entry into; published with `commit`."""
        folder = self.staging_root / stage / f"{STAGING_PREFIX}{fingerprint}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        return folder

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def lock(
        self, stage: str, fingerprint: str, on_wait: Callable[[], None] | None = None
    ) -> AbstractContextManager[BuildLock]:
        """Held by the one run building `stage/fingerprint` (see `pipeline.build_lock`)."""
        return build_lock(self.staging_root / LOCKS / stage / f"{fingerprint}.lock", on_wait)

    def clear_staging(self, stage: str, fingerprint: str) -> None:
        """Remove this entry's staging folders left by runs that died; call it holding `lock`."""
        for debris in (self.staging_root / stage).glob(f"{STAGING_PREFIX}{fingerprint}-*"):
            shutil.rmtree(debris, ignore_errors=True)

    def scratch(self, stage: str, fingerprint: str) -> Path:
        """Per-fingerprint folder that survives crashes (checkpoints, task markers)."""
        folder = self.scratch_root / stage / fingerprint
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def clean_scratch(self, stage: str, fingerprint: str) -> None:
        shutil.rmtree(self.scratch_root / stage / fingerprint, ignore_errors=True)


class LocalStore(Store):
    """A store on a POSIX filesystem (local disk, or NFS/Lustre/... mounted by every node)."""

    def __init__(self, root: Path, scratch_root: Path | None = None):
        self.root = Path(root)
        self.staging_root = self.root  # beside the entries: committing is a rename
        self.scratch_root = Path(scratch_root) if scratch_root else self.root.parent / "scratch"

    def entry(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / fingerprint

    def location(self, stage: str, fingerprint: str) -> str:
        return str(self.entry(stage, fingerprint))

    @property
    def describe(self) -> str:
        return str(self.root)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".z2h-probe-"):
                pass
        except OSError as exc:
            raise EnvironmentProblem(f"run.store {self.root}: cannot write there ({exc.strerror})") from None

    def materialize(self, stage: str, fingerprint: str) -> Path:
        return self.entry(stage, fingerprint)

    def _manifest_bytes(self, stage: str, fingerprint: str) -> bytes | None:
        try:
            return (self.entry(stage, fingerprint) / MANIFEST).read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # no entry, or a file where a folder of the path should be
            return None

    def _files_location(self, manifest: Manifest) -> str:
        return self.location(manifest.stage, manifest.fingerprint)

    def _file_sizes(self, manifest: Manifest) -> dict[str, int]:
        folder = self.entry(manifest.stage, manifest.fingerprint)
        return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}

    def _file_sha256(self, manifest: Manifest, path: str) -> str:
        return sha256_file(self.entry(manifest.stage, manifest.fingerprint) / path)

    def commit(self, staging: Path, manifest: Manifest, *, replace: bool = False) -> str:
        manifest.list_files(staging)
        write_durably(staging, manifest)
        final = self.entry(manifest.stage, manifest.fingerprint)
        try:
            os.rename(staging, final)
        except OSError:
            if not replace and self.lookup(manifest.stage, manifest.fingerprint).hit:
                self.discard(staging)
                return str(final)
            # Occupied by an entry to replace, or by debris without a manifest: move it aside
            # first so readers never see a half-swapped folder.
            aside = final.with_name(f"{STAGING_PREFIX}{final.name}-old-{uuid.uuid4().hex[:8]}")
            os.rename(final, aside)
            os.rename(staging, final)
            shutil.rmtree(aside, ignore_errors=True)
        fsync_path(final.parent)  # the rename itself
        return str(final)


def is_uri(text: str) -> bool:
    """`s3://...`, `gs://...`, `file://...`: a URI with a scheme (not a plain path)."""
    scheme, sep, _ = str(text).partition("://")
    return bool(sep) and scheme.replace("+", "").replace("-", "").isalnum()


def open_store(store: str | Path | None, workdir: Path) -> Store:
    """The store for `run.store`: a plain path (default `<workdir>/store`) is a `LocalStore`; an fsspec
    URI (`s3://`, `gs://`, `file://`, ...) is a `RemoteStore` that stages and caches under `workdir`."""
    if store is None:
        return LocalStore(workdir / "store", workdir / "scratch")
    if is_uri(str(store)):
        from pipeline.remote_store import RemoteStore

        return RemoteStore(str(store), workdir)
    return LocalStore(Path(store), workdir / "scratch")
