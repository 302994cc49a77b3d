"""The store on an fsspec URI: uploads under a fresh folder, manifest last, verified downloads;
and a whole pipeline run whose store is a `file://` URI (the object-store code path, offline)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fsspec
import pytest
from mlflow import MlflowClient

from pipeline import cli
from pipeline.remote_store import RemoteStore
from pipeline.runner import cancel_stage_task
from pipeline.store import MANIFEST, LocalStore, Manifest, ManifestError, open_store

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def remote(tmp_path: Path) -> RemoteStore:
    return RemoteStore(f"memory://z2h-{uuid.uuid4().hex[:8]}/store", tmp_path / "work")


def commit(store: RemoteStore, content: str = "hello", fp: str = "abc", replace: bool = False) -> Manifest:
    staging = store.staging("s", fp)
    (staging / "out.txt").write_text(content)
    (staging / "sub").mkdir()
    (staging / "sub" / "x.bin").write_bytes(b"\x00\x01")
    manifest = Manifest(stage="s", fingerprint=fp, files=[], metrics={"m": 1.0}, run_id="r1")
    store.commit(staging, manifest, replace=replace)
    return manifest


def listing(store: RemoteStore) -> list[str]:
    root = store._remote()
    return sorted(p[len(root) + 1 :] for p in store.fs.find(root))


def test_open_store_picks_the_kind_from_the_setting(tmp_path: Path):
    assert open_store(None, tmp_path).root == tmp_path / "store"
    assert open_store(str(tmp_path / "elsewhere"), tmp_path).scratch_root == tmp_path / "scratch"
    remote = open_store("file:///tmp/x", tmp_path)
    assert isinstance(remote, RemoteStore) and remote.location("data", "f1") == "file:///tmp/x/data/f1"


def test_commit_uploads_files_then_the_manifest(remote: RemoteStore):
    manifest = commit(remote)
    assert manifest.upload and manifest.total_bytes == 7
    assert listing(remote) == [
        f"s/abc/{manifest.upload}/out.txt",
        f"s/abc/{manifest.upload}/sub/x.bin",
        "s/abc/manifest.json",
    ]
    found = remote.lookup("s", "abc", checksums=True)
    assert found.hit and found.manifest.run_id == "r1"
    assert not any(remote.staging_root.glob("s/.staging-*"))  # the local staging folder is gone


def test_upload_without_manifest_and_damaged_files_are_misses(remote: RemoteStore):
    manifest = commit(remote)
    folder = remote._remote("s", "abc", manifest.upload)
    remote.fs.pipe_file(f"{folder}/out.txt", b"hellO")  # same size, other bytes
    assert remote.lookup("s", "abc").hit
    assert "sha256" in remote.lookup("s", "abc", checksums=True).reason
    remote.fs.pipe_file(f"{folder}/out.txt", b"truncated!!")
    assert "bytes" in remote.lookup("s", "abc").reason
    remote.fs.pipe_file(f"{folder}/out.txt", b"hello")
    remote.fs.rm_file(f"{folder}/sub/x.bin")
    assert "missing" in remote.lookup("s", "abc").reason
    remote.fs.rm_file(remote._remote("s", "abc", MANIFEST))
    found = remote.lookup("s", "abc")
    assert not found.hit and found.reason == ""  # an upload without its manifest: never committed


def test_materialize_downloads_once_and_verifies(remote: RemoteStore):
    manifest = commit(remote)
    local = remote.materialize("s", "abc")
    assert local == remote.cache_root / "s" / "abc" / manifest.upload
    assert (local / "out.txt").read_text() == "hello" and (local / MANIFEST).is_file()
    (local / "marker").write_text("same folder next time")
    assert remote.materialize("s", "abc") == local and (local / "marker").exists()
    # A corrupted remote file (right size, wrong bytes) is refused, never cached.
    rebuilt = commit(remote, "HELLO", replace=True)
    remote.fs.pipe_file(remote._remote("s", "abc", rebuilt.upload, "out.txt"), b"xxxxx")
    with pytest.raises(OSError, match="does not match the manifest"):
        remote.materialize("s", "abc")
    assert not (remote.cache_root / "s" / "abc" / rebuilt.upload).exists()


def test_second_commit_keeps_the_first_and_replace_swaps_it(remote: RemoteStore):
    first = commit(remote, "hello")
    commit(remote, "other")  # same fingerprint, not forced: the committed entry stays
    assert remote.lookup("s", "abc").manifest.upload == first.upload
    assert len([p for p in listing(remote) if p.endswith("out.txt")]) == 1
    second = commit(remote, "HELLO", replace=True)
    assert remote.lookup("s", "abc").manifest.upload == second.upload
    assert [p for p in listing(remote) if p.endswith("out.txt")] == [f"s/abc/{second.upload}/out.txt"]
    local = remote.materialize("s", "abc")
    assert (local / "out.txt").read_text() == "HELLO"


def test_racing_writers_leave_one_complete_entry(remote: RemoteStore):
    """Two runs committing the same fingerprint at once: whichever manifest lands last names a
    complete upload, and the other upload is removed."""
    a_stage, b_stage = remote.staging("s", "abc"), remote.staging("s", "abc")
    for folder, text in ((a_stage, "aaaaa"), (b_stage, "bbbbb")):
        (folder / "out.txt").write_text(text)
    a = Manifest(stage="s", fingerprint="abc", files=[])
    b = Manifest(stage="s", fingerprint="abc", files=[])
    original_lookup = remote.lookup
    remote.lookup = lambda *args, **kw: type(original_lookup("s", "none"))(None)  # neither sees the other
    remote.commit(a_stage, a)
    remote.commit(b_stage, b)
    remote.lookup = original_lookup
    found = remote.lookup("s", "abc", checksums=True)
    assert found.hit and found.manifest.upload == b.upload
    assert [p for p in listing(remote) if p.endswith("out.txt")] == [f"s/abc/{b.upload}/out.txt"]


@pytest.mark.slow
def test_pipeline_on_a_file_uri_store(tmp_path: Path, toy_registry, capsys):
    root = tmp_path / "bucket"
    config = tmp_path / "toy.yaml"
    config.write_text(
        f"run: {{name: toy, workdir: {tmp_path / 'work'}, seed: 7, store: 'file://{root}/store'}}\n"
        "cluster: {num_cpus: 2, dashboard: false}\n"
        "stages:\n  words: {count: 300}\n  count: {top: 3}\n  model: {dim: 4, heads: 2}\n"
    )
    assert cli.main(["run", str(config)]) == 0
    fs = fsspec.filesystem("file")
    manifests = sorted(Path(p).relative_to(root / "store").parts[0] for p in fs.glob(f"{root}/store/*/*/manifest.json"))
    assert manifests == ["count", "model", "words"]
    assert not (tmp_path / "work" / "store").exists()  # nothing went to the default place
    assert not list((tmp_path / "work" / "staging").rglob("*.txt"))  # staged files were uploaded and removed
    # Downstream stages read their upstreams from the verified local cache.
    words = json.loads(next((root / "store" / "words").glob("*/manifest.json")).read_text())
    cached = tmp_path / "work" / "cache" / "store" / "words" / words["fingerprint"] / words["upload"]
    assert (cached / "words.txt").is_file()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    runs = {
        r.data.tags["z2h.stage"]: r
        for r in client.search_runs([client.get_experiment_by_name("toy").experiment_id], "tags.`z2h.kind` = 'stage'")
    }
    inputs = [i for i in runs["count"].inputs.dataset_inputs if i.tags[0].value == "input"]
    assert [json.loads(i.dataset.source)["uri"] for i in inputs] == [
        f"file://{root}/store/words/{words['fingerprint']}"
    ]

    assert cli.main(["plan", str(config), "--verify"]) == 0  # every sha256 checked through fsspec
    assert capsys.readouterr().out.count(" cached ") == 3


def test_build_lock_tells_the_next_holder_that_the_last_one_died(tmp_path: Path):
    store = LocalStore(tmp_path)
    with store.lock("s", "abc") as held:
        assert held.previous == ""
        held.record("run-1")
    with store.lock("s", "abc") as held:
        assert held.previous == ""  # run-1 returned: its record went with it
    # A holder killed while building leaves its record; the kernel releases its flock.
    script = (
        "import os, sys; from pathlib import Path; from pipeline.store import LocalStore\n"
        "lock = LocalStore(Path(sys.argv[1])).lock('s', 'abc'); held = lock.__enter__(); held.record('run-2')\n"
        "os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO).returncode == 9
    with store.lock("s", "abc") as held:
        assert held.previous == "run-2"


def test_a_uri_store_stages_and_locks_in_its_work_dir(tmp_path: Path):
    """No locks in an object store: staging folders and their locks are local to each work dir, so a
    run never clears another work dir's staging (racing commits leave one entry, tested above)."""
    uri = f"memory://z2h-{uuid.uuid4().hex[:8]}/store"
    run_a, run_b = RemoteStore(uri, tmp_path / "a"), RemoteStore(uri, tmp_path / "b")
    staging = run_a.staging("s", "abc")
    with run_b.lock("s", "abc"):
        run_b.clear_staging("s", "abc")
    assert staging.is_dir()
    assert (tmp_path / "b" / "staging" / ".locks" / "s" / "abc.lock").is_file()


