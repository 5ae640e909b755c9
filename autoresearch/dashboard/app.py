"""The dashboard: a read-only web view over results.db and the workspace.

Three pages (runs, one run, one experiment), each also served as JSON by adding ``.json``,
and two server-side SVG charts. Every page carries a ``version`` of what it shows; the page's
script polls the JSON and, when the version moves, swaps in the new page body without a reload.

Nothing here writes: the database is opened read-only (``mode=ro``), so a dashboard never takes
a lock a loop is waiting for; files are read only under ``<workspace>/experiments/<id>/`` for
an id that exists in the database, and static files only from this package's static/ folder.
Every path parameter is checked: an unknown or malformed id, or any other path, is a 404 page.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer
from starlette.exceptions import HTTPException

from autoresearch import report
from autoresearch.decide import stages
from autoresearch.errors import StoreError
from autoresearch.explain import compare
from autoresearch.findings_render import REPORTS_DIR
from autoresearch.models import MeasurementRole
from autoresearch.store import Experiment, Run, Store, is_done

HERE = Path(__file__).parent
_ID = re.compile(r"[0-9]{1,12}")
_STATIC_NAME = re.compile(r"[a-z0-9_-]{1,40}\.(css|js)")
_MEDIA = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
LOG_TAIL_CHARS = 6000
POLL_MS = 2000


class NotFound(HTTPException):
    def __init__(self, what: str) -> None:
        super().__init__(404, what)


def _parse_id(ref: str, *, json_ok: bool = True) -> tuple[int, bool]:
    """"12" -> (12, False), "12.json" -> (12, True); anything else is a 404."""
    as_json = json_ok and ref.endswith(".json")
    text = ref[:-5] if as_json else ref
    if not _ID.fullmatch(text):
        raise NotFound(f"{ref!r} is not an id")
    return int(text), as_json


class Reader:
    """Opens the store read-only when the file exists (a loop may create it later)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._store: Store | None = None
        self._lock = threading.Lock()

    def store(self) -> Store | None:
        with self._lock:
            if self._store is None and self.db.is_file():
                try:
                    self._store = Store(self.db, read_only=True)
                except StoreError:
                    return None  # a loop is creating it right now: next poll
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def create_app(workspace: Path, db: Path) -> FastAPI:
    """The dashboard over ``db`` and ``workspace``; nothing is opened until a page is asked."""
    workspace = workspace.resolve()
    reader = Reader(db.resolve())
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["f4"] = lambda x: "-" if x is None else f"{x:.4f}"
    env.filters["d4"] = lambda x: "" if x is None else f"{x:+.4f}"
    env.filters["cost"] = lambda d: report._cost(d["cost_usd"], d["calls_with_unknown_cost"])
    static = {p.name: (p.read_bytes(), _MEDIA[p.suffix]) for p in (HERE / "static").iterdir()
              if _STATIC_NAME.fullmatch(p.name)}
    diff_css = HtmlFormatter(style="default").get_style_defs(".hl")
    app = FastAPI(title="autoresearch dashboard", docs_url=None, redoc_url=None,
                  openapi_url=None)

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(db=str(reader.db), poll_ms=POLL_MS,
                                             diff_css=diff_css, **ctx)
        return HTMLResponse(html, status_code=status)

    def answer(request_json: bool, template: str, data: dict[str, Any],
               extra: Callable[[], dict[str, Any]] | None = None) -> Response:
        if request_json:
            return JSONResponse(data)
        return page(template, data=data, **(extra() if extra else {}))

    def need_store() -> Store | None:
        return reader.store()

    def store_or_404() -> Store:
        store = reader.store()
        if store is None:
            raise NotFound("no results database yet")
        return store

    def get_run(store: Store, run_id: int) -> Run:
        r = store.get_run(run_id)
        if r is None:
            raise NotFound(f"no run {run_id}")
        return r

    def get_exp(store: Store, exp_id: int) -> Experiment:
        e = store.get_experiment(exp_id)
        if e is None:
            raise NotFound(f"no experiment {exp_id}")
        return e

    # -- pages ------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def runs_page() -> Response:
        return answer(False, "runs.html", runs_data())

    @app.get("/runs.json")
    def runs_json() -> Response:
        return answer(True, "runs.html", runs_data())

    def runs_data() -> dict[str, Any]:
        store = need_store()
        if store is None:
            return {"version": "no-db", "runs": [], "db_missing": True}
        rows = [report.run_dict(store, r) for r in reversed(store.runs())]
        for d in rows:
            d["done"] = sum(d["statuses"].values()) - d["statuses"].get("interrupted", 0)
        version = json.dumps([(d["id"], d["state"], d["done"], d["champion_bpb"],
                               d["cost_usd"], d["calls"]) for d in rows])
        return {"version": version, "runs": rows, "db_missing": False,
                "latest_report": latest_report()}

    # -- the research reports (``autoresearch report`` keeps them in <workspace>/reports/) --
    def report_path(run_id: int) -> Path:
        return workspace / REPORTS_DIR / f"run-{run_id}.html"

    def latest_report() -> int | None:
        """The run whose report was written last."""
        found = sorted((p.stat().st_mtime, p) for p in (workspace / REPORTS_DIR).glob(
            "run-*.html") if p.stem[4:].isdigit()) if (workspace / REPORTS_DIR).is_dir() else []
        return int(found[-1][1].stem[4:]) if found else None

    @app.get("/runs/{ref}/report")
    def run_report(ref: str) -> Response:
        run_id, _ = _parse_id(ref, json_ok=False)
        path = report_path(run_id)
        if not path.is_file():
            raise NotFound(f"no report of run {run_id} yet: `autoresearch report --run "
                           f"{run_id}` writes one")
        return HTMLResponse(path.read_text(encoding="utf-8"),
                            headers={"Cache-Control": "no-store"})

    @app.get("/runs/{ref}")
    def run_page(ref: str) -> Response:
        run_id, as_json = _parse_id(ref)
        store = store_or_404()
        return answer(as_json, "run.html", run_data(store, get_run(store, run_id)))

    def run_data(store: Store, r: Run) -> dict[str, Any]:
        assert r.id is not None
        exps = store.experiments(run_id=r.id)
        rows = [report.experiment_dict(store, e) for e in exps]
        flight = [in_flight(store, r, e) for e in exps if not is_done(e)]
        version = f"{r.updated_at.isoformat()}|{len(exps)}|" + (
            max(e.updated_at for e in exps).isoformat() if exps else "") + "|" + ",".join(
            f"{f['id']}:{f['measured']}" for f in flight)
        return {"version": version, "run": report.run_dict(store, r), "experiments": rows,
                "in_flight": flight, "report": report_path(r.id).is_file(),
                "statuses": sorted({row["status"] for row in rows})}

    def in_flight(store: Store, r: Run, e: Experiment) -> dict[str, Any]:
        assert e.id is not None
        done = [m.seed for m in store.measurements(e.id, role=MeasurementRole.candidate)]
        # a candidate is measured stage by stage: the seeds of the stage it is in
        target = next((m for m in stages(len(r.seed_list)) if m > len(done)),
                      len(r.seed_list))
        planned = r.seed_list if e.kind != "candidate" else r.seed_list[:target]
        pending = [s for s in planned if s not in done]
        phase = compare(e).short
        if e.status.value == "running" and pending:
            phase = f"training seed {pending[0]} ({len(done)} of {len(planned)} seeds measured)"
        return {"id": e.id, "title": e.title, "status": e.status.value, "phase": phase,
                "measured": len(done), "since": e.updated_at.isoformat()}

    @app.get("/runs/{ref}/progress.svg")
    def run_chart(ref: str) -> Response:
        run_id, _ = _parse_id(ref, json_ok=False)
        store = store_or_404()
        from autoresearch import plot

        fig = plot.progress_figure(store, get_run(store, run_id))
        return Response(plot.to_svg(fig), media_type="image/svg+xml",
                        headers={"Cache-Control": "no-store"})

    @app.get("/experiments/{ref}")
    def experiment_page(ref: str) -> Response:
        exp_id, as_json = _parse_id(ref)
        store = store_or_404()
        e = get_exp(store, exp_id)
        data = experiment_data(store, e)
        return answer(as_json, "experiment.html", data,
                      lambda: {"diff_html": highlight(e.diff, DiffLexer(),
                                                      HtmlFormatter(cssclass="hl"))
                               if e.diff else ""})

    def experiment_data(store: Store, e: Experiment) -> dict[str, Any]:
        assert e.id is not None
        d = report.experiment_dict(store, e, full=True)
        by_seed = report.champion_by_seed(e)
        for m in d["measurements"]:
            m["champion_bpb"] = by_seed.get(m["seed"]) if m["role"] == "candidate" else None
        run = store.get_run(e.run_id)
        d["champion_now"] = run.champion_experiment_id if run else None
        d["done"] = is_done(e)
        d["logs"] = {name: text[-LOG_TAIL_CHARS:] for name, text in
                     report.logs(workspace, e).items()}
        d["curves"] = report.curves_dict(workspace, e)
        ev = (d["decision"] or {}).get("evidence") if isinstance(d["decision"], dict) else None
        d["evidence"] = ev if isinstance(ev, dict) else {}
        d["evidence_text"] = {k: report._short(v) for k, v in d["evidence"].items()}
        d["version"] = (f"{e.updated_at.isoformat()}|{len(d['measurements'])}|"
                        f"{len(d['agent_calls'])}|{sum(len(t) for t in d['logs'].values())}")
        return d

    @app.get("/experiments/{ref}/curves.svg")
    def experiment_chart(ref: str) -> Response:
        exp_id, _ = _parse_id(ref, json_ok=False)
        store = store_or_404()
        e = get_exp(store, exp_id)
        from autoresearch import plot

        run = store.get_run(e.run_id)
        champion = None
        if run is not None and run.champion_experiment_id is not None:
            champion = store.get_experiment(run.champion_experiment_id)
        if e.parent_commit:  # the champion it was judged against, when it was a candidate
            champion = next((x for x in store.experiments(run_id=e.run_id)
                             if x.commit == e.parent_commit and x.id != e.id
                             and x.status.value == "kept"), champion)
        fig = plot.curve_figure(workspace, e, champion)
        return Response(plot.to_svg(fig), media_type="image/svg+xml",
                        headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}")
    def static_file(name: str) -> Response:
        found = static.get(name)
        if found is None:
            raise NotFound(f"no static file {name!r}")
        body, media = found
        return Response(body, media_type=media)

    # -- errors -----------------------------------------------------------------------------
    @app.exception_handler(HTTPException)
    def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return not_found(request)
        return page("error.html", status=exc.status_code, title=f"{exc.status_code}",
                    message=str(exc.detail))

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, exc: RequestValidationError) -> Response:
        return not_found(request)

    def not_found(request: Request) -> Response:
        if request.url.path.endswith(".json"):
            return JSONResponse({"error": "not found"}, status_code=404)
        return page("error.html", status=404, title="Not found",
                    message="There is no such page, run or experiment.")

    app.state.reader = reader
    return app


def serve(workspace: Path, db: Path, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(workspace, db), host=host, port=port, log_level="warning")
