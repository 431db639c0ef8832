"""Benchmark: the daemon's cold inventory of N distinct certificate files, from the
scheduler's start to ``/-/ready``, against a bare ``cryptography`` parse loop.

What a user sees when a new certscope pod starts over a directory of certificates is
the time until it answers ``/-/ready``.  This measures that, start-up excluded, in
fresh processes, run after run (every run's ratio is reported, not only a median:
a user gets one run, not the median of five).

``daemon`` (A)
    The real daemon, ``exporter.cli.main(["run", "--config.file=...", ...])`` as the
    ``certscope`` command runs it, in a fresh child process with a config holding one
    ``files`` probe over the corpus directory (every other setting default).  The child
    is ``python -m bench.files_ready --daemon-child``: it only adds instruments before
    calling ``main`` (monotonic timestamps around ``Scheduler.apply``, the first
    ``_round_once`` and ``ResultStore.publish_round``, and a ``gc.callbacks`` hook
    timing every collection by generation) and writes them to a JSON file at exit.
    Its worker processes start as under the command: each runs, as its main module,
    the script pip writes for the tree's ``certscope`` entry point, not this module.
    **Start** is the moment ``Scheduler.apply`` is entered: imports, config load and
    the web server's socket are done, probing begins.  **Ready** is the moment the
    benchmark's poll of ``/-/ready`` (one new connection every ``--poll-ms``,
    CLOCK_MONOTONIC, shared by all processes on Linux) first gets 200.  The daemon's
    own log line ``ready: every probe has finished its first round ... s after the
    config was applied`` is the cross-check (it does not depend on the poll).
``bare`` (B)
    A fresh child (``--bare-child``) that imports ``cryptography`` and then times
    ``bench.files_scan.bare_parse`` over the same directory (list, read,
    ``load_pem_x509_certificate``, the fields certscope needs), collector on.

The runs are interleaved B A B A ... B after one untimed bare pass (page cache warm
for both), and each daemon run's ratio is to the mean of the bare runs just before and
just after it (the machine's speed drifts by 10-20 % from minute to minute).  With
``--baseline-tree DIR`` (another checkout holding this benchmark, e.g. the commit
before a change) its daemon runs in lockstep with this one's, B A A' B A' A B ...,
so that before and after share their bare runs.

Per daemon run the report also splits the time: first-round delay (start to the
round's first line), the round, ``publish_round``, readiness latency (round published
to the poll's 200), and the cyclic GC (collections and seconds per generation between
start and ready), plus the CPU seconds of the round: the daemon's own and its worker
processes' (``probes/files_workers.py``, which parse a large first round on up to
two CPUs; counted as the daemon's, not as other processes).
Each run (daemon and bare alike) also records ``other_processes_cores``: the CPU that
other processes used meanwhile (/proc/stat busy time less the benchmark's and the
measured child's), which tells a run on a shared machine from a quiet one.

``--what-if freeze,threshold0=N`` is for experiments: the daemon child applies those
collector settings (``gc.freeze()``, a gen-0 threshold) the moment start-up is done.

``--wait-quiet`` waits (re-checking every 60 s, up to ``--quiet-timeout``) until the
1-minute load average is below ``--quiet-load`` before the batch: the machine is shared.

Usage::

    python -m bench.files_ready [--size 20000] [--runs 5] [--poll-ms 5] [--wait-quiet]
                                [--baseline-tree DIR] [--what-if freeze,threshold0=N]
                                [--out bench/out] [--quick]

Results are printed and written to ``<out>/files_ready.json``.
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import re
import resource
import statistics
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import common
from bench.files_scan import bare_parse, ensure_corpus

DEFAULT_SIZE = 20_000
QUICK_SIZE = 200
DEFAULT_RUNS = 5
DEFAULT_POLL_MS = 5.0
READY_TIMEOUT_SECONDS = 600.0
SETTLE_SECONDS = 0.3  # after ready, before SIGTERM
GOAL_READY_OVER_BARE = 1.5  # in every run, not the median

# The daemon's own readiness line (exporter.scheduler), the cross-check of the poll.
READY_LINE = re.compile(r"ready: every probe has finished its first round.*?([0-9.]+) s after the config was applied")


# -- the children -----------------------------------------------------------------


class _GcLog:
    """Every collection: (generation, monotonic start, seconds, objects collected)."""

    def __init__(self) -> None:
        self.events: list[tuple[int, float, float, int]] = []
        self._started = 0.0

    def callback(self, phase: str, info: dict[str, int]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._started = now
        else:
            self.events.append((info["generation"], self._started, now - self._started, info["collected"]))


def as_certscope_command(scratch: Path) -> None:
    """Make the daemon's spawned worker processes (``probes/files_workers.py``) start
    as they do under the ``certscope`` command, the container's entry point.  A
    ``spawn`` worker runs its parent's main module again before its first task: under
    the command that is the script pip writes for the entry point of this tree's
    ``pyproject.toml``, which is written to ``scratch`` here (pip's template); left
    alone it would be this benchmark's module."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    module, _, function = pyproject["project"]["scripts"]["certscope"].partition(":")
    script = scratch / "certscope"
    script.write_text(
        f"import sys\nfrom {module} import {function}\nif __name__ == '__main__':\n    sys.exit({function}())\n",
        encoding="utf-8",
    )
    main_module = sys.modules["__main__"]
    main_module.__spec__ = None
    main_module.__file__ = str(script)


def daemon_child(report_path: str, exporter_args: list[str], what_if: str = "") -> int:
    """The daemon as the ``certscope`` command runs it, with timestamps and a GC log
    written to ``report_path`` when it exits.  ``what_if``: collector settings tried
    when the config is first applied (see ``--what-if``), for experiments only."""
    as_certscope_command(Path(report_path).parent)
    import exporter.cli
    from exporter.scheduler import Scheduler
    from exporter.store import ResultStore

    timeline: dict[str, float] = {}
    cpu: dict[str, float] = {}
    gc_at_start: dict[str, Any] = {}
    gc_log = _GcLog()

    def first(name: str) -> None:
        if name not in timeline:
            timeline[name] = time.monotonic()
            cpu[name] = time.process_time()
            # The daemon's worker processes (probes/files_workers.py), exited by now.
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[f"{name}_children"] = children.ru_utime + children.ru_stime

    original_apply = Scheduler.apply
    original_round_once = Scheduler._round_once
    original_publish = ResultStore.publish_round

    def apply(self: Scheduler, config: Any) -> None:
        if "apply" not in timeline:
            apply_what_if(what_if)
            gc_at_start.update(
                tracked_objects=len(gc.get_objects()),
                counts=list(gc.get_count()),
                thresholds=list(gc.get_threshold()),
                frozen=gc.get_freeze_count(),
            )
            first("apply")
        original_apply(self, config)

    def round_once(self: Scheduler, *args: Any, **kwargs: Any) -> None:
        first("round_started")
        try:
            original_round_once(self, *args, **kwargs)
        finally:
            first("round_finished")

    def publish_round(self: ResultStore, *args: Any, **kwargs: Any) -> Any:
        first("publish_started")
        try:
            return original_publish(self, *args, **kwargs)
        finally:
            first("publish_finished")

    Scheduler.apply = apply  # type: ignore[method-assign]
    Scheduler._round_once = round_once  # type: ignore[method-assign]
    ResultStore.publish_round = publish_round  # type: ignore[method-assign]
    gc.callbacks.append(gc_log.callback)
    try:
        status = exporter.cli.main(exporter_args)
    finally:
        gc.callbacks.remove(gc_log.callback)
        Path(report_path).write_text(
            json.dumps({"timeline": timeline, "cpu": cpu, "gc_at_start": gc_at_start, "gc": gc_log.events})
        )
    return status


def apply_what_if(spec: str) -> None:
    """``freeze``, ``threshold0=N`` or both, comma-separated: what the daemon would do
    to its collector once start-up is done."""
    for part in filter(None, spec.split(",")):
        if part == "freeze":
            gc.freeze()
        elif part.startswith("threshold0="):
            gc.set_threshold(int(part.split("=", 1)[1]), *gc.get_threshold()[1:])
        else:
            raise SystemExit(f"--what-if: unknown {part!r}")


def bare_child(directory: str) -> dict[str, Any]:
    """One timed bare loop in this fresh interpreter (cryptography already imported)."""
    gc_log = _GcLog()
    gc.callbacks.append(gc_log.callback)
    cpu_started = time.process_time()
    started = time.monotonic()
    rows = bare_parse(directory)
    finished = time.monotonic()
    cpu = time.process_time() - cpu_started
    gc.callbacks.remove(gc_log.callback)
    return {
        "seconds": finished - started,
        "cpu_seconds": cpu,
        "files": len(rows),
        "gc": gc_summary(gc_log.events, started, finished),
    }


# -- the parent -------------------------------------------------------------------


def gc_summary(events: Sequence[Sequence[float]], start: float, end: float) -> dict[str, Any]:
    """Collections and their seconds per generation, of those that started in [start, end]."""
    summary: dict[str, Any] = {}
    for generation in (0, 1, 2):
        inside = [e for e in events if e[0] == generation and start <= e[1] <= end]
        summary[f"gen{generation}"] = {
            "collections": len(inside),
            "seconds": round(sum(e[2] for e in inside), 6),
            "longest_seconds": round(max((e[2] for e in inside), default=0.0), 6),
        }
    summary["seconds"] = round(sum(summary[f"gen{g}"]["seconds"] for g in (0, 1, 2)), 6)
    return summary


def ready_status(port: int) -> int | None:
    """The status of one GET /-/ready on a new connection; None if nothing answers yet."""
    connection = http.client.HTTPConnection(common.HOST, port, timeout=5)
    try:
        connection.request("GET", "/-/ready")
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def wait_quiet(threshold: float, timeout: float) -> dict[str, Any]:
    """Wait until the 1-minute load average is below ``threshold`` (re-checked every 60 s,
    for at most ``timeout`` s); what was seen."""
    started = time.monotonic()
    seen = [os.getloadavg()[0]]
    while seen[-1] >= threshold and time.monotonic() - started + 60 <= timeout:
        print(f"  load {seen[-1]:.2f} >= {threshold}: waiting 60 s", flush=True)
        time.sleep(60)
        seen.append(os.getloadavg()[0])
    quiet = seen[-1] < threshold
    if not quiet:
        print(f"  the machine did not get quiet within {timeout:.0f} s (load {seen[-1]:.2f}); measuring anyway")
    return {"threshold": threshold, "loads_seen": seen, "quiet": quiet, "waited_s": time.monotonic() - started}


def run_daemon(
    directory: Path, workdir: Path, run: str, poll_ms: float, what_if: str = "", tree: Path | None = None
) -> dict[str, Any]:
    """One fresh daemon over ``directory``: start -> /-/ready, split.  ``tree``: another
    checkout whose daemon (and ``bench/files_ready.py``) to run instead of this one's."""
    (port,) = common.free_ports(1)
    config = workdir / "config.yaml"
    config.write_text(f"probes:\n  - name: inventory\n    kind: files\n    paths: [{json.dumps(str(directory))}]\n")
    report_path = workdir / f"daemon-{run}.json"
    log = workdir / f"daemon-{run}.log"
    report_path.unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    exporter_args = ["run", f"--config.file={config}", f"--web.listen-address={common.HOST}:{port}"]
    command = common.module_command(
        "bench.files_ready", "--daemon-child", str(report_path), what_if, "--", *exporter_args
    )
    if tree is not None:  # python -m imports from the working directory first
        command = ["env", "-C", str(tree), *command]
    daemon = common.Managed(f"certscope-{run}", command, log=log)
    noise = common.noise()
    others = OtherCpu()
    polls = 0
    ready_at: float | None = None
    daemon_cpu = 0.0
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline and daemon.running():
            polls += 1
            if ready_status(port) == 200:
                ready_at = time.monotonic()
                # With its worker processes, which are not "other processes".
                daemon_cpu = common.processes_cpu_seconds([daemon.pid]) + common.waited_children_cpu_seconds(daemon.pid)
                break
            time.sleep(poll_ms / 1000)
        if ready_at is None:
            raise RuntimeError(f"daemon run {run} never answered /-/ready 200:\n{log.read_text()[-3000:]}")
        # The round's last lines (logging its outcome) run after readiness flips: let
        # them finish so that the child's timeline is complete.
        time.sleep(SETTLE_SECONDS)
    finally:
        daemon.stop()
    child = json.loads(report_path.read_text())
    timeline, cpu = child["timeline"], child["cpu"]
    start = timeline["apply"]
    logged = READY_LINE.search(log.read_text(errors="replace"))
    return {
        "ready_seconds": ready_at - start,
        "ready_seconds_daemon_log": float(logged.group(1)) if logged else None,
        "first_round_delay_seconds": timeline["round_started"] - start,
        "round_seconds": timeline["round_finished"] - timeline["round_started"],
        "publish_seconds": timeline["publish_finished"] - timeline["publish_started"],
        "readiness_latency_seconds": ready_at - timeline["publish_finished"],
        "round_cpu_seconds": cpu["round_finished"] - cpu["round_started"],
        # None from a baseline tree whose daemon child does not record it.
        "round_workers_cpu_seconds": (
            cpu["round_finished_children"] - cpu["round_started_children"] if "round_finished_children" in cpu else None
        ),
        "cpu_start_to_round_end_seconds": cpu["round_finished"] - cpu["apply"],
        "gc": gc_summary(child["gc"], start, ready_at),
        "gc_at_start": child["gc_at_start"],
        "polls": polls,
        "noise": noise,
        "other_processes_cores": others.cores(daemon_cpu),
    }


def run_bare(directory: Path, size: int) -> dict[str, Any]:
    noise = common.noise()
    others = OtherCpu()
    children_before = common.children_cpu_seconds()
    answer = common.run_json_child("bench.files_ready", "--bare-child", str(directory))
    other_cores = others.cores(common.children_cpu_seconds() - children_before)
    if answer["files"] != size:
        raise RuntimeError(f"the bare loop read {answer['files']} files, expected {size}")
    return answer | {"noise": noise, "other_processes_cores": other_cores}


class OtherCpu:
    """The CPU other processes used meanwhile, in cores: the machine's busy time
    (/proc/stat) from now on, less this process's and the measured child's.  The load
    average only says what was before; this says whether a run was shared."""

    def __init__(self) -> None:
        self._busy = common.system_ticks()[0]
        self._own = common.self_cpu_seconds()
        self._started = time.monotonic()

    def cores(self, child_cpu_seconds: float) -> float:
        busy = (common.system_ticks()[0] - self._busy) / common.CLK_TCK
        own = common.self_cpu_seconds() - self._own
        return round(max(0.0, busy - own - child_cpu_seconds) / (time.monotonic() - self._started), 3)


def measure(
    directory: Path,
    size: int,
    runs: int,
    poll_ms: float,
    workdir: Path,
    what_if: str = "",
    baseline: Path | None = None,
) -> list[dict[str, Any]]:
    """B A B A ... B (with a baseline tree: B A A' B A' A B ...): each daemon run's
    ratio is to the mean of the bare runs just before and just after it."""
    bare_parse(str(directory))  # untimed: the page cache is warm for both
    trees: list[tuple[str, Path | None]] = [("this", None)] + ([("baseline", baseline)] if baseline else [])
    bare_before = run_bare(directory, size)
    pairs = []
    for run in range(1, runs + 1):
        order = trees if run % 2 else trees[::-1]
        daemons = {
            label: run_daemon(directory, workdir, f"{run}-{label}", poll_ms, what_if, tree) for label, tree in order
        }
        bare_after = run_bare(directory, size)
        bare_seconds = (bare_before["seconds"] + bare_after["seconds"]) / 2
        for label in daemons:
            daemons[label]["ratio"] = daemons[label]["ready_seconds"] / bare_seconds
        pairs.append(
            {
                "run": run,
                "ratio": daemons["this"]["ratio"],
                "bare_seconds": bare_seconds,
                "daemons": daemons,
                "bare_before": bare_before,
                "bare_after": bare_after,
            }
        )
        for label in daemons:
            print_run(f"{run}{'' if baseline is None else ' ' + label}", daemons[label], bare_before, bare_after)
        bare_before = bare_after
    return pairs


def print_run(name: str, daemon: dict[str, Any], bare_before: dict[str, Any], bare_after: dict[str, Any]) -> None:
    gc_daemon = daemon["gc"]
    print(
        f"  run {name}: ratio {daemon['ratio']:.2f}x  daemon ready {daemon['ready_seconds']:.3f} s "
        f"(log {daemon['ready_seconds_daemon_log'] or float('nan'):.3f}; first-round delay "
        f"{daemon['first_round_delay_seconds']:.3f}, round {daemon['round_seconds']:.3f} "
        f"[publish {daemon['publish_seconds']:.3f}; CPU {daemon['round_cpu_seconds']:.2f} s daemon + "
        f"{workers if (workers := daemon['round_workers_cpu_seconds']) is None else f'{workers:.2f}'} s workers], "
        "readiness latency "
        f"{daemon['readiness_latency_seconds'] * 1000:.1f} ms; gc {gc_daemon['seconds']:.3f} s "
        f"gen0/1/2 {gc_daemon['gen0']['collections']}/{gc_daemon['gen1']['collections']}/"
        f"{gc_daemon['gen2']['collections']}, gen2 {gc_daemon['gen2']['seconds']:.3f} s)  "
        f"bare {bare_before['seconds']:.3f} / {bare_after['seconds']:.3f} s "
        f"(CPU {bare_after['cpu_seconds']:.2f} s, gc {bare_after['gc']['seconds']:.3f} s, "
        f"gen2 {bare_after['gc']['gen2']['collections']})  load {daemon['noise']['loadavg'][0]:.2f}, other "
        f"processes {daemon['other_processes_cores']:.2f} / {bare_after['other_processes_cores']:.2f} cores",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--daemon-child"]:
        separator = arguments.index("--")
        return daemon_child(arguments[1], arguments[separator + 1 :], arguments[2] if separator > 2 else "")
    if arguments[:1] == ["--bare-child"]:
        print(json.dumps(bare_child(arguments[1])))
        return 0

    parser = common.argument_parser(__doc__, "smoke-test mode: 200 files, 1 run")
    parser.add_argument("--size", type=int, default=None, help=f"certificate files (default {DEFAULT_SIZE})")
    parser.add_argument("--runs", type=int, default=None, help=f"A B pairs (default {DEFAULT_RUNS})")
    parser.add_argument("--poll-ms", type=float, default=DEFAULT_POLL_MS, help="/-/ready poll period (default 5)")
    parser.add_argument(
        "--what-if",
        default="",
        help="experiment: collector settings the daemon child applies after start-up (freeze, threshold0=N)",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="another checkout (with this benchmark) whose daemon runs in lockstep with this one's: before/after",
    )
    parser.add_argument("--wait-quiet", action="store_true", help="wait for a quiet machine before measuring")
    parser.add_argument("--quiet-load", type=float, default=1.0, help="quiet: 1-minute load below this (1.0)")
    parser.add_argument("--quiet-timeout", type=float, default=1200.0, help="wait at most this many seconds (1200)")
    args = parser.parse_args(arguments)
    size: int = args.size or (QUICK_SIZE if args.quick else DEFAULT_SIZE)
    runs: int = args.runs or (1 if args.quick else DEFAULT_RUNS)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = common.Results("files_ready", out)
    print(results.describe())
    directory = ensure_corpus(out, size)
    quiet = wait_quiet(args.quiet_load, args.quiet_timeout) if args.wait_quiet else None
    print(f"N={size} files in {directory}; {runs} runs, daemon and bare interleaved; poll every {args.poll_ms:g} ms")
    workdir = out / "files_ready"
    workdir.mkdir(exist_ok=True)
    with common.sigterm_exits():
        pairs = measure(directory, size, runs, args.poll_ms, workdir, args.what_if, args.baseline_tree)
    ratios = [pair["ratio"] for pair in pairs]
    worst = max(ratios)
    print(
        f"  start -> /-/ready over bare loop, every run: {' '.join(f'{r:.2f}x' for r in ratios)}; "
        f"median {statistics.median(ratios):.2f}x, worst {worst:.2f}x (goal <= {GOAL_READY_OVER_BARE}x in every run)"
    )
    baseline_ratios = [pair["daemons"]["baseline"]["ratio"] for pair in pairs] if args.baseline_tree else []
    if baseline_ratios:
        print(
            f"  baseline ({args.baseline_tree}), every run: {' '.join(f'{r:.2f}x' for r in baseline_ratios)}; "
            f"median {statistics.median(baseline_ratios):.2f}x, worst {max(baseline_ratios):.2f}x"
        )
    document = results.write(
        {
            "size": size,
            "runs": runs,
            "poll_ms": args.poll_ms,
            "what_if": args.what_if,
            "corpus": str(directory),
            "wait_quiet": quiet,
            "goal_ready_over_bare_max": GOAL_READY_OVER_BARE,
            "ratios": [round(r, 3) for r in ratios],
            "median_ratio": round(statistics.median(ratios), 3),
            "worst_ratio": round(worst, 3),
            "goal_met_every_run": worst <= GOAL_READY_OVER_BARE,
            "baseline_tree": str(args.baseline_tree) if args.baseline_tree else None,
            "baseline_ratios": [round(r, 3) for r in baseline_ratios],
            "pairs": pairs,
        }
    )
    print(common.elapsed_and_noise(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
