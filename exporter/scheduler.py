"""Runs every configured probe on its interval, off the scrape path.

One APScheduler 3.11 ``BackgroundScheduler`` job per configured probe, with
``max_instances=1`` (a probe's rounds never overlap) and ``coalesce`` (a late round
runs once, not many times).  A round discovers the probe's targets, runs each one
with its own deadline (``timeout``), and publishes the whole round to the store.

With ``--shard.count`` above 1, a round keeps only the targets this replica owns
(``Shard.owns``); a probe that shards itself (``shards_itself``, the kubernetes kind:
by namespace, before parsing) is left to do so.

Probes whose targets are network endpoints set ``concurrent_targets = True``; their
targets fan out over a shared pool of ``global.concurrency`` threads, or, for kinds
that set ``runs_in_event_loop`` (tls), over an event loop with at most
``global.concurrency`` runs in flight (``probes.event_loop``: a thread per run in
flight costs a TLS probe about a fifth more CPU).  Local kinds (files) run their targets
in the job's own thread.

An exception escaping ``Probe.run`` is a bug: it becomes ``Reason.INTERNAL_ERROR``
with a logged traceback, never a dead job.

A target in ``Discovery.unchanged`` (a file unchanged since it was parsed) is not
run: its result there is published as it is, which keeps a round over 100,000
unchanged files close to the cost of the walk.  When tracing is on, every target is
run all the same, so that each run keeps its span.

A probe's first round runs as soon as its config is applied (at start and after a
reload): ``/-/ready`` waits for every first round, and ``ready()`` turns true the moment
the last one is published, logged once with the seconds since the config was applied.
Later rounds come every interval plus a random 0-``JITTER_SHARE`` of it, which
spreads probes of the same interval apart from their second round on.

Each target run is traced when tracing is on (``exporter.tracing``): the run's root
span wraps ``Probe.run`` and the result carries its trace id to the store.

A probe whose targets change between rounds (Kubernetes discovery: an Ingress added
or deleted, seen through a watch event) can ask for a round now: it offers
``set_wake(callback)`` and calls the callback it is given.  The round then runs at
once (or right after the round in flight), and the probe carries its other targets
over (``Discovery.carried``) so that an early round costs the new targets only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from exporter.config import Config, ConfigError, ProbeConfig
from exporter.store import ProbeInfo, ResultStore, Transition
from exporter.tracing import TRACING_OFF, Tracing
from probes import event_loop
from probes.context import Probe, ProbeContext
from probes.event_loop import Loops
from probes.kinds import KINDS
from probes.reasons import Reason
from probes.result import Discovery, ProbeResult, SourceError
from probes.revocation import RevocationChecker
from probes.settings import NO_SHARD, Shard

log = logging.getLogger(__name__)

# Every later round comes up to this share of the interval late (APScheduler's jitter),
# so that probes of the same interval drift apart.  The first round has no such delay:
# readiness waits for it, and a random start (up to 2 s, before) made a cold inventory
# of 20,000 files ready anywhere from 1.2x to 2.5x the time of its own work.
JITTER_SHARE = 0.05
WAKE_RETRY = 0.05  # seconds before a skipped wake is asked again


def probe_info(config: ProbeConfig, probe: Probe) -> ProbeInfo:
    return ProbeInfo(
        name=config.name,
        kind=config.kind,
        interval=config.interval,
        warning_seconds=config.thresholds.warning,
        critical_seconds=config.thresholds.critical,
        labels=config.labels,
        target_reasons=probe.target_reasons,
        source_reasons=probe.source_reasons,
        keeps_last_good=probe.keeps_last_good,
    )


@dataclass
class Plan:
    """Everything a config needs to run, built but not started: what ``apply``
    swaps in, and what ``certscope check-config`` builds to reject what the daemon
    would (``close()`` it when done)."""

    probes: list[tuple[ProbeConfig, Probe, ProbeInfo]]
    triggers: dict[str, IntervalTrigger]
    concurrency: int

    def close(self) -> None:
        for _, probe, _ in self.probes:
            _close(probe)


def build_plan(config: Config, shard: Shard = NO_SHARD, revocation: RevocationChecker | None = None) -> Plan:
    """Build every probe of ``config`` and its trigger.  A probe or trigger that
    cannot be built (a client certificate that does not load) raises
    ``ConfigError`` naming the probe, after what was built is closed.  The probes
    share ``revocation``, the OCSP and CRL caches (a new one when None)."""
    plan = Plan([], {}, config.global_settings.concurrency)
    revocation = revocation or RevocationChecker()
    for position, probe_config in enumerate(config.probes):
        try:
            defaults = replace(probe_config.defaults, shard=shard, revocation=revocation)
            probe = KINDS[probe_config.kind].build(probe_config.settings, defaults)
            plan.probes.append((probe_config, probe, probe_info(probe_config, probe)))
            plan.triggers[probe_config.name] = IntervalTrigger(
                seconds=probe_config.interval, jitter=probe_config.interval * JITTER_SHARE, timezone=UTC
            )
        except Exception as exc:
            plan.close()
            message = f"probes[{position}] ({probe_config.name}): cannot be built: {type(exc).__name__}: {exc}"
            raise ConfigError(config.source, [message]) from exc
    return plan


class TargetRunners:
    """Where a round's targets run: a pool of ``concurrency`` threads, and for kinds
    whose runs can (``runs_in_event_loop``) the event loop (``event_loop.LOOPS``
    threads), started with the first such round, at most ``concurrency`` runs in
    flight."""

    def __init__(self, concurrency: int) -> None:
        self._concurrency = concurrency
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="target")
        self._loops: Loops | None = None
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, probe: Probe, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if getattr(probe, "runs_in_event_loop", False):
            return self._event_loops().submit(fn, *args)
        return self._threads.submit(fn, *args)

    def _event_loops(self) -> Loops:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new runs after shutdown")
            if self._loops is None or not self._loops.alive():  # none yet, or a bug ended it
                self._loops = Loops(event_loop.LOOPS, self._concurrency)
            return self._loops

    def shutdown(self, wait: bool) -> None:
        """Cancel the runs not started; with ``wait``, return once the rest have ended."""
        with self._lock:
            self._closed = True
            loops = self._loops
        self._threads.shutdown(wait=wait, cancel_futures=True)
        if loops is not None:
            loops.close(wait=wait)


def _nothing() -> None:
    pass


def _close(probe: Probe) -> None:
    close = getattr(probe, "close", None)  # probes holding threads or connections
    if close is not None:
        close()


class Scheduler:
    def __init__(self, store: ResultStore, shard: Shard = NO_SHARD, tracing: Tracing = TRACING_OFF) -> None:
        self._store = store
        self._shard = shard
        self.tracing = tracing
        # Called (from the round's thread) each time the last first round of an applied
        # config is published: the daemon puts its collector back to normal then.
        self.on_ready: Callable[[], None] = _nothing
        # The OCSP and CRL caches of every probe this scheduler builds, kept across
        # reloads: a reload must not ask every responder again.
        self.revocation = RevocationChecker()
        self._lock = threading.Lock()
        self._aps: BackgroundScheduler | None = None
        self._targets_pool: TargetRunners | None = None
        self._pending_first_round: set[str] = set()
        self._applied_at = time.monotonic()  # when the running config's apply() began
        self._probes: dict[str, tuple[ProbeConfig, Probe]] = {}
        self._config: Config | None = None  # what runs now
        # Set when the jobs of the current config are stopped, so that a round in
        # flight ends between two targets instead of running to the end.
        self._cancelled = threading.Event()
        # Probes with a round in flight, and those woken meanwhile (their round runs
        # again as soon as it ends: the wake may have come after its discovery).
        # Its own lock: stop() holds _lock while it waits for rounds to end.
        self._wake_lock = threading.Lock()
        self._running: set[str] = set()
        self._woken: set[str] = set()
        self._early: set[str] = set()  # woken: the next round may carry targets over

    # -- lifecycle ---------------------------------------------------------------

    def apply(self, config: Config) -> None:
        """Start probing ``config``, replacing any previous config's jobs.

        A transaction: the probes, their triggers and the new APScheduler are all
        built before the running ones are touched, so anything that raises while
        building (a probe that cannot load its files, a trigger that cannot be made)
        leaves the previous config running, and the exception goes to the caller."""
        applied_at = time.monotonic()
        plan = build_plan(config, self._shard, self.revocation)
        try:
            aps = BackgroundScheduler(
                executors={"default": JobExecutor(max_workers=max(1, min(plan.concurrency, len(plan.probes))))},
                job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
                timezone=UTC,
            )
            targets_pool = TargetRunners(plan.concurrency)
        except Exception:
            plan.close()
            raise
        cancelled = threading.Event()
        now = datetime.now(UTC)
        try:
            for probe_config, probe, info in plan.probes:
                set_wake = getattr(probe, "set_wake", None)  # probes whose targets come and go
                if set_wake is not None:
                    set_wake(lambda name=probe_config.name, aps=aps: self._wake(name, aps))
                aps.add_job(
                    self._round,
                    trigger=plan.triggers[probe_config.name],
                    next_run_time=now,
                    args=(probe_config, probe, info, targets_pool, cancelled),
                    id=probe_config.name,
                    name=f"probe {probe_config.name}",
                )
            aps.add_listener(lambda event, aps=aps: self._skipped(event, aps), EVENT_JOB_MAX_INSTANCES)
        except Exception:
            targets_pool.shutdown(wait=False)
            plan.close()
            raise
        with self._lock:
            previous = self._config
            self._stop_locked(wait=False)
            self._store.configure([info for _, _, info in plan.probes], config.source)
            self._targets_pool = targets_pool
            self._aps = aps
            with self._wake_lock:
                self._pending_first_round = {c.name for c, _, _ in plan.probes}
                self._applied_at = applied_at
            self._probes = {c.name: (c, probe) for c, probe, _ in plan.probes}
            self._cancelled = cancelled
            try:
                aps.start()
                self._config = config
                return
            except Exception:
                self._stop_locked(wait=False)
                self._config = None  # so that the previous config failing as well raises, not loops
                if previous is None:
                    raise
        # Starting failed after the previous jobs were stopped: put them back.
        log.error("the new config's scheduler did not start; the previous config is running again")
        self.apply(previous)
        raise RuntimeError("the scheduler of the new config did not start")

    def stop(self, wait: bool = True) -> None:
        with self._lock:
            self._stop_locked(wait)

    def _stop_locked(self, wait: bool) -> None:
        self._cancelled.set()
        for _, probe in self._probes.values():
            _close(probe)
        if self._aps is not None:
            if self._aps.running:
                self._aps.shutdown(wait=wait)
            self._aps = None
        if self._targets_pool is not None:
            self._targets_pool.shutdown(wait=wait)
            self._targets_pool = None

    def _wake(self, name: str, aps: BackgroundScheduler | None) -> None:
        """Run probe ``name``'s round now, or right after the one in flight (called
        from a probe's own thread: a Kubernetes watch)."""
        if aps is None or not self._current(aps):
            return  # a config that is gone
        with self._wake_lock:
            self._early.add(name)
            if name in self._running:
                self._woken.add(name)
                return
        try:
            aps.modify_job(name, next_run_time=datetime.now(UTC))
        except JobLookupError:
            pass

    def _current(self, aps: BackgroundScheduler) -> bool:
        return aps is self._aps

    def probe(self, name: str) -> tuple[ProbeConfig, Probe] | None:
        """The configured probe called ``name``, as built for the current config."""
        return self._probes.get(name)

    def ready(self) -> bool:
        """True once every configured probe has finished its first round."""
        return not self._pending_first_round

    def _first_round_published(self, name: str) -> None:
        """Mark probe ``name``'s first round done; the last one makes the daemon ready,
        which is logged once per applied config."""
        with self._wake_lock:
            pending = self._pending_first_round
            if name not in pending:
                return
            pending.discard(name)
            if pending:
                return
            seconds = time.monotonic() - self._applied_at
        log.info(
            "ready: every probe has finished its first round (%d probes), %.3f s after the config was applied",
            len(self._probes),
            seconds,
        )
        self.on_ready()

    # -- one round ---------------------------------------------------------------

    def _carried(self, config: ProbeConfig, discovery: Discovery, early: bool) -> frozenset[str]:
        """The targets a round keeps as published instead of running: only in a round
        woken early, only those the probe offers (unchanged since their last run), and
        only while their last run is younger than the interval.  A scheduled round
        runs every target."""
        if not early or not discovery.carried:
            return frozenset()
        state = self._store.snapshot().probes.get(config.name)
        if state is None:
            return frozenset()
        horizon = time.time() - config.interval
        return frozenset(
            target
            for target in discovery.carried
            if (ts := state.targets.get(target)) is not None and ts.last_run >= horizon
        )

    def _round(
        self,
        config: ProbeConfig,
        probe: Probe,
        info: ProbeInfo,
        pool: TargetRunners,
        cancelled: threading.Event,
    ) -> None:
        name = config.name
        with self._wake_lock:
            self._running.add(name)
            early = name in self._early
            self._early.discard(name)
        try:
            while True:
                self._round_once(config, probe, info, pool, cancelled, early)
                # Woken while this round ran (its discovery may have missed the change):
                # one more round now, in this same job, since a run asked of APScheduler
                # while this job is still running would be skipped (max_instances).
                with self._wake_lock:
                    if name not in self._woken or cancelled.is_set():
                        self._running.discard(name)
                        return
                    self._woken.discard(name)
                    self._early.discard(name)
                early = True
        finally:
            with self._wake_lock:
                self._running.discard(name)

    def _skipped(self, event: Any, aps: BackgroundScheduler) -> None:
        """APScheduler skipped a run (max_instances): when it was a wake, caught in the
        instant between a round's end and its job's, ask again shortly."""
        with self._wake_lock:
            pending = event.job_id in self._early
        if pending:
            retry = threading.Timer(WAKE_RETRY, self._wake, (event.job_id, aps))
            retry.daemon = True
            retry.start()

    def _round_once(
        self,
        config: ProbeConfig,
        probe: Probe,
        info: ProbeInfo,
        pool: TargetRunners,
        cancelled: threading.Event,
        early: bool = False,
    ) -> None:
        started = time.monotonic()
        try:
            discovery = probe.targets()
        except Exception as exc:
            log.exception("probe=%s discovery failed", config.name)
            discovery = Discovery(
                (), (SourceError(Reason.INTERNAL_ERROR, config.name, f"discovery failed: {exc}"),), up=False
            )
        if self._shard.count > 1 and not getattr(probe, "shards_itself", False):
            owned = tuple(t for t in discovery.targets if self._shard.owns(t))
            discovery = replace(discovery, targets=owned, carried=discovery.carried.intersection(owned))
        discovery = replace(discovery, carried=self._carried(config, discovery, early))
        results: dict[str, tuple[ProbeResult, float]] = {}
        unchanged = discovery.unchanged if not self.tracing.enabled else {}
        carried = discovery.carried
        to_run = [t for t in discovery.targets if t not in carried] if carried else discovery.targets
        if probe.concurrent_targets and len(to_run) > 1:
            futures = {
                target: pool.submit(probe, run_target, probe, target, config, self.tracing)
                for target in to_run
                if target not in unchanged
            }
            # One wake-up when the last run ends: waiting on each future in turn woke
            # this thread (and handed it the GIL) for most of them as they finished.
            wait(futures.values())
            for target in to_run:
                future = futures.get(target)
                results[target] = (
                    _outcome(future, config, target) if future is not None else (unchanged[target], time.time())
                )
        else:
            for target in to_run:
                if cancelled.is_set():
                    return
                reused = unchanged.get(target)
                if reused is not None:
                    results[target] = (reused, time.time())
                else:
                    results[target] = run_target(probe, target, config, self.tracing)
        if cancelled.is_set():
            return
        duration = time.monotonic() - started
        transitions, new_errors = self._store.publish_round(info, discovery, results, duration)
        self._first_round_published(config.name)
        _log_round(config.name, new_errors, transitions)
        log.debug("probe=%s round done targets=%d seconds=%.3f", config.name, len(results), duration)


