"""OpenTelemetry traces of probe runs: one root span per run, a child per phase.

Contract (docs/tracing.md):

* Off unless configured: a ``tracing:`` section in the config, or one of
  ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
  ``OTEL_TRACES_EXPORTER=otlp`` in the environment.  ``OTEL_SDK_DISABLED=true``
  turns it off whatever else says, ``OTEL_TRACES_EXPORTER=none`` when there is no
  section.  Off costs a probe run one ``is None`` test per phase.
* On: a ``TracerProvider`` (resource: ``service.name`` = ``certscope`` unless
  ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` or the section says otherwise)
  with a ``BatchSpanProcessor`` and the OTLP exporter, http/protobuf by default,
  grpc on request.  Endpoint, protocol, headers, TLS and timeout follow the
  standard ``OTEL_EXPORTER_OTLP_[TRACES_]*`` variables; the section's fields win.
* A run's root span ``probe <kind>`` carries the probe name, kind and target and,
  when it ends, the semantic-convention attributes of what the run saw
  (``server.*``, ``network.peer.*``, ``tls.*``); a failed run has status ERROR and
  ``error.type`` = its reason.  Phase spans come from ``ProbeContext.phase`` and
  last exactly as long as the phase timings in ``ProbeResult.phases``: every time
  is taken from the monotonic clock and placed on the wall clock through one
  anchor per run, so children never stray outside their parent.
* The exporter never blocks a probe: spans wait in a bounded queue (a full queue
  drops the oldest), exports run on the processor's own thread, and a failing or
  slow collector is logged once when it starts failing and once when it recovers
  (the SDK's per-batch warnings are held back).  ``shutdown`` flushes for at most
  ``shutdown_timeout`` seconds.
* Nothing secret goes into a span: no URL userinfo, no headers, no key material;
  messages are the probes' own, which are secret-free by contract.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, format_trace_id
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.config import TracingSettings
from probes.context import AttributeValue, PhaseSpan
from probes.kinds import hooks_of
from probes.metrics import SpanAttributes
from probes.reasons import Reason
from probes.result import ProbeResult

log = logging.getLogger(__name__)

SCOPE = "certscope.probes"
DEFAULT_SERVICE_NAME = "certscope"
MAX_SOURCE_ERROR_EVENTS = 10  # per run; a directory of broken files must not make a huge span
_TRUE = ("true", "1", "yes", "on")


def tracing_wanted(settings: TracingSettings | None, environ: Mapping[str, str] = os.environ) -> tuple[bool, str]:
    """(on?, why) from the config section and the standard variables."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False, "OTEL_SDK_DISABLED is set"
    if settings is not None:
        return settings.enabled, "tracing section" + ("" if settings.enabled else " says enabled: false")
    exporters = [e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if "otlp" in exporters:
        return True, "OTEL_TRACES_EXPORTER=otlp"
    if exporters:
        return False, f"OTEL_TRACES_EXPORTER={','.join(exporters)} (certscope exports OTLP only)"
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if environ.get(name):
            return True, f"{name} is set"
    return False, "not configured"


def trace_protocol(settings: TracingSettings | None, environ: Mapping[str, str] = os.environ) -> str:
    return (
        (settings.protocol if settings else None)
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()


def redact_url(url: str) -> str:
    """``url`` without its userinfo (user:password@), for logs and spans."""
    if "://" not in url or "@" not in url:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def build_resource(settings: TracingSettings | None, environ: Mapping[str, str] = os.environ) -> Resource:
    """service.name: the section, else OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES,
    else ``certscope``; the section's resource_attributes override the variables."""
    from_env = OTELResourceDetector().detect().attributes
    attributes: dict[str, AttributeValue] = {"service.version": __version__}
    if "service.name" not in from_env:
        attributes["service.name"] = DEFAULT_SERVICE_NAME
    if settings is not None:
        attributes.update(settings.resource_attributes)
        if settings.service_name:
            attributes["service.name"] = settings.service_name
    # Resource.create applies the OTEL_* variables first, then ``attributes``.
    return Resource.create(attributes)


# -- the export path: never blocks a probe, logs state changes only -------------------


class ExportHealth:
    """Export outcomes and drops, logged once per state change, and counted."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self.failing = False
        self.dropping = False
        self.exported_spans = 0
        self.failed_spans = 0  # handed to the exporter, not accepted by the collector
        self.dropped_spans = 0  # never handed over: the queue was full
        self._dropped_at_change = 0
        self.last_detail = ""

    def exported(self, result: SpanExportResult, count: int, detail: str) -> None:
        with self._lock:
            if result is SpanExportResult.SUCCESS:
                self.exported_spans += count
                if self.failing or self.dropping:
                    lost = self.failed_spans + self.dropped_spans - self._dropped_at_change
                    log.info("trace export to %s works again; %d spans were lost meanwhile", self.endpoint, lost)
                self.failing = self.dropping = False
                self._dropped_at_change = self.failed_spans + self.dropped_spans
                return
            self.failed_spans += count
            if not self.failing:
                self.failing = True
                self._dropped_at_change = self.failed_spans + self.dropped_spans - count
                log.warning(
                    "trace export to %s fails, spans are dropped until it recovers (logged once): %s",
                    self.endpoint,
                    detail or self.last_detail or "no detail",
                )

    def dropped(self, queue_size: int) -> None:
        with self._lock:
            self.dropped_spans += 1
            if not self.dropping and not self.failing:
                self.dropping = True
                self._dropped_at_change = self.failed_spans + self.dropped_spans - 1
                log.warning(
                    "trace queue full (%d spans): the collector at %s is slower than the probes; "
                    "the oldest spans are dropped (logged once)",
                    queue_size,
                    self.endpoint,
                )


class _WatchedExporter(SpanExporter):
    """The OTLP exporter, reporting each outcome to ``ExportHealth``."""

    def __init__(self, inner: SpanExporter, health: ExportHealth, held: _HeldLogs) -> None:
        self._inner = inner
        self._health = health
        self._held = held

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._held.last = ""
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # noqa: BLE001 - an exporter bug must not kill the export thread
            result, detail = SpanExportResult.FAILURE, f"{type(exc).__name__}"
        else:
            detail = self._held.last
        self._health.exported(result, len(spans), detail)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _BoundedBatchSpanProcessor(BatchSpanProcessor):
    """``BatchSpanProcessor`` that notices drops (its queue keeps the newest
    spans when full) and bounds its shutdown."""

    def __init__(self, exporter: SpanExporter, health: ExportHealth, max_queue_size: int, shutdown_ms: int) -> None:
        # A batch may not exceed the queue (the SDK refuses it); 512 is its default.
        super().__init__(exporter, max_queue_size=max_queue_size, max_export_batch_size=min(512, max_queue_size))
        self._health = health
        self._max_queue = max_queue_size
        self._shutdown_ms = shutdown_ms
        # The SDK's queue (a bounded deque); absent in an SDK that changed it, and
        # then drops go uncounted but still happen.
        self._queue: Any = getattr(getattr(self, "_batch_processor", None), "_queue", None)

    def on_end(self, span: ReadableSpan) -> None:
        if self._queue is not None and len(self._queue) >= self._max_queue and span.context.trace_flags.sampled:
            self._health.dropped(self._max_queue)
        super().on_end(span)

    def shutdown(self) -> None:
        self._batch_processor.shutdown(timeout_millis=self._shutdown_ms)


class _HeldLogs(logging.Handler):
    """Takes the OTLP exporters' per-batch warnings off the log: their gist goes
    into the one state-change message instead."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.last = record.getMessage()[:300]
        except Exception:  # noqa: BLE001 - a bad log record must not break exporting
            self.last = str(record.msg)[:300]


_held_logs = _HeldLogs()
_log_setup_done = False


def _hold_sdk_logs() -> _HeldLogs:
    global _log_setup_done
    if not _log_setup_done:
        exporter_log = logging.getLogger("opentelemetry.exporter.otlp")
        exporter_log.addHandler(_held_logs)
        exporter_log.propagate = False
        # The batch processor warns "Queue full" for every span it drops: a log
        # record each (~40 us) exactly when the collector is down.  A level test
        # is all it costs at ERROR; ExportHealth reports the drops instead.
        logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)
        _log_setup_done = True
    return _held_logs


def _span_exporter(settings: TracingSettings | None, protocol: str) -> tuple[SpanExporter, str]:
    """(exporter, endpoint for logs)."""
    endpoint = settings.endpoint if settings else None
    timeout = float(settings.export_timeout) if settings and settings.export_timeout else None
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        shown = (
            endpoint
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or "http://localhost:4317"
        )
        return GrpcExporter(endpoint=endpoint, timeout=timeout), redact_url(shown)
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        url = endpoint.rstrip("/") + "/v1/traces" if endpoint else None
        base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        shown = (
            url
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or (base.rstrip("/") + "/v1/traces" if base else "http://localhost:4318/v1/traces")
        )
        return HttpExporter(endpoint=url, timeout=timeout), redact_url(shown)
    raise ValueError(f"unsupported OTLP protocol {protocol!r} (use http/protobuf or grpc)")


# -- spans of one run ------------------------------------------------------------------


class _PhaseSpan:
    __slots__ = ("_run", "_span", "_start")

    def __init__(self, run: RunTrace, span: Span, start_wall_ns: int) -> None:
        self._run = run
        self._span = span
        self._start = start_wall_ns

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue]) -> None:
        self._span.add_event(name, dict(attributes), timestamp=self._run.wall_ns(time.monotonic_ns()))

    def end(self, elapsed_ns: int, error_type: str | None, message: str) -> None:
        if error_type:
            self._span.set_attribute("error.type", error_type)
            self._span.set_status(Status(StatusCode.ERROR, message or None))
        self._span.end(end_time=self._start + elapsed_ns)


