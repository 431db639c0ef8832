"""Benchmark: what the tls probe spends on a chain it has not seen, and the most that
cheaper certificate facts or a cheaper verdict could give back.

One process, a fleet of distinct EC endpoints (``bench.tls_scale``'s PKI and nginx),
``TlsProbe.run`` over every endpoint once per cell, ``--concurrency`` in flight, in
the event loop a scheduler round runs in (``probes.event_loop``, ``LOOPS`` threads),
or with ``--threads`` in a thread pool as rounds ran before them.  Each cell is a new
probe whose per-chain memo (``probes.verify.ChainMemo``) starts as stated, taken from
a reference probe that has seen the whole fleet:

``first_sight``
    memo empty: every chain is loaded, its facts read and its verdict judged (a
    first round).
``facts_known``
    the facts of every certificate already in the memo, the verdicts not: what a
    first round would cost if reading the facts cost nothing.
``verdict_known``
    the verdicts already in the memo, the facts not: the same for the verdict (path
    validation, the profile's audit, the hostname).
``seen_before``
    both in the memo: a later round.

The cells run in a rotated order within each repetition.  Per cell: the process's
CPU per probe (``getrusage``) and probes/s.  ``first_sight`` minus ``seen_before`` is
what a new chain costs; ``first_sight`` minus ``facts_known`` (or ``verdict_known``)
is the most a faster facts reader (or verifier) could save, since the memo hit that
replaces it is almost free.

Usage::

    python -m bench.first_sight [--quick] [--endpoints 1000] [--concurrency 64] [--repeats 3]

Results go to ``<out>/first_sight.json``; a table is printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from bench import common, tls_scale
from probes.event_loop import LOOPS, Loops
from probes.settings import ProbeDefaults, TrustSettings
from probes.tls import TlsProbe, TlsSettings

CELLS = ("first_sight", "facts_known", "verdict_known", "seen_before")


def _probe(cell: str, reference: TlsProbe, settings: TlsSettings, defaults: ProbeDefaults) -> TlsProbe:
    """A new probe whose memo holds what ``cell`` says of the reference's."""
    probe = TlsProbe(settings, defaults)
    if cell in ("facts_known", "seen_before"):
        probe._memo._facts.update(reference._memo._facts)
    if cell in ("verdict_known", "seen_before"):
        probe._memo._verdicts.update(reference._memo._verdicts)
    if cell == "seen_before":
        probe._memo._observations.update(reference._memo._observations)
    return probe


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.argument_parser(__doc__, "smoke test: 50 endpoints, concurrency 16, 1 repeat")
    parser.add_argument("--threads", action="store_true", help="a thread pool instead of the event loops")
    parser.add_argument("--loops", type=int, default=LOOPS, help=f"loop threads (default {LOOPS}, as a scheduler)")
    args, run = tls_scale.fleet_options(parser, argv)
    results = common.Results("first_sight", args.out, tools=("nginx",))
    print(results.describe(), flush=True)
    runs: dict[str, list[dict[str, float]]] = {cell: [] for cell in CELLS}
    with tls_scale.ec_fleet(run.endpoints, run.concurrency) as (targets, ca_file):
        defaults = ProbeDefaults(trust=TrustSettings(system=False, ca_files=(str(ca_file),)))
        settings = TlsSettings(targets=tuple(targets))
        pool = ThreadPoolExecutor(run.concurrency) if args.threads else Loops(args.loops, run.concurrency)
        try:
            reference = TlsProbe(settings, defaults)
            # Fills its memo, and warms the imports, nginx's workers and the pool's threads.
            tls_scale.probe_round(reference, targets, pool)
            for repeat, cell in common.rotated(CELLS, run.repeats):
                figures = tls_scale.probe_round(_probe(cell, reference, settings, defaults), targets, pool)
                runs[cell].append(figures)
                print(
                    f"  r{repeat} {cell:13s} {figures['cpu_ms_per_probe']:6.3f} ms CPU/probe "
                    f"{figures['probes_per_second']:6.0f}/s",
                    flush=True,
                )
        finally:
            if isinstance(pool, ThreadPoolExecutor):
                pool.shutdown()
            else:
                pool.close()
    medians = common.medians(runs)
    new_chain = medians["first_sight"]["cpu_ms_per_probe"] - medians["seen_before"]["cpu_ms_per_probe"]
    saved = {
        "facts": medians["first_sight"]["cpu_ms_per_probe"] - medians["facts_known"]["cpu_ms_per_probe"],
        "verdict": medians["first_sight"]["cpu_ms_per_probe"] - medians["verdict_known"]["cpu_ms_per_probe"],
    }
    print("\n| memo at the start | CPU ms/probe (median, range) | probes/s (median) |")
    print("|---|---|---|")
    for cell in CELLS:
        cpu = [r["cpu_ms_per_probe"] for r in runs[cell]]
        print(
            f"| {cell} | {medians[cell]['cpu_ms_per_probe']:.3f} ({min(cpu):.3f}-{max(cpu):.3f}) "
            f"| {medians[cell]['probes_per_second']:.0f} |"
        )
    print(
        f"\na new chain costs {new_chain:.3f} ms per probe; facts read for free would save at most "
        f"{saved['facts']:.3f} ms, a verdict for free {saved['verdict']:.3f} ms (medians)"
    )
    results.write(
        {
            "endpoints": run.endpoints,
            "concurrency": run.concurrency,
            "driver": "threads" if args.threads else f"{args.loops} event loops",
            "repeats": run.repeats,
            "runs": runs,
            "medians": medians,
            "new_chain_ms_per_probe": new_chain,
            "most_saved_ms_per_probe": saved,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
