"""Shared fixtures: an isolated data dir per test, generated media, real servers."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import pytest

# The session fixtures of the published test ladder and of moto's S3 server, defined once here:
# a fixture imported into several test modules is a fixture of each, and a session one is then
# set up again (and kept) for every module that imports it.
from tests.hls_support import hls_ladder, moto_s3  # noqa: F401 - fixtures
from tests.media import make_clip
from tests.ops_support import postgres_server
from tests.servers import prefect_server

# A test that talks to Prefect asks for the `prefect_api` fixture (the real server all tests share).
# Without this, one that forgot would quietly start a temporary server of its own.
os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "false")
# pytest-xdist's workers start with COLUMNS=80 and LINES=24 in their environment, which a run
# in one process does not have; the CLI's console would then keep 80 columns whatever width a
# test gives it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


# `make test` runs the tests on two pytest-xdist workers. Each module runs whole on one worker
# (its module fixtures, servers and stacks, start once), and the test_ops_* modules, which start
# whole stacks of processes and give some of them deadlines, run one after another on one
# worker, handed out first so that they do not end up as the long tail of the run.
OPS_MODULES = "test_ops_"


def _is_ops(nodeid: str) -> bool:
    return Path(nodeid.split("::", 1)[0]).name.startswith(OPS_MODULES)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: not _is_ops(item.nodeid))  # stable: module order kept


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModulesOpsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return OPS_MODULES if _is_ops(nodeid) else nodeid.split("::", 1)[0]

    config.option.loadscopereorder = False  # keep the order above, not the biggest modules first
    return ModulesOpsTogether(config, log)


@pytest.fixture(autouse=True)
def vodflow_env(tmp_path, monkeypatch):
    """Every test gets its own data dir, storage and SQLite catalog."""
    from catalog.db import reset_engines
    from config.settings import reset_settings

    data = tmp_path / "var"
    monkeypatch.setenv("VODFLOW_DATA_DIR", str(data))
    for name in ("VODFLOW_STORAGE_URL", "VODFLOW_DATABASE_URL", "VODFLOW_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    reset_settings()
    reset_engines()
    yield data
    reset_engines()
    reset_settings()


# The catalog's two databases. Tests of the catalog, uploads, analytics and bulk-ingest claims
# run on each: SQLite as a single machine has it, PostgreSQL as a scaled-out install has it.
DATABASES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the whole session (started on first use); tests take fresh
    databases from it with `postgres.new_database()`."""
    with postgres_server() as server:
        yield server


@pytest.fixture(params=DATABASES)
def catalog_db(request, vodflow_env, monkeypatch) -> str:
    """Run the test once on SQLite and once on a fresh PostgreSQL database; the value is the
    dialect. The test's settings (and any process it starts with os.environ) use that catalog."""
    from catalog.db import reset_engines
    from config.settings import reset_settings

    if request.param == "postgresql":
        monkeypatch.setenv("VODFLOW_DATABASE_URL", request.getfixturevalue("postgres").new_database())
        reset_settings()
        reset_engines()
    return request.param


@pytest.fixture(scope="module", params=DATABASES)
def module_database(request) -> dict:
    """For module-wide servers: the environment that points a server (and `catalog_at`) at
    SQLite in its data dir, or at one fresh PostgreSQL database for the module."""
    if request.param == "postgresql":
        return {"VODFLOW_DATABASE_URL": request.getfixturevalue("postgres").new_database()}
    return {}


@pytest.fixture
def database_env(catalog_db) -> dict:
    """The environment giving a server started by this test the test's catalog."""
    return {"VODFLOW_DATABASE_URL": os.environ["VODFLOW_DATABASE_URL"]} if catalog_db == "postgresql" else {}


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clip(media_dir) -> Path:
    """A 4 s 640x360 30 fps H.264 + AAC stereo clip."""
    return make_clip(media_dir / "clip.mp4")


def _drain_prefect_workers() -> None:
    """Send the logs and events flows in this process still hold before their server stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=10)
        except Exception:  # noqa: BLE001 - a worker that never started has nothing to send
            pass


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real Prefect server for the whole session; PREFECT_API_URL points every process at it."""
    home = tmp_path_factory.mktemp("prefect-home")
    old = os.environ.get("PREFECT_API_URL")
    import prefect.context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with prefect_server(home, home / "server.log") as api, ExitStack() as stack:
        os.environ["PREFECT_API_URL"] = api
        os.environ["PREFECT_HOME"] = str(home)
        # Prefect read its settings when it was imported: flows run in this process (and in
        # threads it starts) must talk to this server too, not start a temporary one of their
        # own. The same two steps as Prefect's own test harness.
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api}))
        global_settings = getattr(prefect.context, "_temporary_global_settings_context", None)
        if global_settings is not None:
            stack.enter_context(global_settings(prefect.context.get_settings_context()))
        yield api
        _drain_prefect_workers()
    if old is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = old


@pytest.fixture(scope="session")
def shared_dask_cluster(prefect_api, tmp_path_factory):
    """2 single-threaded worker processes (the machine has 2 cores), for the whole session.
    Tests ask for `dask_cluster` or `ingest_env` (tests/transcode_support.py)."""
    from distributed import LocalCluster

    data = tmp_path_factory.mktemp("dask-var")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           memory_limit=0, env={"VODFLOW_DATA_DIR": str(data), "VODFLOW_WORKERS_ON_HOST": "2",
                                                "PREFECT_API_URL": prefect_api})
    yield cluster
    cluster.close()


@pytest.fixture
def artifacts_dir() -> Path:
    """Screenshots and reports a person can look at after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
