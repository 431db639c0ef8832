"""The goals table that ``python -m bench.run --write-docs`` keeps in docs/performance.md:
rows of scenarios that did not run are kept, each under the run it came from."""

from __future__ import annotations

from bench.run import earlier_rows

READY = "| files | 20,000 files: start -> /-/ready <= 1.5x bare parse, every run |"
COLD = "| files | 10,000 files: cold scan <= 1.5x bare parse | 1.23x | yes |"
TLS = "| tls | ec: CPU per probe at c=64 <= 1.0x blackbox | 0.90x | yes |"
OCSP = "| revocation | uncached OCSP CPU <= 2x http.client floor | 3.13x | **no** |"

PREVIOUS = f"""
Assembled by `python -m bench.run --reuse` on vm, 2026-12-07 05:47 UTC, from:

| scenario | goal | measured | met |
|---|---|---|---|
{TLS}
{READY} worst 1.55x | **no** |

From an earlier run, not repeated here (Assembled by `python -m bench.run` on vm, 2026-12-07 02:09 UTC, from):

| scenario | goal | measured | met |
|---|---|---|---|
{READY} worst 1.28x | yes |
{COLD}
{OCSP}
"""


def test_a_row_the_new_table_has_a_goal_for_is_dropped_even_under_a_shared_label() -> None:
    # files_ready's rows carry the label "files", as files_scan's do: the new
    # files_ready row replaces both older ones, and files_scan's row stays.
    table = f"| scenario | goal | measured | met |\n|---|---|---|---|\n{READY} worst 1.27x | yes |\n"
    kept = earlier_rows(PREVIOUS, table, ran=["files_ready"])
    assert kept == [
        ("Assembled by `python -m bench.run --reuse` on vm, 2026-12-07 05:47 UTC, from", [TLS]),
        ("Assembled by `python -m bench.run` on vm, 2026-12-07 02:09 UTC, from", [COLD, OCSP]),
    ]


def test_the_rows_of_a_scenario_that_ran_are_all_dropped() -> None:
    kept = earlier_rows(PREVIOUS, "", ran=["tls", "files", "revocation", "files_ready"])
    assert kept == []
