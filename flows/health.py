"""Reachability of the parts vodflow runs on, for `/healthz` and `vodflow status`.

The database and storage are needed to serve anything. The Prefect API and the Dask scheduler
are needed to transcode; without a configured Prefect API ingest runs as local processes, and
without a Dask address each run starts its own LocalCluster, so "not configured" is healthy.
"""

from __future__ import annotations

import socket
import time
from datetime import datetime, timezone
from urllib.parse import urlparse

import requests

from catalog.db import check as db_check
from config import storage
from config.settings import get_settings, prefect_api_url

TIMEOUT = 2.0


def check_prefect(timeout: float = TIMEOUT) -> dict:
    url = prefect_api_url()
    if not url:
        return {"ok": True, "configured": False,
                "note": "PREFECT_API_URL is not set: ingest runs as local processes"}
    t0 = time.monotonic()
    try:
        r = requests.get(url.rstrip("/") + "/health", timeout=timeout)
        ok = r.status_code == 200
        out = {"ok": ok, "configured": True, "url": url,
               "latency_ms": round((time.monotonic() - t0) * 1000, 1)}
        if not ok:
            out["error"] = f"HTTP {r.status_code} from {url}/health"
        return out
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return {"ok": False, "configured": True, "url": url, "error": f"unreachable: {exc}"}


def _host_port(address: str) -> tuple[str, int]:
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    return parsed.hostname or "127.0.0.1", parsed.port or 8786


def check_dask(timeout: float = TIMEOUT, *, detail: bool = False) -> dict:
    """TCP reachability of the scheduler; with `detail`, its workers (a real Dask client)."""
    address = get_settings().dask_address
    if not address:
        return {"ok": True, "configured": False,
                "note": "VODFLOW_DASK_ADDRESS is not set: each ingest run starts a LocalCluster"}
    host, port = _host_port(address)
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return {"ok": False, "configured": True, "address": address, "error": f"unreachable: {exc}"}
    out = {"ok": True, "configured": True, "address": address,
           "latency_ms": round((time.monotonic() - t0) * 1000, 1)}
    if detail:
        try:
            # imported here: /healthz runs this module in every web worker, which would otherwise
            # load Dask's client (a second, hundreds of modules) for `vodflow status` alone
            from distributed import Client

            with Client(address, timeout=max(timeout, 5), set_as_default=False) as client:
                workers = client.scheduler_info(n_workers=-1).get("workers", {})
            out["workers"] = len(workers)
            out["threads"] = sum(int(w.get("nthreads", 0)) for w in workers.values())
            out["memory_bytes"] = sum(int(w.get("memory_limit", 0) or 0) for w in workers.values())
            if not workers:
                out["ok"] = False
                out["error"] = "the scheduler has no workers: start `dask worker " + address + "`"
        except Exception as exc:  # noqa: BLE001
            out["ok"] = False
            out["error"] = f"scheduler did not answer: {exc}"
    return out


def scheduled_deployments(settings) -> list[str]:
    """The deployments that run on a schedule with these settings (serve.py registers them)."""
    names = ["maintenance/hourly"]
    if settings.bulk_ingest_url:
        names.insert(0, "bulk-ingest/scheduled")
    return names


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def _runs(base: str, deployment_id: str, timeout: float, *, sort: str = "START_TIME_DESC", **filters) -> list[dict]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}, **filters}, "sort": sort, "limit": 1}
    f = requests.post(f"{base}/flow_runs/filter", json=body, timeout=timeout)
    f.raise_for_status()
    return f.json()


