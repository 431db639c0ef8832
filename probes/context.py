"""A probe run: the ``Probe`` protocol every kind implements, and the per-run
``ProbeContext`` with its timed phases.

A probe kind is a pair (Settings dataclass, Probe class) registered in
``probes.kinds.KINDS``.  The Probe is built once from its settings (the module
configuration) and is then asked two things by the scheduler:

* ``targets()``: what to probe this round (file paths, ``host:port``, ...).  Errors
  found while discovering are reported through ``Discovery.errors`` and never raise.
  A probe that can tell, while discovering, that a target's result would be the
  same as its last run's (files: an unchanged file) hands that result back in
  ``Discovery.unchanged``; the scheduler then publishes it without a run.
* ``run(target, ctx) -> ProbeResult``: probe one target.  Expected failures are
  data (a ``ProbeResult`` with ``success=False`` and a typed ``reason``); an
  exception escaping ``run`` is a bug, which the scheduler turns into
  ``Reason.INTERNAL_ERROR``.

A probe times its steps with ``with ctx.phase("connect") as phase: ...``: the timing
goes to ``ProbeResult.phases`` and, when the run is traced, the step becomes a child
span of the run (``exporter.tracing``).  Probes never import OpenTelemetry.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Protocol

from probes.reasons import Reason
from probes.result import Discovery, ProbeResult

AttributeValue = str | bool | int | float


class PhaseSpan(Protocol):
    """A span opened for one phase of a run (see ``ProbeContext.phase``).  Implemented
    by ``exporter.tracing``; probes never import OpenTelemetry themselves."""

    def set_attribute(self, key: str, value: AttributeValue) -> None: ...

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue]) -> None: ...

    def end(self, elapsed_ns: int, error_type: str | None, message: str) -> None: ...


class RunTracer(Protocol):
    """Opens phase spans below the run's root span (or below another phase)."""

    def start_phase(self, name: str, parent: PhaseSpan | None, started_ns: int) -> PhaseSpan: ...

    def set_attribute(self, key: str, value: AttributeValue) -> None: ...


class Phase:
    """One timed phase of a run: ``with ctx.phase("tls.handshake") as phase: ...``.

    On exit the phase's duration goes to ``ctx.phases`` (top-level phases only, so
    that they add up to at most the run's duration) and, when the run is traced, a
    child span with the same duration is ended.  A phase left by an exception, or
    marked with ``fail(reason)``, ends with status ERROR and ``error.type``.  Without
    a tracer this costs two clock reads and an append (docs/tracing.md)."""

    __slots__ = ("_ctx", "_error", "_message", "_span", "_started", "name")

    def __init__(self, ctx: ProbeContext, name: str) -> None:
        self._ctx = ctx
        self.name = name
        self._span: PhaseSpan | None = None
        self._error: str | None = None
        self._message = ""
        self._started = 0

    def __enter__(self) -> Phase:
        ctx = self._ctx
        self._started = time.monotonic_ns()
        if ctx.tracer is not None:
            parent = ctx._open[-1] if ctx._open else None
            self._span = ctx.tracer.start_phase(self.name, parent, self._started)
            ctx._open.append(self._span)
        else:
            ctx._depth += 1
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        elapsed = time.monotonic_ns() - self._started
        ctx = self._ctx
        span = self._span
        if span is not None:
            ctx._open.pop()
            top_level = not ctx._open
            if exc is not None and self._error is None:
                # A probe's own failure carries a Reason and a secret-free message;
                # anything else is a bug, named by its type only.
                reason = getattr(exc, "reason", None)
                if isinstance(reason, Reason):
                    self._error, self._message = reason.value, str(exc)
                else:
                    self._error = type(exc).__name__
            span.end(elapsed, self._error, self._message)
        else:
            ctx._depth -= 1
            top_level = ctx._depth == 0
        if top_level:
            ctx.phases.append((self.name, elapsed / 1e9))

    @property
    def traced(self) -> bool:
        return self._span is not None

    def set(self, key: str, value: AttributeValue) -> None:
        """An attribute on this phase's span (nothing when the run is not traced)."""
        if self._span is not None:
            self._span.set_attribute(key, value)

    def event(self, name: str, **attributes: AttributeValue) -> None:
        if self._span is not None:
            self._span.add_event(name, attributes)

    def fail(self, reason: Reason, message: str = "") -> None:
        """Mark the phase failed without raising (the run goes on to report it)."""
        self._error = reason.value
        self._message = message


@dataclass
class ProbeContext:
    """Per-run facilities handed to ``Probe.run``.

    ``tracer`` is set by the scheduler when the run is traced; probes only see it
    through ``phase()`` and ``set_attribute()``, both cheap when it is None."""

    deadline: float  # time.monotonic() value after which the run must give up
    probe_name: str = ""
    phases: list[tuple[str, float]] = field(default_factory=list)
    tracer: RunTracer | None = None
    _open: list[PhaseSpan] = field(default_factory=list, init=False, repr=False)  # traced phases, innermost last
    _depth: int = field(default=0, init=False, repr=False)  # untraced phases open

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def record_phase(self, name: str, seconds: float) -> None:
        self.phases.append((name, seconds))

    def phase(self, name: str) -> Phase:
        return Phase(self, name)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """An attribute on the run's root span (nothing when the run is not traced)."""
        if self.tracer is not None:
            self.tracer.set_attribute(key, value)


class Probe(Protocol):
    """One configured probe (a module config) able to probe its targets.

    Class attributes describe the kind to the scheduler and the renderer:

    * ``target_reasons``: the reasons whose per-target failure counters start at 0
      (for burn-rate alerts on endpoints).  Kinds with very many targets (files)
      leave it empty: their counters appear on the first failure, and the
      ``source_reasons`` counters of the whole source are pre-initialised instead.
    * ``concurrent_targets``: targets are network endpoints and may run in parallel.
    * ``keeps_last_good``: a failing target keeps exporting its last good
      certificates for up to three intervals (a network blip must not make expiry
      series vanish); local kinds report what is on disk now.

    Optional, read by the scheduler with a default when absent (most kinds need none):

    * ``shards_itself`` (False): the probe applies ``ProbeDefaults.shard`` itself
      (kubernetes: by namespace, before parsing) instead of the scheduler filtering
      its targets.
    * ``traced_runs`` (True): False for a kind whose run only reads a cache, so a run
      makes no span.
    * ``runs_in_event_loop`` (False): True for a kind whose runs wait only through
      ``probes.cpu_slots`` (``wait_ready``, ``blocking``), so that a round's targets can
      run as greenlets in the scheduler's event loops (``probes.event_loop``) instead
      of a thread each.
    * ``close()``: called when the probe's config is replaced or the daemon stops, for
      kinds holding threads or connections (the kubernetes watches).
    """

    kind: ClassVar[str]
    target_reasons: ClassVar[tuple[Reason, ...]]
    source_reasons: ClassVar[tuple[Reason, ...]]
    concurrent_targets: ClassVar[bool]
    keeps_last_good: ClassVar[bool]

    def targets(self) -> Discovery: ...

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult: ...
