"""The web worker (`streaming_app/worker.py`) under gunicorn, as `vodflow web` runs it, with one
worker process and a single pool thread, so what needs a thread and what does not is visible
from outside: playback goes on while the thread is held by a slow upload, a player that stops
reading holds no thread and is let go after the keep-alive time without leaking its file, and
requests the event loop leaves to gunicorn (pipelined, split across packets, with a body,
HTTP/1.0, percent-encoded) are answered as before and keep the connection in step. Answers from
the event loop have the status, headers (but Date) and body of the thread path's."""

from __future__ import annotations

import http.client
import os
import socket
import time
from dataclasses import dataclass

import h11
import pytest

from tests.hls_support import hls_ladder, publish_video  # noqa: F401
from tests.servers import gunicorn_app, share_settings

KEEPALIVE = 3  # VODFLOW_WEB_KEEPALIVE of the test server, seconds


def _bigger_than_socket_buffers() -> int:
    """A file size no send buffer on this machine holds at once, so its answer must wait for
    the reader: twice the largest TCP send buffer the kernel allows, and at least 8 MiB."""
    try:
        largest = int(open("/proc/sys/net/ipv4/tcp_wmem").read().split()[2])
    except (OSError, IndexError, ValueError):
        largest = 4 * 1024 * 1024
    return max(8 * 1024 * 1024, 2 * largest + 1024 * 1024)


BIG = _bigger_than_socket_buffers()


@dataclass
class Server:
    host: str
    port: int
    env: dict


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("worker")
    env = {"VODFLOW_DATA_DIR": str(home / "var"), "VODFLOW_WEB_THREADS": "1",
           "VODFLOW_WEB_KEEPALIVE": str(KEEPALIVE)}
    with gunicorn_app(env, home / "gunicorn.log", workers=1) as base:
        host, port = base.removeprefix("http://").split(":")
        yield Server(host, int(port), env)


@pytest.fixture
def video(server, monkeypatch, hls_ladder):
    """A video published into the running server's catalog and storage."""
    share_settings(server.env, monkeypatch)
    return publish_video(hls_ladder)


def _connect(server, timeout=5.0) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    conn.connect()
    return conn