def check_schedules(timeout: float = TIMEOUT) -> dict:
    """Each scheduled deployment has an upcoming scheduled run, and no run of it is overdue by
    more than VODFLOW_SCHEDULE_GRACE_SECONDS.

    Seen in the field: a Prefect server whose scheduler service failed on every loop created no
    runs at all (no upcoming run), and with the serve process gone runs pile up Late (overdue);
    either way maintenance and bulk ingest silently stop, so health names the deployment. An
    overdue run while another run of the deployment started within the grace period is a
    backlog (runs take longer than the interval on a busy machine), reported, not a failure."""
    url = prefect_api_url()
    if not url:
        return {"ok": True, "configured": False, "note": "no Prefect API: nothing runs on a schedule"}
    settings = get_settings()
    grace = settings.schedule_grace_seconds
    base = url.rstrip("/")
    now = time.time()
    problems: list[str] = []
    deployments: dict[str, dict] = {}
    try:
        for name in scheduled_deployments(settings):
            r = requests.get(f"{base}/deployments/name/{name}", timeout=timeout)
            if r.status_code == 404:
                problems.append(f"{name} is not registered: start `vodflow serve-flows` (or `vodflow up`)")
                deployments[name] = {"ok": False, "registered": False}
                continue
            r.raise_for_status()
            dep = r.json()
            info: dict = {"ok": True, "registered": True}
            deployments[name] = info
            if dep.get("paused") or not any(sch.get("active") for sch in dep.get("schedules", [])):
                info["ok"] = False
                problems.append(f"{name}: its schedule is paused; resume it in the Prefect UI or restart "
                                "`vodflow serve-flows`")
                continue

            def runs(**expected) -> list[dict]:
                return _runs(base, dep["id"], timeout, state={"type": {"any_": ["SCHEDULED"]}},
                             expected_start_time=expected, sort="EXPECTED_START_TIME_ASC")

            upcoming = runs(after_=_iso(now))
            overdue = runs(before_=_iso(now - grace))
            info["next_run"] = upcoming[0]["expected_start_time"] if upcoming else None
            if overdue and _runs(base, dep["id"], timeout, start_time={"after_": _iso(now - grace)},
                                 state={"type": {"any_": ["RUNNING", "COMPLETED", "FAILED"]}}):
                # late, but a run of it started within the grace period: the runs are being
                # run, one at a time (the deployment's concurrency limit), only slower than
                # they come due - a busy machine, not a stopped schedule
                info["backlog_since"] = overdue[0]["expected_start_time"]
            elif overdue:
                info["ok"] = False
                info["overdue_since"] = overdue[0]["expected_start_time"]
                problems.append(f"{name}: the run due at {overdue[0]['expected_start_time']} has not started "
                                f"(more than {grace:.0f} s late): is `vodflow serve-flows` running?")
            elif not upcoming:
                info["ok"] = False
                problems.append(f"{name}: no upcoming scheduled run; the Prefect server's scheduler is not "
                                "creating runs (see its log)")
    except Exception as exc:  # noqa: BLE001 - Prefect unreachable or answering errors
        return {"ok": False, "configured": True, "error": f"could not read the schedules: {exc}",
                "deployments": deployments}
    out = {"ok": not problems, "configured": True, "deployments": deployments}
    if problems:
        out["error"] = "; ".join(problems)
    return out


def check_all(*, detail: bool = False) -> dict:
    prefect = check_prefect()
    return {
        "database": db_check(),
        "storage": storage.check(),
        "prefect": prefect,
        "dask": check_dask(detail=detail),
        "schedules": check_schedules() if prefect["ok"] else
        {"ok": False, "configured": True, "error": "Prefect API unreachable"} if prefect.get("configured") else
        {"ok": True, "configured": False, "note": "no Prefect API: nothing runs on a schedule"},
    }


# Serving pages and media needs these; the others only delay transcoding.
CRITICAL = ("database", "storage")


def ingest_queue(timeout: float = 5.0) -> dict:
    """Ingest flow runs by state from the Prefect API: queued (scheduled, pending, awaiting a
    concurrency slot) and running."""
    url = prefect_api_url()
    if not url:
        return {"ok": True, "configured": False}
    base = url.rstrip("/")
    try:
        r = requests.get(f"{base}/deployments/name/ingest/on-demand", timeout=timeout)
        if r.status_code == 404:
            return {"ok": False, "configured": True,
                    "error": "deployment ingest/on-demand is not registered: start `vodflow serve-flows`"}
        r.raise_for_status()
        dep = r.json()
        counts = {}
        for label, types in (("queued", ["SCHEDULED", "PENDING"]), ("running", ["RUNNING"])):
            body = {"flow_runs": {"deployment_id": {"any_": [dep["id"]]},
                                  "state": {"type": {"any_": types}}}}
            c = requests.post(f"{base}/flow_runs/count", json=body, timeout=timeout)
            c.raise_for_status()
            counts[label] = int(c.json())
        limit = dep.get("concurrency_limit")
        if limit is None and dep.get("global_concurrency_limit"):
            limit = dep["global_concurrency_limit"].get("limit")
        return {"ok": True, "configured": True, "deployment_id": dep["id"], "limit": limit, **counts}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "configured": True, "error": str(exc)}
