"""The HTTP interface: ``/metrics``, ``/``, ``/-/healthy``, ``/-/ready``, ``/-/reload``.

``/metrics`` is prometheus-client's WSGI app (gzip and OpenMetrics negotiation)
over a registry holding only the snapshot collector and the process collectors, so
a scrape renders the latest snapshot and never waits on a probe.
"""

from __future__ import annotations

import logging
import socket
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

from exporter.collector import SnapshotCollector
from exporter.multi_target import ProbeRefused
from exporter.status_page import render_status
from exporter.store import ResultStore

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
ProbeHandler = Callable[[str, str, float | None], bytes]  # (module, target, scrape timeout) -> exposition


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _IPv6ThreadingServer(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
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
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(store))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._metrics = make_wsgi_app(self.registry)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
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


class WebServer:
    def __init__(self, app: WebApp, host: str, port: int) -> None:
        server_class = _IPv6ThreadingServer if ":" in host else _ThreadingServer
        self._server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
