"""The storage helper against local disk and a real S3 API (moto's server)."""

from __future__ import annotations

import pytest

from config import storage
from config.settings import reset_settings


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(params=["file", "s3"])
def store(request, monkeypatch, vodflow_env):
    if request.param == "s3":
        import boto3

        endpoint = request.getfixturevalue("s3_server")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        bucket = f"b{abs(hash(request.node.name)) % 10**8}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        monkeypatch.setenv("VODFLOW_STORAGE_URL", f"s3://{bucket}/media")
        monkeypatch.setenv("VODFLOW_S3_ENDPOINT_URL", endpoint)
        reset_settings()
    return request.param


def test_write_read_list_delete(store):
    a = storage.url_for("hls", "v1", "r1", "720p", "seg_00000.ts")
    b = storage.url_for("hls", "v1", "r1", "720p", "index.m3u8")
    storage.write_bytes(a, b"\x47" * 1000)
    storage.write_text(b, "#EXTM3U\n")
    assert storage.exists(a) and storage.size(a) == 1000
    assert storage.read_bytes(a, 10, 20) == b"\x47" * 10
    assert storage.read_text(b) == "#EXTM3U\n"
    listed = storage.list_files(storage.url_for("hls", "v1"))
    assert [storage.key_of(u) for u in listed] == [
        "hls/v1/r1/720p/index.m3u8", "hls/v1/r1/720p/seg_00000.ts"]
    storage.delete(storage.url_for("hls", "v1"))
    assert storage.list_files(storage.url_for("hls", "v1")) == []
    assert not storage.exists(a)
    storage.delete(storage.url_for("hls", "absent"))  # absent is fine


def test_local_copy_gives_a_readable_path(store, tmp_path):
    url = storage.url_for("sources", "v2", "source.mp4")
    storage.write_bytes(url, b"abc" * 100)
    with storage.local_copy(url, tmp_path) as path:
        assert path.read_bytes() == b"abc" * 100
        kept = path
    # a download is removed afterwards; the local store's own file is not
    assert kept.exists() == (store == "file")


def test_publish_dir_writes_playlists_last(store, tmp_path):
    src = tmp_path / "out"
    (src / "360p").mkdir(parents=True)
    (src / "360p" / "index.m3u8").write_text("#EXTM3U\n")
    for i in range(3):
        (src / "360p" / f"seg_{i:05d}.ts").write_bytes(bytes([i]) * 10)
    urls = storage.publish_dir(src, storage.url_for("hls", "v3", "r1"))
    assert [u.rsplit("/", 1)[-1] for u in urls] == [
        "seg_00000.ts", "seg_00001.ts", "seg_00002.ts", "index.m3u8"]
    assert storage.read_bytes(urls[1]) == b"\x01" * 10


def test_move_local_file_into_storage(store, tmp_path):
    f = tmp_path / "upload.part"
    f.write_bytes(b"x" * 4096)
    url = storage.url_for("sources", "v4", "source.mp4")
    storage.move_local_file(f, url)
    assert not f.exists()
    assert storage.size(url) == 4096


def test_health_check_reports_reachability(store):
    assert storage.check()["ok"] is True


def test_health_check_fails_for_a_missing_bucket(s3_server, monkeypatch):
    """s3fs says FileNotFoundError for a bucket that does not exist, as for an empty prefix:
    /healthz must not call that storage healthy (the load balancer would send uploads to it)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("VODFLOW_S3_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("VODFLOW_STORAGE_URL", "s3://no-such-bucket/media")
    reset_settings()
    from streaming_app.app import create_app

    r = create_app().test_client().get("/healthz")
    assert r.status_code == 503
    body = r.get_json()
    assert body["checks"]["database"]["ok"]
    assert not body["checks"]["storage"]["ok"]
    assert "no-such-bucket" in body["checks"]["storage"]["error"]

    # an existing bucket with nothing under the prefix yet is a healthy new deployment
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="no-such-bucket")
    assert create_app().test_client().get("/healthz").get_json()["checks"]["storage"]["ok"]
