"""The HTTP interface: ``/metrics``, ``/``, ``/probe``, ``/-/healthy``, ``/-/ready``,
``/-/reload``.

``/metrics`` renders the latest snapshot and never waits on a probe.  Its body is
cached per snapshot and format (:class:`ExpositionCache`); a query string other than
``name[]`` filters does not bypass the cache, and the uncached renders (``name[]``,
the status page) run at most ``MAX_CONCURRENT_RENDERS`` at a time.  Every scrape
shares the one cached body, so concurrent scrapes do not each copy it.  HEAD is
answered like GET without a body (:mod:`exporter.httpserver`).

``/probe`` runs at most ``MAX_CONCURRENT_PROBES`` at a time; over that it answers
503 at once.  ``/-/reload`` answers 403 unless the daemon runs with
``--web.enable-lifecycle`` (as Prometheus does): an unauthenticated POST must not be
able to restart every probe's first round.  SIGHUP reloads either way.

The server (:mod:`exporter.httpserver`) bounds connections, threads and time.  With
a web config (``--web.config.file``, see :mod:`exporter.webconfig`) every accepted
connection is wrapped in the TLS context current at that moment, so a rotated
certificate serves the next connection.  Basic auth and the configured response
headers wrap the WSGI application.
"""

from __future__ import annotations

import gzip
import logging
import math
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.collector import SnapshotCollector
from exporter.exposition import encode_snapshot, encoder_for
from exporter.httpserver import BoundedWSGIServer, BoundedWSGIServer6, HttpLimits
from exporter.multi_target import ProbeRefused
from exporter.status_page import StatusFilter, render_status
from exporter.store import ResultStore
from exporter.webconfig import AuthMiddleware, WebConfigCollector, WebConfigSource

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
ProbeHandler = Callable[[str, str, float | None], bytes]  # (module, target, scrape timeout) -> exposition


DEFAULT_LIMITS = HttpLimits()
MAX_CONCURRENT_PROBES = 8  # /probe runs at once; over it, 503
MAX_CONCURRENT_RENDERS = 2  # uncached renders at once (name[] filters, the status page)
RENDER_WAIT_SECONDS = 10.0  # how long a render waits for its turn before 503


