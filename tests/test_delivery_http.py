"""HLS delivery as a CDN and a browser see it: headers, conditional and range requests, path
traversal, video states, the progressive master and CORS — against local storage and against
moto's S3 server alike (every test taking `client` runs for both)."""

from __future__ import annotations

import time
from email.utils import format_datetime, parsedate_to_datetime
from datetime import timedelta

import m3u8
import pytest
import requests

from tests.hls_support import mark_ready, publish_video, s3_storage  # noqa: F401

SEG = ("360p", "seg_00000.ts")
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"


@pytest.fixture(params=["local", "s3"])
def backend(request):
    if request.param == "s3":
        request.getfixturevalue("s3_storage")
    return request.param


def _client():
    from streaming_app.app import create_app
    from streaming_app.delivery import master, serve

    master.forget()
    serve.remote_info.forget()
    return create_app().test_client()


ADMIN = {"Authorization": "Bearer delivery-test-admin"}


@pytest.fixture
def client(backend, monkeypatch):
    from config.settings import reset_settings

    monkeypatch.setenv("VODFLOW_ADMIN_TOKEN", "delivery-test-admin")  # deleting needs it
    reset_settings()
    return _client()


@pytest.fixture
def video(client, hls_ladder):
    return publish_video(hls_ladder)


def _kinds(video):
    """(url path, expected bytes or None for the master, content type, cache-control) per file kind."""
    return {
        "master": (video.master_path, None, PLAYLIST_TYPE),
        "variant": (video.path("360p", "index.m3u8"), video.local_file("360p", "index.m3u8").read_bytes(),
                    PLAYLIST_TYPE),
        "segment": (video.path(*SEG), video.local_file(*SEG).read_bytes(), "video/mp2t"),
    }


def _assert_validators(r):
    etag = r.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/"), etag  # strong
    parsedate_to_datetime(r.headers["Last-Modified"])  # a valid HTTP date
    # announced on a 200; a 206 answers a range request already (nginx sends none there either)
    assert r.headers.get("Accept-Ranges") == ("bytes" if r.status_code == 200 else None)


# ---------------------------------------------------------------- headers for every file kind

@pytest.mark.parametrize("kind", ["master", "variant", "segment"])
def test_every_file_kind_has_the_headers_a_cdn_needs(client, video, kind):
    path, expected, ctype = _kinds(video)[kind]
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == ctype
    assert int(r.headers["Content-Length"]) == len(r.data)
    if expected is not None:
        assert r.data == expected
    _assert_validators(r)
    cache = r.headers["Cache-Control"]
    if kind == "master":
        # short, and revalidated: it changes as renditions are published
        assert "public" in cache and "must-revalidate" in cache
        max_age = int(cache.split("max-age=")[1].split(",")[0])
        assert 0 < max_age <= 10
    else:
        # run-scoped URLs never change content: cache for a year
        assert cache == "public, max-age=31536000, immutable"
    h = client.head(path)
    assert h.status_code == 200 and h.data == b""
    for name in ("Content-Type", "Content-Length", "ETag", "Last-Modified", "Cache-Control", "Accept-Ranges"):
        assert h.headers[name] == r.headers[name], name


def test_master_lists_exactly_the_published_renditions_by_bandwidth(client, video, hls_ladder):
    r = client.get(video.master_path)
    playlist = m3u8.loads(r.data.decode())
    assert playlist.is_variant
    bandwidths = [p.stream_info.bandwidth for p in playlist.playlists]
    assert bandwidths == sorted(bandwidths)
    assert len(playlist.playlists) == len(hls_ladder.rungs)
    for p in playlist.playlists:
        rung = hls_ladder.rung(p.uri.split("/")[1])
        assert p.uri == f"{video.run}/{rung.name}/index.m3u8"
        assert p.stream_info.bandwidth == rung.bandwidth
        assert p.stream_info.average_bandwidth == rung.average_bandwidth
        assert p.stream_info.codecs == rung.codecs
        assert p.stream_info.resolution == (rung.width, rung.height)
        assert p.stream_info.frame_rate == pytest.approx(rung.frame_rate)
        # the URI resolves against the master's URL to a playable variant playlist
        variant = client.get(f"/v/{video.video_id}/{p.uri}")
        assert variant.status_code == 200 and variant.data.startswith(b"#EXTM3U")


