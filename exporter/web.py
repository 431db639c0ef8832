"""The HTTP interface: ``/metrics``, ``/``, ``/-/healthy``, ``/-/ready``, ``/-/reload``.

``/metrics`` is prometheus-client's WSGI app (gzip and OpenMetrics negotiation)
over a registry holding only the snapshot collector and the process collectors, so
a scrape renders the latest snapshot and never waits on a probe.

With a web config (``--web.config.file``, see :mod:`exporter.webconfig`) every
accepted connection is wrapped in the TLS context current at that moment, so a
rotated certificate serves the next connection; the handshake runs in the
connection's own thread under a deadline, so a client that never finishes it holds
one thread for ``TLS_HANDSHAKE_TIMEOUT`` seconds and never the accept loop.  Basic
auth and the configured response headers wrap the WSGI application.
"""

from __future__ import annotations

import gzip
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector

from exporter.collector import SnapshotCollector
from exporter.exposition import encode_snapshot, encoder_for
from exporter.multi_target import ProbeRefused
from exporter.status_page import render_status
from exporter.store import ResultStore
from exporter.webconfig import AuthMiddleware, WebConfigSource, peer_sans

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
ProbeHandler = Callable[[str, str, float | None], bytes]  # (module, target, scrape timeout) -> exposition


TLS_HANDSHAKE_TIMEOUT = 10.0


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    web_config: WebConfigSource | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        if self.web_config is None:
            return sock, address
        _, context = self.web_config.current()
        if context is None:
            return sock, address
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(TLS_HANDSHAKE_TIMEOUT)
                request.do_handshake()
                request.settimeout(None)
            except (ssl.SSLError, OSError) as exc:
                log.debug("tls handshake with %s failed: %s", client_address[0], exc)
                return
            config = self.web_config.current()[0] if self.web_config else None
            allowed = config.tls.client_allowed_sans if config and config.tls else ()
            if allowed and not peer_sans(request.getpeercert()) & set(allowed):
                log.debug("client certificate of %s has none of client_allowed_sans", client_address[0])
                return
        super().finish_request(request, client_address)


class _IPv6ThreadingServer(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        if isinstance(self.request, ssl.SSLSocket):
            environ["HTTPS"] = "on"
        return environ

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http %s", format % args)


class WebApp:
    """The WSGI application.  ``reload`` returns None on success or the error text."""

    def __init__(
        self,
        store: ResultStore,
        ready: Callable[[], bool],
        reload: Callable[[], str | None],
        probe: ProbeHandler | None = None,
    ) -> None:
        self._store = store
        self._ready = ready
        self._reload = reload
        self._probe = probe
        # Two registries: the snapshot's series, whose exposition is cached until the
        # snapshot changes, and the process's own, rendered on every scrape.
        self.snapshot_registry = CollectorRegistry(auto_describe=False)
        self.snapshot_registry.register(SnapshotCollector(store))
        self.process_registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.process_registry)
        PlatformCollector(registry=self.process_registry)
        self.registry = CollectorRegistry(auto_describe=False)  # both, for name[] filters
        self.registry.register(SnapshotCollector(store))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._metrics = make_wsgi_app(self.registry)
        self._exposition_cache = ExpositionCache(store, self.snapshot_registry, self.process_registry)

    def register_live(self, collector: Collector) -> None:
        """A collector rendered on every scrape (not cached with the snapshot): the
        daemon's own state, such as the trace exporter's counters."""
        self.process_registry.register(collector)
        self.registry.register(collector)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics":
            if method != "GET" or environ.get("QUERY_STRING"):
                return self._metrics(environ, start_response)  # type: ignore[no-any-return]
            accept, encoding = environ.get("HTTP_ACCEPT"), environ.get("HTTP_ACCEPT_ENCODING")
            exposition, headers = self._exposition_cache.get(accept, encoding)
            start_response("200 OK", [*headers, ("Content-Length", str(len(exposition)))])
            return [exposition]
        if path == "/":
            body = render_status(self._store.snapshot(), self._ready())
            return _respond(start_response, "200 OK", body, "text/html; charset=utf-8")
        if path == "/probe" and self._probe is not None:
            query = parse_qs(environ.get("QUERY_STRING", ""))
            module = query.get("module", [""])[0]
            target = query.get("target", [""])[0]
            header = environ.get("HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS")
            try:
                scrape_timeout = float(header) if header else None
                exposition = self._probe(module, target, scrape_timeout)
            except ProbeRefused as refused:
                reason = {400: "400 Bad Request", 403: "403 Forbidden", 404: "404 Not Found"}[refused.status]
                return _respond(start_response, reason, f"{refused}\n")
            except ValueError:
                return _respond(start_response, "400 Bad Request", "bad X-Prometheus-Scrape-Timeout-Seconds\n")
            headers = [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(exposition)))]
            start_response("200 OK", headers)
            return [exposition]
        if path == "/-/healthy":
            return _respond(start_response, "200 OK", "Healthy.\n")
        if path == "/-/ready":
            if self._ready():
                return _respond(start_response, "200 OK", "Ready.\n")
            return _respond(start_response, "503 Service Unavailable", "Not ready: first round in progress.\n")
        if path == "/-/reload":
            if method not in ("POST", "PUT"):
                return _respond(start_response, "405 Method Not Allowed", "Use POST.\n", extra=[("Allow", "POST, PUT")])
            error = self._reload()
            if error is None:
                return _respond(start_response, "200 OK", "Reloaded.\n")
            return _respond(
                start_response,
                "500 Internal Server Error",
                f"Reload failed; the previous config keeps running:\n{error}\n",
            )
        return _respond(start_response, "404 Not Found", "Not found.\n")


