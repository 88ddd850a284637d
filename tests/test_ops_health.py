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
