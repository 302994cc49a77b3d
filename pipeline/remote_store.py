"""The store on an fsspec URI (`s3://bucket/z2h`, `gs://...`, `file:///shared/z2h`, ...).

Object stores have no atomic folder rename, so an entry is committed in two steps:
  1. every file is uploaded under `<root>/<stage>/<fingerprint>/<upload>/`, where `upload` is
     fresh for each commit (two writers never touch each other's files);
  2. `<root>/<stage>/<fingerprint>/manifest.json` is written last (one object PUT, atomic on
     S3/GCS) and names its upload folder.
No manifest = not done, as in the local store; a manifest always points at a complete upload.

Stages still read and write local folders: outputs are staged under `<workdir>/staging/` (the
build locks with them: see `pipeline.store`) and uploaded by `commit`; upstream entries are
downloaded once into `<workdir>/cache/store/` (keyed by fingerprint and upload, every file checked
against its sha256) by `materialize`. On a multi-node cluster the work dir is shared storage, so
every node sees the same cache.

The bucket is not trusted more than a file: a manifest is validated (`Manifest.validate`) before
its upload id or file paths become local paths, so a tampered one is refused, never followed
outside the cache.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path
from typing import Any

from pipeline.errors import EnvironmentProblem
from pipeline.redact import redact
from pipeline.store import MANIFEST, STAGING_PREFIX, Manifest, ManifestError, Store, sha256_file, write_durably


def filesystem(uri: str):
    """(fsspec filesystem, path inside it) for a URI, or an EnvironmentProblem saying what is missing."""
    from fsspec.core import url_to_fs

    scheme = uri.partition("://")[0]
    try:
        fs, path = url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        hint = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(scheme)
        extra = f" (pip install {hint})" if hint else ""
        raise EnvironmentProblem(redact(f"run.store {uri}: no filesystem for {scheme}://{extra}: {exc}")) from None
    if getattr(fs, "protocol", None) in ("file", ("file", "local")) or type(fs).__name__ == "LocalFileSystem":
        fs.auto_mkdir = True
    return fs, path.rstrip("/")


class RemoteStore(Store):
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
        probe = self._remote(f".z2h-probe-{uuid.uuid4().hex[:8]}")
        try:
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm_file(probe)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
            raise EnvironmentProblem(redact(f"run.store {self.uri}: cannot write there ({problem})")) from None

    # -- reading ------------------------------------------------------------------
    def _manifest_bytes(self, stage: str, fingerprint: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._remote(stage, fingerprint, MANIFEST))
        except FileNotFoundError:
            return None

    def read_manifest(self, stage: str, fingerprint: str) -> tuple[Manifest | None, str]:
        manifest, reason = super().read_manifest(stage, fingerprint)
        if manifest is not None and not manifest.upload:
            return None, f"invalid manifest {self.location(stage, fingerprint)}/{MANIFEST}: field upload is empty"
        return manifest, reason

    def _files_location(self, manifest: Manifest) -> str:
        return f"{self.location(manifest.stage, manifest.fingerprint)}/{manifest.upload}"

    def _file_sizes(self, manifest: Manifest) -> dict[str, int]:
        folder = self._remote(manifest.stage, manifest.fingerprint, manifest.upload)
        found = {p.rstrip("/"): info for p, info in self.fs.find(folder, detail=True).items()}
        prefix = self.fs._strip_protocol(folder).rstrip("/") + "/"
        return {p[len(prefix) :]: info.get("size") for p, info in found.items() if p.startswith(prefix)}

    def _file_sha256(self, manifest: Manifest, path: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open(self._remote(manifest.stage, manifest.fingerprint, manifest.upload, path), "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()

    def materialize(self, stage: str, fingerprint: str) -> Path:
        """The entry's files in a local folder, downloaded once per upload and verified."""
        for _attempt in range(3):  # a concurrent forced rebuild may swap the upload under us
            manifest, reason = self.read_manifest(stage, fingerprint)
            if reason:
                raise ManifestError(reason)
            if manifest is None:
                raise FileNotFoundError(f"{self.location(stage, fingerprint)} has no manifest")
            local = self.cache_root / stage / fingerprint / manifest.upload
            if (local / MANIFEST).is_file():
                return local
            try:
                return self._download(manifest, local)
            except FileNotFoundError:
                continue
        raise FileNotFoundError(f"{self.location(stage, fingerprint)} kept changing while downloading it")

    def _download(self, manifest: Manifest, local: Path) -> Path:
        temp = local.with_name(f"{STAGING_PREFIX}{local.name}-{uuid.uuid4().hex[:8]}")
        temp.mkdir(parents=True)
        try:
            source = self._remote(manifest.stage, manifest.fingerprint, manifest.upload)
            for item in manifest.files:
                target = temp / item.path
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{source}/{item.path}", str(target))
                if target.stat().st_size != item.bytes or sha256_file(target) != item.sha256:
                    raise OSError(f"{source}/{item.path}: the download does not match the manifest")
            write_durably(temp, manifest)  # the manifest last: a cached copy is complete
            try:
                temp.rename(local)
            except OSError:  # another task downloaded the same upload meanwhile
                if not (local / MANIFEST).is_file():
                    raise
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        for old in local.parent.iterdir():  # earlier uploads of a rebuilt entry
            if old.name != local.name and not old.name.startswith(STAGING_PREFIX):
                shutil.rmtree(old, ignore_errors=True)
        return local

    # -- writing ------------------------------------------------------------------
    def commit(self, staging: Path, manifest: Manifest, *, replace: bool = False) -> str:
        """Upload the staged files into a fresh upload folder, then write the manifest last."""
        stage, fingerprint = manifest.stage, manifest.fingerprint
        where = self.location(stage, fingerprint)
        previous, _ = self.read_manifest(stage, fingerprint)
        if previous is not None and not replace and self.lookup(stage, fingerprint).hit:
            self.discard(staging)
            return where
        manifest.list_files(staging)
        manifest.upload = uuid.uuid4().hex[:12]
        target = self._remote(stage, fingerprint, manifest.upload)
        for item in manifest.files:
            self.fs.put_file(str(staging / item.path), f"{target}/{item.path}")
        self.fs.pipe_file(self._remote(stage, fingerprint, MANIFEST), manifest.to_json().encode())
        self.discard(staging)
        # Whichever upload the manifest does not name is garbage: a replaced entry, or ours when
        # another writer's manifest landed after ours (same inputs, so an equivalent entry).
        current, _ = self.read_manifest(stage, fingerprint)
        if current is not None:
            for upload in {previous.upload if previous else "", manifest.upload} - {current.upload, ""}:
                self.fs.rm(self._remote(stage, fingerprint, upload), recursive=True)
        return where
