"""The gunicorn worker `vodflow web` runs: gthread, plus delivery answered on its event loop.

gunicorn's gthread worker keeps idle keep-alive connections in a poller (its main thread) and
lends a pool thread to a connection for each request. For a request that waits on nothing - a
player asking for a master playlist rendered less than a second ago, or for a segment on local
disk - that hand-off is most of the cost: the request crosses to a pool thread and back (two
GIL hand-overs, a pipe write, two epoll_ctl and four fcntl calls) and gunicorn builds a full
WSGI environ and response object around it. Under 64 connections on two cores that measured
~230 us of CPU per master request, and the queueing it caused put the p99 at 30-50 ms.

This worker answers such requests on the poller thread itself, the way nginx does: one recv(),
picohttpparser (gunicorn's own C parser, gunicorn_h1c), the application's answer, then the
answer written without blocking - a small body with send(), a file with sendfile() from the page
cache, continued on writable events when the client's window is full, so a slow player never
holds a thread or stalls the others. Anything else - another method or path, a request in
several packets, a body, HTTP/1.0, an unusual header, pipelining, an answer the application
cannot give without waiting (the catalog, S3) - goes to the pool exactly as in gthread, with the
bytes already read handed to gunicorn's parser. Every refusal still comes from Flask.

An application opts in by offering `immediate_answer(environ) -> (status, headers, body) | None`
on the WSGI callable gunicorn loads. It gets a minimal environ (REQUEST_METHOD, PATH_INFO,
QUERY_STRING "", SERVER_PROTOCOL, the request headers as HTTP_*, and wsgi.file_wrapper), must
not block on anything but a local file's open/fstat, and returns None whenever it would. The
body is bytes, or a wsgi.file_wrapper around a file positioned at the first byte to send, with
the Content-Length header giving how many.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from email.utils import formatdate
from functools import partial

from gunicorn import SERVER, config
from gunicorn.http.message import MAX_REQUEST_LINE
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, ThreadWorker

try:  # a dependency (gunicorn-h1c); gunicorn refuses --http-parser fast without it
    import gunicorn_h1c
except ImportError:  # pragma: no cover - a dependency; without it the worker is plain gthread
    gunicorn_h1c = None

RECV_BYTES = 16384
# The most of a file one writable event sends before the loop turns to other connections
# (nginx's sendfile_max_chunk does the same): a client reading faster than the socket buffer
# fills would otherwise hold the loop for the whole file.
SLICE_BYTES = 2 * 1024 * 1024
# Headers that change how a request is framed or how the connection behaves, or that gunicorn
# maps to an environ key of its own: those requests take gunicorn's path. Lower-case.
_GUNICORNS = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"te",
                        b"http2-settings", b"trailer", b"content-type", b"script_name"})
_PREFIXES = (b"GET /v/", b"HEAD /v/")
# what the path may hold to be used as PATH_INFO as it is: no escapes, query or fragment
_PLAIN_PATH = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._/")
_REASONS = {200: "OK", 206: "Partial Content", 304: "Not Modified"}


class FileBody:
    """wsgi.file_wrapper on the event-loop path: marks a body to send with sendfile()."""

    __slots__ = ("filelike", "blksize")

    def __init__(self, filelike, blksize: int = 8192):
        self.filelike = filelike
        self.blksize = blksize

    def close(self) -> None:
        self.filelike.close()


class _Transfer:
    """An answer being written without blocking: header bytes, then a file range."""

    __slots__ = ("conn", "head", "file", "offset", "left", "deadline")

    def __init__(self, conn, head: bytes, file=None, offset: int = 0, left: int = 0):
        self.conn = conn
        self.head = memoryview(head)
        self.file = file
        self.offset = offset
        self.left = left
        self.deadline = 0.0

    def push(self) -> bool:
        """Write what the socket takes now, at most SLICE_BYTES of the file; True when everything
        is written. Raises OSError when the client is gone."""
        sock = self.conn.sock
        try:
            while self.head:
                # MSG_MORE: the headers leave in the same packet as the file's first bytes
                n = sock.send(self.head, socket.MSG_MORE if self.left else 0)
                self.head = self.head[n:]
            budget = SLICE_BYTES
            while self.left:
                if budget <= 0:
                    return False  # a fast reader must not keep the loop from everyone else
                n = os.sendfile(sock.fileno(), self.file.fileno(), self.offset, min(self.left, budget))
                if n == 0:
                    raise OSError(f"file ended {self.left} bytes early")  # truncated under us
                self.offset += n
                self.left -= n
                budget -= n
        except BlockingIOError:
            return False
        self.close()
        return True

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class _DateHeader:
    """The Date header line, formatted once a second rather than for every answer."""

    __slots__ = ("second", "line")

    def __init__(self):
        self.second = -1
        self.line = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode("latin-1")
        return self.line


class DeliveryWorker(ThreadWorker):
    """gthread, answering requests that wait on nothing on the poller thread (see the module
    docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.immediate_answer = None
        self.transfers: dict[object, _Transfer] = {}  # by connection
        self._date = _DateHeader()
        self._limit_line = MAX_REQUEST_LINE
        self._next_sweep = 0.0

    def load_wsgi(self):
        super().load_wsgi()
        answer = getattr(self.wsgi, "immediate_answer", None)
        self.immediate_answer = answer if answer is not None and self._loop_path_allowed() else None
        line = self.cfg.limit_request_line
        self._limit_line = 1024 * 1024 if line == 0 else min(line, MAX_REQUEST_LINE)

    def _loop_path_allowed(self) -> bool:
        """The event-loop path sees what gunicorn's own path would: the same C parser
        (`--http-parser fast`), plain HTTP, sendfile allowed. The access log, statsd and the
        request hooks see only requests answered on gunicorn's path, so with any of them on,
        every request takes that path."""
        cfg = self.cfg
        hooks_default = (cfg.pre_request is config.PreRequest.default
                         and cfg.post_request is config.PostRequest.default)
        return (gunicorn_h1c is not None and cfg.http_parser == "fast" and cfg.protocol == "http"
                and not cfg.is_ssl and cfg.sendfile is not False and not self.log.access_log_enabled
                and not cfg.statsd_host and hooks_default)

    # -- reading ------------------------------------------------------------------------------

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection has a new request: answer it here if nothing must wait."""
        if self.immediate_answer is None or not self.alive or conn.is_http2:
            return super().on_client_socket_readable(conn, client)
        try:
            data = conn.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return  # nothing after all; stays in the poller
        except OSError:
            data = b""
        if not data:
            self._close(conn)  # the client closed (or reset) it
            return
        transfer = self._answer(conn, data) if data.startswith(_PREFIXES) else None
        if transfer is None:
            # gunicorn's way, from the bytes already read
            conn.parser.unreader.unread(data)
            return super().on_client_socket_readable(conn, client)
        self.nr += 1
        try:
            done = transfer.push()
        except OSError:
            transfer.close()
            self._close(conn)
            return
        self.keepalived_conns.remove(conn)
        if done:
            # stays in the poller; its keep-alive clock starts again
            conn.set_timeout()
            self.keepalived_conns.append(conn)
            return
        # the client's window is full: go on when it can take more
        transfer.deadline = time.monotonic() + self.cfg.keepalive
        self.transfers[conn] = transfer
        self.poller.modify(conn.sock, selectors.EVENT_WRITE, partial(self._on_writable, transfer))

    def _answer(self, conn, data: bytes) -> _Transfer | None:
        """The answer to the request in `data` as a transfer, or None for gunicorn's own path."""
        if self.nr + 1 >= self.max_requests:
            return None  # gunicorn closes the connection and restarts the worker
        cfg = self.cfg
        try:
            req = gunicorn_h1c.parse_request(
                data, last_len=0, limit_request_line=self._limit_line,
                limit_request_fields=cfg.limit_request_fields,
                limit_request_field_size=cfg.limit_request_field_size)
        except Exception:  # noqa: BLE001 - incomplete or invalid: gunicorn reads and answers it
            return None
        if req["consumed"] != len(data) or req["minor_version"] != 1:
            return None  # pipelined requests, HTTP/1.0
        path = req["path"]
        if not _PLAIN_PATH.issuperset(path):
            return None
        method = req["method"].decode("ascii")
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path.decode("ascii"), "QUERY_STRING": "",
                   "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.file_wrapper": FileBody}
        host = False
        for name, value in req["headers"]:
            lname = name.lower()
            if lname in _GUNICORNS or b"_" in name:
                return None  # framing is gunicorn's; an underscore name would pass for a dash
            if lname == b"connection":
                if value.strip().lower() != b"keep-alive":
                    return None
                continue
            if lname == b"host":
                host = True
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            if key in environ:
                return None  # a repeated field: gunicorn joins it
            environ[key] = value.decode("latin-1")
        if not host:
            return None  # HTTP/1.1 requires Host; gunicorn answers 400
        try:
            out = self.immediate_answer(environ)
        except Exception:  # noqa: BLE001 - the thread path answers it again, with the app's error handling
            self.log.exception("answering %s on the event loop failed", environ["PATH_INFO"])
            return None
        if out is None:
            return None
        try:
            return self._transfer(conn, method, *out)
        except Exception:  # noqa: BLE001 - nothing is sent yet: the thread path answers it again
            self.log.exception("answering %s on the event loop failed", environ["PATH_INFO"])
            if isinstance(out[2], FileBody):
                out[2].close()
            return None

    def _transfer(self, conn, method: str, status: int, headers, body) -> _Transfer:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nServer: {SERVER}\r\n".encode("latin-1"),
                 self._date.get(), b"Connection: keep-alive\r\n"]
        length = 0
        for k, v in headers:
            lines.append(f"{k}: {v}\r\n".encode("latin-1"))
            if k == "Content-Length":
                length = int(v)
        lines.append(b"\r\n")
        if isinstance(body, FileBody):
            if method == "HEAD" or status == 304 or not length:
                body.close()
                return _Transfer(conn, b"".join(lines))
            file = body.filelike
            return _Transfer(conn, b"".join(lines), file, file.tell(), length)
        if method != "HEAD" and status != 304:
            lines.append(body)
        return _Transfer(conn, b"".join(lines))

    # -- writing ------------------------------------------------------------------------------

    def _on_writable(self, transfer: _Transfer, sock) -> None:
        conn = transfer.conn
        try:
            done = transfer.push()
        except OSError:
            self._abandon(transfer)
            return
        if not done:
            transfer.deadline = time.monotonic() + self.cfg.keepalive
            return
        del self.transfers[conn]
        self.poller.modify(sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))
        conn.set_timeout()
        if not self.alive:  # a stopping worker keeps idle connections briefly, as gthread does
            conn.timeout = min(conn.timeout, time.monotonic() + STOP_KEEPALIVE_LINGER)
        self.keepalived_conns.append(conn)

    def murder_keepalived(self, force=False):
        """Also close connections whose client stopped reading an answer for the keep-alive
        timeout (a stalled player must not hold a file and a socket for ever)."""
        super().murder_keepalived(force)
        now = time.monotonic()
        if not self.transfers or (now < self._next_sweep and not force):
            return
        self._next_sweep = now + 1.0  # the loop turns thousands of times a second; once is enough
        for transfer in list(self.transfers.values()):
            if force or transfer.deadline < now:
                self._abandon(transfer)

    def _abandon(self, transfer: _Transfer) -> None:
        """Close a connection whose answer will not be finished (the client is gone or stalled)."""
        conn = transfer.conn
        del self.transfers[conn]
        transfer.close()
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass
        self.nr_conns -= 1
        conn.close()

    # -- bookkeeping --------------------------------------------------------------------------

    def _close(self, conn):
        self.poller.unregister(conn.sock)
        self.keepalived_conns.remove(conn)
        self.nr_conns -= 1
        conn.close()
