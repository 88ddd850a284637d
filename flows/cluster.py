"""Where the ingest flow's tasks run: an existing Dask scheduler or a LocalCluster.

`VODFLOW_DASK_ADDRESS` names a running scheduler (what `vodflow up` starts, or a real
cluster); unset, each flow run gets a LocalCluster sized to this machine: one single-threaded
worker process per core (ffmpeg does the threading; a Python process per worker keeps a stuck
or killed task from taking the others with it). The choice is made when a flow run starts, not
when this module is imported, so the same deployment follows the settings of the process
that runs it.

When the connection to the scheduler is lost (the scheduler restarted, or its machine went
away), Dask cancels every future the run holds: their tasks and results are gone with it. That
is not the video's fault, so it is raised as `ClusterLost`, a signal-like interruption: the
ingest flow handles it like a stop from outside (the video stays PROCESSING, Prefect records
the run as crashed) and maintenance dispatches the video again once the cluster is back.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import distributed
from prefect.exceptions import ExternalSignal
from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture

from config.settings import available_cores, get_settings

log = logging.getLogger(__name__)

# the reason Dask gives the futures it cancels when its client loses the scheduler
SCHEDULER_LOST = "scheduler-connection-lost"


class ClusterLost(ExternalSignal):
    """The Dask scheduler went away under this run (restarted, or unreachable): every task the
    run had submitted, finished or not, went with it. A BaseException like the termination
    signals, so that no step mistakes it for a failure of the video."""


def cluster_lost(exc: BaseException) -> bool:
    """Whether `exc` is Dask's cancellation of futures because the scheduler connection was lost
    (FutureCancelledError for one future, FuturesCancelledError from `wait` for several)."""
    if getattr(exc, "reason", None) == SCHEDULER_LOST:
        return True
    return any(getattr(group, "reason", None) == SCHEDULER_LOST for group in getattr(exc, "error_groups", ()))


def lost() -> ClusterLost:
    """The ClusterLost to raise in place of Dask's cancellation."""
    return ClusterLost("the connection to the Dask scheduler was lost mid-run (the scheduler restarted or "
                       "is unreachable) and this run's tasks went with it; the video stays PROCESSING and "
                       "maintenance dispatches it again")


class ClusterAwareFuture(PrefectDaskFuture):
    """A task's future whose `result()` raises ClusterLost when the scheduler was lost."""

    def result(self, timeout: float | None = None, raise_on_failure: bool = True):
        try:
            return super().result(timeout=timeout, raise_on_failure=raise_on_failure)
        except BaseException as exc:
            if cluster_lost(exc):
                raise lost() from exc
            raise


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

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        future = super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)
        return ClusterAwareFuture(wrapped_future=future.wrapped_future, task_run_id=future.task_run_id)

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
