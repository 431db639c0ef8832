"""Benchmark: how fast the ``files`` probe scans a directory of PEM certificates.

For corpora of N distinct one-certificate PEM files (leaves alternating RSA-2048 and
ECDSA P-256 keys, signed by an EC P-256 CA, two DNS SANs each, issued with the tests'
``tests.fixtures.pki.issue``), this measures in one
run, each case repeated and interleaved (A B C D E A B C D E ...), reporting medians:

``bare_parse``
    The library limit: ``os.scandir`` + read + ``x509.load_pem_x509_certificate`` +
    the fields certscope needs (not_valid_after_utc, subject/issuer RFC 4514 strings,
    SAN DNS names, serial, public key type and size, signature algorithm OID,
    SHA-256 fingerprint) into a tuple.  No error handling, no bookkeeping.
``bare_parse_parallel``
    The same work split over one worker process per CPU (pool started beforehand,
    not timed; the listing is done here and the fields are sent back as plain
    values): what the machine can do at best, for the absolute 100k goal.
``scandir_stat``
    The floor of an unchanged rescan: ``os.scandir`` + one ``stat`` per file.
``cold_scan``
    certscope, first round of a new probe, parsed in this process (the daemon's
    worker processes for a large first round are left out, see ``new_probe``):
    a fresh ``FilesProbe``, ``targets()``
    then ``run(target, ctx)`` per target with a fresh ``ProbeContext`` and the
    exception guard, exactly as ``exporter.scheduler`` does for one round of a
    local (non-concurrent) kind.  The result store is not part of this.
``warm_rescan``
    The same probe object again, nothing changed on disk: every file must be
    served from the probe's (device, inode, size, mtime, mode, owner) cache, which
    is checked.  As in the scheduler with tracing off, the results ``targets()``
    vouches for in ``Discovery.unchanged`` are taken without a ``run()``.

Memory: the VmRSS growth of a cold scan per tracked certificate (the round's
results still held), and separately the ``tracemalloc`` retained-heap growth with
and without those results, measured in a fresh subprocess per size so that corpus
generation and the other cases do not pollute it.

``--profile`` additionally runs one cold scan and one rescan under cProfile per size
and prints the top functions (profiling inflates Python-level costs; use it to find
where time goes, not for the figures).

Without ``--drop-caches`` "cold" means "first scan by a new probe, page cache
warm"; with it (root only) the page, dentry and inode caches are dropped before
every ``bare_parse``, ``bare_parse_parallel`` and ``cold_scan`` repetition.

Usage::

    python -m bench.files_scan [--sizes 10000,100000] [--repeats 3] [--drop-caches]
                               [--out bench/out] [--quick] [--profile]

Corpora are cached under ``--out`` (``corpus-<N>/``) and generated only if missing.
Results are printed and written to ``<out>/files_scan.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import time
import tracemalloc
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bench import common
from probes import files_workers
from probes.context import ProbeContext
from probes.files import FilesProbe, FilesSettings
from probes.reasons import Reason
from probes.result import ProbeResult
from tests.fixtures.pki import DAY, NOW, Issued, PrivateKey, issue

DEFAULT_SIZES = (10_000, 100_000)
QUICK_SIZES = (200,)
KEYS_PER_TYPE = 4  # leaf keys reused round-robin: RSA generation is the slow part
ROUND_TIMEOUT_SECONDS = 60.0  # ProbeContext deadline of each target
PARALLEL_GENERATION_FROM = 5_000  # below this, generate in-process

# The goals this benchmark is judged against (see docs/performance.md).
GOAL_COLD_OVER_BARE = 1.5
GOAL_COLD_100K_SECONDS = 4.0
GOAL_WARM_OVER_FLOOR = 2.0
GOAL_BYTES_PER_CERT = 2048


# -- corpus -----------------------------------------------------------------------


@dataclass(frozen=True)
class _KeyMaterial:
    """PEM-encoded keys, picklable for the generation workers."""

    ca_key_pem: bytes
    ca_cert_pem: bytes
    rsa_key_pems: tuple[bytes, ...]
    ec_key_pems: tuple[bytes, ...]


def _make_key_material() -> _KeyMaterial:
    ca = issue("certscope bench CA", ca=True, not_after=NOW + 3650 * DAY)
    return _KeyMaterial(
        ca_key_pem=ca.key_pem,
        ca_cert_pem=ca.pem,
        rsa_key_pems=tuple(_key_pem(common.private_key("rsa")) for _ in range(KEYS_PER_TYPE)),
        ec_key_pems=tuple(_key_pem(common.private_key("ec")) for _ in range(KEYS_PER_TYPE)),
    )


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key


def _write_leaves(material: _KeyMaterial, directory: str, start: int, stop: int) -> int:
    """Write leaves ``start``..``stop-1``: even indexes RSA-2048, odd ones P-256."""
    ca = Issued(x509.load_pem_x509_certificate(material.ca_cert_pem), _load_key(material.ca_key_pem))
    rsa_keys = [_load_key(p) for p in material.rsa_key_pems]
    ec_keys = [_load_key(p) for p in material.ec_key_pems]
    for index in range(start, stop):
        pool = rsa_keys if index % 2 == 0 else ec_keys
        host = f"host-{index:06d}.bench.certscope.test"
        leaf = issue(
            host,
            ca,
            key=pool[(index // 2) % KEYS_PER_TYPE],
            not_after=NOW + (30 + index % 365) * DAY,
            sans=(host, f"www.{host}"),
        )
        with open(os.path.join(directory, f"cert-{index:06d}.pem"), "wb") as handle:
            handle.write(leaf.pem)
    return stop - start


def ensure_corpus(out: Path, size: int) -> Path:
    """``out/corpus-<size>/``, generated (into a temporary directory renamed at the
    end, so a present directory is always complete) only if missing."""
    corpus = out / f"corpus-{size}"
    if corpus.is_dir():
        return corpus
    staging = out / f"corpus-{size}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.perf_counter()
    material = _make_key_material()
    workers = os.cpu_count() or 1
    if size < PARALLEL_GENERATION_FROM or workers == 1:
        _write_leaves(material, str(staging), 0, size)
    else:
        bounds = [size * i // workers for i in range(workers + 1)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(_write_leaves, material, str(staging), bounds[i], bounds[i + 1]) for i in range(workers)
            ]
            written = sum(f.result() for f in futures)
        assert written == size
    staging.rename(corpus)
    os.sync()  # do not let writeback of the new corpus compete with the measurements
    print(f"generated {size} certificates in {corpus} ({time.perf_counter() - started:.1f} s)", flush=True)
    return corpus


# -- the measured cases -----------------------------------------------------------


def bare_parse(directory: str) -> list[tuple[Any, ...]]:
    """The library limit: list, read, load, read the fields; nothing else."""
    rows: list[tuple[Any, ...]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            with open(entry.path, "rb") as handle:
                data = handle.read()
            rows.append(common.bare_fields(x509.load_pem_x509_certificate(data)))
    return rows


def _bare_parse_paths(paths: list[str]) -> list[tuple[Any, ...]]:
    """Worker side of ``bare_parse_parallel``: the same work, answered as plain
    picklable values (what a multi-process probe would have to send back)."""
    rows: list[tuple[Any, ...]] = []
    for path in paths:
        with open(path, "rb") as handle:
            data = handle.read()
        row = common.bare_fields(x509.load_pem_x509_certificate(data))
        rows.append((row[0].timestamp(), *row[1:3], tuple(row[3]), *row[4:7], row[7].dotted_string, row[8]))
    return rows


def bare_parse_parallel(directory: str, pool: ProcessPoolExecutor, workers: int) -> list[tuple[Any, ...]]:
    """The 2-core limit: the directory listed here, read + load + fields done by
    ``workers`` processes of a pool started beforehand (not timed), results sent back."""
    with os.scandir(directory) as entries:
        paths = [entry.path for entry in entries]
    chunk = max(1, min(1000, len(paths) // (workers * 4) or 1))
    rows: list[tuple[Any, ...]] = []
    for part in pool.map(_bare_parse_paths, [paths[i : i + chunk] for i in range(0, len(paths), chunk)]):
        rows.extend(part)
    return rows


def scandir_stat(directory: str) -> int:
    """The floor of an unchanged rescan: list the directory, stat every entry."""
    count = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            entry.stat()
            count += 1
    return count


def run_round(probe: FilesProbe, probe_name: str = "bench") -> tuple[float, dict[str, ProbeResult]]:
    """One scheduler round of a local kind with tracing off (exporter/scheduler.py
    ``_round`` and ``run_target``), minus publishing to the store; returns (discovery
    seconds, results)."""
    started = time.perf_counter()
    discovery = probe.targets()
    discovered = time.perf_counter() - started
    results: dict[str, ProbeResult] = {}
    for target in discovery.targets:
        reused = discovery.unchanged.get(target)  # published without a run
        if reused is not None:
            _finished_at = time.time()
            results[target] = reused
            continue
        ctx = ProbeContext(deadline=time.monotonic() + ROUND_TIMEOUT_SECONDS, probe_name=probe_name)
        run_started = time.monotonic()
        try:
            result = probe.run(target, ctx)
        except Exception as exc:  # noqa: BLE001 - mirrors run_target's guard
            result = ProbeResult(
                success=False,
                reason=Reason.INTERNAL_ERROR,
                duration_seconds=time.monotonic() - run_started,
                message=f"internal error: {type(exc).__name__}",
            )
        _finished_at = time.time()  # run_target returns the wall-clock finish time
        results[target] = result
    return discovered, results


def new_probe(directory: str) -> FilesProbe:
    """A files probe over ``directory`` that parses in this process: this benchmark
    measures the probe's own cost per file.  (A first round over 2,000 new files or
    more is parsed in worker processes by the daemon, ``probes/files_workers.py``;
    ``bench.files_ready`` measures that end to end, the workers' CPU included.)"""
    files_workers.MIN_FILES = sys.maxsize
    return FilesProbe(FilesSettings(paths=(directory,)))


