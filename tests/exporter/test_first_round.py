"""The first round of a config, which ``/-/ready`` waits for: it starts as soon as the
config is applied (no random start delay), readiness is logged once with its seconds,
and the daemon's collector runs with a raised gen-0 threshold only until then."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import pytest

from exporter.config import ConfigError, parse_config
from exporter.daemon import FIRST_ROUND_GEN0_THRESHOLD, Daemon, FirstRoundCollector
from exporter.scheduler import Scheduler
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


class InstantProbe:
    """One target, answered at once."""

    kind: ClassVar[str] = "instant"
    target_reasons: ClassVar[tuple[Reason, ...]] = ()
    source_reasons: ClassVar[tuple[Reason, ...]] = ()
    concurrent_targets: ClassVar[bool] = False
    keeps_last_good: ClassVar[bool] = False

    def __init__(self, settings: NoSettings, defaults: ProbeDefaults) -> None:
        pass

    def targets(self) -> Discovery:
        return Discovery(("only",))

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        return ProbeResult(True, Reason.OK, 0.0)


class GatedProbe(InstantProbe):
    """Its run waits until the test opens the gate, and notes the collector's
    thresholds while it runs."""

    kind: ClassVar[str] = "gated"
    gate = threading.Event()
    running = threading.Event()
    thresholds_seen: ClassVar[list[tuple[int, int, int]]] = []

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        type(self).thresholds_seen.append(gc.get_threshold())
        type(self).running.set()
        type(self).gate.wait(10)
        return ProbeResult(True, Reason.OK, 0.0)


@pytest.fixture
def kinds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(KINDS, "instant", ProbeKind("instant", NoSettings, InstantProbe))
    monkeypatch.setitem(KINDS, "gated", ProbeKind("gated", NoSettings, GatedProbe))
    GatedProbe.gate.clear()
    GatedProbe.running.clear()
    GatedProbe.thresholds_seen.clear()
    before = gc.get_threshold()
    yield
    GatedProbe.gate.set()
    gc.set_threshold(*before)


def instant_probes(count: int, interval: str = "1h") -> str:
    listed = ", ".join(f"{{name: p{n}, kind: instant, interval: {interval}}}" for n in range(count))
    return f"global: {{concurrency: {count}}}\nprobes: [{listed}]"


def test_first_rounds_start_as_soon_as_the_config_is_applied(kinds: None) -> None:
    """Ten probes of an hour's interval: each first round used to wait a random 0-2 s
    (half the interval's tenth, at most 2 s), so all ten within a second had a chance
    of 1 in 1,024.  Now every first round runs at once."""
    scheduler = Scheduler(ResultStore())
    started = time.monotonic()
    scheduler.apply(parse_config(instant_probes(10), "test"))
    try:
        wait_for(scheduler.ready, 5, "every first round")
        assert time.monotonic() - started < 1.0
    finally:
        scheduler.stop()


def test_readiness_is_logged_once_and_announced_once_per_applied_config(
    kinds: None, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = Scheduler(ResultStore())
    announced: list[float] = []
    scheduler.on_ready = lambda: announced.append(time.monotonic())
    caplog.set_level(logging.INFO, logger="exporter.scheduler")
    scheduler.apply(parse_config(instant_probes(3, interval="100ms"), "test"))
    try:
        wait_for(scheduler.ready, 5, "every first round")
        time.sleep(0.5)  # several later rounds: they announce nothing
        assert len(announced) == 1
        scheduler.apply(parse_config(instant_probes(2, interval="100ms"), "reloaded"))
        wait_for(lambda: len(announced) == 2, 5, "the reloaded config's first rounds")
        time.sleep(0.3)
        assert len(announced) == 2
    finally:
        scheduler.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ready:")]
    assert len(lines) == 2
    assert lines[0].startswith("ready: every probe has finished its first round (3 probes), ")
    assert lines[1].startswith("ready: every probe has finished its first round (2 probes), ")
    assert all(line.endswith(" s after the config was applied") for line in lines)


def test_the_collector_threshold_is_raised_only_while_first_rounds_run(kinds: None) -> None:
    gc.set_threshold(700, 10, 10)
    daemon = Daemon(None)
    daemon._apply(parse_config("probes: [{name: g, kind: gated, interval: 1h}]", "test"))
    try:
        assert GatedProbe.running.wait(5)
        assert GatedProbe.thresholds_seen == [(FIRST_ROUND_GEN0_THRESHOLD, 10, 10)]
        assert not daemon.scheduler.ready()
        assert gc.get_threshold() == (FIRST_ROUND_GEN0_THRESHOLD, 10, 10)
        GatedProbe.gate.set()
        wait_for(daemon.scheduler.ready, 5, "the first round")
        wait_for(lambda: gc.get_threshold() == (700, 10, 10), 5, "the thresholds from before")
        assert not daemon.collector.raised
    finally:
        daemon.scheduler.stop()


def test_the_collector_is_back_at_once_for_no_probes_and_after_a_refused_config(
    kinds: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    gc.set_threshold(700, 10, 10)
    daemon = Daemon(None)
    try:
        daemon._apply(parse_config("probes: []", "empty"))
        assert daemon.scheduler.ready()
        assert gc.get_threshold() == (700, 10, 10)

        class Unbuildable(InstantProbe):
            def __init__(self, settings: NoSettings, defaults: ProbeDefaults) -> None:
                raise ValueError("cannot be built")

        monkeypatch.setitem(KINDS, "unbuildable", ProbeKind("unbuildable", NoSettings, Unbuildable))
        with pytest.raises(ConfigError):
            daemon._apply(parse_config("probes: [{name: u, kind: unbuildable}]", "refused"))
        assert daemon.scheduler.ready()  # the running (empty) config goes on
        assert gc.get_threshold() == (700, 10, 10)
        assert not daemon.collector.raised
    finally:
        daemon.scheduler.stop()


def test_first_round_collector_restores_what_it_found() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(12_000, 5, 20)  # already above the raised threshold: kept
        collector = FirstRoundCollector(7000)
        collector.begin()
        assert gc.get_threshold() == (12_000, 5, 20)
        collector.end()
        gc.set_threshold(500, 5, 20)
        collector.begin()
        collector.begin()  # idempotent: the thresholds from before the first begin come back
        assert gc.get_threshold() == (7000, 5, 20)
        collector.end()
        collector.end()
        assert gc.get_threshold() == (500, 5, 20)
    finally:
        gc.set_threshold(*before)
