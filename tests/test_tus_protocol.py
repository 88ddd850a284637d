"""The tus 1.0.0 server, driven over HTTP with tuspy and requests against gunicorn (2 workers),
once with the catalog on SQLite and once on PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime

import pytest
import requests
from tusclient.client import TusClient
from tusclient.exceptions import TusUploadFailed

from tests.upload_support import OFFSET_TYPE, TUS, Server, create, head, metadata, patch, sha256, wait_until

MAX = 64 * 1024 * 1024
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_database):
    d = tmp_path_factory.mktemp("tus")
    with Server(d / "var", d / "gunicorn.log", VODFLOW_MAX_UPLOAD_BYTES=str(MAX),
                VODFLOW_CORS_ORIGINS=f"{ORIGIN},https://other.example", **module_database) as s:
        yield s


@pytest.fixture(scope="module")
def clip_bytes(clip) -> bytes:
    return clip.read_bytes()


def video_of(server: Server, upload_url: str) -> dict:
    r = requests.get(upload_url, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "COMPLETE", body
    return body["video"]


# ---------------------------------------------------------------- discovery and versions


def test_options_advertises_everything(server):
    r = requests.options(server.files_url)  # no Tus-Resumable: OPTIONS must not need it
    assert r.status_code == 204
    assert r.headers["Tus-Version"] == "1.0.0"
    assert set(r.headers["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "creation-defer-length", "termination", "expiration",
        "checksum", "concatenation"}
    assert r.headers["Tus-Max-Size"] == str(MAX)
    assert set(r.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "md5", "crc32"}


@pytest.mark.parametrize("version", [None, "0.2.2", "2.0.0"])
def test_wrong_tus_version_is_412_and_changes_nothing(server, version):
    h = {"Upload-Length": "1000"} | ({"Tus-Resumable": version} if version else {})
    r = requests.post(server.files_url, headers=h)
    assert r.status_code == 412
    assert r.headers["Tus-Version"] == "1.0.0"
    assert "Tus-Resumable: 1.0.0" in r.json()["message"]
    assert "Location" not in r.headers
    url = create(server, 1000).headers["Location"]
    for method in ("HEAD", "PATCH", "DELETE"):
        h = {"Upload-Offset": "0", "Content-Type": OFFSET_TYPE} | ({"Tus-Resumable": version} if version else {})
        assert requests.request(method, url, headers=h, data=b"x" * 10).status_code == 412
    assert head(url).headers["Upload-Offset"] == "0"  # the refused PATCH wrote nothing


# ---------------------------------------------------------------- real clients


def test_tuspy_chunked_upload_with_checksums_and_non_ascii_name(server, clip, clip_bytes):
    name = "Été à Montréal – 日本の夏.mp4"
    up = TusClient(server.files_url).uploader(
        str(clip), chunk_size=96 * 1024, upload_checksum=True,
        metadata={"filename": name, "filetype": "video/mp4", "title": "Été 2026"})
    up.upload()
    video = video_of(server, up.url)
    row = server.video(video["id"])
    assert row["status"] == "UPLOADED"
    assert row["original_filename"] == name and row["title"] == "Été 2026"
    assert row["duration"] == pytest.approx(4.0, abs=0.1) and row["width"] == 640
    assert sha256(server.stored_source(video["id"])) == sha256(clip_bytes)
    r = head(up.url)
    assert r.headers["Upload-Offset"] == r.headers["Upload-Length"] == str(len(clip_bytes))
    assert r.headers["Cache-Control"] == "no-store"
    assert base64.b64decode(dict(p.split(" ") for p in r.headers["Upload-Metadata"].split(","))["filename"]).decode() == name
    assert r.headers["Vodflow-Video-Id"] == video["id"]
    api = requests.get(video["status_url"]).json()
    assert api["id"] == video["id"] and api["filename"] == name


def test_interrupted_upload_resumes_from_server_offset(server, clip, clip_bytes):
    client = TusClient(server.files_url)
    first = client.uploader(str(clip), chunk_size=128 * 1024, metadata={"filename": "resume.mp4"})
    first.upload(stop_at=384 * 1024)  # the "network" drops here
    assert head(first.url).headers["Upload-Offset"] == str(384 * 1024)
    again = client.uploader(str(clip), url=first.url, chunk_size=128 * 1024)
    assert again.offset == 384 * 1024  # asked the server, did not start over
    again.upload()
    assert sha256(server.stored_source(video_of(server, first.url)["id"])) == sha256(clip_bytes)


def test_client_that_disconnects_mid_body_keeps_what_arrived(server, clip_bytes):
    import socket
    from urllib.parse import urlparse

    url = create(server, len(clip_bytes), meta=metadata(filename="cut.mp4")).headers["Location"]
    u = urlparse(url)
    sent = 300_000
    upload_id = url.rsplit("/", 1)[1]
    with socket.create_connection((u.hostname, u.port)) as s:
        s.sendall((f"PATCH {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nTus-Resumable: 1.0.0\r\n"
                   f"Upload-Offset: 0\r\nContent-Type: {OFFSET_TYPE}\r\n"
                   f"Content-Length: {len(clip_bytes)}\r\n\r\n").encode() + clip_bytes[:sent])
        wait_until(lambda: server.part_file(upload_id).exists() and server.part_file(upload_id).stat().st_size > 0,
                   "the server started writing the body")
    # the client is gone: the server counts what arrived, all of it
    wait_until(lambda: int(head(url).headers["Upload-Offset"]) >= sent, "the offset reached what was sent")
    offset = int(head(url).headers["Upload-Offset"])
    assert offset == sent
    assert server.part_file(upload_id).read_bytes() == clip_bytes[:sent]
    assert patch(url, offset, clip_bytes[offset:]).status_code == 204
    assert sha256(server.stored_source(video_of(server, url)["id"])) == sha256(clip_bytes)


# ---------------------------------------------------------------- core errors


def test_wrong_offset_is_409_with_the_real_offset(server, clip_bytes):
    url = create(server, len(clip_bytes)).headers["Location"]
    assert patch(url, 0, clip_bytes[:1000]).status_code == 204
    r = patch(url, 500, clip_bytes[500:2000])
    assert r.status_code == 409
    assert r.json()["offset"] == 1000 and "1000" in r.json()["message"]
    assert head(url).headers["Upload-Offset"] == "1000"


def test_wrong_content_type_is_415(server):
    url = create(server, 5000).headers["Location"]
    r = requests.patch(url, data=b"\0" * 100, headers={**TUS, "Upload-Offset": "0",
                                                       "Content-Type": "application/octet-stream"})
    assert r.status_code == 415 and OFFSET_TYPE in r.json()["message"]
    assert head(url).headers["Upload-Offset"] == "0"


def test_missing_offset_and_bad_lengths_are_400(server):
    url = create(server, 5000).headers["Location"]
    r = requests.patch(url, data=b"x", headers={**TUS, "Content-Type": OFFSET_TYPE})
    assert r.status_code == 400 and "Upload-Offset" in r.json()["message"]
    assert create(server, 5000, Upload_Defer_Length="1").status_code == 400  # both
    assert requests.post(server.files_url, headers=TUS).status_code == 400  # neither
    assert requests.post(server.files_url, headers={**TUS, "Upload-Length": "-4"}).status_code == 400
    assert requests.post(server.files_url, headers={**TUS, "Upload-Defer-Length": "2"}).status_code == 400


def test_unknown_upload_is_404(server):
    r = head(server.files_url + "0" * 32)
    assert r.status_code == 404 and "Upload-Offset" not in r.headers
    assert patch(server.files_url + "f" * 32, 0, b"x").status_code == 404
    assert patch(server.files_url + "..%2F..%2Fvodflow.db", 0, b"x").status_code == 404


# ---------------------------------------------------------------- checksum


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def test_checksums_verify_and_a_mismatch_is_460_and_discarded(server, clip_bytes):
    url = create(server, len(clip_bytes)).headers["Location"]
    a, b, c = clip_bytes[:100_000], clip_bytes[100_000:250_000], clip_bytes[250_000:]
    r = patch(url, 0, a, Upload_Checksum="sha1 " + _b64(hashlib.sha1(a).digest()))
    assert r.status_code == 204 and r.headers["Upload-Offset"] == str(len(a))
    bad = patch(url, len(a), b, Upload_Checksum="sha1 " + _b64(hashlib.sha1(b"other").digest()))
    assert bad.status_code == 460 and bad.json()["error"] == "Checksum Mismatch"
    assert head(url).headers["Upload-Offset"] == str(len(a))  # the chunk was discarded
    upload_id = url.rsplit("/", 1)[1]
    assert server.part_file(upload_id).stat().st_size == len(a)
    assert not server.part_file(upload_id).with_suffix(".chunk").exists()
    assert patch(url, len(a), b, Upload_Checksum="sha256 " + _b64(hashlib.sha256(b).digest())).status_code == 400
    assert patch(url, len(a), b, Upload_Checksum="md5 " + _b64(hashlib.md5(b).digest())).status_code == 204
    crc = zlib.crc32(c).to_bytes(4, "big")
    r = patch(url, len(a) + len(b), c, Upload_Checksum="crc32 " + _b64(crc))
    assert r.status_code == 204, r.text
    assert sha256(server.stored_source(video_of(server, url)["id"])) == sha256(clip_bytes)


# ---------------------------------------------------------------- creation extensions


def test_creation_with_upload_hands_off_in_one_request(server, clip_bytes):
    r = requests.post(server.files_url, data=clip_bytes, headers={
        **TUS, "Upload-Length": str(len(clip_bytes)), "Content-Type": OFFSET_TYPE,
        "Upload-Metadata": metadata(filename="oneshot.mp4")})
    assert r.status_code == 201, r.text
    assert r.headers["Upload-Offset"] == str(len(clip_bytes))
    assert r.headers["Location"].startswith(server.files_url)
    vid = r.headers["Vodflow-Video-Id"]
    assert server.video(vid)["original_filename"] == "oneshot.mp4"
    assert requests.get(r.headers["Vodflow-Status-Url"]).json()["id"] == vid


def test_deferred_length_is_set_by_a_later_patch(server, clip_bytes):
    r = create(server, None, meta=metadata(filename="live.mp4"))
    assert r.status_code == 201
    url = r.headers["Location"]
    h = head(url)
    assert h.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in h.headers
    half = len(clip_bytes) // 2
    assert patch(url, 0, clip_bytes[:half]).status_code == 204
    r = patch(url, half, clip_bytes[half:], Upload_Length=str(len(clip_bytes)))
    assert r.status_code == 204 and "Vodflow-Video-Id" in r.headers
    h = head(url)
    assert h.headers["Upload-Length"] == str(len(clip_bytes)) and "Upload-Defer-Length" not in h.headers


def test_over_size_is_413(server):
    r = create(server, MAX + 1, meta=metadata(filename="huge.mp4"))
    assert r.status_code == 413 and str(MAX) in r.json()["message"]
    url = create(server, None).headers["Location"]
    r = patch(url, 0, b"\0" * 10, Upload_Length=str(MAX + 1))
    assert r.status_code == 413
    r = create(server, 1000)
    assert patch(r.headers["Location"], 0, b"\0" * 1001).status_code == 413


def test_method_override_for_clients_without_patch(server, clip_bytes):
    url = create(server, len(clip_bytes)).headers["Location"]
    part = clip_bytes[:5000]
    r = requests.post(url, data=part, headers={**TUS, "X-HTTP-Method-Override": "PATCH",
                                              "Upload-Offset": "0", "Content-Type": OFFSET_TYPE})
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "5000"
    r = requests.post(url, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    assert r.status_code == 200 and r.headers["Upload-Offset"] == "5000"
    r = requests.post(url, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert r.status_code == 204
    assert head(url).status_code == 410


# ---------------------------------------------------------------- termination


def test_delete_terminates_and_frees_the_bytes(server, clip_bytes):
    url = create(server, len(clip_bytes)).headers["Location"]
    assert patch(url, 0, clip_bytes[:50_000]).status_code == 204
    upload_id = url.rsplit("/", 1)[1]
    assert server.part_file(upload_id).exists()
    r = requests.delete(url, headers=TUS)
    assert r.status_code == 204
    assert not server.part_file(upload_id).exists()
    assert head(url).status_code == 410
    assert patch(url, 50_000, clip_bytes[50_000:]).status_code == 410
    assert requests.delete(url, headers=TUS).status_code == 410
    assert requests.get(url).json()["status"] == "TERMINATED"


def test_delete_of_a_finished_upload_keeps_its_video(server, clip_bytes):
    r = requests.post(server.files_url, data=clip_bytes, headers={
        **TUS, "Upload-Length": str(len(clip_bytes)), "Content-Type": OFFSET_TYPE,
        "Upload-Metadata": metadata(filename="kept.mp4")})
    assert r.status_code == 201, r.text
    url, vid = r.headers["Location"], r.headers["Vodflow-Video-Id"]
    gone = requests.delete(url, headers=TUS)
    assert gone.status_code == 204 and gone.headers["Vodflow-Video-Id"] == vid
    assert video_of(server, url)["id"] == vid  # GET still leads to the video
    h = head(url)
    assert h.status_code == 200 and h.headers["Upload-Offset"] == str(len(clip_bytes))
    assert server.video(vid) is not None


def test_delete_racing_the_last_patch_has_one_outcome(server, clip_bytes):
    """Either the DELETE wins (TERMINATED, no video) or the hand-off does (COMPLETE, a video the
    DELETE names); never a 204 for the DELETE while a video appears behind it, nor a
    TERMINATED upload whose video exists."""
    tail = 64 * 1024
    outcomes = set()
    for i, delay in enumerate((0.0, 0.03, 0.08, 0.15, 0.3)):
        name = f"race-{i}.mp4"
        url = create(server, len(clip_bytes), meta=metadata(filename=name)).headers["Location"]
        assert patch(url, 0, clip_bytes[:-tail]).status_code == 204
        last: dict = {}
        t = threading.Thread(target=lambda: last.update(r=patch(url, len(clip_bytes) - tail, clip_bytes[-tail:])))
        t.start()
        time.sleep(delay)
        deleted = requests.delete(url, headers=TUS, timeout=30)
        t.join(30)
        made = [v for v in server.videos() if v["original_filename"] == name]
        status = requests.get(url, timeout=10).json()
        assert deleted.status_code == 204, deleted.text
        if made:
            outcomes.add("handed off")
            assert status["status"] == "COMPLETE" and status["video"]["id"] == made[0]["id"]
            assert deleted.headers["Vodflow-Video-Id"] == made[0]["id"]
            assert last["r"].status_code == 204
        else:
            outcomes.add("terminated")
            assert status["status"] == "TERMINATED" and status["video"] is None
            assert "Vodflow-Video-Id" not in deleted.headers
            assert last["r"].status_code == 410
            assert not server.part_file(url.rsplit("/", 1)[1]).exists()
        assert len(made) <= 1
    assert outcomes  # which interleavings happen depends on timing; each must be consistent


def test_delete_stops_a_patch_that_is_still_streaming(server, clip_bytes):
    url = create(server, len(clip_bytes), meta=metadata(filename="slow.mp4")).headers["Location"]
    upload_id = url.rsplit("/", 1)[1]
    deleted = threading.Event()
    last = len(clip_bytes) - 1

    def body():
        # a slow client: small pieces until the DELETE is answered; the last byte only after
        # it, so the upload cannot complete first, and a DELETE that waited for this PATCH to
        # end would wait in vain
        for i in range(0, last, 4096):
            if deleted.is_set():
                break
            yield clip_bytes[i:min(i + 4096, last)]
            time.sleep(0.05)
        deleted.wait(60)
        yield clip_bytes[last:]

    result: dict = {}

    def send():
        try:
            result["r"] = requests.patch(url, data=body(), timeout=90, headers={
                **TUS, "Upload-Offset": "0", "Content-Type": OFFSET_TYPE})
        except requests.ConnectionError as exc:  # the server may answer and close mid-body
            result["error"] = exc

    t = threading.Thread(target=send)
    t.start()
    part = server.part_file(upload_id)
    wait_until(lambda: part.exists() and part.stat().st_size > 0, "the PATCH is streaming into the upload")
    try:
        r = requests.delete(url, headers=TUS, timeout=30)
    finally:
        deleted.set()
    assert r.status_code == 204, r.text
    t.join(90)
    if "r" in result:
        assert result["r"].status_code == 410
    assert requests.get(url).json()["status"] == "TERMINATED"
    assert head(url).status_code == 410
    assert not server.part_file(upload_id).exists()
    assert not any(upload_id in p.name for p in server.upload_bytes_on_disk())
    assert not [v for v in server.videos() if v["original_filename"] == "slow.mp4"]


# ---------------------------------------------------------------- concatenation


def test_parallel_partial_uploads_then_final_concatenation(server, clip, clip_bytes, tmp_path):
    cut = len(clip_bytes) // 3
    pieces = [clip_bytes[:cut], clip_bytes[cut:]]
    paths = []
    for i, data in enumerate(pieces):
        p = tmp_path / f"piece{i}.bin"
        p.write_bytes(data)
        paths.append(p)
    client = TusClient(server.files_url, headers={"Upload-Concat": "partial"})

    def send(path):
        up = client.uploader(str(path), chunk_size=64 * 1024)
        up.upload()
        return up.url

    with ThreadPoolExecutor(2) as pool:
        urls = list(pool.map(send, paths))
    for u, data in zip(urls, pieces):
        h = head(u)
        assert h.headers["Upload-Concat"] == "partial" and h.headers["Upload-Offset"] == str(len(data))
    assert not server.videos() or all(v["original_filename"] != "joined.mp4" for v in server.videos())
    concat = "final;" + " ".join(urls)
    r = requests.post(server.files_url, headers={**TUS, "Upload-Concat": concat,
                                                "Upload-Metadata": metadata(filename="joined.mp4")})
    assert r.status_code == 201, r.text
    final = r.headers["Location"]
    vid = r.headers["Vodflow-Video-Id"]
    assert sha256(server.stored_source(vid)) == sha256(clip_bytes)
    h = head(final)
    assert h.headers["Upload-Concat"] == concat
    assert h.headers["Upload-Offset"] == h.headers["Upload-Length"] == str(len(clip_bytes))
    r = patch(final, len(clip_bytes), b"more")
    assert r.status_code == 403


def test_final_refuses_unfinished_or_foreign_parts(server, clip_bytes):
    part = create(server, 1000, Upload_Concat="partial").headers["Location"]
    assert patch(part, 0, clip_bytes[:400]).status_code == 204
    r = requests.post(server.files_url, headers={**TUS, "Upload-Concat": f"final;{part}"})
    assert r.status_code == 400 and "not complete" in r.json()["message"]
    plain = create(server, 1000).headers["Location"]
    r = requests.post(server.files_url, headers={**TUS, "Upload-Concat": f"final;{plain}"})
    assert r.status_code == 400 and "partial" in r.json()["message"]
    r = requests.post(server.files_url, headers={**TUS, "Upload-Concat": f"final;{part}", "Upload-Length": "1000"})
    assert r.status_code == 400


# ---------------------------------------------------------------- metadata and phase 1


@pytest.mark.parametrize("header", [
    "filename not*base64!", "filename YQ==,filename Yg==", "fil\u00e9 YQ==", "filename YQ==,,type Yg==",
    "filename " + base64.b64encode(b"\xff\xfe.mp4").decode(),
])
def test_malformed_metadata_is_400(server, header):
    r = create(server, 1000, meta=header)
    assert r.status_code == 400 and "Upload-Metadata" in r.json()["message"]


@pytest.mark.parametrize("meta,status", [
    (metadata(filename="holiday.png"), 415),
    (metadata(filename="clip.mp4", filetype="image/png"), 415),
    (metadata(filename="notes.txt", filetype="text/plain"), 415),
])
def test_declared_name_and_type_are_checked_at_creation(server, meta, status):
    r = create(server, 1000, meta=meta)
    assert r.status_code == status and "Location" not in r.headers
    assert r.json()["message"]


def test_empty_file_is_refused_at_creation(server):
    r = create(server, 0, meta=metadata(filename="empty.mp4"))
    assert r.status_code == 400 and "empty" in r.json()["message"]


# ---------------------------------------------------------------- hand-off exactly once, concurrency


def test_last_patch_retried_and_raced_makes_one_video(server, clip_bytes):
    before = len(server.videos())
    url = create(server, len(clip_bytes), meta=metadata(filename="once.mp4")).headers["Location"]
    last = len(clip_bytes) - 70_000
    assert patch(url, 0, clip_bytes[:last]).status_code == 204
    barrier = threading.Barrier(3)

    def final_patch(_):
        barrier.wait()
        return patch(url, last, clip_bytes[last:])

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(final_patch, range(3)))
    codes = sorted(r.status_code for r in results)
    assert codes.count(204) == 1 and set(codes) <= {204, 409, 423}, codes
    retry = patch(url, last, clip_bytes[last:])  # the client never saw its 204 and tries again
    assert retry.status_code == 409 and retry.json()["video_id"]
    assert len(server.videos()) == before + 1
    vid = [r for r in results if r.status_code == 204][0].headers["Vodflow-Video-Id"]
    assert retry.json()["video_id"] == vid
    assert sha256(server.stored_source(vid)) == sha256(clip_bytes)


def test_concurrent_patches_at_one_offset_do_not_corrupt(server, clip_bytes):
    url = create(server, len(clip_bytes)).headers["Location"]
    barrier = threading.Barrier(4)

    def send(i):
        barrier.wait()
        return patch(url, 0, clip_bytes[:400_000])

    with ThreadPoolExecutor(4) as pool:
        codes = sorted(r.status_code for r in pool.map(send, range(4)))
    assert codes.count(204) == 1 and set(codes) <= {204, 409, 423}, codes
    upload_id = url.rsplit("/", 1)[1]
    assert server.part_file(upload_id).read_bytes() == clip_bytes[:400_000]


# ---------------------------------------------------------------- expiration header, CORS


def test_upload_expires_header_is_an_http_date_a_day_ahead(server):
    import datetime as dt

    r = create(server, 1000)
    exp = parsedate_to_datetime(r.headers["Upload-Expires"])
    ahead = exp - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(hours=23) < ahead <= dt.timedelta(hours=24, minutes=1)
    assert r.headers["Upload-Expires"].endswith(" GMT")
    assert patch(r.headers["Location"], 0, b"\0" * 10).headers["Upload-Expires"]


def test_cors_preflight_and_exposed_headers(server):
    r = requests.options(server.files_url, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "tus-resumable,upload-offset,content-type"})
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "PATCH" in r.headers["Access-Control-Allow-Methods"]
    allowed = r.headers["Access-Control-Allow-Headers"].lower()
    assert all(h in allowed for h in ("tus-resumable", "upload-offset", "upload-metadata", "upload-checksum"))
    post = create(server, 1000, Origin=ORIGIN)
    exposed = post.headers["Access-Control-Expose-Headers"]
    assert "Location" in exposed and "Upload-Offset" in exposed and "Upload-Expires" in exposed
    assert "Origin" in post.headers["Vary"]
    stranger = requests.options(server.files_url, headers={"Origin": "https://evil.example",
                                                           "Access-Control-Request-Method": "PATCH"})
    assert "Access-Control-Allow-Origin" not in stranger.headers


TUS_EXPOSED = {"location", "upload-offset", "upload-length", "upload-metadata", "upload-defer-length",
               "upload-expires", "upload-concat", "tus-resumable", "tus-version", "tus-extension",
               "tus-max-size", "tus-checksum-algorithm"}
VODFLOW_EXPOSED = {"vodflow-video-id", "vodflow-status-url", "vodflow-watch-url"}


def _cross_origin_creation(base_files_url: str, clip_bytes: bytes, origin: str) -> requests.Response:
    """A page on `origin` creates an upload with its whole body (creation-with-upload)."""
    r = requests.post(base_files_url, data=clip_bytes, headers={
        **TUS, "Origin": origin, "Upload-Length": str(len(clip_bytes)), "Content-Type": OFFSET_TYPE,
        "Upload-Metadata": metadata(filename="cross-origin.mp4")}, timeout=60)
    assert r.status_code == 201, r.text
    assert r.headers["Vodflow-Video-Id"]
    return r


def _exposed(r: requests.Response) -> set[str]:
    return {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}


def test_cross_origin_creation_lets_script_read_tus_and_video_headers(server, clip_bytes, tmp_path):
    """One CORS policy: a second layer used to overwrite Access-Control-Expose-Headers, so a
    page on another origin could not read which video its upload became."""
    r = _cross_origin_creation(server.files_url, clip_bytes, ORIGIN)
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert TUS_EXPOSED | VODFLOW_EXPOSED <= _exposed(r)
    assert [v.strip() for v in r.headers["Vary"].split(",")].count("Origin") == 1
    # with every origin allowed the answer is the same for all: no Vary, so one cached copy serves
    with Server(tmp_path / "var", tmp_path / "gunicorn.log", VODFLOW_CORS_ORIGINS="*") as open_server:
        r = _cross_origin_creation(open_server.files_url, clip_bytes, ORIGIN)
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert TUS_EXPOSED | VODFLOW_EXPOSED <= _exposed(r)
        assert "Origin" not in r.headers.get("Vary", "")


def test_tuspy_reports_refusal(server, tmp_path):
    png = tmp_path / "photo.mp4"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 300_000)
    up = TusClient(server.files_url).uploader(str(png), chunk_size=64 * 1024, metadata={"filename": "photo.mp4"})
    with pytest.raises(TusUploadFailed) as err:
        up.upload()
    assert err.value.status_code == 415


def test_curl_speaks_tus_too(server, clip_bytes, tmp_path):
    """The protocol is plain HTTP: a shell script with curl can upload resumably."""
    import subprocess

    def curl(*args: str) -> str:
        out = subprocess.run(["curl", "-sS", "-i", "-H", "Tus-Resumable: 1.0.0", *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    created = curl("-X", "POST", "-H", f"Upload-Length: {len(clip_bytes)}",
                   "-H", "Upload-Metadata: " + metadata(filename="curl.mp4"), server.files_url)
    assert created.startswith("HTTP/1.1 201")
    url = next(line.split(": ", 1)[1].strip() for line in created.splitlines() if line.lower().startswith("location:"))
    half = len(clip_bytes) // 2
    first = tmp_path / "first-half.bin"
    first.write_bytes(clip_bytes[:half])
    out = curl("-X", "PATCH", "-H", f"Content-Type: {OFFSET_TYPE}", "-H", "Upload-Offset: 0",
               "--data-binary", f"@{first}", url)
    assert out.startswith("HTTP/1.1 204") and f"Upload-Offset: {half}" in out
    offset = next(line.split(": ", 1)[1].strip() for line in curl("-I", url).splitlines()
                  if line.startswith("Upload-Offset"))
    rest = tmp_path / "rest.bin"
    rest.write_bytes(clip_bytes[int(offset):])
    out = curl("-X", "PATCH", "-H", f"Content-Type: {OFFSET_TYPE}", "-H", f"Upload-Offset: {offset}",
               "--data-binary", f"@{rest}", url)
    assert out.startswith("HTTP/1.1 204") and "Vodflow-Video-Id" in out