class WebApp:
    """The WSGI application.  ``reload`` returns None on success or the error text;
    None for ``reload`` turns ``/-/reload`` off (403)."""

    def __init__(
        self,
        store: ResultStore,
        ready: Callable[[], bool],
        reload: Callable[[], str | None] | None,
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
        self._exposition_cache = ExpositionCache(store, self.snapshot_registry, self.process_registry)
        self._probe_slots = threading.BoundedSemaphore(MAX_CONCURRENT_PROBES)
        self._render_slots = threading.BoundedSemaphore(MAX_CONCURRENT_RENDERS)

    def register_live(self, collector: Collector) -> None:
        """A collector rendered on every scrape (not cached with the snapshot): the
        daemon's own state, such as the trace exporter's counters."""
        self.process_registry.register(collector)
        self.registry.register(collector)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/-/reload":
            return self._reload_endpoint(method, start_response)
        if method not in ("GET", "HEAD"):
            return _respond(start_response, "405 Method Not Allowed", "Use GET.\n", extra=[("Allow", "GET, HEAD")])
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/":
            wanted = StatusFilter.from_query(parse_qs(environ.get("QUERY_STRING", "")))
            return self._rendered(
                start_response, lambda: render_status(self._store.snapshot(), self._ready(), wanted=wanted)
            )
        if path == "/probe" and self._probe is not None:
            return self._probe_endpoint(environ, start_response)
        if path == "/-/healthy":
            return _respond(start_response, "200 OK", "Healthy.\n")
        if path == "/-/ready":
            if self._ready():
                return _respond(start_response, "200 OK", "Ready.\n")
            return _respond(start_response, "503 Service Unavailable", "Not ready: first round in progress.\n")
        return _respond(start_response, "404 Not Found", "Not found.\n")

    def _metrics(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        accept, encoding = environ.get("HTTP_ACCEPT"), environ.get("HTTP_ACCEPT_ENCODING")
        # Only name[] changes the answer; any other parameter is ignored, never a
        # reason to render the whole exposition again.
        names = parse_qs(environ.get("QUERY_STRING", "")).get("name[]")
        if names:
            return self._rendered(start_response, lambda: self._filtered(names, accept, encoding))
        chunks, headers = self._exposition_cache.get(accept, encoding)
        start_response("200 OK", [*headers, ("Content-Length", str(sum(map(len, chunks))))])
        return chunks  # the cached body itself, shared by every scrape, never copied

    def _filtered(
        self, names: list[str], accept: str | None, encoding: str | None
    ) -> tuple[bytes, list[tuple[str, str]]]:
        encoder, content_type = choose_encoder(accept or "")
        body = encoder(_NameFilter(self.registry, frozenset(names)))
        headers = [("Content-Type", content_type)]
        if gzip_accepted(encoding or ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        return body, headers

    def _rendered(
        self, start_response: StartResponse, render: Callable[[], tuple[bytes, list[tuple[str, str]]] | str]
    ) -> list[bytes]:
        """An uncached render, at most MAX_CONCURRENT_RENDERS at once: each holds a
        whole body in memory."""
        if not self._render_slots.acquire(timeout=RENDER_WAIT_SECONDS):
            return _respond(start_response, "503 Service Unavailable", "Too many renders at once; retry.\n")
        try:
            rendered = render()
        finally:
            self._render_slots.release()
        if isinstance(rendered, str):
            return _respond(start_response, "200 OK", rendered, "text/html; charset=utf-8")
        body, headers = rendered
        start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def _probe_endpoint(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        assert self._probe is not None
        query = parse_qs(environ.get("QUERY_STRING", ""))
        module = query.get("module", [""])[0]
        target = query.get("target", [""])[0]
        header = environ.get("HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS")
        try:
            scrape_timeout = float(header) if header else None
        except ValueError:
            scrape_timeout = math.nan
        if scrape_timeout is not None and not (math.isfinite(scrape_timeout) and scrape_timeout > 0):
            return _respond(start_response, "400 Bad Request", "bad X-Prometheus-Scrape-Timeout-Seconds\n")
        if not self._probe_slots.acquire(blocking=False):
            return _respond(
                start_response,
                "503 Service Unavailable",
                f"{MAX_CONCURRENT_PROBES} /probe requests are already running; retry.\n",
                extra=[("Retry-After", "1")],
            )
        try:
            exposition = self._probe(module, target, scrape_timeout)
        except ProbeRefused as refused:
            reason = {400: "400 Bad Request", 403: "403 Forbidden", 404: "404 Not Found"}[refused.status]
            return _respond(start_response, reason, f"{refused}\n")
        except Exception:  # a bug answers 500 and is logged; the server goes on
            log.exception("/probe module=%r target=%r failed", module[:200], target[:200])
            return _respond(start_response, "500 Internal Server Error", "The probe failed; see the log.\n")
        finally:
            self._probe_slots.release()
        headers = [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(exposition)))]
        start_response("200 OK", headers)
        return [exposition]

    def _reload_endpoint(self, method: str, start_response: StartResponse) -> list[bytes]:
        if self._reload is None:
            return _respond(
                start_response,
                "403 Forbidden",
                "The reload endpoint is off; start certscope with --web.enable-lifecycle, or send SIGHUP.\n",
            )
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


class _NameFilter:
    """A registry's families restricted to ``name[]``: a family named, or the samples
    named (``process_cpu_seconds_total``).  prometheus-client's restricted registry
    finds families only through collectors that describe themselves, which the
    snapshot collector does not (it would answer nothing for certscope's own)."""

    def __init__(self, registry: CollectorRegistry, names: frozenset[str]) -> None:
        self._registry = registry
        self._names = names

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            if family.name in self._names:
                yield family
                continue
            samples = [sample for sample in family.samples if sample.name in self._names]
            if samples:
                restricted = Metric(family.name, family.documentation, family.type, family.unit)
                restricted.samples = samples
                yield restricted


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

    def get(self, accept: str | None, accept_encoding: str | None) -> tuple[list[bytes], list[tuple[str, str]]]:
        """The body as chunks (the cached snapshot part, then the process's part) and
        its headers."""
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
        return [cached[1], tail], headers


class WebServer:
    def __init__(
        self,
        app: WebApp,
        host: str,
        port: int,
        web_config: WebConfigSource | None = None,
        limits: HttpLimits = DEFAULT_LIMITS,
    ) -> None:
        server_class = BoundedWSGIServer6 if ":" in host else BoundedWSGIServer
        wsgi_app: Any = app
        if web_config is not None:
            wsgi_app = AuthMiddleware(app, lambda: web_config.current()[0])
            app.register_live(WebConfigCollector(web_config))
        self._server = server_class((host, port), limits, web_config)
        self._server.set_app(wsgi_app)
        self.tls = web_config is not None and web_config.current()[1] is not None
        self._thread = threading.Thread(target=self._server.serve, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def server(self) -> BoundedWSGIServer:
        return self._server

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.stop()
        if self._thread.is_alive():
            self._thread.join(5)
        self._server.server_close()
