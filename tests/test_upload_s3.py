"""Uploads with media storage on S3 (moto's server): a tus upload and the one-shot POST end with
the source in the bucket, byte for byte, and the catalog pointing at it; nothing is left in
the web host's upload folder."""

from __future__ import annotations

import json
import subprocess

import pytest
import requests
from tusclient.client import TusClient

from tests.ops_support import aws_env, moto_s3
from tests.upload_support import TUS, Server, sha256

BUCKET = "media"
PREFIX = "vod"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory, module_database):
    d = tmp_path_factory.mktemp("upload-s3")
    with moto_s3(BUCKET) as (endpoint, s3):
        env = {**aws_env(endpoint), "VODFLOW_STORAGE_URL": f"s3://{BUCKET}/{PREFIX}", **module_database}
        with Server(d / "var", d / "gunicorn.log", **env) as server:
            yield server, s3


def stored_object(s3, source_url: str) -> bytes:
    assert source_url.startswith(f"s3://{BUCKET}/{PREFIX}/sources/"), source_url
    key = source_url.removeprefix(f"s3://{BUCKET}/")
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_tus_upload_lands_in_the_bucket(s3_server, clip):
    server, s3 = s3_server
    up = TusClient(server.files_url).uploader(str(clip), chunk_size=256 * 1024, upload_checksum=True,
                                              metadata={"filename": "to the bucket.mp4"})
    up.upload()
    head = requests.head(up.url, headers=TUS, timeout=30)
    assert head.status_code == 200
    vid = head.headers["Vodflow-Video-Id"]
    row = server.video(vid)
    assert row["status"] == "UPLOADED" and row["original_filename"] == "to the bucket.mp4"
    assert sha256(stored_object(s3, row["source_url"])) == sha256(clip.read_bytes())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/sources/{vid}/")["Contents"]]
    assert len(keys) == 1, keys
    assert server.upload_bytes_on_disk() == [], "the upload's local bytes are gone once in the bucket"


def test_one_shot_post_lands_in_the_bucket(s3_server, clip):
    server, s3 = s3_server
    out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-F", f"file=@{clip}",
                          "-F", "title=posted", server.base + "/api/uploads"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition("\n")
    assert code == "201", body
    vid = json.loads(body)["id"]
    row = server.video(vid)
    assert row["title"] == "posted" and row["source_size"] == clip.stat().st_size
    assert stored_object(s3, row["source_url"]) == clip.read_bytes()
    assert requests.get(f"{server.base}/api/videos/{vid}", timeout=30).json()["status"] == "UPLOADED"
