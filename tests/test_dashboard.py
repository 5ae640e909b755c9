"""The dashboard: read-only pages over results.db, in-process and in a real headless browser."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import bigram_corpus
from fastapi.testclient import TestClient

from autoresearch.curves import Point
from autoresearch.dashboard import create_app
from autoresearch.metrics import Metrics
from autoresearch.models import ExperimentStatus as ES
from autoresearch.models import RunStatus
from autoresearch.store import Store
from autoresearch.workspace import init_workspace

HERE = Path(__file__).parent
DIFF = ("diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n"
        "-LEARNING_RATE = 1e-5\n+LEARNING_RATE = 3e-2\n")
TRAVERSALS = [
    "/../../etc/passwd", "/static/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f..%2fetc%2fpasswd", "/static/%2e%2e%2fdashboard%2fapp.py",
    "/experiments/..%2f..%2fetc%2fpasswd", "/experiments/2%2f..%2f..%2fresults.db",
    "/runs/1%2fprogress.svg%2f..", "/experiments/2/..%2f..%2f..%2fetc%2fpasswd",
    "/static/dashboard.css%00.js", "/experiments/%2e%2e", "/results.db",
]
BAD_IDS = ["/runs/999", "/runs/abc", "/runs/-1", "/runs/1.5", "/experiments/999",
           "/experiments/0x2", "/experiments/99999999999999999999", "/experiments/2.json.json",
           "/runs/999/progress.svg", "/experiments/999/curves.svg", "/static/missing.js",
           "/runs/1/report", "/runs/999/report", "/runs/..%2f..%2fetc%2fpasswd/report",
           "/nowhere"]


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """A workspace with a recorded run: a baseline and a kept candidate with a diff and curve."""
    store = Store(tmp_path / "results.db")
    run = store.add_run(agent="mock", model="s.jsonl", budget_kind="tokens", budget_amount=1000,
                        seeds="[0]", device="cpu", dataset="x", dataset_sha256="ab" * 32,
                        experiments_planned=2, branch="run/1", baseline_commit="b0",
                        champion_commit="c1", noise_std=0.01)
    assert run.id is not None
    base = store.add_experiment(run_id=run.id, kind="baseline", title="baseline",
                                status=ES.kept, val_bpb=3.0, commit="b0",
                                decision=json.dumps({"values": {"0": 3.0}, "noise_std": 0.01}))
    decision = {"verdict": "keep", "reason": "kept: mean paired Δ -0.5", "threshold": 0.03,
                "delta": -0.5, "evidence": {"stage": "final", "seeds": [0], "candidate": [2.5],
                                            "champion": [3.0], "threshold": 0.03}}
    cand = store.add_experiment(run_id=run.id, kind="candidate", seq=1, title="Raise the lr",
                                rationale="1e-5 learns <nothing>", status=ES.kept,
                                val_bpb=2.5, champion_bpb=3.0, delta=-0.5, commit="c1",
                                parent_commit="b0", diff=DIFF, reason="kept: mean paired Δ -0.5",
                                decision=json.dumps(decision))
    for e, v in ((base, 3.0), (cand, 2.5)):
        assert e.id is not None
        store.add_measurement(e.id, Metrics(status=RunStatus.ok, seed=0, val_bpb=v, steps=10))
        folder = tmp_path / "experiments" / str(e.id) / "seed-0"
        folder.mkdir(parents=True)
        (folder / "run.log").write_text(f"training #{e.id}\nstep 9 | loss 4.2\n")
        (folder / "curve.jsonl").write_text("".join(
            Point(i, i * 64, i, {"loss": 6 - i * v / 10}).line() + "\n" for i in range(10)))
    store.add_call(run_id=run.id, experiment_id=cand.id, provider="mock", model="s.jsonl",
                   input_tokens=1200, output_tokens=80, latency_s=1.5, cost_usd=0.0123)
    store.update_run(run.id, champion_experiment_id=cand.id)
    store.close()
    return tmp_path


def client(ws: Path) -> TestClient:
    return TestClient(create_app(ws, ws / "results.db"))


def test_every_page_renders_and_is_also_json(recorded: Path) -> None:
    c = client(recorded)
    runs = c.get("/")
    assert runs.status_code == 200 and "run 1" in runs.text and "$0.0123" in runs.text
    assert c.get("/runs.json").json()["runs"][0]["champion_bpb"] == 2.5
    run = c.get("/runs/1")
    assert run.status_code == 200 and "Raise the lr" in run.text
    assert "2.5000 vs champion 3.0000 on seed 0" in run.text
    data = c.get("/runs/1.json").json()
    assert [e["status"] for e in data["experiments"]] == ["kept", "kept"] and data["version"]
    exp = c.get("/experiments/2")
    assert exp.status_code == 200
    assert "1e-5 learns &lt;nothing&gt;" in exp.text  # escaped, never raw HTML
    assert 'class="hl"' in exp.text and "LEARNING_RATE = 3e-2" in exp.text  # highlighted diff
    assert "1,200" in exp.text and "$0.0123" in exp.text and "1.50 s" in exp.text
    assert "step 9 | loss 4.2" in exp.text  # the log tail
    e = c.get("/experiments/2.json").json()
    assert e["measurements"][0]["champion_bpb"] == 3.0 and len(e["curves"]["0"]["loss"]) == 10
    for path in ("/runs/1/progress.svg", "/experiments/2/curves.svg"):
        svg = c.get(path)
        assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
        assert "<svg" in svg.text
    assert c.get("/static/dashboard.js").headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize("path", BAD_IDS + TRAVERSALS)
def test_unknown_ids_and_traversal_attempts_are_a_404_page(recorded: Path, path: str) -> None:
    r = client(recorded).get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert "Traceback" not in r.text and "root:" not in r.text
    assert "Not found" in r.text or r.json() == {"error": "not found"}


def test_the_latest_research_report_is_linked(recorded: Path) -> None:
    c = client(recorded)
    assert "/report" not in c.get("/runs/1").text + c.get("/").text  # none yet: no link
    (recorded / "reports").mkdir()
    (recorded / "reports" / "run-1.html").write_text("<h1>What run 1 found</h1>")
    assert 'href="/runs/1/report"' in c.get("/").text
    assert 'href="/runs/1/report"' in c.get("/runs/1").text
    page = c.get("/runs/1/report")
    assert page.status_code == 200 and "What run 1 found" in page.text


def test_nothing_writes(recorded: Path) -> None:
    c = client(recorded)
    for method in ("post", "put", "delete", "patch"):
        assert getattr(c, method)("/runs/1").status_code in (404, 405)
    before = (recorded / "results.db").read_bytes()
    c.get("/runs/1")
    c.get("/experiments/2")
    assert (recorded / "results.db").read_bytes() == before


def test_a_workspace_without_a_database_says_so_and_creates_nothing(tmp_path: Path) -> None:
    c = client(tmp_path)
    r = c.get("/")
    assert r.status_code == 200 and "No results database" in r.text
    assert c.get("/runs.json").json()["db_missing"] is True
    assert c.get("/runs/1").status_code == 404
    assert not (tmp_path / "results.db").exists()


# -- in a real browser, while a loop runs ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raw_status(port: int, path: str) -> int:
    """GET ``path`` exactly as written (no client-side normalisation of ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow  # a real loop and a real browser
def test_the_dashboard_follows_a_running_loop_in_a_real_browser(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, ("Chromium is not installed: `apt-get install chromium` (the browser "
                      "test drives Debian's Chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    ws = tmp_path / "ws"
    init_workspace(ws)
    shutil.copy(HERE / "loop_source" / "train.py", ws / "baseline" / "train.py")
    bigram_corpus(tmp_path / "corpus.txt")
    from test_loop import LOWER_LR, RAISE_LR, script

    s = script(tmp_path / "s.jsonl", [RAISE_LR, LOWER_LR])
    env = {**os.environ, "AUTORESEARCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with _process(["--workspace", str(ws), "dashboard", "--port", str(port)], env) as dash:
        deadline = time.monotonic() + 30
        while True:  # the server is up when it answers
            assert dash.poll() is None, dash.stderr.read().decode() if dash.stderr else ""
            with contextlib.suppress(OSError):
                if _raw_status(port, "/") == 200:
                    break
            assert time.monotonic() < deadline, "the dashboard did not start in 30 s"
            time.sleep(0.1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base + "/")
            page.wait_for_selector("text=No results database")
            page.evaluate("window.__sameDocument = true")
            loop_args = ["--workspace", str(ws), "loop", "--agent", "mock", "--script", str(s),
                         "--token-budget", "12000", "--seeds", "1", "--device", "cpu",
                         "--dataset", str(tmp_path / "corpus.txt"), "--budget", "2"]
            with _process(loop_args, env) as loop:
                # the run appears on the page the browser already has open: no reload
                page.wait_for_selector("a[href='/runs/1']", timeout=30_000)
                assert page.evaluate("window.__sameDocument") is True
                page.click("a[href='/runs/1']")
                page.wait_for_selector("#exp-1", timeout=30_000)
                page.evaluate("window.__sameDocument = true")
                # a new experiment row appears by itself while the loop runs
                page.wait_for_selector("#exp-3", timeout=45_000)
                assert page.evaluate("window.__sameDocument") is True
                page.wait_for_selector("#exp-2 .status.kept", timeout=30_000)
                page.select_option("#status-filter", "kept")
                shown = page.evaluate("Array.from(document.querySelectorAll('tr.exp-row'))"
                                      ".filter(r => !r.hidden).map(r => r.dataset.status)")
                assert shown and set(shown) == {"kept"}
                page.select_option("#status-filter", "")
                chart = page.wait_for_selector("#progress-chart")
                assert chart is not None
                page.wait_for_function(
                    "document.getElementById('progress-chart').naturalWidth > 0")
                page.click("#exp-2 a[href='/experiments/2']")
                page.wait_for_selector(".diff .hl")
                assert "+LEARNING_RATE = 3e-2" in page.inner_text(".diff")
                page.wait_for_function("document.getElementById('curve-chart') && "
                                       "document.getElementById('curve-chart').naturalWidth > 0")
                assert "vs champion" in page.inner_text("#verdict")
                page.screenshot(path=str(tmp_path / "experiment.png"), full_page=True)
                assert (tmp_path / "experiment.png").stat().st_size > 20_000
                missing = page.goto(base + "/experiments/999")
                assert missing is not None and missing.status == 404
                assert "Not found" in page.inner_text("h1")
                browser.close()
                assert loop.wait(timeout=60) == 0, loop.stderr.read().decode()[-2000:] \
                    if loop.stderr else ""
        for path in TRAVERSALS:
            assert _raw_status(port, path) == 404, path
