"""Latest results per (probe, target), published as immutable snapshots.

Writers (scheduler threads) publish one probe's whole round at a time; the store
derives the new ``ProbeState`` from the previous one (counters, rotations, last
good certificates) and swaps the snapshot reference under a lock.  Readers (the
collector, the status page) take ``snapshot()`` without locking and never see a
half-written round.  Facts joining several probes (served vs stored certificates,
shared keys) are computed here, each time the probes' states change, and kept on
the snapshot (``Snapshot.cross``): rendering a snapshot reads nothing else.  What a
kind carries across runs (its tallies and histograms, declared by its hooks in
probes/metrics.py) is folded here too, without naming the kind.

A target missing from a round is gone: its series disappear with it.  A target the
round carries over (``Discovery.carried``: not run, still there) keeps its state as it
was, counters included.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from exporter.crossprobe import EMPTY_INDEX, CrossProbeIndex, cross_probe_index
from probes.kinds import hooks_of
from probes.metrics import HistogramFamily, Tally
from probes.reasons import Reason
from probes.result import CertObservation, Discovery, ProbeResult, SourceError

_EMPTY: Mapping[str, int] = MappingProxyType({})
_NO_TALLIES: Mapping[str, Any] = MappingProxyType({})
_NO_ROTATIONS: Mapping[tuple[int, str], Rotation] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Rotation:
    fingerprint: str
    count: int = 0
    last_timestamp: float | None = None  # wall clock of the last change seen


@dataclass(frozen=True, slots=True)
class TargetState:
    result: ProbeResult
    last_run: float  # wall clock
    last_success: float | None
    runs_total: int
    failures_total: Mapping[str, int]  # reason -> count; only reasons seen
    # What is exported: this run's certificates, or the last good ones for a while.
    certificates: tuple[CertObservation, ...]
    certificates_from_last_good: bool
    rotations: Mapping[tuple[int, str], Rotation]  # by certificate (index, role)
    # The kind's values carried from run to run (probes.metrics.Tally), by name.
    tallies: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SourceState:
    up: bool
    objects: int
    errors_total: Mapping[str, int]  # reason -> count, cumulative
    last_errors: frozenset[tuple[str, str]]  # (item, reason) of the latest round
    round_duration_seconds: float
    scopes: tuple[tuple[str, bool], ...] = ()  # (scope, up) for sources made of parts
    watch_restarts: tuple[tuple[str, int], ...] = ()  # (reason, cumulative count)
    targets_dropped: int = 0  # found but left out by the source's cap in the last round


@dataclass(frozen=True, slots=True)
class ProbeInfo:
    """What the renderer needs to know about a configured probe."""

    name: str
    kind: str
    interval: float
    warning_seconds: float
    critical_seconds: float
    labels: Mapping[str, str]
    target_reasons: tuple[Reason, ...]  # per-target failure counters pre-initialised to 0
    source_reasons: tuple[Reason, ...]
    keeps_last_good: bool


# Whole runs: a handshake plus revocation checks and an HTTP request, up to the timeout.
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class Exemplar:
    """A traced observation: which run (trace) put a value in a bucket, and when."""

    trace_id: str
    value: float
    timestamp: float  # wall clock


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative-on-render histogram: per-bucket (not cumulative) counts, and per
    bucket the latest traced observation (OpenMetrics exemplars)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # one per bound, plus one for +Inf
    total: float = 0.0
    count: int = 0
    exemplars: tuple[Exemplar | None, ...] = ()  # () until a traced observation; else one per count

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, (0,) * (len(bounds) + 1))

    def observe_all(self, values: Sequence[float], traces: Sequence[tuple[str, float]] = ()) -> Histogram:
        """Add ``values``; ``traces``, when given, holds (trace id or '', wall-clock
        time) for each value and makes the traced ones their bucket's exemplar."""
        counts = list(self.counts)
        exemplars = list(self.exemplars)
        for position, value in enumerate(values):
            bucket = bisect.bisect_left(self.bounds, value)
            counts[bucket] += 1
            if traces and traces[position][0]:
                if not exemplars:
                    exemplars = [None] * len(counts)
                exemplars[bucket] = Exemplar(traces[position][0], value, traces[position][1])
        return Histogram(
            self.bounds, tuple(counts), self.total + sum(values), self.count + len(values), tuple(exemplars)
        )


