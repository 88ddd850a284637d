"""`vodflow serve-flows`: serve vodflow's Prefect deployments from this process.

| deployment | runs | schedule |
|---|---|---|
| `ingest/on-demand` | one video through the pipeline (what an upload dispatches) | none; at most `VODFLOW_MAX_CONCURRENT_INGESTS` at once, the rest queue |
| `bulk-ingest/scheduled` | a scan of `VODFLOW_BULK_INGEST_URL` | `VODFLOW_BULK_INGEST_CRON`, or every `VODFLOW_BULK_INGEST_INTERVAL_SECONDS` (only when a watch URL is set) |
| `maintenance/hourly` | recovery of stuck videos and housekeeping | every hour, or every `VODFLOW_MAINTENANCE_INTERVAL_SECONDS` |

Schedules stay active when this process stops (`pause_on_shutdown=False`): a restart or a
second serve process on another machine carries on. The ingest limit is a deployment
concurrency limit held by the Prefect server, so it holds across every serve process; runs over
it wait in `AwaitingConcurrencySlot` instead of loading the cluster.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

from config.settings import Settings, prefect_api_url

log = logging.getLogger(__name__)

INGEST = ("ingest", "on-demand")
BULK = ("bulk-ingest", "scheduled")
MAINTENANCE = ("maintenance", "hourly")
MAINTENANCE_CRON = "7 * * * *"  # hourly, off the top of the hour when other jobs pile up
# Heartbeats let maintenance tell a silent (killed) run from a slow one; 30 s is Prefect's floor.
HEARTBEAT_SECONDS = "30"


def serve_environment() -> None:
    """Process settings the served runs need, unless the operator chose otherwise."""
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", HEARTBEAT_SECONDS)
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "2")


def schedule_of(interval_seconds: float, cron: str) -> dict:
    """An interval schedule when one is set (seconds, for sites that want a scan more often than
    a cron's minute allows, and for tests), else the cron."""
    if interval_seconds:
        return {"interval": timedelta(seconds=interval_seconds)}
    return {"cron": cron}


def build_deployments(settings: Settings) -> list:
    # imported here, after serve_environment(): Prefect reads its PREFECT_* settings once, when it
    # is imported, and `vodflow --help` imports this module without needing Prefect at all
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType

    from flows.bulk_ingest import bulk_ingest
    from flows.ingest import ingest
    from flows.maintenance import maintenance

    # Module entrypoints (flows.ingest:ingest): loaded from a file path the flow's module would be
    # named "ingest", and Dask workers could not unpickle its tasks.
    common = {"entrypoint_type": EntrypointType.MODULE_PATH, "tags": ["vodflow"]}
    ingest_dep = ingest.to_deployment(
        name=INGEST[1],
        description="Transcode one stored video into its HLS ladder (dispatched by uploads and bulk ingest).",
        **common,
        concurrency_limit=ConcurrencyLimitConfig(
            limit=settings.max_concurrent_ingests,
            collision_strategy=ConcurrencyLimitStrategy.ENQUEUE,
        ),
    )
    bulk_kwargs: dict = {}
    if settings.bulk_ingest_url:
        bulk_kwargs.update(schedule_of(settings.bulk_ingest_interval_seconds, settings.bulk_ingest_cron))
        bulk_kwargs["parameters"] = {"watch_url": settings.bulk_ingest_url}
    else:
        log.info("VODFLOW_BULK_INGEST_URL is not set: bulk-ingest/scheduled runs on demand only")
    bulk_dep = bulk_ingest.to_deployment(
        name=BULK[1],
        description="Ingest every new video in the watch location once (by content hash).",
        **common,
        concurrency_limit=1,  # two overlapping scans would only race for the same files
        **bulk_kwargs,
    )
    maint_dep = maintenance.to_deployment(
        name=MAINTENANCE[1],
        description="Re-dispatch videos whose run died; remove expired uploads and orphaned files.",
        **common,
        **schedule_of(settings.maintenance_interval_seconds, MAINTENANCE_CRON),
        concurrency_limit=1,
    )
    return [ingest_dep, bulk_dep, maint_dep]


def serve_flows(settings: Settings) -> None:
    """Register the deployments and run their flow runs until stopped (SIGTERM, Ctrl-C)."""
    if not prefect_api_url():
        raise RuntimeError(
            "PREFECT_API_URL is not set: serving needs a running Prefect server "
            "(`prefect server start`, or `vodflow up` for the whole stack)")
    serve_environment()
    # imported here, after serve_environment(), as in build_deployments
    from prefect import serve

    deployments = build_deployments(settings)
    serve(
        *deployments,
        pause_on_shutdown=False,
        # the ingest limit is enforced by the server; this only bounds one machine's processes
        limit=settings.max_concurrent_ingests + 2,
        print_starting_message=True,
    )
