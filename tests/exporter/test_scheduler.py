"""The scheduler in-process, with probe kinds registered for the test: a probe that
raises becomes internal_error and keeps running; rounds of one probe never overlap."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import pytest

from exporter.config import parse_config
from exporter.scheduler import Scheduler, build_plan
from exporter.store import ResultStore
from probes.context import ProbeContext
from probes.kinds import KINDS, ProbeKind
from probes.reasons import Reason
from probes.result import Discovery, ProbeResult
from probes.settings import ProbeDefaults
from tests.fixtures.helpers import wait_for


@dataclass(frozen=True)
class NoSettings:
    pass


class ExplodingProbe:
    kind: ClassVar[str] = "exploding"
    target_reasons: ClassVar[tuple[Reason, ...]] = (Reason.INTERNAL_ERROR,)
    source_reasons: ClassVar[tuple[Reason, ...]] = ()
    concurrent_targets: ClassVar[bool] = True
    keeps_last_good: ClassVar[bool] = False

    def __init__(self, settings: NoSettings, defaults: ProbeDefaults) -> None:
        pass

    def targets(self) -> Discovery:
        return Discovery(("boom", "fine"))

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        if target == "boom":
            raise RuntimeError("a bug")
        return ProbeResult(True, Reason.OK, 0.0)


class SlowProbe:
    kind: ClassVar[str] = "slow"
    target_reasons: ClassVar[tuple[Reason, ...]] = ()
    source_reasons: ClassVar[tuple[Reason, ...]] = ()
    concurrent_targets: ClassVar[bool] = False
    keeps_last_good: ClassVar[bool] = False
    running = 0
    most_at_once = 0
    rounds = 0
    lock = threading.Lock()

    def __init__(self, settings: NoSettings, defaults: ProbeDefaults) -> None:
        pass

    def targets(self) -> Discovery:
        return Discovery(("only",))

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        cls = type(self)
        with cls.lock:
            cls.running += 1
            cls.most_at_once = max(cls.most_at_once, cls.running)
        time.sleep(0.35)  # longer than the 0.1 s interval
        with cls.lock:
            cls.running -= 1
            cls.rounds += 1
        return ProbeResult(True, Reason.OK, 0.35)


@pytest.fixture
def kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KINDS, "exploding", ProbeKind("exploding", NoSettings, ExplodingProbe))
    monkeypatch.setitem(KINDS, "slow", ProbeKind("slow", NoSettings, SlowProbe))


def test_a_raising_probe_is_an_internal_error_and_keeps_running(kinds: None) -> None:
    store = ResultStore()
    scheduler = Scheduler(store)
    scheduler.apply(parse_config("probes: [{name: x, kind: exploding, interval: 100ms}]", "test"))
    try:
        wait_for(lambda: scheduler.ready(), 5, "the first round")
        wait_for(lambda: store.snapshot().probes["x"].targets["boom"].runs_total >= 3, 5, "three rounds")
        boom = store.snapshot().probes["x"].targets["boom"]
        assert boom.result.reason is Reason.INTERNAL_ERROR
        assert boom.result.message == "internal error: RuntimeError"
        assert store.snapshot().probes["x"].targets["fine"].result.success
    finally:
        scheduler.stop()


def test_rounds_of_one_probe_never_overlap(kinds: None) -> None:
    store = ResultStore()
    scheduler = Scheduler(store)
    scheduler.apply(parse_config("global: {concurrency: 4}\nprobes: [{name: s, kind: slow, interval: 100ms}]", "t"))
    try:
        wait_for(lambda: SlowProbe.rounds >= 3, 5, "three slow rounds")
    finally:
        scheduler.stop()
    assert SlowProbe.most_at_once == 1


class VouchingProbe:
    """Vouches for target "kept" in Discovery.unchanged; counts its runs."""

    kind: ClassVar[str] = "vouching"
    target_reasons: ClassVar[tuple[Reason, ...]] = ()
    source_reasons: ClassVar[tuple[Reason, ...]] = ()
    concurrent_targets: ClassVar[bool] = False
    keeps_last_good: ClassVar[bool] = False
    kept = ProbeResult(True, Reason.OK, 0.5, message="kept")
    runs: ClassVar[list[str]] = []

    def __init__(self, settings: NoSettings, defaults: ProbeDefaults) -> None:
        pass

    def targets(self) -> Discovery:
        return Discovery(("kept", "changed"), unchanged={"kept": self.kept})

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        type(self).runs.append(target)
        return self.kept if target == "kept" else ProbeResult(True, Reason.OK, 0.1)


@pytest.mark.parametrize("traced", [False, True])
def test_results_discovery_vouches_for_are_published_without_a_run(
    monkeypatch: pytest.MonkeyPatch, traced: bool
) -> None:
    """Unless runs are traced: then every target runs, so that each keeps its span."""
    from opentelemetry.sdk.trace import TracerProvider

    from exporter.tracing import TRACING_OFF, Tracing

    monkeypatch.setitem(KINDS, "vouching", ProbeKind("vouching", NoSettings, VouchingProbe))
    monkeypatch.setattr(VouchingProbe, "runs", [])
    store = ResultStore()
    scheduler = Scheduler(store, tracing=Tracing(TracerProvider()) if traced else TRACING_OFF)
    scheduler.apply(parse_config("probes: [{name: v, kind: vouching, interval: 100ms}]", "test"))
    try:
        wait_for(lambda: store.snapshot().probes["v"].targets["kept"].runs_total >= 3, 5, "three rounds")
        kept = store.snapshot().probes["v"].targets["kept"]
    finally:
        scheduler.stop()
    assert kept.result.message == "kept" and kept.result.success
    assert ("kept" in VouchingProbe.runs) is traced
    assert VouchingProbe.runs.count("changed") >= 3


class WakingProbe:
    """Targets come and go (as a Kubernetes watch would say); offers the old ones as
    carried and wakes the scheduler when the set changes.  Counts runs per target."""

    kind: ClassVar[str] = "waking"
    target_reasons: ClassVar[tuple[Reason, ...]] = ()
    source_reasons: ClassVar[tuple[Reason, ...]] = ()
    concurrent_targets: ClassVar[bool] = True
    keeps_last_good: ClassVar[bool] = False
    current: ClassVar[list[str]] = []
    runs: ClassVar[dict[str, int]] = {}
    wake: ClassVar[list[Callable[[], None]]] = []
    slow: ClassVar[threading.Event] = threading.Event()

    def __init__(self, settings: NoSettings, defaults: ProbeDefaults) -> None:
        self._seen: set[str] = set()

    def set_wake(self, wake: Callable[[], None]) -> None:
        type(self).wake.append(wake)

    def targets(self) -> Discovery:
        targets = tuple(type(self).current)
        carried = frozenset(t for t in targets if t in self._seen)
        self._seen = set(targets)
        return Discovery(targets, carried=carried)

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        cls = type(self)
        cls.runs[target] = cls.runs.get(target, 0) + 1
        if target == "slow":
            cls.slow.wait(5)
        return ProbeResult(True, Reason.OK, 0.0)


def test_a_woken_round_runs_new_targets_and_carries_the_others_a_scheduled_one_runs_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(KINDS, "waking", ProbeKind("waking", NoSettings, WakingProbe))
    monkeypatch.setattr(WakingProbe, "current", ["a", "b"])
    monkeypatch.setattr(WakingProbe, "runs", {})
    monkeypatch.setattr(WakingProbe, "wake", [])
    store = ResultStore()
    scheduler = Scheduler(store)
    scheduler.apply(parse_config("probes: [{name: w, kind: waking, interval: 1h}]", "test"))
    try:
        wait_for(scheduler.ready, 5, "the first round")
        assert WakingProbe.runs == {"a": 1, "b": 1}
        (wake,) = WakingProbe.wake

        # A new target: the woken round runs it alone; a and b keep their published state.
        WakingProbe.current.append("c")
        wake()
        wait_for(lambda: "c" in store.snapshot().probes["w"].targets, 5, "the woken round")
        assert WakingProbe.runs == {"a": 1, "b": 1, "c": 1}
        assert store.snapshot().probes["w"].targets["a"].runs_total == 1
        # A removed target is gone with the next woken round.
        WakingProbe.current.remove("b")
        wake()
        wait_for(lambda: "b" not in store.snapshot().probes["w"].targets, 5, "b gone")
        assert set(store.snapshot().probes["w"].targets) == {"a", "c"}

        # A wake while a round is in flight: that round ends, then one more runs the newcomer.
        WakingProbe.current.append("slow")
        WakingProbe.slow.clear()
        wake()
        wait_for(lambda: WakingProbe.runs.get("slow") == 1, 5, "the slow round started")
        WakingProbe.current.append("late")
        wake()  # discovery of the round in flight did not see "late"
        WakingProbe.slow.set()
        wait_for(lambda: "late" in store.snapshot().probes["w"].targets, 5, "the round after the one in flight")
        assert WakingProbe.runs["a"] == 1 and WakingProbe.runs["late"] == 1
    finally:
        scheduler.stop()

    # A scheduled (not woken) round runs every target, whatever the probe offers to carry.
    monkeypatch.setattr(WakingProbe, "runs", {})
    monkeypatch.setattr(WakingProbe, "current", ["a", "b"])
    store = ResultStore()
    scheduler = Scheduler(store)
    scheduler.apply(parse_config("probes: [{name: w, kind: waking, interval: 200ms}]", "test"))
    try:
        wait_for(lambda: WakingProbe.runs.get("a", 0) >= 3, 5, "three scheduled rounds")
        assert store.snapshot().probes["w"].targets["b"].runs_total >= 2
    finally:
        scheduler.stop()


def test_the_probes_of_a_scheduler_share_its_revocation_cache_across_reloads() -> None:
    """One OCSP/CRL cache per daemon, made by the scheduler and handed to the probes
    it builds: a reload must not ask every responder again."""
    scheduler = Scheduler(ResultStore())
    try:
        for name in ("a", "renamed"):
            config = parse_config(
                f"probes: [{{name: {name}, kind: tls, interval: 1h, targets: ['127.0.0.1:1']}},"
                " {name: b, kind: tls, interval: 1h, targets: ['127.0.0.1:2']}]",
                "test",
            )
            scheduler.apply(config)
            built = [scheduler.probe(probe_name) for probe_name in (name, "b")]
            assert all(found is not None and found[1].revocation is scheduler.revocation for found in built)  # type: ignore[attr-defined]
    finally:
        scheduler.stop()
    # Built without a scheduler (check-config): one cache of its own, shared by its probes.
    plan = build_plan(config)
    try:
        first, second = (probe for _, probe, _ in plan.probes)
        assert first.revocation is second.revocation is not scheduler.revocation  # type: ignore[attr-defined]
    finally:
        plan.close()


class LoopKindProbe(ExplodingProbe):
    """Two network targets whose runs go to the scheduler's event loop."""

    kind: ClassVar[str] = "loopkind"
    runs_in_event_loop: ClassVar[bool] = True

    def targets(self) -> Discovery:
        return Discovery(("a", "b"))

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        return ProbeResult(True, Reason.OK, 0.0)


