"""The HTTP server under the WSGI app: bounded in connections, threads, time and bytes.

Contract (``HttpLimits`` holds the numbers):

- One event-loop thread accepts connections and reads each request head without a
  thread of its own: a connection costs a file descriptor and a buffer until its head
  is complete (the TLS handshake, when a web config asks for TLS, runs there too,
  non-blocking).  Idle or slow clients therefore cost no thread.
- A connection must finish its TLS handshake and its request head (64 KiB at most)
  within ``head_timeout`` of being accepted, in total, however it drips its bytes;
  then it is closed.  One request per connection (HTTP/1.0, as before).
- At most ``max_connections`` are open at once.  Over it, the oldest connection
  still sending its head is closed to make room (a flood of idle connections cannot
  lock out a kubelet or Prometheus, which send their request at once); when every
  open connection is being answered, the new one is closed.
- A complete request is answered by a bounded pool: ``workers`` threads for
  everything, plus ``health_workers`` threads that answer only ``/-/healthy`` and
  ``/-/ready``, so liveness checks never queue behind slow scrapes or /probe runs.
  Answers are written under a ``write_timeout`` socket timeout.
- The listen backlog is ``backlog``.
- A web config (:class:`exporter.webconfig.WebConfigSource`) is asked for its TLS
  context once per accepted connection, so a rotated certificate serves the next
  connection; if asking fails the connection is closed and the error logged, and
  the loop goes on (it never dies of a bad web config).
- HEAD is answered like GET without the body (same status and headers).
"""

from __future__ import annotations

import collections
import io
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from exporter.webconfig import WebConfigSource, peer_sans

log = logging.getLogger(__name__)

LIGHT_PATHS = (b"/-/healthy", b"/-/ready")


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 512  # open at once, waiting for their head or being answered
    workers: int = 16  # threads answering requests
    health_workers: int = 2  # threads answering /-/healthy and /-/ready only
    head_timeout: float = 10.0  # TLS handshake + request head, in total, from accept
    write_timeout: float = 30.0  # socket timeout while answering
    max_head_bytes: int = 64 * 1024
    backlog: int = 1024


@dataclass(eq=False)
class _Pending:
    """A connection still sending its request head (or finishing its TLS handshake)."""

    sock: socket.socket
    address: Any
    deadline: float
    handshaken: bool
    head: bytearray


class _Workers:
    """At most ``size`` daemon threads taking jobs from one queue, started on demand
    (an idle daemon holds none), never blocking the process's exit."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.threads = 0
        self._idle = 0  # threads waiting for a job
        self._queued = 0  # jobs no thread has taken yet

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._queued += 1
            start = self._queued > self._idle and self.threads < self._size
            if start:
                self.threads += 1
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._work, name=f"{self._name}-{self.threads}", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
                self._queued -= job is not None
            if job is None:
                return
            try:
                job()
            except Exception:  # a job's failure is logged, the thread goes on
                log.exception("http worker: unexpected error")

    def stop(self) -> None:
        for _ in range(self.threads):
            self._jobs.put(None)


class _HeadFirstReader(io.RawIOBase):
    """The request head read by the event loop, then the socket."""

    def __init__(self, head: bytes, sock: socket.socket) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        return self._sock.recv_into(buffer)


class _SocketWriter(io.BufferedIOBase):
    """``sendall`` for every write: no partial writes, so wsgiref never slices (and
    copies) a large body to send its rest."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


class _ServerHandler(ServerHandler):
    """wsgiref's, with HEAD answered without a body and errors sent to the log."""

    # Set by wsgiref's BaseHandler (not in its type stubs).
    environ: dict[str, Any]
    headers_sent: bool
    request_handler: Any

    def write(self, data: bytes) -> None:
        if self.environ.get("REQUEST_METHOD") != "HEAD":
            super().write(data)
            return
        if not self.headers_sent:
            self.bytes_sent = len(data)
            self.send_headers()
        else:
            self.bytes_sent += len(data)

    def log_exception(self, exc_info: Any) -> None:
        method, path = self.environ.get("REQUEST_METHOD"), self.environ.get("PATH_INFO")
        log.error("http: %s %s failed", method, path, exc_info=exc_info)


