"""The scheduler in-process, with probe kinds registered for the test: a probe that
raises becomes internal_error and keeps running; rounds of one probe never overlap."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import ClassVar

import pytest

import probes
from exporter.config import parse_config
from exporter.scheduler import Scheduler, build_plan
from exporter.store import ResultStore
from probes.base import Discovery, ProbeContext, ProbeDefaults, ProbeResult, Reason
from tests.helpers import wait_for


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
    monkeypatch.setitem(probes.KINDS, "exploding", probes.ProbeKind("exploding", NoSettings, ExplodingProbe))
    monkeypatch.setitem(probes.KINDS, "slow", probes.ProbeKind("slow", NoSettings, SlowProbe))


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

    monkeypatch.setitem(probes.KINDS, "vouching", probes.ProbeKind("vouching", NoSettings, VouchingProbe))
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