# A round logs at most this many source errors and as many target transitions, then
# one line per kind counting the rest by reason.  A tree of 50,000 files that are no
# certificates logged 100,001 lines at start; the metrics have every one of them.
MAX_LOGGED_PER_ROUND = 20


def _log_round(probe: str, new_errors: list[SourceError], transitions: list[Transition]) -> None:
    for error in new_errors[:MAX_LOGGED_PER_ROUND]:
        log.warning("probe=%s reason=%s %s", probe, error.reason.value, error.message)
    unlogged = Counter(error.reason.value for error in new_errors[MAX_LOGGED_PER_ROUND:])
    if unlogged:
        log.warning(
            "probe=%s %d more new source errors this round not logged (%s); see certscope_source_errors_total",
            probe,
            sum(unlogged.values()),
            _counts(unlogged),
        )
    logged = 0
    recovered: Counter[str] = Counter()
    failing: Counter[str] = Counter()
    for change in transitions:
        if change.current is Reason.OK and change.previous is None:
            continue  # a new target that is fine: nothing to say
        if logged >= MAX_LOGGED_PER_ROUND:
            if change.current is Reason.OK:
                recovered[change.previous.value if change.previous else ""] += 1
            else:
                failing[change.current.value] += 1
            continue
        logged += 1
        if change.current is Reason.OK:
            previous = change.previous.value if change.previous else ""
            log.info("probe=%s target=%s recovered (was %s)", probe, change.target, previous)
        else:
            log.warning(
                "probe=%s target=%s failing reason=%s %s", probe, change.target, change.current.value, change.message
            )
    if failing:
        log.warning(
            "probe=%s %d more targets failing this round not logged (%s); see certscope_probe_status",
            probe,
            sum(failing.values()),
            _counts(failing),
        )
    if recovered:
        log.info(
            "probe=%s %d more targets recovered this round not logged (was %s)",
            probe,
            sum(recovered.values()),
            _counts(recovered),
        )


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{reason}={count}" for reason, count in counter.most_common())


