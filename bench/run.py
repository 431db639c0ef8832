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
                        [--out bench/out] [--write-docs]

``--quick`` runs every scenario on its smoke-test size (the test suite does this).
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
            Row("tls", f"{variant}: CPU per probe <= 1.0x blackbox", f"{goal['cpu_ratio']:.2f}x", goal["cpu_goal_met"])
        )
        rows.append(
            Row(
                "tls",
                f"{variant}: throughput at c=64 >= 0.9x blackbox",
                f"{goal['throughput_ratio']:.2f}x",
                goal["throughput_goal_met"],
            )
        )
    for round_ in result.get("endpoint_round", []):
        rows.append(
            Row(
                "tls",
                f"1,000 endpoints ({round_['variant']}) <= {round_['goal_s']} s",
                f"{round_['median_s']:.2f} s",
                round_["goal_met"],
            )
        )
    return rows


def _tls_scale(result: dict[str, Any]) -> list[Row]:
    rows = []
    endpoints = result["goals"].get("endpoints_1000")
    if endpoints:
        goal = endpoints["goal_seconds"]
        rows.append(
            Row(
                "tls_scale",
                f"1,000 endpoints in <= {goal} s (first round)",
                f"{endpoints['round1_seconds']:.2f} s (blackbox {endpoints['blackbox_seconds']:.2f} s)",
                endpoints["round1_met"],
            )
        )
        rows.append(
            Row(
                "tls_scale",
                f"1,000 endpoints in <= {goal} s (second round, caches warm)",
                f"{endpoints['round2_seconds']:.2f} s",
                endpoints["round2_met"],
            )
        )
    linear = result["goals"].get("linearity")
    if linear:
        rows.append(
            Row(
                "tls_scale",
                f"per-target cost {linear['largest']:,} vs {linear['smallest']:,} within {linear['goal_ratio']}x "
                "(linear or better)",
                f"wall {linear['wall_round1_ratio']:.2f}x, CPU {linear['cpu_round1_ratio']:.2f}x (first round); "
                f"wall {linear['wall_round2_ratio']:.2f}x, CPU {linear['cpu_round2_ratio']:.2f}x (second round)",
                linear["met"],
            )
        )
    for size, figures in result["sizes"].items():
        cs, bb, ratios = figures["certscope"], figures["blackbox"], figures["ratios"]
        rows.append(
            Row(
                "tls_scale",
                f"{int(size):,} targets: round wall vs blackbox (first / second round)",
                f"{ratios['wall_round1_over_blackbox']:.2f}x / {ratios['wall_round2_over_blackbox']:.2f}x "
                f"({cs['round1_seconds']:.2f} / {cs['round2_seconds']:.2f} s vs {bb['seconds']:.2f} s)",
                None,
            )
        )
        rows.append(
            Row(
                "tls_scale",
                f"{int(size):,} targets: CPU per target vs blackbox (first / second round)",
                f"{ratios['cpu_round1_over_blackbox']:.2f}x / {ratios['cpu_round2_over_blackbox']:.2f}x "
                f"({cs['cpu_ms_per_target_round1']:.2f} / {cs['cpu_ms_per_target_round2']:.2f} ms vs "
                f"{bb['cpu_ms_per_probe']:.2f} ms)",
                None,
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


def run_scenario(name: str, scenario: Scenario, out: Path, quick: bool) -> tuple[list[Row], dict[str, Any]]:
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


def markdown(rows: list[Row], quick: bool) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"Measured by `python -m bench.run{' --quick' if quick else ''}` on {platform.node() or 'this machine'}"
        f" ({os.cpu_count()} CPUs, Python {platform.python_version()}), {when}.",
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
    log: bool = False  # log-log axes, for sizes spanning decades


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
    if "tls_scale" in results and len(results["tls_scale"]["sizes"]) > 1:
        sizes = sorted(results["tls_scale"]["sizes"], key=int)
        figures = [results["tls_scale"]["sizes"][s] for s in sizes]
        xs = [float(s) for s in sizes]
        found.append(
            Curve(
                "tls_scale: one probe round",
                "TLS targets",
                (
                    ("certscope, first round", xs, [f["certscope"]["round1_seconds"] for f in figures]),
                    ("certscope, second round", xs, [f["certscope"]["round2_seconds"] for f in figures]),
                    ("blackbox_exporter", xs, [f["blackbox"]["seconds"] for f in figures]),
                ),
                log=True,
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
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for axis, curve in zip(axes[0], panels, strict=True):
        for label, xs, ys in curve.series:
            axis.plot(xs, ys, marker="o", label=label)
        # Linear reference through certscope's smallest point: a knee shows as a departure.
        _, xs, ys = curve.series[0]
        axis.plot(xs, [ys[0] * x / xs[0] for x in xs], linestyle="--", color="grey", label="linear")
        if curve.log:
            axis.set_xscale("log")
            axis.set_yscale("log")
        axis.set_title(curve.title)
        axis.set_xlabel(curve.unit)
        axis.set_ylabel("seconds")
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def write_docs(table: str, plot_path: Path | None) -> None:
    docs = common.REPO_ROOT / "docs" / "performance.md"
    text = docs.read_text()
    block = f"{MARK_START}\n{table}"
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
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        scenario_rows, results[name] = run_scenario(name, SCENARIOS[name], args.out, args.quick)
        rows += scenario_rows
    table = markdown(rows, args.quick)
    print(table)
    (args.out / "summary.md").write_text(table)
    (args.out / "summary.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    plot_path = args.out / "scale.png"
    plotted = plot(results, plot_path)
    if args.write_docs:
        write_docs(table, plot_path if plotted else None)


if __name__ == "__main__":
    main()