def _check_round(results: dict[str, ProbeResult], size: int) -> None:
    failures = [(t, r.reason.value, r.message) for t, r in results.items() if not r.success]
    certificates = sum(len(r.certificates) for r in results.values())
    if len(results) != size or failures or certificates != size:
        raise SystemExit(
            f"probe round wrong: {len(results)} targets, {certificates} certificates, "
            f"{len(failures)} failures (first: {failures[:1]}); expected {size} of each and no failure"
        )


def _check_not_reparsed(cold: dict[str, ProbeResult], warm: dict[str, ProbeResult]) -> None:
    """A re-parse builds new CertFacts; a cache hit hands back the very same objects."""
    reparsed = sum(
        1 for target, result in warm.items() if result.certificates[0].cert is not cold[target].certificates[0].cert
    )
    if reparsed:
        raise SystemExit(f"warm rescan re-parsed {reparsed} of {len(warm)} unchanged files")


# -- measuring --------------------------------------------------------------------


@dataclass
class Case:
    name: str
    samples: list[common.Sample] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(s.wall for s in self.samples)

    def median_extra(self, key: str) -> float:
        return statistics.median(s.extra[key] for s in self.samples)

    def summary(self, size: int) -> dict[str, Any]:
        extras = sorted({k for s in self.samples for k in s.extra})
        return {
            "runs_seconds": [round(s.wall, 6) for s in self.samples],
            "runs_cpu_seconds": [round(s.cpu, 6) for s in self.samples],
            "median_seconds": round(self.median, 6),
            "median_cpu_seconds": round(statistics.median(s.cpu for s in self.samples), 6),
            "us_per_file": round(self.median / size * 1e6, 3),
            "files_per_second": round(size / self.median, 1),
            **{f"median_{k}": round(self.median_extra(k), 6) for k in extras},
        }


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as handle:
        handle.write("3\n")