class RunTrace:
    """The spans of one probe run (a ``probes.context.RunTracer``)."""

    __slots__ = ("_kind_attributes", "_mono", "_tracer", "_wall", "root")

    def __init__(self, tracer: trace.Tracer, name: str, kind: str, target: str) -> None:
        self._tracer = tracer
        self._kind_attributes = hooks_of(kind).span_attributes
        self._wall = time.time_ns()
        self._mono = time.monotonic_ns()
        self.root = tracer.start_span(
            f"probe {kind}",
            context=Context(),  # always a new trace, whatever thread-local context there is
            kind=SpanKind.INTERNAL,
            attributes={
                "certscope.probe.name": name,
                "certscope.probe.kind": kind,
                "certscope.probe.target": redact_url(target),
            },
            start_time=self._wall,
        )

    def wall_ns(self, monotonic_ns: int) -> int:
        return self._wall + (monotonic_ns - self._mono)

    @property
    def recording(self) -> bool:
        return self.root.is_recording()

    def start_phase(self, name: str, parent: PhaseSpan | None, started_ns: int) -> PhaseSpan:
        parent_span = parent._span if isinstance(parent, _PhaseSpan) else self.root
        start = self.wall_ns(started_ns)
        span = self._tracer.start_span(
            name, context=trace.set_span_in_context(parent_span), kind=SpanKind.INTERNAL, start_time=start
        )
        return _PhaseSpan(self, span, start)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.root.set_attribute(key, value)

    def finish(self, result: ProbeResult) -> ProbeResult:
        """End the root span with what ``result`` says; the result gains the trace id.
        Never raises: a tracing bug must cost the trace, not the probe's result."""
        root = self.root
        try:
            _describe_result(root, result, self._kind_attributes)
        except Exception:
            log.exception("cannot describe probe run %s on its span", result.reason.value)
        finally:
            root.end(end_time=self.wall_ns(time.monotonic_ns()))
        return replace(result, trace_id=format_trace_id(root.get_span_context().trace_id))