def _outcome(future: Future[tuple[ProbeResult, float]], config: ProbeConfig, target: str) -> tuple[ProbeResult, float]:
    """A run's result; a runner that failed around it (the event loop) is an internal
    error of that target, not a lost round."""
    try:
        return future.result()
    except CancelledError:
        raise  # the config is being replaced: the round ends unpublished
    except Exception as exc:  # noqa: BLE001 - logged, and exported as the target's failure
        log.error("probe=%s target=%s internal error: %s", config.name, target, exc)
        failed = ProbeResult(
            success=False, reason=Reason.INTERNAL_ERROR, duration_seconds=0.0, message=f"internal error: {exc}"
        )
        return failed, time.time()


def run_target(
    probe: Probe, target: str, config: ProbeConfig, tracing: Tracing = TRACING_OFF
) -> tuple[ProbeResult, float]:
    """Run one target with its deadline; returns (result, wall-clock finish time)."""
    # A run that only reads a cache (kubernetes: the watch keeps it) makes no span.
    run = tracing.start_run(config.name, config.kind, target) if getattr(probe, "traced_runs", True) else None
    ctx = ProbeContext(deadline=time.monotonic() + config.timeout, probe_name=config.name, tracer=run)
    started = time.monotonic()
    try:
        result = probe.run(target, ctx)
    except Exception as exc:
        log.exception("probe=%s target=%s internal error", config.name, target)
        result = ProbeResult(
            success=False,
            reason=Reason.INTERNAL_ERROR,
            duration_seconds=time.monotonic() - started,
            message=f"internal error: {type(exc).__name__}",
        )
        if run is not None:
            tracing.internal_error(run, exc)
    if run is not None:
        result = run.finish(result)
    return result, time.time()