CASES = ("bare_parse", "bare_parse_parallel", "scandir_stat", "cold_scan", "warm_rescan")


def measure_size(directory: Path, size: int, repeats: int, cold_cache: bool) -> dict[str, Case]:
    path = str(directory)
    cases = {name: Case(name) for name in CASES}
    workers = os.cpu_count() or 1
    # One untimed pass so the first timed case does not pay for the page cache
    # (unless caches are dropped on purpose) or for first-use imports.
    bare_parse(path)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        bare_parse_parallel(path, pool, workers)  # starts the workers, imports in them
        for repeat in range(repeats):
            if cold_cache:
                drop_caches()
            sample, rows = common.timed(functools.partial(bare_parse, path))
            if len(rows) != size:
                raise SystemExit(f"bare_parse read {len(rows)} files, expected {size}")
            cases["bare_parse"].samples.append(sample)
            del rows

            if cold_cache:
                drop_caches()
            sample, rows = common.timed(functools.partial(bare_parse_parallel, path, pool, workers))
            if len(rows) != size:
                raise SystemExit(f"bare_parse_parallel read {len(rows)} files, expected {size}")
            sample.extra["workers"] = workers
            cases["bare_parse_parallel"].samples.append(sample)
            del rows
            _measure_probe_cases(cases, path, size, cold_cache)
            print(
                f"  N={size} repeat {repeat + 1}/{repeats}: "
                + ", ".join(f"{c.name}={c.samples[-1].wall:.3f}s" for c in cases.values()),
                flush=True,
            )
    return cases


