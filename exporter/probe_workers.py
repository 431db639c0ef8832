"""``tls`` rounds in worker processes (``global.workers`` above 1).

One Python process computes on one core at a time (the GIL).  The handshakes of a
round overlap, but the Python around them does not: at concurrency 64 on the
benchmark machine the daemon used 1.1 of its 2 cores and blackbox_exporter 1.4
(docs/performance.md).  With ``global.workers: N`` the daemon starts N worker
processes at start-up, and each ``tls`` round sends its targets to them; the
daemon keeps the scheduler, the store, the HTTP server and discovery.

The contract:

* A round goes to the workers as one message per worker (its share of the
  targets), and the results come back in pickled batches (``BATCH`` results, or
  fewer when the worker's share of the round is done).  A run per message cost
  the daemon 0.35-0.47 ms per target (a thread waiting on each run, a request and
  a result pickled apiece); a round per message costs it about 0.06 ms.
* A target always goes to the same worker (a hash of the target), so the worker's
  per-chain memo (probes.verify.ChainMemo) sees each chain again in later rounds.
* A worker builds its own probe from the probe's settings, sent once per config
  (``ProbeSpec``), and keeps one OCSP and CRL cache for its life.  Each run starts
  its own deadline (``timeout``) when it starts, and the collector's gen-0 threshold
  is raised while a probe's first round runs, as in the daemon.
* What stays in the daemon: every run while tracing is on (spans are the
  daemon's; a worker has no tracer), and targets the probe discovered itself
  (Kubernetes endpoints), whose state lives in the daemon's probe.
* A result's certificate facts are shared with every other holder of the same
  certificate on arrival (probes.certparse.with_shared_facts).
* A worker that dies fails the targets of the round it held with
  ``internal_error`` ("worker process exited"), is logged, and is started again
  for the next round.  Targets whose answer has not come
  ``(share / threads + 1) * timeout + ANSWER_GRACE`` seconds after the round was
  sent fail with the same reason.
* A worker exits when the daemon's end of its pipe closes: on ``close()``, and
  when the daemon dies however it dies (no orphan outlives it).  ``close()`` waits
  ``CLOSE_WAIT`` seconds, then kills what is left.
"""

from __future__ import annotations

import itertools
import logging
import math
import multiprocessing
import os
import pickle
import signal
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any, ClassVar

from exporter.config import MAX_WORKERS
from probes import KINDS
from probes.certparse import with_shared_facts
from probes.context import Probe, ProbeContext
from probes.reasons import Reason
from probes.result import Discovery, ProbeResult
from probes.settings import ProbeDefaults
from probes.tls import TlsProbe

log = logging.getLogger(__name__)

BATCH = 32  # results per message from a worker
ANSWER_GRACE = 5.0  # seconds past a round's last possible deadline before a worker is given up on
CLOSE_WAIT = 2.0  # seconds close() waits for workers to exit before killing them

Outcome = tuple[ProbeResult, float]  # (result, wall-clock finish time), as scheduler.run_target returns


@dataclass(frozen=True)
class ProbeSpec:
    """What a worker needs to build its copy of one probe of one config."""

    key: int
    kind: str
    settings: Any
    defaults: ProbeDefaults  # without the daemon's revocation caches (not picklable)


def _failure(message: str, duration: float = 0.0) -> Outcome:
    result = ProbeResult(success=False, reason=Reason.INTERNAL_ERROR, duration_seconds=duration, message=message)
    return result, time.time()


@dataclass
class _Round:
    """The daemon's view of one round's share on one worker: what came back so far."""

    targets: frozenset[str]
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    failed: str = ""  # set when the worker died with this round in flight

    @property
    def done(self) -> bool:
        return bool(self.failed) or len(self.outcomes) >= len(self.targets)


