"""A small OTLP trace receiver for tests: gRPC and HTTP/protobuf on 127.0.0.1.

No OpenTelemetry Collector, Jaeger or Tempo can be installed here
(../shared/reference/real-components.md §6), so the tests receive spans with the
official generated stubs (``opentelemetry-proto``) behind a real ``grpcio`` server
and a real HTTP server, on ports the OS picks.  What arrives is decoded into
``ReceivedSpan`` records; request headers are kept so a test can check that
``OTEL_EXPORTER_OTLP_HEADERS`` reached the wire.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR
STATUS_UNSET = trace_pb2.Status.STATUS_CODE_UNSET


@dataclass(frozen=True)
class ReceivedSpan:
    via: str  # grpc | http
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str  # '' for a root span
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    events: tuple[tuple[str, dict[str, Any]], ...]
    resource: dict[str, Any]
    scope: str

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


@dataclass
class OtlpReceiver:
    """``with OtlpReceiver() as receiver:`` — ``grpc_endpoint`` and ``http_endpoint``
    (base URL; the exporter adds /v1/traces) are ready on entry."""

    grpc_port: int = 0
    http_port: int = 0
    _spans: list[ReceivedSpan] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _grpc: Any = None
    _http: ThreadingHTTPServer | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def record(self, request: trace_service_pb2.ExportTraceServiceRequest, via: str, headers: dict[str, str]) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            via=via,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes=_attributes(span.attributes),
                            status_code=span.status.code,
                            status_message=span.status.message,
                            events=tuple((e.name, _attributes(e.attributes)) for e in span.events),
                            resource=resource,
                            scope=scope_spans.scope.name,
                        )
                    )
        with self._lock:
            self._spans.extend(received)
            self.headers.append(headers)
            self.requests += 1

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def traces(self) -> dict[str, list[ReceivedSpan]]:
        """trace id -> its spans."""
        grouped: dict[str, list[ReceivedSpan]] = {}
        for span in self.spans():
            grouped.setdefault(span.trace_id, []).append(span)
        return grouped

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], Any], timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = predicate(self.spans())
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"spans not received within {timeout}s; got {[s.name for s in self.spans()]}")

    # -- servers ------------------------------------------------------------------

    def start(self) -> Self:
        receiver = self

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(
                self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
            ) -> trace_service_pb2.ExportTraceServiceResponse:
                receiver.record(request, "grpc", {k: v for k, v in context.invocation_metadata()})
                return trace_service_pb2.ExportTraceServiceResponse()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404 if self.path != "/v1/traces" else 415)
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.record(request, "http", {k.lower(): v for k, v in self.headers.items()})
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        self._grpc.start()
        self._http = ThreadingHTTPServer(("127.0.0.1", self.http_port), Handler)
        self._http.daemon_threads = True
        self.http_port = int(self._http.server_address[1])
        threading.Thread(target=self._http.serve_forever, name="otlp-http", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=0).wait(5)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def span_tree(spans: list[ReceivedSpan]) -> Iterator[tuple[int, ReceivedSpan]]:
    """(depth, span) in tree order, children by start time: for messages and docs."""
    children: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        children.setdefault(span.parent_span_id, []).append(span)

    def walk(parent: str, depth: int) -> Iterator[tuple[int, ReceivedSpan]]:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_ns):
            yield depth, span
            yield from walk(span.span_id, depth + 1)

    yield from walk("", 0)


def main() -> None:
    """``python -m tests.otlp_receiver``: serve until stdin closes, printing the two
    endpoints and then, at the end, the number of spans received (for benchmarks,
    which keep the receiver's CPU out of their own process)."""
    import sys

    with OtlpReceiver() as receiver:
        print(receiver.http_endpoint, receiver.grpc_endpoint, flush=True)
        sys.stdin.read()
        print(len(receiver.spans()), flush=True)


if __name__ == "__main__":
    main()