def tamper(store: RemoteStore, change) -> str:
    """Rewrite the committed s/abc manifest with `change(raw)`; returns its URI."""
    path = store._remote("s", "abc", MANIFEST)
    raw = json.loads(store.fs.cat_file(path))
    change(raw)
    store.fs.pipe_file(path, json.dumps(raw).encode())
    return f"{store.location('s', 'abc')}/{MANIFEST}"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda raw: raw.update(upload="../../../../outside"), "field upload '../../../../outside' is not 12 hex"),
        (lambda raw: raw.update(upload=""), "field upload is empty"),
        (lambda raw: raw["files"][0].update(path="../../../../../escape.txt"), "field files[0].path '../../../"),
        (lambda raw: raw["files"][0].update(path="/tmp/escape.txt"), "field files[0].path '/tmp/escape.txt' is not"),
    ],
)
def test_a_tampered_remote_manifest_is_refused_naming_it_and_the_field(remote: RemoteStore, change, says):
    commit(remote)
    where = tamper(remote, change)
    found = remote.lookup("s", "abc")
    assert not found.hit and found.reason.startswith(f"invalid manifest {where}: {says}")
    with pytest.raises(ManifestError, match=re.escape(f"invalid manifest {where}: {says}")):
        remote.materialize("s", "abc")
    assert not list(remote.workdir.parent.rglob("escape.txt")) and not (remote.workdir.parent / "outside").exists()