class _Worker:
    """The daemon's side of one worker process: its pipe, the rounds it holds, and
    the thread reading its answers."""

    def __init__(self, index: int, process: Any, connection: Connection, changed: threading.Condition) -> None:
        self.index = index
        self.process = process
        self.connection = connection
        self.changed = changed  # the pool's: notified on every batch and on exit
        self.write = threading.Lock()  # one writer on the pipe
        self.rounds: dict[int, _Round] = {}  # guarded by ``changed``
        self.built: set[int] = set()  # guarded by ``write``
        self.alive = True
        self.ready = threading.Event()  # set by the worker's first message, once it has imported all
        self.reader = threading.Thread(target=self._read, name=f"probe-worker-{index}-reader", daemon=True)
        self.reader.start()

    def send(self, message: tuple[Any, ...]) -> bool:
        try:
            with self.write:
                self.connection.send(message)
            return True
        except (OSError, ValueError, EOFError):
            return False

    def _read(self) -> None:
        while True:
            try:
                payload = self.connection.recv_bytes()
            except (EOFError, OSError):
                break
            self.ready.set()
            try:
                batch: list[tuple[int, str, ProbeResult, float]] = pickle.loads(payload)
            except Exception:  # a batch that does not unpickle: its targets time out, the rest go on
                log.exception("probe worker %d sent a batch that cannot be read", self.index)
                continue
            shared = [(round_id, target, with_shared_facts(result), at) for round_id, target, result, at in batch]
            with self.changed:
                for round_id, target, result, at in shared:
                    held = self.rounds.get(round_id)
                    if held is not None and target in held.targets:
                        held.outcomes[target] = (result, at)
                self.changed.notify_all()
        self._gone()

    def _gone(self) -> None:
        with self.changed:
            self.alive = False
            for held in self.rounds.values():
                held.failed = f"worker process {self.index} exited"
            self.changed.notify_all()
        self.process.join(timeout=1.0)
        if self.rounds:
            log.error(
                "probe worker %d (pid %d) exited with exit code %s while running a round; it starts again",
                self.index,
                self.process.pid,
                self.process.exitcode,
            )


class WorkerPool:
    """``size`` worker processes of ``threads`` threads each, started at ``start()``
    (or on first use), shared by every probe of the config."""

    def __init__(self, size: int, threads: int) -> None:
        if not 2 <= size <= MAX_WORKERS:
            raise ValueError(f"a worker pool has 2 to {MAX_WORKERS} workers, got {size}")
        self.size = size
        self.threads = threads
        self._context = multiprocessing.get_context("spawn")  # fork would copy the daemon's threads' locks
        self._changed = threading.Condition()
        self._lock = threading.Lock()
        self._workers: list[_Worker | None] = [None] * size
        self._round_ids = itertools.count(1)
        self._keys = itertools.count(1)
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------

    def start(self, wait: float = 30.0) -> None:
        """Start every worker now and wait (at most ``wait`` seconds) until each has
        imported what it runs: that is start-up, not the first round."""
        started = [w for w in (self._worker(index) for index in range(self.size)) if w is not None]
        deadline = time.monotonic() + wait
        for worker in started:
            if not worker.ready.wait(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "probe worker %d (pid %d) is not ready after %.0f s", worker.index, worker.process.pid, wait
                )

    def close(self) -> None:
        """Close every pipe (a worker exits when it reads the end), wait ``CLOSE_WAIT``
        seconds, kill what is left.  A round in flight fails as its workers exit."""
        with self._lock:
            self._closed = True
            workers = [w for w in self._workers if w is not None]
            self._workers = [None] * self.size
        for worker in workers:
            worker.connection.close()
        deadline = time.monotonic() + CLOSE_WAIT
        for worker in workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=1.0)

    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers if w is not None and w.alive]

    def _worker(self, index: int) -> _Worker | None:
        with self._lock:
            if self._closed:
                return None
            worker = self._workers[index]
            if worker is not None and worker.alive:
                return worker
            ours, theirs = self._context.Pipe(duplex=True)
            process = self._context.Process(
                target=worker_main,
                args=(theirs, self.threads, _cpu_share(self.size), _log_settings()),
                name=f"certscope-worker-{index}",
                daemon=True,
            )
            process.start()
            theirs.close()
            worker = _Worker(index, process, ours, self._changed)
            self._workers[index] = worker
            log.info("probe worker %d started (pid %d, %d threads)", index, process.pid, self.threads)
            return worker

    # -- probes and rounds -------------------------------------------------------

    def spec(self, kind: str, settings: Any, defaults: ProbeDefaults) -> ProbeSpec:
        return ProbeSpec(next(self._keys), kind, settings, replace(defaults, revocation=None))

    def forget(self, spec: ProbeSpec) -> None:
        """The config holding ``spec`` is gone: workers drop their copy of its probe."""
        with self._lock:
            workers = [w for w in self._workers if w is not None]
        for worker in workers:
            with worker.write:
                known = spec.key in worker.built
                worker.built.discard(spec.key)
            if known:
                worker.send(("close", spec.key))

    def run_round(
        self,
        spec: ProbeSpec,
        targets: Sequence[str],
        timeout: float,
        probe_name: str,
        cancelled: threading.Event,
    ) -> dict[str, Outcome]:
        """Run ``targets`` in the workers; every target gets an outcome (a failure
        when its worker died or did not answer in time).  Returns early, with what
        came back so far, when ``cancelled`` is set."""
        shares: dict[int, list[str]] = {}
        for target in targets:
            shares.setdefault(zlib.crc32(target.encode()) % self.size, []).append(target)
        sent: list[tuple[_Worker, int, _Round, float]] = []  # (worker, round id, share, give up at)
        outcomes: dict[str, Outcome] = {}
        for index, share in shares.items():
            worker = self._worker(index)
            if worker is None:
                outcomes.update((t, _failure("the worker pool is closed")) for t in share)
                continue
            round_id = next(self._round_ids)
            held = _Round(frozenset(share))
            with self._changed:
                worker.rounds[round_id] = held
            if not self._send_round(worker, spec, round_id, share, timeout, probe_name):
                with self._changed:
                    worker.rounds.pop(round_id, None)
                outcomes.update((t, _failure(f"worker process {index} exited")) for t in share)
                continue
            # The worker runs its share ``threads`` at a time, each with its own deadline.
            give_up = time.monotonic() + (math.ceil(len(share) / self.threads) + 1) * timeout + ANSWER_GRACE
            sent.append((worker, round_id, held, give_up))
        try:
            with self._changed:
                while not cancelled.is_set():
                    now = time.monotonic()
                    waits = [give_up - now for _, _, held, give_up in sent if not held.done and now < give_up]
                    if not waits:
                        break
                    self._changed.wait(min(0.25, *waits))  # a quarter of a second: to see ``cancelled``
        finally:
            with self._changed:
                for worker, round_id, held, _ in sent:
                    worker.rounds.pop(round_id, None)
                    outcomes.update(held.outcomes)
                    missing = held.targets.difference(held.outcomes)
                    if missing and cancelled.is_set():
                        worker.send(("cancel", round_id))
                        continue
                    why = held.failed or f"worker process {worker.index} did not answer within the round's deadline"
                    outcomes.update((target, _failure(why)) for target in missing)
        return outcomes

    def _send_round(
        self, worker: _Worker, spec: ProbeSpec, round_id: int, share: list[str], timeout: float, probe_name: str
    ) -> bool:
        with worker.write:
            build = spec.key not in worker.built
            worker.built.add(spec.key)
        if build and not worker.send(("build", spec)):
            return False
        return worker.send(("round", round_id, spec.key, share, timeout, probe_name))


