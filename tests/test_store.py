from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

import pytest

from pipeline.errors import EnvironmentProblem
from pipeline.store import MANIFEST, LocalStore, Manifest, Store, open_store


def commit_entry(store: LocalStore, stage: str = "s", fp: str = "abc", content: str = "hello") -> Manifest:
    staging = store.staging(stage, fp)
    (staging / "out.txt").write_text(content)
    (staging / "sub").mkdir()
    (staging / "sub" / "x.bin").write_bytes(b"\x00\x01")
    manifest = Manifest(stage=stage, fingerprint=fp, files=[], metrics={"m": 1.0}, run_id="r1")
    store.commit(staging, manifest)
    return manifest


def test_commit_writes_manifest_last_and_lookup_hits(tmp_path):
    store = LocalStore(tmp_path)
    manifest = commit_entry(store)
    entry = store.entry("s", "abc")
    assert (entry / MANIFEST).exists()
    assert [f.path for f in manifest.files] == ["out.txt", "sub/x.bin"]
    assert manifest.total_bytes == 7
    found = store.lookup("s", "abc", checksums=True)
    assert found.hit and found.manifest.run_id == "r1"
    assert not list(tmp_path.glob("s/.staging-*"))


def test_staging_without_manifest_is_a_miss(tmp_path):
    store = LocalStore(tmp_path)
    staging = store.staging("s", "abc")
    (staging / "out.txt").write_text("half written")
    assert not store.lookup("s", "abc").hit


def test_damaged_entries_are_misses_with_reasons(tmp_path):
    store = LocalStore(tmp_path)
    commit_entry(store)
    entry = store.entry("s", "abc")
    (entry / "out.txt").write_text("hellO")  # same size, other content
    assert store.lookup("s", "abc").hit
    checked = store.lookup("s", "abc", checksums=True)
    assert not checked.hit and "sha256" in checked.reason
    (entry / "out.txt").write_text("truncated!!")
    assert "bytes" in store.lookup("s", "abc").reason
    (entry / "sub" / "x.bin").unlink()
    (entry / "out.txt").write_text("hello")
    assert "missing" in store.lookup("s", "abc").reason
    (entry / MANIFEST).write_text("{not json")
    assert "unreadable manifest" in store.lookup("s", "abc").reason


def test_an_older_manifest_with_counts_still_reads(tmp_path):
    store = LocalStore(tmp_path)
    commit_entry(store)
    path = store.entry("s", "abc") / MANIFEST
    path.write_text(json.dumps(json.loads(path.read_text()) | {"counts": {"files": 2, "bytes": 7}}))
    assert store.lookup("s", "abc").hit


def test_manifest_for_other_fingerprint_is_rejected(tmp_path):
    store = LocalStore(tmp_path)
    commit_entry(store)
    entry = store.entry("s", "abc")
    raw = json.loads((entry / MANIFEST).read_text())
    raw["fingerprint"] = "zzz"
    (entry / MANIFEST).write_text(json.dumps(raw))
    assert "names s/zzz" in store.lookup("s", "abc").reason


def test_concurrent_commit_keeps_first_unless_replacing(tmp_path):
    store = LocalStore(tmp_path)
    commit_entry(store, content="first")
    commit_entry(store, content="again")
    assert (store.entry("s", "abc") / "out.txt").read_text() == "first"
    staging = store.staging("s", "abc")
    (staging / "out.txt").write_text("forced")
    store.commit(staging, Manifest(stage="s", fingerprint="abc", files=[]), replace=True)
    assert (store.entry("s", "abc") / "out.txt").read_text() == "forced"
    assert store.lookup("s", "abc", checksums=True).hit
    assert not list(tmp_path.glob("s/.staging-*"))


def test_both_backings_are_one_interface(tmp_path: Path):
    assert isinstance(open_store(None, tmp_path), Store)
    assert isinstance(open_store("file:///tmp/x", tmp_path), Store)


