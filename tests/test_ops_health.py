"""/healthz and `vodflow status`: every part's reachability, the right HTTP status and exit code."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from config.settings import reset_settings
from tests.servers import free_port


def _client():
    from streaming_app.app import create_app

    return create_app().test_client()


def test_healthz_reports_prefect_and_a_dead_scheduler(prefect_api, monkeypatch):
    monkeypatch.setenv("VODFLOW_DASK_ADDRESS", f"tcp://127.0.0.1:{free_port()}")
    reset_settings()
    r = _client().get("/healthz")
    # the app can still serve pages and media: in the load balancer, but flagged
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "degraded"
    checks = body["checks"]
    assert checks["database"]["ok"] and checks["storage"]["ok"]
    assert checks["prefect"]["ok"] and checks["prefect"]["url"] == prefect_api
    assert not checks["dask"]["ok"] and "unreachable" in checks["dask"]["error"]
    assert r.headers["Cache-Control"] == "no-store"


def test_healthz_names_an_unreachable_prefect_api(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    monkeypatch.delenv("VODFLOW_DASK_ADDRESS", raising=False)
    reset_settings()
    body = _client().get("/healthz").get_json()
    assert not body["checks"]["prefect"]["ok"]
    assert "unreachable" in body["checks"]["prefect"]["error"]
    assert body["checks"]["dask"]["ok"] and not body["checks"]["dask"]["configured"]


def test_status_exit_code_and_ingest_queue(prefect_api, monkeypatch):
    from deployments.cli import app

    monkeypatch.delenv("VODFLOW_DASK_ADDRESS", raising=False)
    reset_settings()
    result = CliRunner().invoke(app, ["status", "--json"])
    data = json.loads(result.output)
    assert data["checks"]["prefect"]["ok"]
    ingest = data["ingest"]
    # either nobody registered the deployment yet, or it is counted
    assert ("not registered" in ingest.get("error", "")) or {"queued", "running"} <= set(ingest)

    monkeypatch.setenv("VODFLOW_DASK_ADDRESS", f"tcp://127.0.0.1:{free_port()}")
    reset_settings()
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 1
    assert "DOWN" in result.output and "Dask" in result.output


def test_status_surfaces_an_error_the_prefect_server_keeps_logging(vodflow_env, monkeypatch):
    """The field failure: the scheduler service failing every loop while /health says ok. The
    log lines are those the Prefect server wrote then (as `vodflow up` keeps them)."""
    from deployments.cli import app

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("VODFLOW_DASK_ADDRESS", raising=False)
    reset_settings()
    logs = vodflow_env / "logs"
    logs.mkdir(parents=True)
    failure = ("sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement; please supply a "
               "bulk_dml decorated function")
    lines = []
    for minute in range(5):
        lines += [f"prefect  | 09:{10 + minute}:01.512 | ERROR   | prefect.server.services.scheduler - "
                  "Unexpected error in: schedule_deployments",
                  "prefect  | Traceback (most recent call last):",
                  "prefect  |   File \"scheduler.py\", line 120, in run_once",
                  f"prefect  | {failure}",
                  f"prefect  | 09:{10 + minute}:30.001 | INFO    | uvicorn.access - GET /api/health 200"]
    (logs / "prefect.log").write_text("\n".join(lines) + "\n")
    (logs / "scheduler.log").write_text("distributed.scheduler - INFO - Receive client connection\n" * 20)
    result = CliRunner().invoke(app, ["status", "--json"])
    repeated = json.loads(result.output)["repeated_errors"]
    assert {(e["part"], e["count"]) for e in repeated} >= {("prefect", 5)}
    assert any(e["line"] == failure for e in repeated)
    assert all(e["part"] == "prefect" for e in repeated)  # INFO lines are not errors
    table = CliRunner().invoke(app, ["status"], env={"COLUMNS": "250"})
    assert "prefect log" in table.output and "Can't evaluate bulk DML" in table.output
