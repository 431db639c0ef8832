"""The benchmarks run end to end on a tiny scenario, so they cannot rot.  Their
numbers are not judged here (benchmarks are not pass/fail tests).  They run as the
documentation says, ``python -m bench.<name>`` from the repository root, and each writes
the result header of ``bench.common.Results``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def run_quick(name: str, out: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m bench.<name> --quick``; its ``<out>/<name>.json`` must carry the common header."""
    run = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((out / f"{name}.json").read_text())
    assert result["benchmark"] == name
    assert result["machine"]["nproc"] and result["machine"]["python"] and result["code"]["commit"]
    assert set(result["noise"]) == {"start", "end"} and result["elapsed_s"] > 0
    return run


def test_benchmarks_import_the_project_without_path_tricks() -> None:
    """They run as modules of the ``bench`` package, so nothing edits ``sys.path``."""
    scripts = sorted(BENCH.glob("*.py"))
    assert len(scripts) > 5 and (BENCH / "__init__.py") in scripts
    assert [s.name for s in scripts if "sys.path" in s.read_text()] == []


def test_files_scan_benchmark_quick(tmp_path: Path) -> None:
    run = run_quick("files_scan", tmp_path, 120)
    result = json.loads((tmp_path / "files_scan.json").read_text())
    (size,) = result["sizes"].values()
    assert set(size["cases"]) >= {"bare_parse", "scandir_stat", "cold_scan", "warm_rescan"}
    assert size["ratios"]["cold_over_bare_parse"] > 0
    assert "cold_scan / bare_parse" in run.stdout


def test_files_ready_benchmark_quick(tmp_path: Path) -> None:
    run = run_quick("files_ready", tmp_path, 120)
    result = json.loads((tmp_path / "files_ready.json").read_text())
    (pair,) = result["pairs"]
    assert pair["bare_before"]["files"] == pair["bare_after"]["files"] == result["size"] == 200
    daemon = pair["daemons"]["this"]
    assert 0 < daemon["ready_seconds_daemon_log"] <= daemon["ready_seconds"]
    assert daemon["first_round_delay_seconds"] < daemon["ready_seconds"]
    assert "start -> /-/ready over bare loop, every run" in run.stdout


def test_tls_probe_benchmark_quick(tmp_path: Path) -> None:
    run = run_quick("tls_probe", tmp_path, 300)
    result = json.loads((tmp_path / "tls_probe.json").read_text())
    assert result["goals_at_64"], "the certscope/blackbox ratios were computed"
    assert "1,000 loopback endpoints" in run.stdout


def test_tls_scale_benchmark_quick(tmp_path: Path) -> None:
    run = run_quick("tls_scale", tmp_path, 180)
    result = json.loads((tmp_path / "tls_scale.json").read_text())
    assert list(result["variants"]) == ["rsa", "ec", "mtls-ec"]
    for name, variant in result["variants"].items():
        assert list(variant["sizes"]) == ["20", "60"]
        for size_text, figures in variant["sizes"].items():
            size = int(size_text)
            cs, bb, ratios = figures["certscope"], figures["blackbox"], figures["ratios"]
            assert cs["targets"] == bb["targets"] == size
            for number in (1, 2):
                assert cs[f"round{number}_seconds"] > 0
                assert cs[f"cpu_ms_per_target_round{number}"] > 0
                assert cs[f"render_text_seconds_round{number}"] > 0
            assert bb["seconds"] > 0 and bb["cpu_ms_per_probe"] >= 0
            # Every target exports its own series: at least one per target.
            assert cs["series"] > size
            # A few dozen distinct chains fit the probe's memo: round 2 reuses every one.
            assert cs["facts_reused_share_round2"] == 1.0
            assert ratios["wall_round1_over_blackbox"] == pytest.approx(cs["round1_seconds"] / bb["seconds"])
            assert ratios["round2_over_round1"] == pytest.approx(cs["round2_seconds"] / cs["round1_seconds"])
        assert variant["sizes"]["20"]["linearity"]["certscope_wall_round1"] == pytest.approx(1.0)
        goals = variant["goals"]
        ratio = variant["sizes"]["60"]["linearity"]["certscope_cpu_round1"]
        assert goals["linearity"]["cpu_round1_ratio"] == pytest.approx(ratio)
        # One CPU goal per size and round; memory measured at the largest size and derived.
        assert [(g["size"], g["round"]) for g in goals["cpu"]] == [(20, 1), (20, 2), (60, 1), (60, 2)]
        memory = goals["memory"]
        assert memory["measured_size"] == 60 and memory["derived_size"] == 50_000
        assert memory["retained_kib_per_target"] > 0 and memory["fit"]["retained"]["kib_per_target"] > 0
        assert f"{name}, per-target cost 60 vs 20" in run.stdout
    runs = result["runs"]
    assert sorted((r["variant"], r["side"], r["size"]) for r in runs) == sorted(
        (variant, side, size)
        for variant in ("rsa", "ec", "mtls-ec")
        for side in ("blackbox", "certscope")
        for size in (20, 60)
    )
    certscope_runs = [r for r in runs if r["side"] == "certscope"]
    assert all(r[f"round{n}"]["distinct_leaves"] == r["size"] for r in certscope_runs for n in (1, 2))
    # mTLS: nginx accepted the client certificate of every probe (its 200 to the http check).
    assert all(
        r[f"round{n}"]["client_auth_accepted"] == r[f"round{n}"]["http_200"] == r["size"]
        for r in certscope_runs
        if r["variant"] == "mtls-ec"
        for n in (1, 2)
    )
    assert result["machine"]["nproc"] and result["machine"]["nginx"] and result["machine"]["blackbox_exporter"]