def _respond(
    start_response: StartResponse,
    status: str,
    body: str,
    content_type: str = "text/plain; charset=utf-8",
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = body.encode("utf-8", "replace")  # file names may hold undecodable bytes
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(data))), *(extra or [])])
    return [data]


class ExpositionCache:
    """``/metrics`` bodies per (snapshot, format, compression).

    The snapshot changes once per probe round; Prometheus scrapes far more often (and
    an HA pair scrapes twice).  So the snapshot's part of the exposition is rendered
    and gzipped (level 1) once per snapshot and format, and only the process's own
    few series are rendered on each scrape.  Gzip bodies are two gzip members, which
    every gzip reader (Go's included) decodes as one stream."""

    def __init__(self, store: ResultStore, snapshot: CollectorRegistry, process: CollectorRegistry) -> None:
        self._store = store
        self._snapshot_registry = snapshot
        self._process_registry = process
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, bool], tuple[object, bytes]] = {}

    def get(self, accept: str | None, accept_encoding: str | None) -> tuple[bytes, list[tuple[str, str]]]:
        client_encoder, content_type = choose_encoder(accept or "")
        encoder = encoder_for(content_type) or client_encoder
        compress = gzip_accepted(accept_encoding or "")
        snapshot = self._store.snapshot()
        key = (content_type, compress)
        with self._lock:  # one render per snapshot, however many scrapes arrive at once
            cached = self._entries.get(key)
            if cached is None or cached[0] is not snapshot:
                body = encode_snapshot(self._snapshot_registry, content_type, client_encoder, compress=compress)
                cached = (snapshot, body)
                self._entries[key] = cached
        tail = encoder(self._process_registry)
        headers = [("Content-Type", content_type)]
        if compress:
            headers.append(("Content-Encoding", "gzip"))
            tail = gzip.compress(tail, compresslevel=1)
        return cached[1] + tail, headers


class WebServer:
    def __init__(self, app: WebApp, host: str, port: int, web_config: WebConfigSource | None = None) -> None:
        server_class = _IPv6ThreadingServer if ":" in host else _ThreadingServer
        wsgi_app: Any = app
        if web_config is not None:
            wsgi_app = AuthMiddleware(app, lambda: web_config.current()[0])
        self._server = make_server(host, port, wsgi_app, server_class=server_class, handler_class=_QuietHandler)
        self._server.web_config = web_config
        self.tls = web_config is not None and web_config.current()[1] is not None
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
