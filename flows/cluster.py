"""Where the ingest flow's tasks run: an existing Dask scheduler or a LocalCluster.

`VODFLOW_DASK_ADDRESS` names a running scheduler (what `vodflow up` starts, or a real
cluster); unset, each flow run gets a LocalCluster sized to this machine: one single-threaded
worker process per core (ffmpeg does the threading; a Python process per worker keeps a stuck
or killed task from taking the others with it). The choice is made when a flow run starts, not
when this module is imported, so the same deployment follows the settings of the process
that runs it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import distributed
from prefect_dask import DaskTaskRunner

from config.settings import available_cores, get_settings

log = logging.getLogger(__name__)


def local_cluster_kwargs(workers: int | None = None) -> dict[str, Any]:
    settings = get_settings()
    cores = available_cores()
    n = workers or settings.dask_workers or cores
    return {
        "n_workers": n,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": ":0",
        # ffmpeg's memory is in child processes; the worker itself holds only small dicts
        "memory_limit": 0,
        # each task sizes ffmpeg's threads to its share of this machine's cores
        "env": {"VODFLOW_WORKERS_ON_HOST": str(n),
                # the statistical profiler samples every thread every 10 ms: CPU that
                # ffmpeg needs more, for a profile of a thread that only waits on ffmpeg
                "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"},
    }


def start_local_cluster(workers: int | None = None) -> distributed.LocalCluster:
    """A LocalCluster like the one a flow run would make (for `vodflow up`, the bench, tests)."""
    return distributed.LocalCluster(**local_cluster_kwargs(workers))


class VodflowTaskRunner(DaskTaskRunner):
    """DaskTaskRunner that reads VODFLOW_DASK_ADDRESS when the flow run starts."""

    def __init__(self, **kwargs: Any):
        self._from_settings = not any(kwargs.get(k) for k in ("cluster", "address", "cluster_class"))
        super().__init__(**kwargs)

    def __enter__(self):
        if self._from_settings:
            address = get_settings().dask_address or os.environ.get("VODFLOW_DASK_ADDRESS")
            if address:
                self.address = address
                self.cluster_class = self.resolved_cluster_class = None
                self.cluster_kwargs = {}
            else:
                self.address = None
                self.cluster_class = self.resolved_cluster_class = distributed.LocalCluster
                self.cluster_kwargs = local_cluster_kwargs()
        return super().__enter__()

    def duplicate(self):
        if self._from_settings:
            return type(self)()
        return super().duplicate()


def task_runner() -> VodflowTaskRunner:
    return VodflowTaskRunner()


def slots(client: distributed.Client) -> int:
    """How many tasks the cluster runs at once (sum of worker threads)."""
    try:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except TypeError:  # older distributed without n_workers
        workers = client.scheduler_info().get("workers", {})
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