@dataclass(frozen=True, slots=True)
class ProbeState:
    info: ProbeInfo
    targets: Mapping[str, TargetState]
    source: SourceState | None  # None until the first round finished
    rounds: int = 0
    durations: Histogram = Histogram.empty(PROBE_BUCKETS)  # run seconds, all targets
    # The kind's own histograms (probes.metrics.HistogramFamily), by family name.
    histograms: Mapping[str, Histogram] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReloadState:
    successful: bool = True
    last_success_timestamp: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything ``/metrics`` and the status page show.  Build one with new probe
    states through ``snapshot_of`` or ``with_probes``, which compute ``cross``."""

    probes: Mapping[str, ProbeState] = field(default_factory=dict)
    reload: ReloadState = ReloadState()
    config_source: str = ""
    cross: CrossProbeIndex = EMPTY_INDEX  # facts joining the probes, computed from ``probes``


def snapshot_of(
    probes: Mapping[str, ProbeState], reload: ReloadState = ReloadState(), config_source: str = ""
) -> Snapshot:
    """A snapshot of ``probes`` with their cross-probe facts."""
    return with_probes(Snapshot(reload=reload, config_source=config_source), probes)


def with_probes(snapshot: Snapshot, probes: Mapping[str, ProbeState]) -> Snapshot:
    """``snapshot`` with new probe states, reusing what its cross-probe facts
    computed from the states that stay."""
    return replace(snapshot, probes=probes, cross=cross_probe_index(tuple(probes.values()), snapshot.cross))


@dataclass(frozen=True, slots=True)
class Transition:
    """A target whose outcome changed in this round, for state-change logging."""

    target: str
    previous: Reason | None
    current: Reason
    message: str


class ResultStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        # Mappings of one reason to a count, shared by every target at that count: the
        # files of a tree that fail alike, round after round, all hold the same one.
        self._single_failures: dict[tuple[str, int], Mapping[str, int]] = {}

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def configure(self, probes: Sequence[ProbeInfo], config_source: str) -> None:
        """Adopt a new config: keep the state of probes that stay (same name and
        kind), start the new ones empty, drop the removed ones."""
        with self._lock:
            old = self._snapshot.probes
            states: dict[str, ProbeState] = {}
            for info in probes:
                previous = old.get(info.name)
                if previous is not None and previous.info.kind == info.kind:
                    states[info.name] = replace(previous, info=info)
                else:
                    states[info.name] = ProbeState(info=info, targets={}, source=None)
            self._snapshot = replace(with_probes(self._snapshot, states), config_source=config_source)

    def record_reload(self, successful: bool, now: float | None = None) -> None:
        with self._lock:
            previous = self._snapshot.reload
            reload = ReloadState(
                successful=successful,
                last_success_timestamp=(now or time.time()) if successful else previous.last_success_timestamp,
            )
            self._snapshot = replace(self._snapshot, reload=reload)

    def publish_round(
        self,
        info: ProbeInfo,
        discovery: Discovery,
        results: Mapping[str, tuple[ProbeResult, float]],
        round_duration: float,
    ) -> tuple[list[Transition], list[SourceError]]:
        """Publish one round of probe ``info.name``: ``results`` maps target to
        (result, wall-clock finish time).  Returns the outcome transitions and the
        source errors that are new since the previous round (to be logged).
        A round of a probe that is no longer configured is dropped."""
        with self._lock:
            old_state = self._snapshot.probes.get(info.name)
            if old_state is None or old_state.info is not info:
                return [], []  # the config changed while this round ran
            hooks = hooks_of(info.kind)
            transitions: list[Transition] = []
            targets: dict[str, TargetState] = {}
            for target, (result, finished) in results.items():
                previous = old_state.targets.get(target)
                targets[target] = _next_target_state(
                    info, hooks.tallies, previous, result, finished, self._single_failures
                )
                previous_reason = previous.result.reason if previous else None
                if previous_reason != result.reason:
                    transitions.append(Transition(target, previous_reason, result.reason, result.message))
            for target in discovery.carried:
                carried = old_state.targets.get(target)
                if carried is not None and target not in targets:
                    targets[target] = carried
            errors = list(discovery.errors)
            for result, _ in results.values():
                errors.extend(result.errors)
            source = _next_source_state(old_state.source, discovery, errors, round_duration)
            previous_errors = old_state.source.last_errors if old_state.source else frozenset()
            new_errors = [e for e in errors if (e.item, e.reason.value) not in previous_errors]
            histograms = _observe(hooks.histograms, old_state.histograms, results)
            durations = old_state.durations.observe_all(
                [r.duration_seconds for r, _ in results.values()],
                [(r.trace_id, finished) for r, finished in results.values()],
            )
            state = ProbeState(
                info=info,
                targets=targets,
                source=source,
                rounds=old_state.rounds + 1,
                durations=durations,
                histograms=histograms,
            )
            probes = dict(self._snapshot.probes)
            probes[info.name] = state
            self._snapshot = with_probes(self._snapshot, probes)
            return transitions, new_errors


def _observe(
    specs: Sequence[HistogramFamily],
    histograms: Mapping[str, Histogram],
    results: Mapping[str, tuple[ProbeResult, float]],
) -> Mapping[str, Histogram]:
    """The kind's histograms with the values of this round's runs added."""
    if not specs:
        return histograms
    observed: dict[str, Histogram] = {}
    for spec in specs:
        values: list[float] = []
        traces: list[tuple[str, float]] = []
        for result, finished in results.values():
            value = spec.observe(result)
            if value is not None:
                values.append(value)
                traces.append((result.trace_id, finished))
        old = histograms.get(spec.name) or Histogram.empty(spec.bounds)
        observed[spec.name] = old.observe_all(values, traces)
    return MappingProxyType(observed)


def _next_target_state(
    info: ProbeInfo,
    tallies: Sequence[Tally],
    previous: TargetState | None,
    result: ProbeResult,
    finished: float,
    single_failures: dict[tuple[str, int], Mapping[str, int]],
) -> TargetState:
    failures_total = previous.failures_total if previous else _EMPTY
    if not result.success:
        failures_total = _count_failure(failures_total, result.reason.value, single_failures)
    last_success = finished if result.success else (previous.last_success if previous else None)

    certificates = result.certificates
    from_last_good = False
    if (
        not result.success
        and not certificates
        and info.keeps_last_good
        and previous is not None
        and previous.certificates
        and previous.last_success is not None
        and finished - previous.last_success <= 3 * info.interval
    ):
        certificates = previous.certificates
        from_last_good = True

    rotations: dict[tuple[int, str], Rotation] = {}
    old_rotations = previous.rotations if previous else _NO_ROTATIONS
    for observation in certificates:
        location = (observation.index, observation.role)
        fingerprint = observation.cert.fingerprint_sha256
        old = old_rotations.get(location)
        if old is None:
            rotations[location] = Rotation(fingerprint)
        elif old.fingerprint != fingerprint:
            rotations[location] = Rotation(fingerprint, old.count + 1, finished)
        else:
            rotations[location] = old
    if rotations == old_rotations:
        # Nothing rotated: the previous mapping, so that a later round leaves no new
        # dict and proxy behind per target (probes.verify.ChainMemo says why that matters).
        kept_rotations = old_rotations
    else:
        kept_rotations = MappingProxyType(rotations) if rotations else _NO_ROTATIONS

    carried = _NO_TALLIES
    if tallies:
        old_tallies = previous.tallies if previous else _NO_TALLIES
        folded = {}
        for tally in tallies:
            value = tally.update(old_tallies.get(tally.name), result, finished)
            if value is not None:
                folded[tally.name] = value
        carried = MappingProxyType(folded) if folded else _NO_TALLIES
    # Empty mappings are shared: a tree of 50,000 files that are no certificates has
    # no rotations and no tallies, and a dict and its proxy each cost 100 bytes.
    return TargetState(
        tallies=carried,
        result=result,
        last_run=finished,
        last_success=last_success,
        runs_total=(previous.runs_total if previous else 0) + 1,
        failures_total=failures_total,
        certificates=certificates,
        certificates_from_last_good=from_last_good,
        rotations=kept_rotations,
    )


def _count_failure(
    failures: Mapping[str, int], reason: str, single_failures: dict[tuple[str, int], Mapping[str, int]]
) -> Mapping[str, int]:
    """``failures`` with one more failure for ``reason``, as a new read-only mapping
    (one of ``single_failures``, shared, when it holds one reason only)."""
    count = failures.get(reason, 0) + 1
    if len(failures) > 1 or (failures and reason not in failures):
        return MappingProxyType({**failures, reason: count})
    key = (reason, count)
    shared = single_failures.get(key)
    if shared is None:
        if len(single_failures) >= 4096:
            single_failures.clear()
        shared = single_failures[key] = MappingProxyType({reason: count})
    return shared


def _next_source_state(
    previous: SourceState | None, discovery: Discovery, errors: list[SourceError], round_duration: float
) -> SourceState:
    counts = dict(previous.errors_total) if previous else {}
    for error in errors:
        counts[error.reason.value] = counts.get(error.reason.value, 0) + 1
    return SourceState(
        up=discovery.up,
        objects=len(discovery.targets),
        errors_total=MappingProxyType(counts),
        last_errors=frozenset((e.item, e.reason.value) for e in errors),
        round_duration_seconds=round_duration,
        scopes=discovery.scopes,
        watch_restarts=discovery.watch_restarts,
        targets_dropped=discovery.dropped,
    )