def test_a_tampered_upload_id_never_deletes_outside_the_entry(tmp_path: Path):
    """A forced rebuild removes the replaced upload named by the old manifest: a manifest pointing
    `upload` at a sibling entry must not get that entry deleted."""
    store = RemoteStore(f"file://{tmp_path / 'bucket'}", tmp_path / "work")
    commit(store, fp="other")
    commit(store)
    tamper(store, lambda raw: raw.update(upload="../other"))
    commit(store, "HELLO", replace=True)
    assert store.lookup("s", "other", checksums=True).hit
    assert (store.materialize("s", "abc") / "out.txt").read_text() == "HELLO"


def test_ctrl_c_removes_staging_only_after_the_cancelled_task_ended(tmp_path: Path, ray_session):
    """`ray.cancel` is asynchronous: the task may still write its staging folder (or be committing
    it) for a while. The staging folder goes only once the task has ended."""
    import psutil
    import ray

    store = LocalStore(tmp_path / "store")
    staging = store.staging("s", "abc")

    @ray.remote(max_retries=2)
    def stage_still_writing(folder: Path) -> None:
        (folder.parent / "pid").write_text(str(os.getpid()))
        while True:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "part").write_text("more")

    ref = stage_still_writing.remote(staging)
    while not (tmp_path / "store" / "s" / "pid").exists() or not (staging / "part").exists():
        time.sleep(0.05)
    pid = int((tmp_path / "store" / "s" / "pid").read_text())
    assert cancel_stage_task(ref, store, staging)
    with contextlib.suppress(psutil.NoSuchProcess):  # the task's worker is gone, or exited and not yet reaped
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not staging.exists()
