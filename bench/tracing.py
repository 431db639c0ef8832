"""Benchmark: what tracing costs a probe run, off and on.

Cells, each a sequential loop on one thread, interleaved and repeated (medians of
``--repeats``, default 3).  Two CPU figures per call: ``cpu_us`` is
``time.thread_time()`` of the looping thread (what a probe thread pays), and
``process_cpu_us`` is ``time.process_time()`` of the whole process, which adds the
span processor's export thread (encoding, sending).  The OTLP receiver
(tests/fixtures/otlp_receiver.py) runs in a child process, so its CPU is in neither:

``phase_untraced`` / ``record_phase``
    ``with ctx.phase("x"): pass`` on a context without a tracer, against the code it
    replaced (``t = time.monotonic(); ...; ctx.record_phase("x", time.monotonic() - t)``):
    what a phase costs a run when tracing is off.
``run_untraced`` / ``run_traced``
    ``scheduler.run_target`` of a probe that opens the five phases of a TLS run
    (dns, connect, tls.handshake, http, verify) and does nothing else, with tracing
    off, and with tracing on, exporting over OTLP/HTTP to the test receiver: the
    whole cost of tracing one run (six spans, the attributes, the trace id on the
    result).  This loop makes spans faster than one export thread ships them, so
    the queue overflows and drops: ``process_cpu_us`` is then a lower bound.
``tls_untraced`` / ``tls_traced``
    The same with a real TLS probe (``probes.tls``) against ``openssl s_server`` on
    127.0.0.1: the overhead in proportion to a real run.

Usage::

    python -m bench.tracing [--quick] [--seconds 2] [--repeats 3] [--out bench/out]

Results go to ``<out>/tracing.json``; the summary is printed.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from bench import common
from exporter.config import ProbeConfig, TracingSettings, parse_config
from exporter.scheduler import run_target
from exporter.tracing import TRACING_OFF, Tracing, setup_tracing
from probes.context import ProbeContext
from probes.kinds import KINDS
from probes.reasons import Reason
from probes.result import Discovery, ProbeResult
from tests.fixtures import servers
from tests.fixtures.pki import build_pki

PHASES = ("dns", "connect", "tls.handshake", "http", "verify")


class PhasesOnly:
    """A probe that opens the phases of a TLS run and does nothing in them."""

    kind: ClassVar[str] = "tls"
    target_reasons: ClassVar[tuple[Reason, ...]] = ()
    source_reasons: ClassVar[tuple[Reason, ...]] = ()
    concurrent_targets: ClassVar[bool] = False
    keeps_last_good: ClassVar[bool] = False

    def targets(self) -> Discovery:
        return Discovery(("example.test:443",))

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        started = time.monotonic()
        ctx.set_attribute("server.address", "example.test")
        ctx.set_attribute("server.port", 443)
        for name in PHASES:
            with ctx.phase(name):
                pass
        return ProbeResult(True, Reason.OK, time.monotonic() - started, phases=tuple(ctx.phases))


def measure(loop: Callable[[], None], seconds: float) -> dict[str, float]:
    """Run ``loop`` for about ``seconds``; wall and CPU microseconds per call."""
    calls, wall0, cpu0, process0 = 0, time.perf_counter(), time.thread_time(), time.process_time()
    deadline = wall0 + seconds
    while True:
        for _ in range(50):
            loop()
        calls += 50
        if time.perf_counter() >= deadline:
            break
    return {
        "calls": calls,
        "wall_us": (time.perf_counter() - wall0) / calls * 1e6,
        "cpu_us": (time.thread_time() - cpu0) / calls * 1e6,
        "process_cpu_us": (time.process_time() - process0) / calls * 1e6,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.argument_parser(__doc__, "smoke test: 0.2 s cells, 1 repeat")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per cell (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions (default 3)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (0.2 if args.quick else 2.0)
    repeats = args.repeats or (1 if args.quick else 3)
    results = common.Results("tracing", args.out)

    ctx = ProbeContext(deadline=time.monotonic() + 1e9)

    def phase_untraced() -> None:
        with ctx.phase("x"):
            pass
        ctx.phases.clear()

    def record_phase() -> None:
        started = time.monotonic()
        ctx.record_phase("x", time.monotonic() - started)
        ctx.phases.clear()

    receiver = subprocess.Popen(
        common.module_command("tests.fixtures.otlp_receiver"),
        cwd=common.REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdin is not None and receiver.stdout is not None
    http_endpoint = receiver.stdout.readline().split()[0]
    with tempfile.TemporaryDirectory() as scratch:
        files = servers.write_tls_files(servers.build_tls_pki(build_pki()), Path(scratch))
        leaf = files.localhost
        server = servers.openssl_s_server(leaf.cert, leaf.key, leaf.chain)
        try:
            config: ProbeConfig = parse_config(
                f"""
probes:
  - name: web
    kind: tls
    targets: ["localhost:{server.port}"]
    trust: {{system: false, ca_files: ["{files.root_ca}"]}}
    http: {{path: /}}
""",
                "bench",
            ).probes[0]
            tls = KINDS["tls"].build(config.settings, config.defaults)
            fake = PhasesOnly()
            traced: Tracing = setup_tracing(TracingSettings(endpoint=http_endpoint), environ={})
            target = config.settings.targets[0]

            def runner(probe: Any, tracing: Tracing) -> Callable[[], None]:
                def loop() -> None:
                    result, _ = run_target(probe, target, config, tracing)
                    assert result.success, result.message

                return loop

            cells: dict[str, Callable[[], None]] = {
                "phase_untraced": phase_untraced,
                "record_phase": record_phase,
                "run_untraced": runner(fake, TRACING_OFF),
                "run_traced": runner(fake, traced),
                "tls_untraced": runner(tls, TRACING_OFF),
                "tls_traced": runner(tls, traced),
            }
            samples: dict[str, list[dict[str, float]]] = {name: [] for name in cells}
            names = list(cells)
            for repeat in range(repeats):
                for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                    samples[name].append(measure(cells[name], seconds))
            traced.shutdown()
        finally:
            server.stop()
    receiver.stdin.close()
    received = int(receiver.stdout.readline())
    receiver.wait(10)

    medians = {
        name: {key: statistics.median(s[key] for s in runs) for key in ("wall_us", "cpu_us", "process_cpu_us")}
        for name, runs in samples.items()
    }
    report: dict[str, Any] = {
        "seconds_per_cell": seconds,
        "repeats": repeats,
        "cells": medians,
        "spans_received": received,
        "overhead_us": {
            "phase_untraced_over_record_phase": medians["phase_untraced"]["cpu_us"] - medians["record_phase"]["cpu_us"],
            "tracing_per_run": medians["run_traced"]["cpu_us"] - medians["run_untraced"]["cpu_us"],
            "tracing_per_tls_run": medians["tls_traced"]["cpu_us"] - medians["tls_untraced"]["cpu_us"],
            "tracing_per_tls_run_process": medians["tls_traced"]["process_cpu_us"]
            - medians["tls_untraced"]["process_cpu_us"],
        },
    }
    results.write(report)
    print(f"{'cell':<16} {'wall us':>10} {'cpu us':>10} {'process cpu us':>15}")
    for name, cell in medians.items():
        print(f"{name:<16} {cell['wall_us']:>10.2f} {cell['cpu_us']:>10.2f} {cell['process_cpu_us']:>15.2f}")
    for name, value in report["overhead_us"].items():
        print(f"overhead {name}: {value:.2f} us CPU")
    print(f"spans received by the OTLP receiver: {received}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