def test_a_runner_that_fails_around_a_run_is_that_targets_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The event loop failing under a run (not the run raising: run_target guards that)
    publishes internal_error for the target, and the round is not lost."""
    from concurrent.futures import Future

    from exporter.scheduler import TargetRunners

    monkeypatch.setitem(KINDS, "loopkind", ProbeKind("loopkind", NoSettings, LoopKindProbe))
    real_submit = TargetRunners.submit

    def failing_for_a(self: TargetRunners, probe: object, fn: Callable[..., object], *args: object) -> Future[object]:
        if args[1] != "a":
            return real_submit(self, probe, fn, *args)  # type: ignore[arg-type]
        future: Future[object] = Future()
        future.set_exception(RuntimeError("the event loop failed: ValueError: a bug"))
        return future

    monkeypatch.setattr(TargetRunners, "submit", failing_for_a)
    store = ResultStore()
    scheduler = Scheduler(store)
    scheduler.apply(parse_config("probes: [{name: l, kind: loopkind, interval: 1h}]", "test"))
    try:
        wait_for(lambda: scheduler.ready(), 5, "the first round")
        targets = store.snapshot().probes["l"].targets
        assert targets["a"].result.reason is Reason.INTERNAL_ERROR
        assert targets["a"].result.message == "internal error: the event loop failed: ValueError: a bug"
        assert targets["b"].result.success
    finally:
        scheduler.stop()