def _measure_probe_cases(cases: dict[str, Case], path: str, size: int, cold_cache: bool) -> None:
    """One repetition of scandir_stat, cold_scan and warm_rescan."""
    sample, count = common.timed(functools.partial(scandir_stat, path))
    assert count == size
    cases["scandir_stat"].samples.append(sample)

    probe = new_probe(path)
    if cold_cache:
        drop_caches()
    sample, (discovery_seconds, cold) = common.timed(functools.partial(run_round, probe))
    sample.extra["discovery_seconds"] = discovery_seconds
    _check_round(cold, size)
    cases["cold_scan"].samples.append(sample)

    sample, (discovery_seconds, warm) = common.timed(functools.partial(run_round, probe))
    sample.extra["discovery_seconds"] = discovery_seconds
    _check_round(warm, size)
    _check_not_reparsed(cold, warm)
    cases["warm_rescan"].samples.append(sample)
    del probe, cold, warm


# -- memory (runs in a subprocess per size) ----------------------------------------


def memory_child(directory: str) -> dict[str, Any]:
    """In a fresh interpreter: VmRSS before and after one cold scan (the round's
    results still held, as the daemon's store would), then the same again with
    tracemalloc (retained Python heap, exact but slow) on a second probe."""
    first = sorted(os.listdir(directory))[0]
    new_probe(directory).run(os.path.join(directory, first), ProbeContext(deadline=time.monotonic() + 60))
    gc.collect()
    rss_before = common.status_value("VmRSS")
    probe = new_probe(directory)
    _, results = run_round(probe)
    certificates = sum(len(r.certificates) for r in results.values())
    gc.collect()
    rss_after = common.status_value("VmRSS")
    del probe, results
    gc.collect()

    tracemalloc.start()
    traced_before, _ = tracemalloc.get_traced_memory()
    probe = new_probe(directory)
    _, results = run_round(probe)
    gc.collect()
    traced_with_results, _ = tracemalloc.get_traced_memory()
    del results
    gc.collect()
    traced_probe_only, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "certificates": certificates,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_bytes_per_cert": round((rss_after - rss_before) * 1024 / certificates, 1),
        "traced_bytes_per_cert_with_results": round((traced_with_results - traced_before) / certificates, 1),
        "traced_bytes_per_cert_probe_cache": round((traced_probe_only - traced_before) / certificates, 1),
        "traced_peak_bytes_per_cert": round((traced_peak - traced_before) / certificates, 1),
    }


def measure_memory(directory: Path) -> dict[str, Any]:
    return common.run_json_child("bench.files_scan", "--memory-child", str(directory))


# -- profiling --------------------------------------------------------------------


def profile_size(directory: Path, out: Path, top: int = 25) -> None:
    """cProfile of one cold scan and one warm rescan; stats printed and saved."""
    path = str(directory)
    probe = new_probe(path)
    for label in ("cold_scan", "warm_rescan"):
        profiler = cProfile.Profile()
        profiler.enable()
        run_round(probe)
        profiler.disable()
        stats_path = out / f"files_scan.{directory.name}.{label}.pstats"
        profiler.dump_stats(stats_path)
        for sort in ("tottime", "cumulative"):
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(sort).print_stats(top)
            print(f"\n== cProfile {label} {directory.name}, by {sort} (saved {stats_path}) ==")
            print(text.getvalue())


# -- report -----------------------------------------------------------------------


def ratios(cases: dict[str, Case], size: int, memory: dict[str, Any]) -> dict[str, Any]:
    cold_over_bare = cases["cold_scan"].median / cases["bare_parse"].median
    warm_over_floor = cases["warm_rescan"].median / cases["scandir_stat"].median
    result: dict[str, Any] = {
        "cold_over_bare_parse": round(cold_over_bare, 3),
        "warm_over_scandir_stat": round(warm_over_floor, 3),
        "bare_parse_over_bare_parse_parallel": round(
            cases["bare_parse"].median / cases["bare_parse_parallel"].median, 3
        ),
        "goal_cold_over_bare_parse_met": cold_over_bare <= GOAL_COLD_OVER_BARE,
        "goal_warm_over_scandir_stat_met": warm_over_floor <= GOAL_WARM_OVER_FLOOR,
        "goal_bytes_per_cert_met": memory["rss_bytes_per_cert"] <= GOAL_BYTES_PER_CERT,
    }
    if size == 100_000:
        result["goal_cold_100k_seconds_met"] = cases["cold_scan"].median <= GOAL_COLD_100K_SECONDS
    return result


