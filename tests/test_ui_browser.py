"""`z2h ui` in a real browser: a toy pipeline run (real Ray, real sqlite MLflow store), the UI served by
`z2h ui` on 127.0.0.1, and headless Chromium (Debian's package, driven by Playwright through its
executable path) checking that the pipeline run, its stage runs, their dataset inputs and outputs,
the logged model, its registered version and the report card are all visible. Screenshots are kept
as test artifacts in `$Z2H_TEST_ARTIFACTS` (default `test-artifacts/ui/` in the repo)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
TIMEOUT_MS = 60_000  # a React app on a loaded 2-core machine


@pytest.fixture(scope="module")
def chromium_path() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    import browser

    path, why = browser.chromium(install_missing=True)
    if path is None:
        pytest.skip(f"UI browser test: {why}; install Chromium or set Z2H_CHROMIUM to run it")
    return path


@pytest.fixture
def artifacts() -> Path:
    folder = Path(os.environ.get("Z2H_TEST_ARTIFACTS") or REPO / "test-artifacts") / "ui"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(f"z2h ui exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"z2h ui did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """The server and the uvicorn process it started: its own process group."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)


def test_ui_shows_pipeline_stages_datasets_and_models(chromium_path, toy_registry, tmp_path, artifacts):
    from mlflow import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    from pipeline import cli, lineage

    started = time.time()
    workdir = tmp_path / "work"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    config = tmp_path / "toy.yaml"
    config.write_text(
        f"run: {{name: toy, workdir: {workdir}, seed: 7}}\ncluster: {{num_cpus: 2, dashboard: false}}\n"
        "stages:\n  words: {count: 300}\n  count: {top: 3}\n  model: {dim: 4, heads: 2}\n"
    )
    lineage.check_tracking(uri)
    lineage.mlflow_client(uri).search_experiments()  # create the schema once, before two processes open it

    # The UI comes up (~15-60 s here) while the pipeline runs.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "ui.log"
    with open(log, "w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "ui", "--port", str(port)],
            env={**os.environ, "MLFLOW_TRACKING_URI": uri},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tmp_path,
        )
    try:
        assert cli.main(["run", str(config)]) == 0
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("toy").experiment_id
        (parent,) = client.search_runs([experiment], "tags.`z2h.kind` = 'pipeline'")
        stages = {
            r.data.tags["z2h.stage"]: r
            for r in client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        }
        fingerprints = {name: run.data.tags["z2h.fingerprint"] for name, run in stages.items()}
        ran = time.time() - started
        wait_until_up(url, server, log)
        up = time.time() - started

        with sync_playwright() as playwright:
            chrome = playwright.chromium.launch(executable_path=chromium_path, headless=True)
            page = chrome.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            shots = {}

            def shot(name: str) -> None:
                shots[name] = artifacts / f"{name}.png"
                page.screenshot(path=shots[name])

            def open_view(route: str) -> None:
                """A route of the single-page app: a hash change, no reload. The previous view may linger
                hidden in the DOM, so checks go through roles (which skip hidden elements)."""
                page.goto(f"{url}/#/experiments/{experiment}/{route}")

            # The experiment's runs: the pipeline run, expanded to its stage runs.
            open_view("runs")
            row = page.get_by_role("row").filter(has_text=parent.info.run_name)
            expect(row).to_have_count(1)
            classic = page.get_by_role("button", name="Model training", exact=True)  # MLflow 3's ML view
            if classic.count():
                classic.click()
                expect(row).to_have_count(1)
            row.locator('button[data-component-id*="runnamecellrenderer"]').click()  # show child runs
            for name in ("words", "count", "model"):
                expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
            close = page.locator('button[aria-label="Close"]')  # the assistant side panel, if shown
            if close.count():
                close.first.click()
            shot("runs")

            # A stage run: its upstream output as an input dataset, its own output as an output dataset.
            open_view(f"runs/{stages['count'].info.run_id}")
            # Each dataset is a button "name (digest)" holding its context; the second sits behind "+1".
            upstream = page.get_by_role("button", name=f"words ({fingerprints['words']})", exact=True)
            expect(upstream.get_by_role("status")).to_have_text(re.compile("^input$", re.I))
            page.get_by_role("button").filter(has_text=re.compile(r"^\+1$")).click()
            own = page.get_by_role("dialog").get_by_role("button", name=f"count ({fingerprints['count']})", exact=True)
            expect(own.get_by_role("status")).to_have_text(re.compile("^output$", re.I))
            shot("stage-datasets")

            # The stage that logged a model shows it; the experiment's model list has it, READY.
            open_view(f"runs/{stages['model'].info.run_id}")
            expect(page.get_by_text(re.compile(r"^Logged models \(1\)$"))).to_be_visible()
            expect(page.get_by_role("link", name="toy-model")).to_be_visible()
            open_view("models")
            model_row = page.get_by_role("row").filter(has_text="toy-model")
            expect(model_row.get_by_role("status")).to_have_text("Ready")
            expect(page.get_by_role("link", name="model", exact=True)).to_be_visible()  # its source run
            shot("models")

            # The Model Registry: the run registered its model as version 1 of the pipeline's registered
            # model, under an alias that is the logged model's name.
            page.goto(f"{url}/#/models")
            expect(page.get_by_role("link", name="toy", exact=True)).to_be_visible()
            page.goto(f"{url}/#/models/toy")
            expect(page.get_by_role("link", name="Version 1", exact=True)).to_be_visible()
            expect(page.get_by_text("toy-model").first).to_be_visible()
            shot("registry")

            # The report card is an artifact of the pipeline run and renders in MLflow's viewer.
            open_view(f"runs/{parent.info.run_id}/artifacts")
            page.get_by_text("report", exact=True).first.click()
            page.get_by_text("report.html", exact=True).click()
            report = page.frame_locator("iframe").first
            expect(report.get_by_role("heading", name="Time and resources per stage")).to_be_visible()
            shot("report")
            chrome.close()
    finally:
        stop(server)
    print(f"\nUI browser test: pipeline {ran:.0f} s, UI up at {up:.0f} s, done at {time.time() - started:.0f} s")
    print("screenshots: " + ", ".join(str(path) for path in shots.values()))
    assert all(path.stat().st_size > 10_000 for path in shots.values())