class TlsInWorkers:
    """A ``tls`` probe whose rounds go to a ``WorkerPool``.  Discovery, wake-ups and
    the runs the workers cannot take (traced, discovered) stay with ``local``, the
    daemon's own ``TlsProbe``; the scheduler and the store see the same kind."""

    kind: ClassVar[str] = TlsProbe.kind
    target_reasons: ClassVar[tuple[Reason, ...]] = TlsProbe.target_reasons
    source_reasons: ClassVar[tuple[Reason, ...]] = TlsProbe.source_reasons
    concurrent_targets: ClassVar[bool] = TlsProbe.concurrent_targets
    keeps_last_good: ClassVar[bool] = TlsProbe.keeps_last_good

    def __init__(self, local: TlsProbe, spec: ProbeSpec, pool: WorkerPool) -> None:
        self.local = local
        self.spec = spec
        self.pool = pool

    def targets(self) -> Discovery:
        return self.local.targets()

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        return self.local.run(target, ctx)

    def remote(self, targets: Sequence[str]) -> tuple[list[str], list[str]]:
        """(the targets a worker can run, the ones that run in the daemon)."""
        remote: list[str] = []
        local: list[str] = []
        for target in targets:
            (local if self.local.discovered(target) else remote).append(target)
        return remote, local

    def run_round(
        self, targets: Sequence[str], timeout: float, probe_name: str, cancelled: threading.Event
    ) -> dict[str, Outcome]:
        return self.pool.run_round(self.spec, targets, timeout, probe_name, cancelled)

    def set_wake(self, wake: Callable[[], None]) -> None:
        self.local.set_wake(wake)

    def close(self) -> None:
        self.pool.forget(self.spec)
        self.local.close()


def in_workers(kind: str, settings: Any, defaults: ProbeDefaults, local: Probe, pool: WorkerPool) -> Probe:
    """``local`` with its rounds run in ``pool``, or ``local`` itself for a kind that
    does not run in workers (only ``tls`` does: the kind that spends its CPU per
    target on handshakes and chains, not on the daemon's own data)."""
    if not isinstance(local, TlsProbe):
        return local
    return TlsInWorkers(local, pool.spec(kind, settings, defaults), pool)