def print_table(size: int, cases: dict[str, Case], memory: dict[str, Any], cache_state: str) -> None:
    print(f"\nN = {size} files ({cache_state})")
    print(f"  {'case':<21}{'median s':>10}{'cpu s':>9}{'us/file':>10}{'files/s':>11}   runs (s)")
    for case in cases.values():
        runs = " ".join(f"{s.wall:.3f}" for s in case.samples)
        cpu = statistics.median(s.cpu for s in case.samples)
        print(
            f"  {case.name:<21}{case.median:>10.3f}{cpu:>9.3f}{case.median / size * 1e6:>10.1f}"
            f"{size / case.median:>11.0f}   {runs}"
        )
    for name in ("cold_scan", "warm_rescan"):
        case = cases[name]
        print(
            f"  {name}: discovery (targets()) {case.median_extra('discovery_seconds'):.3f} s, "
            f"gc {case.median_extra('gc_seconds'):.3f} s (medians)"
        )
    cold_over_bare = cases["cold_scan"].median / cases["bare_parse"].median
    warm_over_floor = cases["warm_rescan"].median / cases["scandir_stat"].median
    parallel_speedup = cases["bare_parse"].median / cases["bare_parse_parallel"].median
    print(f"  cold_scan / bare_parse      = {cold_over_bare:.2f}x  (goal <= {GOAL_COLD_OVER_BARE}x)")
    print(f"  warm_rescan / scandir_stat  = {warm_over_floor:.2f}x  (goal <= {GOAL_WARM_OVER_FLOOR}x)")
    print(f"  bare_parse / bare_parse_parallel = {parallel_speedup:.2f}x ({os.cpu_count()} workers)")
    if size == 100_000:
        cold = cases["cold_scan"].median
        print(f"  cold_scan at 100k           = {cold:.2f} s  (goal <= {GOAL_COLD_100K_SECONDS} s)")
    print(
        f"  memory per certificate: VmRSS growth {memory['rss_bytes_per_cert']:.0f} B "
        f"(goal <= {GOAL_BYTES_PER_CERT} B); "
        f"tracemalloc: {memory['traced_bytes_per_cert_probe_cache']:.0f} B probe cache, "
        f"{memory['traced_bytes_per_cert_with_results']:.0f} B with the round's results"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.argument_parser(__doc__, "smoke-test mode: 200 files, 1 repeat")
    parser.add_argument("--sizes", type=common.int_list(), default=None, help="corpus sizes (default 10000,100000)")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions per case (default 3)")
    parser.add_argument("--drop-caches", action="store_true", help="drop page/inode caches before cold cases (root)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one cold scan and rescan per size")
    parser.add_argument("--memory-child", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return 0

    sizes: tuple[int, ...] = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    repeats: int = args.repeats or (1 if args.quick else 3)
    if args.drop_caches and os.geteuid() != 0:
        parser.error("--drop-caches needs root (writes /proc/sys/vm/drop_caches)")
    cache_state = (
        "cold: page/dentry/inode caches dropped before each bare_parse, bare_parse_parallel and cold_scan run"
        if args.drop_caches
        else "cold_scan = first scan by a new probe, page cache warm"
    )
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = common.Results("files_scan", out)
    print(results.describe())
    print(f"{repeats} repeat(s) per case, interleaved; {cache_state}")

    report: dict[str, Any] = {
        "repeats": repeats,
        "drop_caches": args.drop_caches,
        "cache_state": cache_state,
        "goals": {
            "cold_over_bare_parse_max": GOAL_COLD_OVER_BARE,
            "cold_100k_seconds_max": GOAL_COLD_100K_SECONDS,
            "warm_over_scandir_stat_max": GOAL_WARM_OVER_FLOOR,
            "bytes_per_cert_max": GOAL_BYTES_PER_CERT,
        },
        "sizes": {},
    }
    for size in sizes:
        directory = ensure_corpus(out, size)
        print(f"measuring N={size} in {directory}", flush=True)
        cases = measure_size(directory, size, repeats, args.drop_caches)
        memory = measure_memory(directory)
        print_table(size, cases, memory, cache_state)
        report["sizes"][str(size)] = {
            "corpus": str(directory),
            "cases": {name: case.summary(size) for name, case in cases.items()},
            "ratios": ratios(cases, size, memory),
            "memory": memory,
        }
        if args.profile:
            profile_size(directory, out)
    print()
    results.write(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
