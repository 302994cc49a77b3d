from __future__ import annotations

import json

from pipeline.store import MANIFEST, Manifest, Store


def commit_entry(store: Store, stage: str = "s", fp: str = "abc", content: str = "hello") -> Manifest:
    staging = store.staging(stage, fp)
    (staging / "out.txt").write_text(content)
    (staging / "sub").mkdir()
    (staging / "sub" / "x.bin").write_bytes(b"\x00\x01")
    manifest = Manifest(stage=stage, fingerprint=fp, files=[], metrics={"m": 1.0}, run_id="r1")
    store.commit(staging, manifest)
    return manifest


def test_commit_writes_manifest_last_and_lookup_hits(tmp_path):
    store = Store(tmp_path)
    manifest = commit_entry(store)
    entry = store.entry("s", "abc")
    assert (entry / MANIFEST).exists()
    assert [f.path for f in manifest.files] == ["out.txt", "sub/x.bin"]
    assert manifest.counts == {"files": 2, "bytes": 7}
    found = store.lookup("s", "abc", checksums=True)
    assert found.hit and found.manifest.run_id == "r1"
    assert not list(tmp_path.glob("s/.staging-*"))


def test_staging_without_manifest_is_a_miss(tmp_path):
    store = Store(tmp_path)
    staging = store.staging("s", "abc")
    (staging / "out.txt").write_text("half written")
    assert not store.lookup("s", "abc").hit


def test_damaged_entries_are_misses_with_reasons(tmp_path):
    store = Store(tmp_path)
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


def test_manifest_for_other_fingerprint_is_rejected(tmp_path):
    store = Store(tmp_path)
    commit_entry(store)
    entry = store.entry("s", "abc")
    raw = json.loads((entry / MANIFEST).read_text())
    raw["fingerprint"] = "zzz"
    (entry / MANIFEST).write_text(json.dumps(raw))
    assert "names s/zzz" in store.lookup("s", "abc").reason


def test_concurrent_commit_keeps_first_unless_replacing(tmp_path):
    store = Store(tmp_path)
    commit_entry(store, content="first")
    commit_entry(store, content="again")
    assert (store.entry("s", "abc") / "out.txt").read_text() == "first"
    staging = store.staging("s", "abc")
    (staging / "out.txt").write_text("forced")
    store.commit(staging, Manifest(stage="s", fingerprint="abc", files=[]), replace=True)
    assert (store.entry("s", "abc") / "out.txt").read_text() == "forced"
    assert store.lookup("s", "abc", checksums=True).hit
    assert not list(tmp_path.glob("s/.staging-*"))
