"""Benchmark: what driving TLS runs from one event loop per CPU slot would save against
a thread per run in flight, before the probe is rewritten for it.

One process, a fleet of distinct EC endpoints (``bench.tls_scale``'s PKI and nginx).
Every driver runs the same job per endpoint, written once as a generator that yields
each wait on the network as ``(socket, write)``:

    non-blocking connect -> TLS handshake with the probe's own ``TlsClient`` context ->
    the served chain as DER -> the probe's chain memo (facts, then verdict) -> close

That is the part of ``TlsProbe.run`` that touches the network and the certificates;
phases, results and the run's other checks are left out of every driver alike.

``threads c=N``
    a thread pool of N, each job in a CPU slot (``probes.cpu_slots.held``), each wait
    through ``cpu_slots.wait_ready`` (the slot handed over while the socket is not
    ready): how ``TlsProbe.run`` runs today.
``loops LxM``
    L threads (one per CPU slot), each an ``epoll`` loop with M jobs in flight,
    resuming whichever job's socket is ready: a wait is a function return, not a
    hand-over to another thread.

Cells: the chain memo empty (``first_sight``: a first round) or holding the whole
fleet (``seen_before``: a later round), each cell a new ``TlsProbe`` seeded as in
``bench.first_sight``; rotated order, medians.  Per cell: the process's CPU per job
(``getrusage``), jobs/s, voluntary context switches per job.

Usage::

    python -m bench.event_loop [--quick] [--endpoints 1000] [--concurrency 64] [--repeats 3]

``--concurrency`` is the in-flight total: threads c=2 and c=N, loops of N/slots each.
Results go to ``<out>/event_loop.json``; a table is printed.
"""

from __future__ import annotations

import errno
import select
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from OpenSSL import SSL

from bench import common, tls_scale
from bench.first_sight import _probe
from probes import cpu_slots
from probes.settings import ProbeDefaults, TrustSettings
from probes.tls import TlsProbe, TlsSettings
from probes.tls_client import PeerChain, _peer_ders

Wait = tuple[socket.socket, bool]  # (socket, True to wait until writable)
Job = Generator[Wait, None, None]
JOB_SECONDS = 30.0