def _describe_result(root: Span, result: ProbeResult, kind_attributes: SpanAttributes | None) -> None:
    # One set_attributes call: each set_attribute takes the span's lock and checks
    # the value, which adds up over twenty attributes a run.
    attributes: dict[str, AttributeValue] = {
        "certscope.probe.success": result.success,
        "certscope.certificates": len(result.certificates),
    }
    if kind_attributes is not None:  # what the kind saw (tls: server.*, tls.*)
        kind_attributes(result, attributes)
    if not result.success:
        attributes["error.type"] = result.reason.value
    root.set_attributes(attributes)
    for error in result.errors[:MAX_SOURCE_ERROR_EVENTS]:
        root.add_event(
            "certscope.source_error", {"error.type": error.reason.value, "certscope.item": redact_url(error.item)}
        )
    if not result.success:
        root.set_status(Status(StatusCode.ERROR, result.message or result.reason.value))


# -- the switch -------------------------------------------------------------------------


class Tracing:
    """Tracing of probe runs, on or off.  ``start_run`` returns None when off or
    when the run is not sampled, so the caller's only cost is that test."""

    def __init__(
        self,
        provider: TracerProvider | None = None,
        health: ExportHealth | None = None,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self._provider = provider
        self.health = health
        self._tracer = provider.get_tracer(SCOPE, __version__) if provider is not None else None
        self._shutdown_timeout = shutdown_timeout

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def start_run(self, name: str, kind: str, target: str) -> RunTrace | None:
        if self._tracer is None:
            return None
        try:
            run = RunTrace(self._tracer, name, kind, target)
        except Exception:  # the run goes on untraced
            log.exception("cannot start the span of probe %s", name)
            return None
        if not run.recording:
            run.root.end()
            return None
        return run

    def internal_error(self, run: RunTrace, exc: BaseException) -> None:
        """A probe raised: name the exception type only (its text may hold anything)."""
        run.root.add_event("exception", {"exception.type": type(exc).__qualname__})
        run.root.set_attribute("error.type", Reason.INTERNAL_ERROR.value)

    def shutdown(self) -> None:
        """Flush what is queued, waiting at most ``shutdown_timeout`` seconds."""
        provider = self._provider
        if provider is None:
            return
        self._provider = None
        self._tracer = None
        done = threading.Thread(target=provider.shutdown, name="trace-shutdown", daemon=True)
        done.start()
        done.join(self._shutdown_timeout)
        if done.is_alive():
            log.warning(
                "trace export did not finish within %.1fs at shutdown; queued spans are lost", self._shutdown_timeout
            )


TRACING_OFF = Tracing()


class TracingCollector(Collector):
    """Self-metrics of the span export, present only while tracing is on."""

    def __init__(self, current: Callable[[], Tracing]) -> None:
        self._current = current

    def collect(self) -> Iterable[Metric]:
        health = self._current().health
        if health is None:
            return []
        spans = CounterMetricFamily(
            "certscope_trace_spans",
            "Spans of probe runs by outcome: exported; failed (the collector refused or did not answer); "
            "dropped (the export queue was full).",
            labels=["outcome"],
        )
        spans.add_metric(["exported"], health.exported_spans)
        spans.add_metric(["failed"], health.failed_spans)
        spans.add_metric(["dropped"], health.dropped_spans)
        up = GaugeMetricFamily("certscope_trace_export_up", "1 unless the last span export failed.")
        up.add_metric([], 0 if health.failing else 1)
        return [spans, up]

    def describe(self) -> Iterable[Metric]:
        return []


def setup_tracing(settings: TracingSettings | None, environ: Mapping[str, str] = os.environ) -> Tracing:
    """A ``Tracing`` as configured, or ``TRACING_OFF``.  Never raises: a bad OTEL_*
    value is logged and leaves tracing off, since traces are not worth a dead daemon."""
    wanted, why = tracing_wanted(settings, environ)
    if not wanted:
        log.debug("tracing off: %s", why)
        return TRACING_OFF
    protocol = trace_protocol(settings, environ)
    try:
        held = _hold_sdk_logs()
        exporter, endpoint = _span_exporter(settings, protocol)
        health = ExportHealth(endpoint)
        ratio = settings.sample_ratio if settings else None
        sampler = ParentBased(TraceIdRatioBased(ratio)) if ratio is not None else None
        provider = TracerProvider(resource=build_resource(settings, environ), sampler=sampler)
        shutdown_seconds = float(settings.shutdown_timeout) if settings else 5.0
        provider.add_span_processor(
            _BoundedBatchSpanProcessor(
                _WatchedExporter(exporter, health, held),
                health,
                max_queue_size=settings.max_queue_size if settings else 2048,
                shutdown_ms=int(shutdown_seconds * 1000),
            )
        )
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.error("tracing off: cannot set up the OTLP exporter: %s", exc)
        return TRACING_OFF
    tracing = Tracing(provider, health, shutdown_seconds)
    log.info("tracing on (%s): OTLP %s to %s", why, protocol, endpoint)
    return tracing