class RequestHandler(WSGIRequestHandler):
    """One request whose head the event loop has already read."""

    def __init__(self, sock: socket.socket, address: Any, server: BoundedWSGIServer, head: bytes) -> None:
        self._head = head
        super().__init__(sock, address, server)

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BufferedReader(_HeadFirstReader(self._head, self.connection))
        self.wfile = _SocketWriter(self.connection)

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        if isinstance(self.request, ssl.SSLSocket):
            environ["HTTPS"] = "on"
        return environ

    def handle(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return
        handler = _ServerHandler(
            self.rfile, cast(IO[bytes], self.wfile), self.get_stderr(), self.get_environ(), multithread=True
        )
        handler.request_handler = self
        app = cast(BoundedWSGIServer, self.server).get_app()
        assert app is not None
        handler.run(app)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http %s", format % args)


class BoundedWSGIServer(WSGIServer):
    """Binds and listens like wsgiref's server; ``serve`` runs the event loop."""

    allow_reuse_address = True
    limits = HttpLimits()
    web_config: WebConfigSource | None = None

    def __init__(self, address: tuple[str, int], limits: HttpLimits, web_config: WebConfigSource | None) -> None:
        self.limits = limits
        self.request_queue_size = limits.backlog
        self.web_config = web_config
        super().__init__(address, RequestHandler)  # type: ignore[arg-type]
        self.socket.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._pending: collections.OrderedDict[socket.socket, _Pending] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._in_service = 0
        self._stopping = threading.Event()
        self._workers = _Workers(limits.workers, "http")
        self._health_workers = _Workers(limits.health_workers, "http-health")
        self.dropped_connections = 0  # closed for want of room (over max_connections)
        self._dropped_logged = -60.0  # when the last warning about dropped connections was logged
        self._accept_failure_logged = -60.0

    # -- the loop ------------------------------------------------------------------

    def serve(self) -> None:
        self._selector.register(self.socket, selectors.EVENT_READ, None)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        while not self._stopping.is_set():
            timeout = 1.0
            if self._pending:
                oldest = next(iter(self._pending.values()))
                timeout = min(timeout, max(0.0, oldest.deadline - time.monotonic()))
            for key, _ in self._selector.select(timeout):
                if key.fileobj is self.socket:
                    self._accept()
                elif key.fileobj is self._wake_read:
                    self._drain_wake()
                elif key.data.sock in self._pending:  # not closed earlier in this batch
                    try:
                        self._advance(key.data)
                    except Exception:  # one connection's bug never stops the loop
                        log.exception("http: unexpected error on a connection from %s", key.data.address[0])
                        self._close(key.data)
            self._expire()
        for pending in list(self._pending.values()):
            self._close(pending)
        self._selector.close()

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._wake_write.send(b"x")
        except OSError:
            pass

    def server_close(self) -> None:
        super().server_close()
        self._workers.stop()
        self._health_workers.stop()
        self._wake_read.close()
        self._wake_write.close()

    def open_connections(self) -> tuple[int, int]:
        """(connections sending their head, connections being answered or queued)."""
        with self._lock:
            return len(self._pending), self._in_service

    def _drain_wake(self) -> None:
        try:
            while self._wake_read.recv(512):
                pass
        except OSError:
            pass

    def _accept(self) -> None:
        for _ in range(64):  # then let the loop serve the others
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the backlog keeps them
                self._accept_failed(exc)
                return
            if not self._make_room():
                self._dropped()
                sock.close()
                continue
            sock.setblocking(False)
            try:
                sock = self._wrap(sock)
            except Exception as exc:  # noqa: BLE001 - a bad web config costs this connection only
                log.error("http: no TLS context for a new connection: %s", exc)
                sock.close()
                continue
            deadline = time.monotonic() + self.limits.head_timeout
            pending = _Pending(sock, address, deadline, not isinstance(sock, ssl.SSLSocket), bytearray())
            with self._lock:
                self._pending[sock] = pending
            self._selector.register(sock, selectors.EVENT_READ, pending)

    def _accept_failed(self, exc: OSError) -> None:
        """Out of file descriptors, most likely: close the oldest connection still
        sending its head to free one, or pause, so that the loop does not spin on a
        listener that stays readable."""
        now = time.monotonic()
        if now - self._accept_failure_logged >= 60:  # at most one line a minute
            self._accept_failure_logged = now
            log.warning("http: cannot accept a connection: %s", exc)
        oldest = next(iter(self._pending.values()), None)
        if oldest is not None:
            self._close(oldest)
        else:
            time.sleep(0.1)

    def _wrap(self, sock: socket.socket) -> socket.socket:
        if self.web_config is None:
            return sock
        _, context = self.web_config.current()
        if context is None:
            return sock
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)

    def _make_room(self) -> bool:
        with self._lock:
            if len(self._pending) + self._in_service < self.limits.max_connections:
                return True
            oldest = next(iter(self._pending.values()), None)
        if oldest is None:
            return False
        self._dropped()
        self._close(oldest)
        return True

    def _dropped(self) -> None:
        self.dropped_connections += 1
        now = time.monotonic()
        if now - self._dropped_logged >= 60:  # at most one line a minute
            self._dropped_logged = now
            log.warning(
                "http: at the limit of %d open connections, closing the oldest still sending a request"
                " (%d closed so far)",
                self.limits.max_connections,
                self.dropped_connections,
            )

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline > now:
                return
            log.debug("http: %s sent no complete request within %.0f s", oldest.address[0], self.limits.head_timeout)
            self._close(oldest)

    def _close(self, pending: _Pending) -> None:
        with self._lock:
            self._pending.pop(pending.sock, None)
        try:
            self._selector.unregister(pending.sock)
        except (KeyError, ValueError):
            pass
        pending.sock.close()

    def _advance(self, pending: _Pending) -> None:
        sock = pending.sock
        if not pending.handshaken:
            assert isinstance(sock, ssl.SSLSocket)
            try:
                sock.do_handshake()
            except ssl.SSLWantReadError:
                self._selector.modify(sock, selectors.EVENT_READ, pending)
                return
            except ssl.SSLWantWriteError:
                self._selector.modify(sock, selectors.EVENT_WRITE, pending)
                return
            except (ssl.SSLError, OSError) as exc:
                log.debug("tls handshake with %s failed: %s", pending.address[0], exc)
                self._close(pending)
                return
            pending.handshaken = True
            if not self._client_allowed(sock, pending.address):
                self._close(pending)
                return
            self._selector.modify(sock, selectors.EVENT_READ, pending)
        while True:
            try:
                data = sock.recv(16384)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                return
            except ssl.SSLWantWriteError:
                self._selector.modify(sock, selectors.EVENT_WRITE, pending)
                return
            except OSError:
                self._close(pending)
                return
            if not data:
                self._close(pending)  # closed before a complete request
                return
            searched_from = max(0, len(pending.head) - 3)
            pending.head += data
            end = _head_end(pending.head, searched_from)
            if 0 <= end <= self.limits.max_head_bytes:
                self._dispatch(pending)
                return
            if end > self.limits.max_head_bytes or len(pending.head) > self.limits.max_head_bytes:
                log.debug("http: %s sent a request head over %d bytes", pending.address[0], self.limits.max_head_bytes)
                self._answer_now(pending, b"431 Request Header Fields Too Large")
                return

    def _client_allowed(self, sock: ssl.SSLSocket, address: Any) -> bool:
        config = self.web_config.current()[0] if self.web_config else None
        allowed = config.tls.client_allowed_sans if config and config.tls else ()
        if allowed and not peer_sans(sock.getpeercert()) & set(allowed):
            log.debug("client certificate of %s has none of client_allowed_sans", address[0])
            return False
        return True

    def _answer_now(self, pending: _Pending, status: bytes) -> None:
        """A short error answer from the loop itself (never blocks: best effort)."""
        try:
            pending.sock.send(b"HTTP/1.0 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except (OSError, ssl.SSLError):
            pass
        self._close(pending)

    def _dispatch(self, pending: _Pending) -> None:
        with self._lock:
            self._pending.pop(pending.sock, None)
            self._in_service += 1
        self._selector.unregister(pending.sock)
        head = bytes(pending.head)
        request_line = head.split(b"\n", 1)[0].split(b" ")
        path = request_line[1].split(b"?", 1)[0] if len(request_line) > 1 else b""
        workers = self._health_workers if path in LIGHT_PATHS else self._workers
        workers.submit(lambda: self._answer(pending.sock, pending.address, head))

    def _answer(self, sock: socket.socket, address: Any, head: bytes) -> None:
        try:
            sock.setblocking(True)
            sock.settimeout(self.limits.write_timeout)
            RequestHandler(sock, address, self, head)
        except (OSError, ssl.SSLError) as exc:
            log.debug("http: answering %s failed: %s", address[0], exc)
        finally:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            sock.close()
            with self._lock:
                self._in_service -= 1


def _head_end(head: bytearray, start: int) -> int:
    """Where the request head ends (after its blank line), or -1; looks from ``start``."""
    ends = [at + len(mark) for mark in (b"\n\r\n", b"\n\n") if (at := head.find(mark, start)) >= 0]
    return min(ends, default=-1)


class BoundedWSGIServer6(BoundedWSGIServer):
    address_family = socket.AF_INET6