def test_revocation_benchmark_quick(tmp_path: Path) -> None:
    run = run_quick("revocation", tmp_path, 120)
    assert (tmp_path / "revocation.json").exists()
    assert "OCSP cached network requests = 0" in run.stdout


def test_kubernetes_benchmark_quick(tmp_path: Path) -> None:
    run = run_quick("kubernetes", tmp_path, 180)
    result = json.loads((tmp_path / "kubernetes.json").read_text())
    assert [(r["secrets"], r["helm_secrets"]) for r in result["runs"]] == [(100, 0), (100, 5), (200, 0), (200, 5)]
    assert all(r["certscope"]["targets"] == 2 * r["secrets"] for r in result["runs"])
    assert "bare_parse" in run.stdout


def test_scrape_benchmark_quick(tmp_path: Path) -> None:
    run = run_quick("scrape", tmp_path, 120)
    result = json.loads((tmp_path / "scrape.json").read_text())
    assert set(result["medians_seconds"]) >= {"client_collector", "certscope_http_first", "certscope_http_cached"}
    assert result["series"] > 1000
    assert "certscope_http_cached / client_collector" in run.stdout


def test_harness_runs_scenarios_and_plots(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--only",
            "kubernetes,scrape,tls_scale",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert {row["scenario"] for row in rows} == {"kubernetes", "scrape", "tls_scale"}
    goals = {row["goal"] for row in rows if row["scenario"] == "tls_scale"}
    for variant in ("rsa", "ec", "mtls-ec"):
        assert f"{variant}: per-target cost 60 vs 20 within 1.2x (linear or better)" in goals
        assert f"{variant}, 60 targets: CPU per probe <= 1.0x blackbox (first round, caches cold)" in goals
        assert f"{variant}, 60 targets: CPU per probe <= 1.0x blackbox (second round, caches warm)" in goals
        assert f"{variant}: memory per TLS target held at 50,000 (derived) <= 45.6 KiB (before)" in goals
    assert "| scenario | goal | measured | met |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "scale.png").read_bytes().startswith(b"\x89PNG")


def test_tracing_benchmark_quick(tmp_path: Path) -> None:
    run = run_quick("tracing", tmp_path, 120)
    result = json.loads((tmp_path / "tracing.json").read_text())
    assert set(result["cells"]) == {
        "phase_untraced",
        "record_phase",
        "run_untraced",
        "run_traced",
        "tls_untraced",
        "tls_traced",
    }
    assert result["spans_received"] > 0
    assert "overhead tracing_per_run" in run.stdout


def test_cpu_slots_benchmark_quick(tmp_path: Path) -> None:
    run = run_quick("cpu_slots", tmp_path, 180)
    result = json.loads((tmp_path / "cpu_slots.json").read_text())
    assert set(result["medians"]) == {
        f"{slots}/{round_name}"
        for slots in ("handed_over", "semaphore")
        for round_name in ("first_sight", "seen_before")
    }
    for figures in result["medians"].values():
        assert figures["cpu_ms_per_probe"] > 0 and figures["handshake_ms_p99"] >= figures["handshake_ms_p50"] > 0
    assert "| handed_over/first_sight |" in run.stdout


def test_first_sight_benchmark_quick(tmp_path: Path) -> None:
    run = run_quick("first_sight", tmp_path, 180)
    result = json.loads((tmp_path / "first_sight.json").read_text())
    assert set(result["medians"]) == {"first_sight", "facts_known", "verdict_known", "seen_before"}
    for cell, runs in result["runs"].items():
        assert len(runs) == 1 and runs[0]["cpu_ms_per_probe"] > 0 and runs[0]["probes_per_second"] > 0, cell
    assert set(result["most_saved_ms_per_probe"]) == {"facts", "verdict"}
    assert "a new chain costs" in run.stdout and "| seen_before |" in run.stdout


def test_event_loop_benchmark_quick(tmp_path: Path) -> None:
    run = run_quick("event_loop", tmp_path, 180)
    result = json.loads((tmp_path / "event_loop.json").read_text())
    slots = result["cpu_slots"]
    drivers = (f"threads c={slots}", "threads c=16", f"loops {slots}x{16 // slots}")
    cells = {f"{memo}/{driver}" for memo in ("first_sight", "seen_before") for driver in drivers}
    assert set(result["medians"]) == cells
    assert all(cell["cpu_ms_per_job"] > 0 and cell["jobs_per_second"] > 0 for cell in result["medians"].values())
    assert "| seen_before/" in run.stdout
