"""Scale-out: the same code with storage on S3 (moto's server), the catalog on PostgreSQL and a
separately started Dask scheduler whose two worker processes share no disk with each other or
with the flow's process; configuration only, no code path of its own."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import m3u8
import pytest
from typer.testing import CliRunner

from tests.ops_support import aws_env, dask_cluster, moto_s3

pytestmark = pytest.mark.slow


@pytest.fixture
def scaled_out(prefect_api, postgres, tmp_path, monkeypatch):
    from catalog.db import reset_engines
    from config.settings import reset_settings

    db_url = postgres.new_database(migrated=False)  # the flow's first use migrates it
    with moto_s3("media") as (endpoint, s3):
        env = {**aws_env(endpoint), "VODFLOW_STORAGE_URL": "s3://media/vod", "VODFLOW_DATABASE_URL": db_url,
               "PREFECT_API_URL": prefect_api, "VODFLOW_WORKERS_ON_HOST": "1"}
        with dask_cluster(tmp_path / "dask", env, workers=2) as address:
            for k, v in {**env, "VODFLOW_DASK_ADDRESS": address}.items():
                monkeypatch.setenv(k, v)
            reset_settings()
            reset_engines()
            yield {"s3": s3, "address": address, "db_url": db_url, "base": tmp_path}
            reset_engines()


def test_ingest_on_s3_postgres_and_a_separate_dask_cluster(scaled_out, clip):
    from distributed import Client

    from catalog.db import get_engine, session_scope
    from catalog.models import Video, VideoStatus
    from flows.ingest import ingest
    from flows.intake import accept
    from streaming_app.app import create_app
    from tasks.probe import probe_path

    assert get_engine().dialect.name == "postgresql"
    tmp = Path(tempfile.mkdtemp()) / "clip.mp4"
    shutil.copyfile(clip, tmp)
    vid = accept(tmp, filename="clip.mp4", title="scaled", info=probe_path(clip), dispatch=False)

    ingest(vid)

    with session_scope() as s:
        v = s.get(Video, vid)
        assert v.status == VideoStatus.READY, v.error
        assert v.source_url.startswith("s3://media/vod/sources/")
        run = v.current_run
    keys = [o["Key"] for o in scaled_out["s3"].list_objects_v2(Bucket="media", Prefix=f"vod/hls/{vid}/")["Contents"]]
    assert any(k.endswith("index.m3u8") for k in keys) and any(k.endswith(".ts") for k in keys)
    assert all(f"/{run}/" in k for k in keys)
    # nothing intermediate is left in the bucket, and no local storage was used anywhere
    leftovers = scaled_out["s3"].list_objects_v2(Bucket="media", Prefix=f"vod/scratch/{vid}/").get("KeyCount", 0)
    assert leftovers == 0
    assert not [p for p in scaled_out["base"].rglob("storage") if p.parent.name == "var"]

    # both worker processes did part of the work, each in its own directory
    with Client(scaled_out["address"], set_as_default=False) as c:
        executed = c.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(executed) == 2 and all(n > 0 for n in executed.values()), executed

    # the web app serves the result from S3 with the catalog on PostgreSQL
    web = create_app().test_client()
    master = web.get(f"/v/{vid}/master.m3u8")
    assert master.status_code == 200
    playlist = m3u8.loads(master.get_data(as_text=True))
    assert playlist.is_variant and playlist.playlists
    variant = web.get(f"/v/{vid}/{playlist.playlists[0].uri}" if not playlist.playlists[0].uri.startswith("/")
                      else playlist.playlists[0].uri)
    assert variant.status_code in (200, 302)

    # and `vodflow status` sees the same parts
    from deployments.cli import app

    data = json.loads(CliRunner().invoke(app, ["status", "--json"]).output)
    checks = data["checks"]
    assert checks["database"]["dialect"] == "postgresql"
    assert checks["storage"]["ok"] and checks["storage"]["url"] == "s3://media/vod"
    assert checks["dask"]["ok"] and checks["dask"]["workers"] == 2
    assert checks["prefect"]["ok"]
    assert data["videos"] == {"READY": 1}