# ---------------------------------------------------------------- conditional requests

@pytest.mark.parametrize("kind", ["master", "variant", "segment"])
def test_revalidation_with_if_none_match_and_if_modified_since(client, video, kind):
    path = _kinds(video)[kind][0]
    first = client.get(path)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]

    for inm in (etag, "W/" + etag, f'"other", {etag}', "*"):
        r = client.get(path, headers={"If-None-Match": inm})
        assert r.status_code == 304, inm
        assert r.data == b""
        # a 304 repeats what a cache must update (RFC 9110 §15.4.5)
        assert r.headers["ETag"] == etag
        assert r.headers["Cache-Control"] == first.headers["Cache-Control"]
    assert client.head(path, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(path, headers={"If-None-Match": '"stale"'}).status_code == 200

    assert client.get(path, headers={"If-Modified-Since": modified}).status_code == 304
    earlier = format_datetime(parsedate_to_datetime(modified) - timedelta(seconds=1), usegmt=True)
    r = client.get(path, headers={"If-Modified-Since": earlier})
    assert r.status_code == 200 and len(r.data) == int(first.headers["Content-Length"])
    # If-None-Match wins over If-Modified-Since (RFC 9110 §13.1.3)
    assert client.get(path, headers={"If-None-Match": '"stale"', "If-Modified-Since": modified}).status_code == 200
    # an unparseable date is ignored, not an error
    assert client.get(path, headers={"If-Modified-Since": "yesterday"}).status_code == 200


def test_if_match_failure_is_412_and_revalidation_beats_range(client, video):
    path = video.path(*SEG)
    etag = client.head(path).headers["ETag"]
    assert client.get(path, headers={"If-Match": '"other"'}).status_code == 412
    assert client.get(path, headers={"If-Match": etag}).status_code == 200
    # a cache revalidating a range it holds gets 304, not 206 (RFC 9110 §13.2.2 order)
    r = client.get(path, headers={"If-None-Match": etag, "Range": "bytes=0-99"})
    assert r.status_code == 304


# ---------------------------------------------------------------- ranges

@pytest.mark.parametrize("kind", ["master", "variant", "segment"])
def test_byte_ranges(client, video, kind):
    path, expected, _ = _kinds(video)[kind]
    full = client.get(path).data
    if expected is not None:
        assert full == expected
    size = len(full)

    def ranged(spec, **extra):
        return client.get(path, headers={"Range": spec, **extra})

    r = ranged("bytes=0-99")
    assert r.status_code == 206 and r.data == full[:100]
    assert r.headers["Content-Range"] == f"bytes 0-99/{size}"
    assert r.headers["Content-Length"] == "100"
    _assert_validators(r)

    r = ranged("bytes=10-")  # open-ended
    assert r.status_code == 206 and r.data == full[10:]
    assert r.headers["Content-Range"] == f"bytes 10-{size - 1}/{size}"

    r = ranged("bytes=-50")  # suffix
    assert r.status_code == 206 and r.data == full[-50:]
    assert r.headers["Content-Range"] == f"bytes {size - 50}-{size - 1}/{size}"

    r = ranged(f"bytes=-{size * 3}")  # suffix longer than the file: all of it
    assert r.status_code == 206 and r.data == full

    r = ranged(f"bytes={size - 10}-{size + 5000}")  # crosses the end: cut at the end
    assert r.status_code == 206 and r.data == full[-10:]
    assert r.headers["Content-Range"] == f"bytes {size - 10}-{size - 1}/{size}"

    r = ranged(f"bytes={size - 1}-{size - 1}")  # the last byte
    assert r.status_code == 206 and r.data == full[-1:]


@pytest.mark.parametrize("spec", ["bytes={size}-", "bytes={size}-{size2}", "bytes=-0", "bytes=abc", "bytes=5-2"])
def test_unsatisfiable_or_malformed_range_is_416_with_the_length(client, video, spec):
    path = video.path(*SEG)
    size = video.local_file(*SEG).stat().st_size
    r = client.get(path, headers={"Range": spec.format(size=size, size2=size + 10)})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{size}"
    assert r.is_json and r.json["status"] == 416 and str(size) in r.json["message"]


def test_multi_range_and_foreign_units_get_the_whole_file(client, video):
    """Multi-range: RFC 9110 §14.2 lets a server ignore Range; we answer 200 with the file
    (every client accepts it) rather than werkzeug's 416 or a multipart body."""
    path = video.path(*SEG)
    full = video.local_file(*SEG).read_bytes()
    for spec in ("bytes=0-1,5-9", "bytes=0-1,0-1,0-1", f"bytes=0-0,-1,{len(full) * 2}-", "items=0-5"):
        r = client.get(path, headers={"Range": spec})
        assert r.status_code == 200, spec
        assert r.data == full and "Content-Range" not in r.headers


def test_if_range(client, video):
    path = video.path(*SEG)
    full = video.local_file(*SEG).read_bytes()
    head = client.head(path)
    etag, modified = head.headers["ETag"], head.headers["Last-Modified"]
    # unchanged: the range
    for validator in (etag, modified):
        r = client.get(path, headers={"Range": "bytes=100-199", "If-Range": validator})
        assert r.status_code == 206 and r.data == full[100:200], validator
    # changed (or only weakly equal): the whole file, so the client never splices two versions
    earlier = format_datetime(parsedate_to_datetime(modified) - timedelta(seconds=5), usegmt=True)
    for validator in ('"older"', "W/" + etag, earlier):
        r = client.get(path, headers={"Range": "bytes=100-199", "If-Range": validator})
        assert r.status_code == 200 and r.data == full, validator


def test_range_on_head_is_ignored(client, video):
    path = video.path(*SEG)
    size = video.local_file(*SEG).stat().st_size
    r = client.head(path, headers={"Range": "bytes=0-9"})
    assert r.status_code == 200 and r.headers["Content-Length"] == str(size) and r.data == b""


# ---------------------------------------------------------------- ids, paths and states

def test_traversal_attempts_never_leave_the_video_folder(client, video, hls_ladder):
    from config import storage

    other = publish_video(hls_ladder)  # another video's files, next door
    storage.write_bytes(storage.url_for("sources", video.video_id, "source.ts"), b"SECRET-SOURCE")
    storage.write_bytes(storage.url_for("hls", video.video_id, "secret.ts"), b"SECRET-HLS")
    base = f"/v/{video.video_id}/{video.run}"
    attempts = [
        f"{base}/../../{other.video_id}/{other.run}/360p/seg_00000.ts",
        f"{base}/%2e%2e/%2e%2e/{other.video_id}/{other.run}/360p/seg_00000.ts",
        f"{base}/..%2f..%2f{other.video_id}%2f{other.run}%2f360p%2fseg_00000.ts",
        f"{base}/%2E%2E%2Fsecret.ts",
        f"/v/{video.video_id}/..%2fsecret.ts",
        f"/v/{video.video_id}/../secret.ts",
        f"{base}/../../../sources/{video.video_id}/source.ts",
        f"/v/{video.video_id}/%2e%2e/%2e%2e/sources/{video.video_id}/source.ts",
        f"{base}//etc/passwd",
        f"{base}/%2fetc%2fpasswd",
        f"{base}/360p/%2fetc%2fpasswd.ts",
        f"{base}/..%5c..%5csecret.ts",
        f"{base}/..\\..\\secret.ts",
        f"{base}/360p\\..\\..\\secret.ts",
        f"{base}/.%2e/secret.ts",
        f"{base}/360p/seg_00000.ts%00.m3u8",
        f"{base}/360p/.hidden.ts",
        f"{base}/360p/seg_00000.ts.bak",
        f"{base}/a/b/c/d/seg_00000.ts",
        "/v/..%2f..%2f..%2fetc/master.m3u8",
        "/v/%2e%2e/master.m3u8",
        "/v/" + "a" * 40 + "/master.m3u8",
        f"/v/{video.video_id}%00/master.m3u8",
    ]
    for path in attempts:
        r = client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert r.is_json and r.json["status"] == 404, path
        assert b"SECRET" not in r.data and b"root:" not in r.data


def test_unknown_video_is_404_json(client, video):
    for path in ("/v/000000000000/master.m3u8", f"/v/000000000000/{video.run}/360p/index.m3u8"):
        r = client.get(path)
        assert r.status_code == 404 and r.is_json and "000000000000" in r.json["message"]
    r = client.get(f"/v/{video.video_id}/rnope/360p/seg_00000.ts")
    assert r.status_code == 404 and r.is_json


def test_processing_without_renditions_is_404_with_retry_after(client, hls_ladder):
    v = publish_video(hls_ladder, rungs=[], status="PROCESSING")
    r = client.get(v.master_path)
    assert r.status_code == 404 and r.is_json
    assert int(r.headers["Retry-After"]) > 0
    assert "no-store" in r.headers["Cache-Control"]  # a CDN must not keep the "not yet"
    assert "PROCESSING" in r.json["message"]


def test_failed_video_is_404_without_retry_after(client, hls_ladder):
    from catalog.db import session_scope
    from catalog.models import VideoStatus
    from catalog.state import get_video, transition

    v = publish_video(hls_ladder, rungs=[], status="PROCESSING")
    with session_scope() as s:
        transition(s, get_video(s, v.video_id), VideoStatus.FAILED, error="audio stream unreadable")
    r = client.get(v.master_path)
    assert r.status_code == 404 and "Retry-After" not in r.headers
    assert "audio stream unreadable" in r.json["message"]


def test_deleted_video_is_410_everywhere(client, video):
    r = client.get(video.path(*SEG))
    assert r.status_code == 200
    d = client.delete(f"/api/videos/{video.video_id}", headers=ADMIN)
    assert d.status_code == 204
    from streaming_app.delivery import master

    master.forget()  # the in-process view lives VIEW_TTL; server tests cover the timing
    for path in (video.master_path, video.path("360p", "index.m3u8"), video.path(*SEG)):
        r = client.get(path)
        assert r.status_code == 410 and r.is_json, path


def test_file_removed_under_a_cached_view_is_rechecked(client, video):
    """The view says READY (cached); the files vanish with the deletion: 410, not a bare 404."""
    assert client.get(video.path(*SEG)).status_code == 200
    assert client.delete(f"/api/videos/{video.video_id}", headers=ADMIN).status_code == 204
    r = client.get(video.path("360p", "seg_00001.ts"))
    assert r.status_code == 410


def test_a_file_removed_after_it_was_served_is_rechecked(client, video):
    """The same segment again after the deletion: whatever this worker remembers about the
    file (its view, and on S3 its size and validators), the read finds it gone: 410."""
    first = client.get(video.path(*SEG))
    assert first.status_code == 200
    assert client.delete(f"/api/videos/{video.video_id}", headers=ADMIN).status_code == 204
    r = client.get(video.path(*SEG))
    assert r.status_code == 410 and r.is_json


def test_progressive_master_changes_etag_as_renditions_publish(client, hls_ladder):
    from streaming_app.delivery.master import MASTER_MAX_AGE, VIEW_TTL

    v = publish_video(hls_ladder, rungs=["180p"], status="PROCESSING")
    first = client.get(v.master_path)
    assert first.status_code == 200
    assert [p.uri.split("/")[1] for p in m3u8.loads(first.data.decode()).playlists] == ["180p"]

    mark_ready(v, "360p")
    deadline = time.monotonic() + VIEW_TTL + 1.0  # the documented staleness bound in the process
    while True:
        r = client.get(v.master_path, headers={"If-None-Match": first.headers["ETag"]})
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.status_code == 200, "master still unchanged after the cache lifetime"
    assert r.headers["ETag"] != first.headers["ETag"]
    names = [p.uri.split("/")[1] for p in m3u8.loads(r.data.decode()).playlists]
    assert names == ["180p", "360p"]
    assert f"max-age={MASTER_MAX_AGE}" in r.headers["Cache-Control"]


def test_unpublished_output_is_not_served_until_the_catalog_points_at_it(client, hls_ladder):
    """A rung still pending validation (its files already in storage) and a run folder the
    catalog does not know are invisible; the rung appears once it is published."""
    from config import storage

    v = publish_video(hls_ladder, rungs=["180p"], status="PROCESSING")
    assert client.get(v.path("180p", "index.m3u8")).status_code == 200
    assert client.get(v.path("360p", "index.m3u8")).status_code == 404
    assert client.get(v.path("360p", "seg_00000.ts")).status_code == 404
    stray = storage.url_for("hls", v.video_id, "rstray", "180p", "index.m3u8")
    storage.write_text(stray, "#EXTM3U\n")
    assert client.get(f"/v/{v.video_id}/rstray/180p/index.m3u8").status_code == 404
    mark_ready(v, "360p")
    assert client.get(v.path("360p", "seg_00000.ts")).status_code == 200


# ---------------------------------------------------------------- S3 specifics

@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_s3_reads_only_the_requested_range(client, video, monkeypatch):
    from config import storage

    big = bytes(range(256)) * (9 * 4096)  # 9 MiB: more than one read chunk
    url = storage.url_for("hls", video.video_id, video.run, "360p", "seg_00099.ts")
    storage.write_bytes(url, big)
    reads = []
    real = storage.read_bytes

    def spy(u, start=None, end=None):
        reads.append((start, end))
        return real(u, start, end)

    monkeypatch.setattr(storage, "read_bytes", spy)
    start = 5 * 1024 * 1024
    r = client.get(video.path("360p", "seg_00099.ts"), headers={"Range": f"bytes={start}-{start + 999}"})
    assert r.status_code == 206 and r.data == big[start:start + 1000]
    assert reads == [(start, start + 1000)]
    reads.clear()
    r = client.get(video.path("360p", "seg_00099.ts"))
    assert r.data == big
    assert all(e - s <= 4 * 1024 * 1024 for s, e in reads)  # streamed in bounded ranges
    reads.clear()
    assert client.head(video.path("360p", "seg_00099.ts")).status_code == 200
    assert client.get(video.path("360p", "seg_00099.ts"), headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
    assert reads == []  # HEAD and 304 read no bytes


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_s3_asks_for_a_run_files_info_once(client, video, monkeypatch):
    """Run files never change, so a worker asks S3 for one's size and ETag once: later requests
    cost one ranged GET each, and HEADs and revalidations no S3 request at all."""
    from config import storage

    calls = []
    real_info, real_read = storage.info, storage.read_bytes
    monkeypatch.setattr(storage, "info", lambda u: calls.append(("info", u)) or real_info(u))
    monkeypatch.setattr(storage, "read_bytes", lambda u, s=None, e=None: calls.append(("read", u)) or real_read(u, s, e))
    data = video.local_file(*SEG).read_bytes()
    first = client.get(video.path(*SEG))
    assert first.data == data
    assert [c[0] for c in calls] == ["info", "read"]
    calls.clear()
    again = client.get(video.path(*SEG), headers={"Range": "bytes=100-199"})
    assert again.status_code == 206 and again.data == data[100:200]
    assert client.head(video.path(*SEG)).headers["ETag"] == first.headers["ETag"]
    assert client.get(video.path(*SEG), headers={"If-None-Match": first.headers["ETag"]}).status_code == 304
    assert [c[0] for c in calls] == ["read"]


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_s3_redirect_segments_to_presigned_urls(client, video, monkeypatch):
    from config.settings import reset_settings

    monkeypatch.setenv("VODFLOW_REDIRECT_SEGMENTS", "true")
    reset_settings()
    r = client.get(video.path(*SEG))
    assert r.status_code == 302
    assert "Signature" in r.headers["Location"] or "X-Amz-Signature" in r.headers["Location"]
    fetched = requests.get(r.headers["Location"], timeout=10)
    assert fetched.status_code == 200 and fetched.content == video.local_file(*SEG).read_bytes()
    # playlists stay on this origin, so their relative URLs keep pointing here
    p = client.get(video.path("360p", "index.m3u8"))
    assert p.status_code == 200 and p.data == video.local_file("360p", "index.m3u8").read_bytes()


# ---------------------------------------------------------------- CORS

@pytest.fixture
def cors_client(monkeypatch, request, hls_ladder):
    from config.settings import reset_settings

    monkeypatch.setenv("VODFLOW_CORS_ORIGINS", request.param)
    reset_settings()
    return _client(), publish_video(hls_ladder)


@pytest.mark.parametrize("cors_client", ["*"], indirect=True)
def test_cors_wildcard(cors_client):
    client, video = cors_client
    r = client.get(video.path(*SEG), headers={"Origin": "https://player.example", "Range": "bytes=0-9"})
    assert r.status_code == 206
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"content-range", "content-length", "accept-ranges", "etag"} <= exposed
    assert "Origin" not in r.headers.get("Vary", "")  # one cached copy serves every site

    pre = client.options(video.path(*SEG), headers={
        "Origin": "https://player.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "range, if-none-match"})
    assert 200 <= pre.status_code < 300
    assert pre.headers["Access-Control-Allow-Origin"] == "*"
    methods = {m.strip() for m in pre.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "HEAD"} <= methods
    allowed = {h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"range", "if-none-match"} <= allowed
    assert int(pre.headers["Access-Control-Max-Age"]) >= 600
    # errors carry CORS too, so a page's script can read the JSON message
    err = client.get("/v/000000000000/master.m3u8", headers={"Origin": "https://player.example"})
    assert err.status_code == 404 and err.headers["Access-Control-Allow-Origin"] == "*"
    # the upload endpoints share the policy
    up = client.options("/api/uploads", headers={"Origin": "https://x.example",
                                                 "Access-Control-Request-Method": "POST"})
    assert up.headers["Access-Control-Allow-Origin"] == "*" and "POST" in up.headers["Access-Control-Allow-Methods"]


@pytest.mark.parametrize("cors_client", ["https://a.example, https://b.example", "https://a.example"],
                         indirect=True)
def test_cors_listed_origins(cors_client):
    client, video = cors_client
    for origin in ("https://a.example", "https://A.example"):
        r = client.get(video.master_path, headers={"Origin": origin})
        assert r.headers["Access-Control-Allow-Origin"] == origin
        assert "Origin" in r.headers["Vary"]
    r = client.get(video.master_path, headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
    assert "Origin" in r.headers["Vary"]  # so a CDN never hands one site's answer to another
    r = client.get(video.master_path)
    assert "Access-Control-Allow-Origin" not in r.headers and "Origin" in r.headers["Vary"]
    pre = client.options(video.path(*SEG), headers={"Origin": "https://a.example",
                                                    "Access-Control-Request-Method": "GET"})
    assert pre.headers["Access-Control-Allow-Origin"] == "https://a.example"
    assert "Origin" in pre.headers["Vary"]
    denied = client.options(video.path(*SEG), headers={"Origin": "https://evil.example",
                                                       "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in denied.headers


# ---------------------------------------------------------------- zero-copy contract with the server

@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_local_files_are_handed_to_the_servers_file_wrapper(client, video):
    """PEP 3333: a server that offers wsgi.file_wrapper (gunicorn: sendfile()) gets the open file,
    positioned at the range start, with Content-Length saying where to stop; Python never reads
    the bytes."""
    from werkzeug.test import EnvironBuilder

    from streaming_app.app import create_app

    class ServerFileWrapper:
        def __init__(self, filelike, block_size=8192):
            self.filelike = filelike

        def __iter__(self):
            raise AssertionError("the server sends the file itself; nobody iterates it")

        def close(self):
            self.filelike.close()

    app = create_app()
    size = video.local_file(*SEG).stat().st_size
    for headers, start, length in (({}, 0, size), ({"Range": "bytes=1000-1999"}, 1000, 1000),
                                   ({"Range": "bytes=-10"}, size - 10, 10)):
        environ = EnvironBuilder(path=video.path(*SEG), headers=headers).get_environ()
        environ["wsgi.file_wrapper"] = ServerFileWrapper
        seen = {}
        body = app(environ, lambda status, hdrs, exc=None: seen.update(status=status, headers=dict(hdrs)))
        assert isinstance(body, ServerFileWrapper)
        f = body.filelike
        assert f.fileno() >= 0 and f.tell() == start
        assert int(seen["headers"]["Content-Length"]) == length
        assert f.read(length) == video.local_file(*SEG).read_bytes()[start:start + length]
        body.close()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_unreadable_storage_is_503_not_a_cached_404(client, video):
    """A file the store cannot read (here a symlink loop: ELOOP, not 'no such file') must not
    become a 404 a CDN would keep: 503 with Retry-After, and the next good file still serves."""
    import os

    from config import storage

    broken = storage.local_path_of(storage.url_for("hls", video.video_id, video.run, "360p", "seg_00007.ts"))
    os.symlink(broken.name, broken)
    r = client.get(video.path("360p", "seg_00007.ts"))
    assert r.status_code == 503 and r.is_json
    assert int(r.headers["Retry-After"]) > 0 and r.headers["Cache-Control"] == "no-store"
    assert client.get(video.path(*SEG)).status_code == 200
