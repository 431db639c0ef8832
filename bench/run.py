"""Run the benchmarks, one command: every scenario, or the ones named.

Each scenario is its own module (``bench/<name>.py``, run as ``python -m bench.<name>``,
which starts the peers and servers it needs and interleaves its cases A B A B); this
harness runs them one after the other in subprocesses from the repository root, reads
the JSON each writes, and prints one table of the goals with the measured figure,
whether it is met, and the script's own ratio.  It writes ``<out>/summary.json``,
``<out>/summary.md`` and a plot of the scale curves (``<out>/scale.png``).  With
``--write-docs`` the table replaces the block between the ``bench/run.py`` markers in
``docs/performance.md`` and the plot goes to ``docs/performance-scale.png``.

Usage::

    python -m bench.run [--only files,files_ready,tls,tls_scale,revocation,kubernetes,scrape] [--quick]
                        [--out bench/out] [--write-docs] [--reuse]

``--quick`` runs every scenario on its smoke-test size (the test suite does this).
``--reuse`` runs nothing: it reads the JSON each scenario left in ``--out`` (say, from
``python -m bench.tls_scale`` run on its own) and builds the table and the plot from it;
the table's header then names the first line of each result's command.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import common

MARK_START = "<!-- bench/run.py summary: start -->"
MARK_END = "<!-- bench/run.py summary: end -->"


@dataclass(frozen=True)
class Row:
    scenario: str
    goal: str
    measured: str
    met: bool | None  # None: reported, no pass/fail goal


def _files(result: dict[str, Any]) -> list[Row]:
    rows = []
    for size, figures in result["sizes"].items():
        ratios, cold = figures["ratios"], figures["cases"]["cold_scan"]
        rows.append(
            Row(
                "files",
                f"{int(size):,} files: cold scan <= 1.5x bare parse",
                f"{ratios['cold_over_bare_parse']:.2f}x ({cold['median_seconds']:.2f} s)",
                ratios["cold_over_bare_parse"] <= 1.5,
            )
        )
        rows.append(
            Row(
                "files",
                f"{int(size):,} files: unchanged rescan <= 2x scandir+stat",
                f"{ratios['warm_over_scandir_stat']:.2f}x",
                ratios["warm_over_scandir_stat"] <= 2.0,
            )
        )
        memory = figures.get("memory", {}).get("rss_bytes_per_cert")
        if memory is not None:
            goal = f"{int(size):,} files: <= 2 KB per certificate"
            rows.append(Row("files", goal, f"{memory:.0f} B", memory <= 2048))
    return rows


def _span(values: list[float] | None, digits: int = 2) -> str:
    """`` [low-high]`` (the range over repetitions), or nothing."""
    return f" [{values[0]:.{digits}f}-{values[1]:.{digits}f}]" if values else ""


def _files_ready(result: dict[str, Any]) -> list[Row]:
    ratios = ", ".join(f"{r:.2f}" for r in result["ratios"])
    goal = result["goal_ready_over_bare_max"]
    return [
        Row(
            "files",
            f"{result['size']:,} files: start -> /-/ready <= {goal}x bare parse, every run",
            f"worst {result['worst_ratio']:.2f}x ({ratios})",
            result["goal_met_every_run"],
        )
    ]


def _tls(result: dict[str, Any]) -> list[Row]:
    rows = []
    for goal in result.get("goals_at_64", []):
        variant = goal["variant"]
        rows.append(
            Row(
                "tls",
                f"{variant}: CPU per probe at c=64 <= {goal.get('cpu_goal', 1.0)}x blackbox",
                f"{goal['cpu_ratio']:.2f}x{_span(goal.get('cpu_ratio_range_paired'))}",
                goal["cpu_goal_met"],
            )
        )
        rows.append(
            Row(
                "tls",
                f"{variant}: throughput at c=64 >= {goal.get('throughput_goal', 1.0)}x blackbox",
                f"{goal['throughput_ratio']:.2f}x{_span(goal.get('throughput_ratio_range_paired'))}",
                goal["throughput_goal_met"],
            )
        )
    for round_ in result.get("endpoint_round", []):
        if round_.get("ratio") is None:
            continue
        http = "; certscope sends GET /, blackbox no HTTP" if round_.get("certscope_http") else ""
        rows.append(
            Row(
                "tls",
                f"1,000 endpoints ({round_['variant']}): round no slower than blackbox's over the same 1,000 (c=64)",
                f"{round_['ratio']:.2f}x{_span(round_.get('ratio_range_paired'))} "
                f"({round_['median_s']:.2f} s vs {round_['blackbox_s']:.2f} s{http})",
                round_["goal_met"],
            )
        )
    return rows


ROUND_NAMES = {1: "first round, caches cold", 2: "second round, caches warm"}


def _tls_scale(result: dict[str, Any]) -> list[Row]:
    rows = []
    for variant, figures in result["variants"].items():
        goals = figures["goals"]
        for cpu in goals["cpu"]:
            rows.append(
                Row(
                    "tls_scale",
                    f"{variant}, {cpu['size']:,} targets: CPU per probe <= {cpu['goal_ratio']}x blackbox "
                    f"({ROUND_NAMES[cpu['round']]})",
                    f"{cpu['ratio']:.2f}x{_span(cpu.get('ratio_range'))} "
                    f"({cpu['certscope_ms']:.2f} vs {cpu['blackbox_ms']:.2f} ms)",
                    cpu["met"],
                )
            )
        endpoints = goals.get("endpoints_1000")
        if endpoints:
            for number in (1, 2):
                rows.append(
                    Row(
                        "tls_scale",
                        f"{variant}, 1,000 endpoints: round no slower than blackbox's ({ROUND_NAMES[number]})",
                        f"{endpoints[f'round{number}_ratio']:.2f}x{_span(endpoints.get(f'round{number}_ratio_range'))} "
                        f"({endpoints[f'round{number}_seconds']:.2f} s vs {endpoints['blackbox_seconds']:.2f} s)",
                        endpoints[f"round{number}_met"],
                    )
                )
        linear = goals.get("linearity")
        if linear:
            rows.append(
                Row(
                    "tls_scale",
                    f"{variant}: per-target cost {linear['largest']:,} vs {linear['smallest']:,} within "
                    f"{linear['goal_ratio']}x (linear or better)",
                    f"wall {linear['wall_round1_ratio']:.2f}x, CPU {linear['cpu_round1_ratio']:.2f}x (first round); "
                    f"wall {linear['wall_round2_ratio']:.2f}x, CPU {linear['cpu_round2_ratio']:.2f}x (second round)",
                    linear["met"],
                )
            )
        memory = goals["memory"]
        rows.append(
            Row(
                "tls_scale",
                f"{variant}: memory per TLS target held at {memory['measured_size']:,} "
                f"<= {memory['before_kib_per_target']} KiB (before)",
                f"{memory['retained_kib_per_target']:.1f} KiB (peak with a /metrics render "
                f"{memory['peak_kib_per_target']:.1f} KiB)",
                memory["measured_met"],
            )
        )
        if "derived_size" in memory:
            fit = memory["fit"]["retained"]
            rows.append(
                Row(
                    "tls_scale",
                    f"{variant}: memory per TLS target held at {memory['derived_size']:,} (derived) "
                    f"<= {memory['before_kib_per_target']} KiB (before)",
                    f"{memory['derived_retained_kib_per_target']:.1f} KiB, derived: "
                    f"{fit['fixed_kib'] / 1024:.1f} MiB + {fit['kib_per_target']:.1f} KiB x N, a line through "
                    f"{', '.join(f'{n:,}' for n in fit['sizes'])} targets (worst miss {fit['worst_miss_share']:.0%})",
                    memory["derived_met"],
                )
            )
    return rows


def _revocation(result: dict[str, Any]) -> list[Row]:
    ratios = result["ratios"]
    return [
        Row(
            "revocation",
            "uncached OCSP CPU <= 2x http.client floor",
            f"{ratios['ocsp_uncached_cpu_over_floor']:.2f}x",
            ratios["goal_ocsp_cpu_over_floor_met"],
        ),
        Row(
            "revocation",
            "0 requests for a cached OCSP answer",
            str(ratios["ocsp_cached_network_requests"]),
            ratios["goal_cached_requests_met"],
        ),
        Row("revocation", "CRL evaluate vs bare parse", f"{ratios['crl_certscope_over_bare']:.2f}x", None),
    ]


def _kubernetes(result: dict[str, Any]) -> list[Row]:
    rows = []
    runs = result["runs"]
    for run in runs:
        rows.append(
            Row(
                "kubernetes",
                f"{run['secrets']:,} Secrets + {run['helm_secrets']} Helm: first inventory vs bare parse",
                f"{run['time_over_bare_parse']:.2f}x ({run['certscope']['seconds']:.2f} s, "
                f"{run['certscope']['peak_growth_kib'] / 1024:.1f} MiB)",
                None,
            )
        )
    by_size: dict[int, list[float]] = {}
    for run in runs:
        by_size.setdefault(run["secrets"], []).append(run["certscope"]["peak_growth_kib"])
    for size, peaks in by_size.items():
        if len(peaks) > 1:
            spread = (max(peaks) - min(peaks)) / max(peaks)
            rows.append(
                Row(
                    "kubernetes",
                    f"{size:,} Secrets: peak memory flat in Helm Secrets (<= 10% apart)",
                    f"{spread:.1%}",
                    spread <= 0.10,
                )
            )
    return rows


def _scrape(result: dict[str, Any]) -> list[Row]:
    medians = result["medians_seconds"]
    series = result["series"]
    return [
        Row(
            "scrape",
            f"{series:,} series: first scrape <= 1.0 s",
            f"{medians['certscope_http_first']:.2f} s",
            medians["certscope_http_first"] <= 1.0 if series >= 100_000 else None,
        ),
        Row("scrape", f"{series:,} series: cached scrape", f"{medians['certscope_http_cached'] * 1000:.1f} ms", None),
        Row(
            "scrape",
            "gzip does not double the cost",
            f"{result['ratios']['gzip_first / http_first']:.2f}x",
            result["ratios"]["gzip_first / http_first"] < 2.0,
        ),
        Row(
            "scrape",
            "<= 0.5 KB per series held",
            f"{result['snapshot_bytes_per_series']:.0f} B",
            result["snapshot_bytes_per_series"] <= 512,
        ),
    ]


@dataclass(frozen=True)
class Scenario:
    module: str
    output: str
    extract: Callable[[dict[str, Any]], list[Row]]
    full_args: tuple[str, ...] = ()


SCENARIOS = {
    "files": Scenario("bench.files_scan", "files_scan.json", _files),
    "files_ready": Scenario("bench.files_ready", "files_ready.json", _files_ready),
    "tls": Scenario("bench.tls_probe", "tls_probe.json", _tls),
    "tls_scale": Scenario("bench.tls_scale", "tls_scale.json", _tls_scale),
    "revocation": Scenario("bench.revocation", "revocation.json", _revocation),
    "kubernetes": Scenario("bench.kubernetes", "kubernetes.json", _kubernetes),
    "scrape": Scenario("bench.scrape", "scrape.json", _scrape),
}


def run_scenario(
    name: str, scenario: Scenario, out: Path, quick: bool, reuse: bool = False
) -> tuple[list[Row], dict[str, Any]]:
    if reuse:
        path = out / scenario.output
        if not path.exists():
            raise SystemExit(f"--reuse: {path} is missing (run: python -m {scenario.module} --out {out})")
        result = json.loads(path.read_text())
        print(f"== {name}: {path} ({result.get('generated', '?')}: {result.get('command', '?')})", flush=True)
        return scenario.extract(result), result
    args = common.module_command(scenario.module, "--out", str(out), *(["--quick"] if quick else scenario.full_args))
    print(f"== {name}: {' '.join(args[1:])}", flush=True)
    started = time.monotonic()
    done = subprocess.run(args, cwd=common.REPO_ROOT, text=True, capture_output=True, check=False)
    (out / f"{name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}); see {out / f'{name}.log'}:\n{done.stderr[-2000:]}")
    print(f"   done in {time.monotonic() - started:.0f} s", flush=True)
    result = json.loads((out / scenario.output).read_text())
    return scenario.extract(result), result


def markdown(rows: list[Row], quick: bool, reused: dict[str, dict[str, Any]] | None = None) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if reused:
        head = [
            f"Assembled by `python -m bench.run --reuse` on {platform.node() or 'this machine'}"
            f" ({os.cpu_count()} CPUs, Python {platform.python_version()}), {when}, from:",
            "",
        ]
        for name, result in reused.items():
            head.append(f"- {name}: `{result.get('command', '?')}`, {result.get('generated', '?')}")
    else:
        head = [
            f"Measured by `python -m bench.run{' --quick' if quick else ''}` on {platform.node() or 'this machine'}"
            f" ({os.cpu_count()} CPUs, Python {platform.python_version()}), {when}."
        ]
    lines = [
        *head,
        "",
        "| scenario | goal | measured | met |",
        "|---|---|---|---|",
    ]
    marks = {True: "yes", False: "**no**", None: "—"}
    lines += [f"| {r.scenario} | {r.goal} | {r.measured} | {marks[r.met]} |" for r in rows]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Curve:
    """One panel of the scale plot: one or more series over the same x axis."""

    title: str
    unit: str  # the x axis
    series: tuple[tuple[str, list[float], list[float]], ...]  # (label, xs, ys); the first is certscope's
    log: bool = False  # log x axis, for sizes spanning decades (log y too for totals)
    value: str = "seconds"  # the y axis
    # The reference drawn through certscope's first point: "linear" (a total growing in
    # proportion to the size) or "flat" (a cost per item that does not grow).
    reference: str = "linear"


def curves(results: dict[str, dict[str, Any]]) -> list[Curve]:
    """The scale curves of the scenarios that ran at several sizes."""
    found: list[Curve] = []
    if "files" in results and len(results["files"]["sizes"]) > 1:
        sizes = sorted(results["files"]["sizes"], key=int)
        cold = [results["files"]["sizes"][s]["cases"]["cold_scan"]["median_seconds"] for s in sizes]
        found.append(Curve("files: cold scan", "files", (("certscope", [float(s) for s in sizes], cold),)))
    if "kubernetes" in results:
        runs = [r for r in results["kubernetes"]["runs"] if r["helm_secrets"] == 0]
        if len(runs) > 1:
            xs = [float(r["secrets"]) for r in runs]
            found.append(
                Curve(
                    "kubernetes: first inventory",
                    "Secrets",
                    (("certscope", xs, [r["certscope"]["seconds"] for r in runs]),),
                )
            )
    for variant, scale in results.get("tls_scale", {}).get("variants", {}).items():
        if len(scale["sizes"]) < 2:
            continue
        sizes = sorted(scale["sizes"], key=int)
        figures = [scale["sizes"][s] for s in sizes]
        xs = [float(s) for s in sizes]
        found.append(
            Curve(
                f"tls_scale {variant}: CPU per probe in a round",
                "TLS targets (distinct certificates)",
                (
                    ("certscope, first round", xs, [f["certscope"]["cpu_ms_per_target_round1"] for f in figures]),
                    ("certscope, second round", xs, [f["certscope"]["cpu_ms_per_target_round2"] for f in figures]),
                    ("blackbox_exporter", xs, [f["blackbox"]["cpu_ms_per_probe"] for f in figures]),
                ),
                log=True,
                value="CPU ms per probe",
                reference="flat",
            )
        )
    return found


def plot(results: dict[str, dict[str, Any]], path: Path) -> bool:
    """Scale curves of the scenarios that ran at several sizes; False if none did."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curves(results)
    if not panels:
        return False
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    for axis, curve in zip(axes.flat, panels, strict=False):
        for label, xs, ys in curve.series:
            axis.plot(xs, ys, marker="o", label=label)
        # Reference through certscope's smallest point: a knee shows as a departure.
        _, xs, ys = curve.series[0]
        if curve.reference == "flat":
            axis.plot(xs, [ys[0] for _ in xs], linestyle="--", color="grey", label="linear (flat per probe)")
            axis.set_ylim(bottom=0)
        else:
            axis.plot(xs, [ys[0] * x / xs[0] for x in xs], linestyle="--", color="grey", label="linear")
        if curve.log:
            axis.set_xscale("log")
            if curve.reference != "flat":
                axis.set_yscale("log")
            # The sizes measured, written out, rather than powers of ten.
            axis.set_xticks(xs, [f"{x:,.0f}" for x in xs])
            axis.minorticks_off()
        axis.set_title(curve.title, fontsize="medium")
        axis.set_xlabel(curve.unit)
        axis.set_ylabel(curve.value)
        axis.legend(fontsize="small")
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def earlier_rows(previous: str, table: str, ran: list[str]) -> list[tuple[str, list[str]]]:
    """The goal rows of the summary block ``previous`` that the new ``table`` does not
    replace, grouped under the stamp they were listed under there ("Assembled by ...",
    or the stamp of an earlier-run section).  A row is replaced when its scenario ran
    or when the table has a row for the same scenario label and goal (files_ready's
    label is "files", which files_scan's rows share)."""
    fresh = {_label_and_goal(line) for line in table.splitlines() if line.startswith("| ")}
    groups: dict[str, list[str]] = {}
    stamp = "date unknown"
    for line in previous.splitlines():
        if line.startswith(("Measured by", "Assembled by")):
            stamp = line.rstrip(".:")
        elif line.startswith("From an earlier run"):
            stamp = line[line.find("(") + 1 : line.rfind(")")] or "date unknown"
        elif line.startswith("| ") and not line.startswith("| scenario "):
            label = line.split("|")[1].strip()
            if label in SCENARIOS and label not in ran and _label_and_goal(line) not in fresh:
                rows = groups.setdefault(stamp, [])
                if line not in rows:
                    rows.append(line)
    return list(groups.items())