class Waited(Exception):
    pass


def must_not_wait() -> None:
    raise Waited


def test_work_dirs_sharing_a_store_share_its_build_lock(tmp_path: Path):
    """Run B (its own work dir, same store) must not take the lock run A holds while building, so it
    cannot clear A's staging folder as debris."""
    shared = tmp_path / "store"
    run_a = LocalStore(shared, tmp_path / "work-a" / "scratch")
    run_b = LocalStore(shared, tmp_path / "work-b" / "scratch")
    with run_a.lock("s", "abc"):
        staging = run_a.staging("s", "abc")
        (staging / "out.txt").write_text("in flight")
        with pytest.raises(Waited), run_b.lock("s", "abc", on_wait=must_not_wait):
            run_b.clear_staging("s", "abc")
        assert (staging / "out.txt").read_text() == "in flight"
    with run_b.lock("s", "abc", on_wait=must_not_wait):  # A is done: B takes it at once
        run_b.clear_staging("s", "abc")  # A died without committing: its staging is debris now
    assert not staging.exists()
    assert (shared / ".locks" / "s" / "abc.lock").is_file()


def test_a_filesystem_without_flock_is_a_usage_error(tmp_path: Path, monkeypatch):
    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with (
        pytest.raises(EnvironmentProblem, match=r"cannot lock .*abc\.lock .*filesystem with flock"),
        LocalStore(tmp_path).lock("s", "abc"),
    ):
        pass


def test_check_refuses_a_store_root_it_cannot_write(tmp_path: Path):
    LocalStore(tmp_path / "store").check()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(EnvironmentProblem, match="run.store .*file/store: cannot write there"):
        LocalStore(tmp_path / "file" / "store").check()


def test_commit_flushes_files_manifest_and_folders_before_the_rename(tmp_path: Path, monkeypatch):
    """A power loss after the commit must not leave a manifest naming files whose bytes never
    reached the disk: everything is fsynced before the rename publishes it, and the rename after."""
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(f"rename {Path(b).name}"), real_rename(a, b)))
    store = LocalStore(tmp_path)
    staging = store.staging("s", "abc")
    (staging / "sub").mkdir()
    (staging / "sub" / "x.bin").write_bytes(b"\x00\x01")
    (staging / "out.txt").write_text("hello")
    store.commit(staging, Manifest(stage="s", fingerprint="abc", files=[]))
    renamed = events.index("rename abc")
    flushed = {str(staging / p) for p in ("out.txt", "sub/x.bin", MANIFEST, "sub")} | {str(staging)}
    assert flushed <= set(events[:renamed])
    assert events[renamed + 1 :] == [str(tmp_path / "s")]


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("path", "../outside.txt", "files[0].path '../outside.txt' is not a relative path inside the entry"),
        ("path", "/etc/passwd", "files[0].path '/etc/passwd' is not a relative path"),
        ("path", "sub//x.bin", "files[0].path 'sub//x.bin' is not a relative path"),
        ("bytes", -1, "files[0].bytes -1 is not a byte count"),
        ("sha256", "abc", "files[0].sha256 'abc' is not 64 hex digits"),
    ],
)
def test_a_tampered_manifest_is_a_miss_naming_the_manifest_and_field(tmp_path: Path, field, value, says):
    store = LocalStore(tmp_path)
    commit_entry(store)
    path = store.entry("s", "abc") / MANIFEST
    raw = json.loads(path.read_text())
    raw["files"][0][field] = value
    path.write_text(json.dumps(raw))
    found = store.lookup("s", "abc")
    assert not found.hit and found.reason.startswith(f"invalid manifest {path}: field {says}")


def test_a_store_below_a_file_is_a_miss_then_an_environment_problem(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    store = LocalStore(blocked / "store")
    assert not store.lookup("words", "abc").hit  # planning goes on; the run's write check names the problem
    with pytest.raises(EnvironmentProblem, match="cannot write there"):
        store.check()
