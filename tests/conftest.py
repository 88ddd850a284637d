"""Shared fixtures: an isolated data dir per test, generated media, real servers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.media import make_clip
from tests.servers import prefect_server

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


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


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clip(media_dir) -> Path:
    """A 4 s 640x360 30 fps H.264 + AAC stereo clip."""
    return make_clip(media_dir / "clip.mp4")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real Prefect server for the whole session; PREFECT_API_URL points every process at it."""
    home = tmp_path_factory.mktemp("prefect-home")
    old = os.environ.get("PREFECT_API_URL")
    with prefect_server(home, home / "server.log") as api:
        os.environ["PREFECT_API_URL"] = api
        os.environ["PREFECT_HOME"] = str(home)
        yield api
    if old is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = old


@pytest.fixture
def artifacts_dir() -> Path:
    """Screenshots and reports a person can look at after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
