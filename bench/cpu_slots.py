"""Benchmark: how the tls probe's CPU slots change hands in a big round.

One process, a fleet of distinct EC endpoints (``bench.tls_scale``'s PKI and nginx),
a thread pool of ``--concurrency`` running ``TlsProbe.run`` over every endpoint: a
first round (a new probe, its memo empty) and a second (every chain seen before), for
each of two slot classes, in the order A B B A within each repetition:

``handed_over``
    ``probes.cpu_slots.CpuSlots``: a freed slot goes to the run that has waited
    longest, a run back from the network before a run not started.
``semaphore``
    the class before it, kept here as the reference: a ``BoundedSemaphore``, so
    whichever thread asks first takes a freed slot.

Per cell: the process's CPU per probe (``getrusage``), probes/s, voluntary context
switches per probe, and the handshake durations the probe reported (p50, p99, max):
what ``certscope_tls_handshake_seconds`` records.  On loopback a handshake is about
1 ms of work, so the rest of a reported duration is the run waiting in this process.

Usage::

    python -m bench.cpu_slots [--quick] [--endpoints 1000] [--concurrency 64] [--repeats 3]

Results go to ``<out>/cpu_slots.json``; a table is printed.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol

from bench import common, tls_scale
from probes import cpu_slots
from probes.settings import ProbeDefaults, TrustSettings
from probes.tls import TlsProbe, TlsSettings


class Slots(Protocol):
    def held(self) -> Any: ...
    def waiting(self) -> Any: ...


class SemaphoreSlots:
    """The reference: slots on one ``BoundedSemaphore`` (no order among waiters)."""

    def __init__(self, count: int) -> None:
        self._semaphore = threading.BoundedSemaphore(count)
        self._local = threading.local()

    @contextmanager
    def held(self) -> Iterator[None]:
        if getattr(self._local, "state", None) is not None:
            yield
            return
        self._semaphore.acquire()
        self._local.state = "held"
        try:
            yield
        finally:
            self._local.state = None
            self._semaphore.release()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        if getattr(self._local, "state", None) != "held":
            yield
            return
        self._local.state = "waiting"
        self._semaphore.release()
        try:
            yield
        finally:
            self._semaphore.acquire()
            self._local.state = "held"


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.argument_parser(__doc__, "smoke test: 50 endpoints, concurrency 16, 1 repeat")
    args, run = tls_scale.fleet_options(parser, argv)
    results = common.Results("cpu_slots", args.out, tools=("nginx",))
    print(results.describe(), flush=True)
    classes: dict[str, Slots] = {
        "handed_over": cpu_slots.CpuSlots(cpu_slots.SLOTS.count),
        "semaphore": SemaphoreSlots(cpu_slots.SLOTS.count),
    }
    cells: dict[str, list[dict[str, Any]]] = {}
    with tls_scale.ec_fleet(run.endpoints, run.concurrency) as (targets, ca_file):
        defaults = ProbeDefaults(trust=TrustSettings(system=False, ca_files=(str(ca_file),)))
        try:
            with ThreadPoolExecutor(run.concurrency) as pool:
                warm_up = TlsProbe(TlsSettings(targets=tuple(targets)), defaults)
                tls_scale.probe_round(warm_up, targets, pool)  # imports, nginx's workers, the pool's threads
                for repeat in range(run.repeats):
                    order = list(classes) if repeat % 2 == 0 else list(reversed(classes))
                    for name in order + list(reversed(order)):
                        slots = classes[name]
                        cpu_slots.held, cpu_slots.waiting = slots.held, slots.waiting
                        probe = TlsProbe(TlsSettings(targets=tuple(targets)), defaults)
                        for round_name in ("first_sight", "seen_before"):
                            figures = tls_scale.probe_round(probe, targets, pool)
                            cells.setdefault(f"{name}/{round_name}", []).append(figures)
                            print(
                                f"  r{repeat} {name:11s} {round_name:11s} "
                                f"{figures['cpu_ms_per_probe']:6.3f} ms CPU/probe "
                                f"{figures['probes_per_second']:6.0f}/s "
                                f"{figures['voluntary_switches_per_probe']:5.1f} switches/probe  handshake "
                                f"p50 {figures['handshake_ms_p50']:7.1f} p99 {figures['handshake_ms_p99']:7.1f} "
                                f"max {figures['handshake_ms_max']:7.1f} ms",
                                flush=True,
                            )
        finally:
            cpu_slots.held, cpu_slots.waiting = cpu_slots.SLOTS.held, cpu_slots.SLOTS.waiting
    summary = {
        cell: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for cell, runs in cells.items()
    }
    print("\n| slots / round | CPU ms/probe | probes/s | switches/probe | handshake ms p50 / p99 / max |")
    print("|---|---|---|---|---|")
    for cell, figures in summary.items():
        print(
            f"| {cell} | {figures['cpu_ms_per_probe']:.3f} | {figures['probes_per_second']:.0f} "
            f"| {figures['voluntary_switches_per_probe']:.1f} | {figures['handshake_ms_p50']:.1f} / "
            f"{figures['handshake_ms_p99']:.1f} / {figures['handshake_ms_max']:.1f} |"
        )
    results.write(
        {
            "endpoints": run.endpoints,
            "concurrency": run.concurrency,
            "repeats": run.repeats,
            "slots": cpu_slots.SLOTS.count,
            "runs": cells,
            "medians": summary,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
