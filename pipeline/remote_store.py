"""The store on an fsspec URI (`s3://bucket/z2h`, `gs://...`, `file:///shared/z2h`, ...).

Object stores have no atomic folder rename, so an entry is committed in two steps:
  1. every file is uploaded under `<root>/<stage>/<fingerprint>/<upload>/`, where `upload` is
     fresh for each commit (two writers never touch each other's files);
  2. `<root>/<stage>/<fingerprint>/manifest.json` is written last (one object PUT, atomic on
     S3/GCS) and names its upload folder.
No manifest = not done, as in the local store; a manifest always points at a complete upload.

Stages still read and write local folders: outputs are staged under `<workdir>/staging/` and
uploaded by `commit`; upstream entries are downloaded once into `<workdir>/cache/store/` (keyed
by fingerprint and upload, every file checked against its sha256) by `materialize`. On a
multi-node cluster the work dir is shared storage, so every node sees the same cache.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path
from typing import Any

from pipeline.errors import UsageError
from pipeline.store import _STAGING_PREFIX, MANIFEST, Lookup, Manifest, build_lock, scan_files, sha256_file


def filesystem(uri: str):
    """(fsspec filesystem, path inside it) for a URI, or a UsageError saying what is missing."""
    from fsspec.core import url_to_fs

    scheme = uri.partition("://")[0]
    try:
        fs, path = url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        hint = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(scheme)
        extra = f" (pip install {hint})" if hint else ""
        raise UsageError(f"run.store {uri}: no filesystem for {scheme}://{extra}: {exc}") from None
    if getattr(fs, "protocol", None) in ("file", ("file", "local")) or type(fs).__name__ == "LocalFileSystem":
        fs.auto_mkdir = True
    return fs, path.rstrip("/")


class RemoteStore:
    def __init__(self, uri: str, workdir: Path):
        self.uri = uri.rstrip("/")
        self.workdir = Path(workdir)
        self.scratch_root = self.workdir / "scratch"
        self.staging_root = self.workdir / "staging"
        self.cache_root = self.workdir / "cache" / "store"
        self._fs: Any = None
        self._path = ""

    # Stage tasks receive the store pickled: the filesystem object is rebuilt on the other side.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None}

    @property
    def fs(self):
        if self._fs is None:
            self._fs, self._path = filesystem(self.uri)
        return self._fs

    def _remote(self, *parts: str) -> str:
        _ = self.fs
        return "/".join([self._path, *parts])

    @property
    def describe(self) -> str:
        return self.uri

    def location(self, stage: str, fingerprint: str) -> str:
        return f"{self.uri}/{stage}/{fingerprint}"

    def check(self) -> None:
        """Fail fast (exit 2) when the store cannot be listed or written."""
        probe = self._remote(f".z2h-probe-{uuid.uuid4().hex[:8]}")
        try:
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm_file(probe)
        except Exception as exc:
            raise UsageError(f"run.store {self.uri}: cannot write there ({type(exc).__name__}: {exc})") from None

    # -- reading ------------------------------------------------------------------
    def _manifest(self, stage: str, fingerprint: str) -> tuple[Manifest | None, str]:
        path = self._remote(stage, fingerprint, MANIFEST)
        try:
            text = self.fs.cat_file(path).decode()
        except FileNotFoundError:
            return None, ""
        try:
            manifest = Manifest.from_json(text)
        except (ValueError, TypeError, KeyError) as exc:
            return None, f"unreadable manifest {self.location(stage, fingerprint)}/{MANIFEST}: {exc}"
        if manifest.fingerprint != fingerprint or manifest.stage != stage or not manifest.upload:
            return None, f"manifest {self.location(stage, fingerprint)}/{MANIFEST} names another entry"
        return manifest, ""

    def lookup(self, stage: str, fingerprint: str, *, checksums: bool = False) -> Lookup:
        """A committed entry whose listed files are all present with their sizes (and sha256s)."""
        manifest, reason = self._manifest(stage, fingerprint)
        if manifest is None:
            return Lookup(None, reason)
        folder = self._remote(stage, fingerprint, manifest.upload)
        found = {p.rstrip("/"): info for p, info in self.fs.find(folder, detail=True).items()}
        prefix = self.fs._strip_protocol(folder).rstrip("/") + "/"
        sizes = {p[len(prefix) :]: info.get("size") for p, info in found.items() if p.startswith(prefix)}
        where = f"{self.location(stage, fingerprint)}/{manifest.upload}"
        for item in manifest.files:
            if item.path not in sizes:
                return Lookup(None, f"{where}/{item.path} is listed in the manifest but missing")
            if sizes[item.path] != item.bytes:
                return Lookup(None, f"{where}/{item.path} has {sizes[item.path]} bytes, manifest says {item.bytes}")
            if checksums and self._sha256(f"{folder}/{item.path}") != item.sha256:
                return Lookup(None, f"{where}/{item.path} does not match its sha256 in the manifest")
        return Lookup(manifest)

    def _sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()

    def materialize(self, stage: str, fingerprint: str) -> Path:
        """The entry's files in a local folder, downloaded once per upload and verified."""
        for _attempt in range(3):  # a concurrent forced rebuild may swap the upload under us
            manifest, reason = self._manifest(stage, fingerprint)
            if manifest is None:
                raise FileNotFoundError(reason or f"{self.location(stage, fingerprint)} has no manifest")
            local = self.cache_root / stage / fingerprint / manifest.upload
            if (local / MANIFEST).is_file():
                return local
            try:
                return self._download(manifest, local)
            except FileNotFoundError:
                continue
        raise FileNotFoundError(f"{self.location(stage, fingerprint)} kept changing while downloading it")

    def _download(self, manifest: Manifest, local: Path) -> Path:
        temp = local.with_name(f"{_STAGING_PREFIX}{local.name}-{uuid.uuid4().hex[:8]}")
        temp.mkdir(parents=True)
        try:
            source = self._remote(manifest.stage, manifest.fingerprint, manifest.upload)
            for item in manifest.files:
                target = temp / item.path
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{source}/{item.path}", str(target))
                if target.stat().st_size != item.bytes or sha256_file(target) != item.sha256:
                    raise OSError(f"{source}/{item.path}: the download does not match the manifest")
            (temp / MANIFEST).write_text(manifest.to_json())  # last: a cached copy is complete
            try:
                temp.rename(local)
            except OSError:  # another task downloaded the same upload meanwhile
                if not (local / MANIFEST).is_file():
                    raise
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        for old in local.parent.iterdir():  # earlier uploads of a rebuilt entry
            if old.name != local.name and not old.name.startswith(_STAGING_PREFIX):
                shutil.rmtree(old, ignore_errors=True)
        return local

    # -- writing ------------------------------------------------------------------
    def staging(self, stage: str, fingerprint: str) -> Path:
        folder = self.staging_root / stage / f"{_STAGING_PREFIX}{fingerprint}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        return folder

    def commit(self, staging: Path, manifest: Manifest, *, replace: bool = False) -> str:
        """Upload the staged files into a fresh upload folder, then write the manifest last."""
        stage, fingerprint = manifest.stage, manifest.fingerprint
        where = self.location(stage, fingerprint)
        previous, _ = self._manifest(stage, fingerprint)
        if previous is not None and not replace and self.lookup(stage, fingerprint).hit:
            self.discard(staging)
            return where
        manifest.files = scan_files(staging)
        manifest.counts.update(files=len(manifest.files), bytes=manifest.total_bytes)
        manifest.upload = uuid.uuid4().hex[:12]
        target = self._remote(stage, fingerprint, manifest.upload)
        for item in manifest.files:
            self.fs.put_file(str(staging / item.path), f"{target}/{item.path}")
        self.fs.pipe_file(self._remote(stage, fingerprint, MANIFEST), manifest.to_json().encode())
        self.discard(staging)
        # Whichever upload the manifest does not name is garbage: a replaced entry, or ours when
        # another writer's manifest landed after ours (same inputs, so an equivalent entry).
        current, _ = self._manifest(stage, fingerprint)
        if current is not None:
            for upload in {previous.upload if previous else "", manifest.upload} - {current.upload, ""}:
                self.fs.rm(self._remote(stage, fingerprint, upload), recursive=True)
        return where

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def clear_staging(self, stage: str, fingerprint: str) -> None:
        """Remove local staging folders left by runs that died (uploads without a manifest stay:
        they are invisible, and a racing writer may still be finishing one)."""
        for debris in (self.staging_root / stage).glob(f"{_STAGING_PREFIX}{fingerprint}-*"):
            shutil.rmtree(debris, ignore_errors=True)

    def scratch(self, stage: str, fingerprint: str) -> Path:
        folder = self.scratch_root / stage / fingerprint
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def clean_scratch(self, stage: str, fingerprint: str) -> None:
        shutil.rmtree(self.scratch_root / stage / fingerprint, ignore_errors=True)

    def lock(self, stage: str, fingerprint: str, on_wait=None):
        return build_lock(self.scratch_root, stage, fingerprint, on_wait)