def _label_and_goal(row: str) -> tuple[str, str]:
    cells = row.split("|")
    return cells[1].strip(), cells[2].strip() if len(cells) > 2 else ""


def write_docs(table: str, plot_path: Path | None, ran: list[str]) -> None:
    """The table (and plot) between the markers of docs/performance.md.  The rows of
    scenarios this run did not include are kept from the block already there, each
    under a line that says which earlier run they come from."""
    docs = common.REPO_ROOT / "docs" / "performance.md"
    text = docs.read_text()
    block = f"{MARK_START}\n{table}"
    if MARK_START in text and MARK_END in text:
        previous = text.split(MARK_START, 1)[1].split(MARK_END, 1)[0]
        for stamp, rows in earlier_rows(previous, table, ran):
            block += f"\nFrom an earlier run, not repeated here ({stamp}):\n\n"
            block += "| scenario | goal | measured | met |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    if plot_path is not None:
        target = common.REPO_ROOT / "docs" / "performance-scale.png"
        target.write_bytes(plot_path.read_bytes())
        block += "\n![Scale curves](performance-scale.png)\n"
    block += f"{MARK_END}"
    if MARK_START in text and MARK_END in text:
        before, rest = text.split(MARK_START, 1)
        after = rest.split(MARK_END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n## Summary of the last harness run\n\n" + block + "\n"
    docs.write_text(text)


def main() -> None:
    parser = common.argument_parser(__doc__, "every scenario on its smoke-test size")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--write-docs", action="store_true", help="put the table and the plot into docs/")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read each scenario's <out>/<name>.json as a run left it instead of running it",
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        scenario_rows, results[name] = run_scenario(name, SCENARIOS[name], args.out, args.quick, args.reuse)
        rows += scenario_rows
    table = markdown(rows, args.quick, results if args.reuse else None)
    print(table)
    (args.out / "summary.md").write_text(table)
    (args.out / "summary.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    plot_path = args.out / "scale.png"
    plotted = plot(results, plot_path)
    if args.write_docs:
        write_docs(table, plot_path if plotted else None, names)


if __name__ == "__main__":
    main()