def _cpu_share(size: int) -> int:
    from probes.cpu_slots import available_cpus

    return max(1, available_cpus() // size)


def _log_settings() -> tuple[int, str]:
    from exporter.logs import JsonFormatter

    root = logging.getLogger()
    json_format = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return root.getEffectiveLevel(), "json" if json_format else "logfmt"


# -- the worker process --------------------------------------------------------------


class _Outbox:
    """A worker's results waiting to be sent: flushed at ``BATCH`` results, and
    when the last run of a round's share ends."""

    def __init__(self, connection: Connection, first_rounds_done: Callable[[], None]) -> None:
        self.connection = connection
        self.first_rounds: set[int] = set()  # first rounds of a probe built here, in flight
        self.first_rounds_done = first_rounds_done
        self.lock = threading.Lock()
        self.items: list[tuple[int, str, ProbeResult, float]] = []
        self.left: dict[int, int] = {}  # round id -> runs not finished
        self.cancelled: set[int] = set()  # rounds whose runs not started are skipped

    def add(self, round_id: int, target: str, result: ProbeResult | None) -> None:
        with self.lock:
            if result is not None:
                self.items.append((round_id, target, result, time.time()))
            self.left[round_id] -= 1
            last = self.left[round_id] == 0
            if last:
                del self.left[round_id]
                self.cancelled.discard(round_id)
                if round_id in self.first_rounds:
                    self.first_rounds.discard(round_id)
                    if not self.first_rounds:
                        self.first_rounds_done()
            if not self.items or (len(self.items) < BATCH and not last):
                return
            payload, self.items = pickle.dumps(self.items, protocol=pickle.HIGHEST_PROTOCOL), []
            try:
                self.connection.send_bytes(payload)
            except (OSError, ValueError):
                os._exit(0)  # the daemon is gone


def worker_main(connection: Connection, threads: int, cpu_slots: int, log_settings: tuple[int, str]) -> None:
    """A worker's life: read requests until the daemon's end of the pipe closes."""
    from exporter.daemon import FirstRoundCollector
    from exporter.logs import setup_logging
    from probes import cpu_slots as slots
    from probes.revocation import RevocationChecker

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the daemon, which closes us
    level, log_format = log_settings
    setup_logging(logging.getLevelName(level), log_format)
    slots.use(cpu_slots)
    revocation = RevocationChecker()  # one OCSP and CRL cache for the worker's life
    probes: dict[int, Probe | str] = {}  # a probe, or why it could not be built
    # As in the daemon: the collector's gen-0 threshold raised while first rounds run.
    collector = FirstRoundCollector()
    unprobed: set[int] = set()  # probes built whose first round has not come yet
    outbox = _Outbox(connection, collector.end)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="target")
    connection.send_bytes(pickle.dumps([]))  # ready: everything a run needs is imported

    def run(round_id: int, probe: Probe | str, target: str, timeout: float, probe_name: str) -> None:
        if round_id in outbox.cancelled:
            outbox.add(round_id, target, None)
            return
        started = time.monotonic()
        if isinstance(probe, str):
            result = _failure(probe)[0]
        else:
            try:
                result = probe.run(target, ProbeContext(deadline=started + timeout, probe_name=probe_name))
            except Exception as exc:
                log.exception("probe=%s target=%s internal error", probe_name, target)
                result = _failure(f"internal error: {type(exc).__name__}", time.monotonic() - started)[0]
        outbox.add(round_id, target, result)

    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            os._exit(0)  # the daemon closed the pipe or died: no run outlives it
        match message:
            case ("round", round_id, key, targets, timeout, probe_name):
                probe = probes.get(key, "no probe was built for this config")
                with outbox.lock:
                    outbox.left[round_id] = len(targets)
                    if key in unprobed:
                        unprobed.discard(key)
                        outbox.first_rounds.add(round_id)
                        collector.begin()
                for target in targets:
                    pool.submit(run, round_id, probe, target, timeout, probe_name)
            case ("cancel", round_id):
                with outbox.lock:
                    if round_id in outbox.left:
                        outbox.cancelled.add(round_id)
            case ("build", ProbeSpec() as spec):
                defaults = replace(spec.defaults, revocation=revocation)
                unprobed.add(spec.key)
                try:
                    probes[spec.key] = KINDS[spec.kind].build(spec.settings, defaults)
                except Exception as exc:  # noqa: BLE001 - each of its runs answers with why
                    probes[spec.key] = f"cannot build the probe in a worker: {type(exc).__name__}: {exc}"
            case ("close", key):
                close = getattr(probes.pop(key, ""), "close", None)
                if close is not None:
                    close()