def tls_job(probe: TlsProbe, port: int) -> Job:
    """One endpoint, yielding each wait on the network."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", port))
        if code == errno.EINPROGRESS:
            yield sock, True
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, f"connect to port {port}")
        connection = SSL.Connection(probe.client._context, sock)
        connection.set_connect_state()
        while True:
            try:
                connection.do_handshake()
                break
            except SSL.WantReadError:
                yield sock, False
            except SSL.WantWriteError:
                yield sock, True
        ders = _peer_ders(connection, 10)
        served = PeerChain(ders)
        probe._memo.observe(ders, served)
        verdict = probe._memo.verdict(ders, served, "127.0.0.1")
        if not verdict.chain_verified:
            raise RuntimeError(f"port {port}: {verdict.message}")
    finally:
        sock.close()


def run_in_threads(probe: TlsProbe, ports: Sequence[int], pool: ThreadPoolExecutor) -> None:
    def one(port: int) -> None:
        deadline = time.monotonic() + JOB_SECONDS
        with cpu_slots.held():
            for sock, write in tls_job(probe, port):
                cpu_slots.wait_ready(sock, deadline, write=write)

    list(pool.map(one, ports))


def run_in_loops(probe: TlsProbe, ports: Sequence[int], loops: int, in_flight: int) -> None:
    """``loops`` threads, each an epoll loop keeping ``in_flight`` jobs going."""
    pending: Iterator[int] = iter(ports)
    pending_lock = threading.Lock()
    failures: list[BaseException] = []

    def next_job() -> Job | None:
        with pending_lock:
            port = next(pending, None)
        return None if port is None else tls_job(probe, port)

    def loop() -> None:
        poller = select.epoll()
        waiting: dict[int, tuple[Job, float]] = {}  # fd -> (job, deadline)

        def advance(job: Job, deadline: float) -> None:
            try:
                sock, write = next(job)
            except StopIteration:
                return
            waiting[sock.fileno()] = (job, deadline)
            poller.register(sock.fileno(), select.EPOLLOUT if write else select.EPOLLIN)

        def fill() -> None:
            while len(waiting) < in_flight and (job := next_job()) is not None:
                advance(job, time.monotonic() + JOB_SECONDS)

        try:
            fill()
            while waiting:
                events = poller.poll(1.0)
                if not events and min(deadline for _, deadline in waiting.values()) < time.monotonic():
                    raise TimeoutError(f"a job waited on the network for over {JOB_SECONDS} s")
                for fd, _ in events:
                    job, deadline = waiting.pop(fd)
                    poller.unregister(fd)
                    advance(job, deadline)
                fill()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            failures.append(exc)
        finally:
            poller.close()

    threads = [threading.Thread(target=loop, name=f"loop-{i}") for i in range(loops)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def measure(driver: Callable[[TlsProbe], None], probe: TlsProbe, jobs: int) -> dict[str, float]:
    _, costs = common.per_unit_costs(lambda: driver(probe), jobs)
    return {
        "cpu_ms_per_job": costs["cpu_ms"],
        "jobs_per_second": costs["per_second"],
        "voluntary_switches_per_job": costs["voluntary_switches"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.argument_parser(__doc__, "smoke test: 50 endpoints, concurrency 16, 1 repeat")
    args, fleet = tls_scale.fleet_options(parser, argv)
    results = common.Results("event_loop", args.out, tools=("nginx",))
    print(results.describe(), flush=True)
    slots = cpu_slots.SLOTS.count
    per_loop = max(1, fleet.concurrency // slots)
    with tls_scale.ec_fleet(fleet.endpoints, fleet.concurrency) as (targets, ca_file):
        ports = [int(target.rsplit(":", 1)[1]) for target in targets]
        defaults = ProbeDefaults(trust=TrustSettings(system=False, ca_files=(str(ca_file),)))
        settings = TlsSettings(targets=tuple(targets))
        reference = TlsProbe(settings, defaults)
        with ThreadPoolExecutor(slots) as few, ThreadPoolExecutor(fleet.concurrency) as many:
            drivers: dict[str, Callable[[TlsProbe], None]] = {
                f"threads c={slots}": lambda probe: run_in_threads(probe, ports, few),
                f"threads c={fleet.concurrency}": lambda probe: run_in_threads(probe, ports, many),
                f"loops {slots}x{per_loop}": lambda probe: run_in_loops(probe, ports, slots, per_loop),
            }
            for driver in drivers.values():  # the memo filled; threads, imports and nginx warm
                driver(reference)
            cells = [(memo, driver) for memo in ("first_sight", "seen_before") for driver in drivers]
            runs: dict[str, list[dict[str, float]]] = {f"{m}/{d}": [] for m, d in cells}
            for repeat, (memo, driver) in common.rotated(cells, fleet.repeats):
                probe = _probe(memo, reference, settings, defaults)
                figures = measure(drivers[driver], probe, len(ports))
                runs[f"{memo}/{driver}"].append(figures)
                print(
                    f"  r{repeat} {memo:12s} {driver:14s} {figures['cpu_ms_per_job']:6.3f} ms CPU/job "
                    f"{figures['jobs_per_second']:6.0f}/s",
                    flush=True,
                )
    medians = common.medians(runs)
    print("\n| memo / driver | CPU ms per job (median, range) | jobs/s | voluntary switches per job |")
    print("|---|---|---|---|")
    for cell, cell_runs in runs.items():
        cpu = [r["cpu_ms_per_job"] for r in cell_runs]
        print(
            f"| {cell} | {medians[cell]['cpu_ms_per_job']:.3f} ({min(cpu):.3f}-{max(cpu):.3f}) "
            f"| {medians[cell]['jobs_per_second']:.0f} | {medians[cell]['voluntary_switches_per_job']:.1f} |"
        )
    results.write(
        {
            "endpoints": fleet.endpoints,
            "concurrency": fleet.concurrency,
            "cpu_slots": slots,
            "repeats": fleet.repeats,
            "runs": runs,
            "medians": medians,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