def _get(conn, path, method="GET", headers=None):
    conn.request(method, path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    return r.status, [(k, v) for k, v in r.getheaders() if k != "Date"], body


class HeldThread:
    """Holds the worker's only pool thread: an upload whose body never finishes arriving."""

    def __init__(self, server):
        self.sock = socket.create_connection((server.host, server.port))
        self.sock.sendall(b"POST /api/uploads HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; "
                          b"boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\n")
        time.sleep(0.3)

    def release(self):
        self.sock.close()


def _waits_for_the_thread(server, path) -> bool:
    """True when a request on a new connection (always a thread's job) gets no answer within 1 s."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=1.0)
    try:
        conn.request("GET", path)
        conn.getresponse().read()
        return False
    except (TimeoutError, socket.timeout):
        return True
    finally:
        conn.close()


def _requests(video):
    seg = video.path("360p", "seg_00000.ts")
    master = video.master_path
    return [("GET", master, {}), ("HEAD", master, {}),
            ("GET", video.path("360p", "index.m3u8"), {}), ("GET", seg, {}), ("HEAD", seg, {}),
            ("GET", seg, {"Range": "bytes=100-1099"}), ("GET", seg, {"Range": "bytes=-7"}),
            ("GET", seg, {"Origin": "https://player.example"})]


def test_playback_goes_on_while_every_thread_is_busy(server, video):
    player = _connect(server)
    assert _get(player, video.master_path)[0] == 200  # a new connection's first request: a thread's
    etag = dict(_get(player, video.master_path)[1])["ETag"]
    held = HeldThread(server)
    try:
        assert _waits_for_the_thread(server, video.master_path), "the pool thread is not held"
        started = time.monotonic()
        on_loop = [_get(player, path, method, headers) for method, path, headers in _requests(video)]
        revalidated = _get(player, video.master_path, headers={"If-None-Match": etag})
        assert time.monotonic() - started < 5
    finally:
        held.release()
    seg = video.local_file("360p", "seg_00000.ts").read_bytes()
    statuses = [status for status, _, _ in on_loop]
    assert statuses == [200, 200, 200, 200, 200, 206, 206, 200]
    assert on_loop[2][2] == video.local_file("360p", "index.m3u8").read_bytes()
    assert on_loop[3][2] == seg and on_loop[5][2] == seg[100:1100] and on_loop[6][2] == seg[-7:]
    assert on_loop[1][2] == b"" and on_loop[4][2] == b""
    assert revalidated[0] == 304 and revalidated[2] == b""

    # the same requests on gunicorn's thread path (a query string keeps them off the loop)
    # get the same status, headers and bytes
    other = _connect(server)
    for (method, path, headers), loop_answer in zip(_requests(video), on_loop):
        assert _get(other, path + "?via=thread", method, headers) == loop_answer, (method, path, headers)
    assert _get(other, video.master_path + "?via=thread", headers={"If-None-Match": etag}) == revalidated


def test_a_player_that_stops_reading_holds_no_thread(server, video):
    from config import storage

    big = os.urandom(BIG)
    storage.write_bytes(storage.url_for("hls", video.video_id, video.run, "360p", "seg_09999.ts"), big)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((server.host, server.port))
    client = h11.Connection(h11.CLIENT)

    def ask(path):
        slow.sendall(client.send(h11.Request(method="GET", target=path, headers=[("Host", "t")])))
        slow.sendall(client.send(h11.EndOfMessage()))

    def answer() -> tuple[int, bytes]:
        status, _, body = _responses(slow, client, 1)[0]
        return status, body

    ask(video.master_path)
    assert answer()[0] == 200
    ask(video.path("360p", "seg_09999.ts"))  # ... and read nothing for now
    time.sleep(0.5)

    # the only thread is free: a new connection is answered, and so is a kept-alive one
    others = _connect(server, timeout=3)
    assert _get(others, video.master_path)[0] == 200
    assert _get(others, video.path("360p", "seg_00001.ts"))[2] == video.local_file("360p", "seg_00001.ts").read_bytes()

    status, body = answer()
    assert status == 200 and len(body) == BIG and body == big
    ask(video.path("360p", "index.m3u8"))  # the connection is still in step
    assert answer() == (200, video.local_file("360p", "index.m3u8").read_bytes())
    slow.close()


def _raw(server):
    sock = socket.create_connection((server.host, server.port), timeout=5)
    return sock, h11.Connection(h11.CLIENT)


def _responses(sock, client, n) -> list[tuple[int, dict, bytes]]:
    out, status, headers, body = [], None, {}, bytearray()
    while len(out) < n:
        event = client.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(65536)
            client.receive_data(data)
        elif isinstance(event, h11.Response):
            status, headers = event.status_code, {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            out.append((status, headers, bytes(body)))
            body = bytearray()
            if client.our_state is h11.DONE and client.their_state is h11.DONE:
                client.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed):
            break
    return out


def _req(target, extra=b"", method=b"GET", version=b"HTTP/1.1"):
    return method + b" " + target.encode() + b" " + version + b"\r\nHost: t\r\n" + extra + b"\r\n"


def test_requests_the_loop_leaves_to_gunicorn_are_answered_in_step(server, video):
    seg0 = video.local_file("360p", "seg_00000.ts").read_bytes()
    seg1 = video.local_file("360p", "seg_00001.ts").read_bytes()
    playlist = video.local_file("360p", "index.m3u8").read_bytes()
    s0, s1, pl = video.path("360p", "seg_00000.ts"), video.path("360p", "seg_00001.ts"), video.path("360p", "index.m3u8")

    sock, client = _raw(server)

    def exchange(raw: bytes, request: h11.Request, body: bytes = b"", pause: float = 0.0):
        """Send `raw` (in two halves, `pause` apart) and read its answer; `request` and `body`
        tell h11 what was sent, so it can frame the answer."""
        half = len(raw) // 2
        sock.sendall(raw[:half])
        if pause:
            time.sleep(pause)
        sock.sendall(raw[half:])
        client.send(request)
        if body:
            client.send(h11.Data(data=body))
        client.send(h11.EndOfMessage())
        return _responses(sock, client, 1)[0]

    def plain(target, *extra):
        return h11.Request(method="GET", target=target, headers=[("Host", "t"), *extra])

    assert exchange(_req(pl), plain(pl))[2] == playlist  # kept alive from here on

    # two requests in one packet (pipelined): answered in order
    # (h11 tracks one request at a time, so it is told of the second after the first answer)
    sock.sendall(_req(s0) + _req(s1))
    client.send(plain(s0))
    client.send(h11.EndOfMessage())
    first = _responses(sock, client, 1)
    client.send(plain(s1))
    client.send(h11.EndOfMessage())
    second = _responses(sock, client, 1)
    assert first[0][2] == seg0 and second[0][2] == seg1

    # a request that arrives in two packets, 0.3 s apart
    status, _, body = exchange(_req(s1), plain(s1), pause=0.3)
    assert (status, body) == (200, seg1)
    # a GET with a body: the body is skipped, the connection stays in step
    status, _, body = exchange(_req(s0, b"Content-Length: 5\r\n") + b"hello",
                               plain(s0, ("Content-Length", "5")), body=b"hello")
    assert (status, body) == (200, seg0)
    # percent-encoded: the same file as its plain name
    enc = s0.replace("seg_", "seg%5F")
    status, _, body = exchange(_req(enc), plain(enc))
    assert (status, body) == (200, seg0)
    # a refusal still comes from the app, as JSON
    missing = video.path("360p", "seg_77777.ts")
    status, headers, body = exchange(_req(missing), plain(missing))
    assert status == 404 and headers["content-type"] == "application/json"
    # and after all of that, a plain request is still answered right
    status, _, body = exchange(_req(pl), plain(pl))
    assert (status, body) == (200, playlist)

    # "Connection: close" is honoured: answered, then closed
    status, headers, body = exchange(_req(s0, b"Connection: close\r\n"), plain(s0, ("Connection", "close")))
    assert (status, body) == (200, seg0) and headers["connection"] == "close"
    assert sock.recv(1) == b""
    sock.close()

    # HTTP/1.0 on a kept-alive connection: answered by gunicorn's rules (no keep-alive asked,
    # so the connection closes after the answer)
    sock, client = _raw(server)
    assert exchange(_req(pl), plain(pl))[2] == playlist
    sock.sendall(_req(video.master_path, version=b"HTTP/1.0"))
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and body.startswith(b"#EXTM3U")
    sock.close()


def _held_by_server(server, name: str, client_port: int) -> tuple[int, int]:
    """(open handles of the file `name`, connections to the client port) in the server's
    processes."""
    import psutil

    files = conns = 0
    for p in psutil.process_iter(["cmdline"]):
        if f"127.0.0.1:{server.port}" in " ".join(p.info["cmdline"] or []):
            try:
                files += sum(1 for f in p.open_files() if f.path.endswith(name))
                conns += sum(1 for c in p.net_connections("tcp") if c.raddr and c.raddr.port == client_port)
            except psutil.Error:
                pass
    return files, conns


def test_a_player_that_stalls_is_let_go_after_the_keepalive_time(server, video):
    from config import storage

    name = "seg_09998.ts"
    storage.write_bytes(storage.url_for("hls", video.video_id, video.run, "360p", name), os.urandom(BIG))
    sock, client = _raw(server)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = sock.getsockname()[1]
    sock.sendall(_req(video.master_path))
    client.send(h11.Request(method="GET", target=video.master_path, headers=[("Host", "t")]))
    client.send(h11.EndOfMessage())
    assert _responses(sock, client, 1)[0][0] == 200
    sock.sendall(_req(video.path("360p", name)))  # then read nothing
    time.sleep(0.5)
    assert _held_by_server(server, name, port) == (1, 1)  # under way, waiting for the reader

    deadline = time.monotonic() + KEEPALIVE + 5
    while _held_by_server(server, name, port) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _held_by_server(server, name, port) == (0, 0), "the stalled answer still holds its file or socket"
    sock.close()


def test_a_crowd_on_a_stale_view_reads_the_catalog_once(hls_ladder, monkeypatch):
    """When a video's cached view expires under load, one thread reads the catalog; the others
    answer from the view they have meanwhile, and the answers stay those of the catalog."""
    import dataclasses
    import threading

    from streaming_app.delivery import master

    video = publish_video(hls_ladder)
    master.forget()
    loads = []
    real_load = master._load

    def counted_load(video_id):
        loads.append(video_id)
        time.sleep(0.2)  # a slow catalog: the window in which a crowd piles up
        return real_load(video_id)

    monkeypatch.setattr(master, "_load", counted_load)
    first = master.video_view(video.video_id)
    assert first.master is not None and loads == [video.video_id]

    # age the view past its lifetime, then let 16 requests arrive at once
    master._views[video.video_id] = dataclasses.replace(first, loaded_at=time.monotonic() - master.VIEW_TTL - 0.1)
    views, barrier = [], threading.Barrier(16)

    def request():
        barrier.wait()
        views.append(master.video_view(video.video_id))

    threads = [threading.Thread(target=request) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 2, loads  # one more read, not sixteen
    assert all(v.master == first.master for v in views)

    # the event loop's side never reads the catalog itself: a stale view answers at once and
    # its refresh runs in the background
    master._views[video.video_id] = dataclasses.replace(first, loaded_at=time.monotonic() - master.VIEW_TTL - 0.1)
    started = time.monotonic()
    assert master.cached_view(video.video_id).master == first.master
    assert master.cached_view(video.video_id) is not None
    assert time.monotonic() - started < 0.1
    deadline = time.monotonic() + 5
    while master._views[video.video_id].loaded_at <= first.loaded_at and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(loads) == 3
    assert master._views[video.video_id].loaded_at > first.loaded_at  # refreshed in the background

    # a view too old to trust is not answered from memory at all
    master._views[video.video_id] = dataclasses.replace(
        first, loaded_at=time.monotonic() - master.VIEW_TTL - master.STALE_GRACE - 1)
    assert master.cached_view(video.video_id) is None


def test_a_catalog_that_fails_is_not_asked_at_request_rate(hls_ladder, monkeypatch):
    """A re-read that fails leaves the stale view answering for the grace period, tries again
    only after RETRY_SECONDS, and once the view is too old nothing is answered from memory."""
    import dataclasses

    from sqlalchemy.exc import OperationalError

    from streaming_app.delivery import master

    video = publish_video(hls_ladder)
    master.forget()
    first = master.video_view(video.video_id)
    tries = []

    def failing_load(video_id):
        tries.append(time.monotonic())
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(master, "_load", failing_load)
    master._views[video.video_id] = dataclasses.replace(first, loaded_at=time.monotonic() - master.VIEW_TTL)
    stale_until = master._views[video.video_id].loaded_at + master.VIEW_TTL + master.STALE_GRACE
    answered = 0
    while time.monotonic() < stale_until - 0.05:
        assert master.cached_view(video.video_id).master == first.master
        assert master.video_view(video.video_id).master == first.master
        answered += 1
        time.sleep(0.01)
    assert answered > 20
    # one try at first, then one per RETRY_SECONDS, not one per request
    assert 1 <= len(tries) <= 1 + master.STALE_GRACE / master.RETRY_SECONDS + 1, tries
    time.sleep(0.1)
    assert master.cached_view(video.video_id) is None
    with pytest.raises(OperationalError):
        master.video_view(video.video_id)  # the request waits for the catalog, and gets its error
