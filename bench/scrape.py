"""Benchmark: the cost of one ``/metrics`` scrape, against prometheus-client's own path.

A snapshot of F ``files`` targets with one certificate each (13 series per file: 6
per target, 7 per certificate) is rendered, for about S series in all.  Each case is
repeated and interleaved (A B C A B C ...), medians reported:

``client_collector``
    The peer path: a prometheus-client custom collector yielding pre-built
    ``GaugeMetricFamily`` objects with the same series (names, label sets, values),
    through ``generate_latest``.  What any Python exporter pays at least.
``certscope_text``
    ``generate_latest`` over certscope's registry (``SnapshotCollector`` ->
    ``render(snapshot)`` each scrape), text format.
``certscope_http_first``, ``certscope_http_gzip_first``
    A real HTTP GET of ``/metrics`` from certscope's web server in this process,
    without and with ``Accept-Encoding: gzip``, right after a new snapshot was
    published (the first scrape of a round renders it).
``certscope_http_cached``
    The next scrape of the same snapshot (every scrape until the next round, and the
    second Prometheus of an HA pair): served from the exposition cache.

Memory: the ``tracemalloc`` size of the snapshot per series (what stays between
scrapes), and the peak during one scrape.

Usage::

    python -m bench.scrape [--series 100000] [--repeats 5] [--out bench/out] [--quick]
"""

from __future__ import annotations

import statistics
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from bench import common
from exporter.store import (
    ProbeInfo,
    ProbeState,
    ResultStore,
    Rotation,
    Snapshot,
    SourceState,
    TargetState,
    snapshot_of,
)
from exporter.web import WebApp, WebServer
from probes.files import FilesProbe
from probes.reasons import Reason
from probes.result import CertFacts, CertObservation, ProbeResult

SERIES_PER_FILE = 13


def build_snapshot(files: int) -> Snapshot:
    info = ProbeInfo(
        name="disk",
        kind="files",
        interval=300.0,
        warning_seconds=28 * 86400.0,
        critical_seconds=7 * 86400.0,
        labels={},
        target_reasons=(),
        source_reasons=FilesProbe.source_reasons,
        keeps_last_good=False,
    )
    targets = {}
    for number in range(files):
        facts = CertFacts(
            fingerprint_sha256=f"{number:064x}",
            not_before=1_700_000_000.0 + number,
            not_after=1_800_000_000.0 + number,
            subject=f"CN=host-{number}.example,O=bench",
            subject_cn=f"host-{number}.example",
            issuer="CN=bench intermediate",
            issuer_cn="bench intermediate",
            serial=f"{number * 7919:x}",
            sans=(f"host-{number}.example", f"www.host-{number}.example"),
            key_type="ec",
            key_bits=256,
            signature_algorithm="ecdsa-with-SHA256",
            is_ca=False,
            self_issued=False,
            spki_sha256=f"{number * 31:064x}",
        )
        observation = CertObservation(0, "leaf", facts)
        targets[f"/etc/ssl/bench/host-{number}.pem"] = TargetState(
            result=ProbeResult(True, Reason.OK, 0.0001, (observation,)),
            last_run=1_750_000_000.0,
            last_success=1_750_000_000.0,
            runs_total=12,
            failures_total=MappingProxyType({}),
            certificates=(observation,),
            certificates_from_last_good=False,
            rotations=MappingProxyType({(0, "leaf"): Rotation(facts.fingerprint_sha256)}),
        )
    source = SourceState(True, files, MappingProxyType({}), frozenset(), 1.0)
    return snapshot_of({"disk": ProbeState(info=info, targets=targets, source=source, rounds=12)})


class _Prebuilt(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def client_registry(text: bytes) -> CollectorRegistry:
    """The same series as pre-built GaugeMetricFamily objects (the peer path)."""
    families: list[Metric] = []
    for family in text_string_to_metric_families(text.decode()):
        if not family.name.startswith("certscope_"):
            continue
        names = sorted({k for s in family.samples for k in s.labels})
        gauge = GaugeMetricFamily(family.name, family.documentation or "x", labels=names)
        for sample in family.samples:
            gauge.add_metric([sample.labels.get(n, "") for n in names], sample.value)
        families.append(gauge)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Prebuilt(families))
    return registry


class _Store(ResultStore):
    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self._snapshot = snapshot


def main() -> None:
    parser = common.argument_parser(__doc__, "smoke test: 2,000 series, 2 repetitions")
    parser.add_argument("--series", type=int, default=100_000, help="series to render (default 100000)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions (default 5)")
    args = parser.parse_args()
    series = 2_000 if args.quick else args.series
    repeats = 2 if args.quick else args.repeats
    files = series // SERIES_PER_FILE
    results = common.Results("scrape", args.out)

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    snapshot = build_snapshot(files)
    snapshot_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()

    store = _Store(snapshot)
    app = WebApp(store, lambda: True, lambda: None)
    text = generate_latest(app.registry)
    certscope_series = sum(1 for line in text.splitlines() if line.startswith(b"certscope_"))
    peer = client_registry(text)
    server = WebServer(app, "127.0.0.1", 0)
    server.start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    session = requests.Session()

    def http(gzip: bool, new_round: bool) -> None:
        if new_round:  # an equal but new snapshot object, as a probe round publishes
            store._snapshot = replace(store._snapshot, probes=dict(store._snapshot.probes))
        headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
        response = session.get(url, headers=headers, timeout=60, stream=True)
        response.raw.read()  # the bytes as sent, not decompressed: the server's cost

    cases: dict[str, Callable[[], Any]] = {
        "client_collector": lambda: generate_latest(peer),
        "certscope_text": lambda: generate_latest(app.registry),
        "certscope_http_first": lambda: http(False, True),
        "certscope_http_cached": lambda: http(False, False),  # right after _first: same snapshot
        "certscope_http_gzip_first": lambda: http(True, True),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, action in cases.items():
            samples[name].append(common.timed(action)[0].wall)
    server.stop()

    tracemalloc.start()
    generate_latest(app.registry)
    scrape_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    medians = {name: statistics.median(values) for name, values in samples.items()}
    result: dict[str, Any] = {
        "series": certscope_series,
        "files": files,
        "medians_seconds": medians,
        "ratios": {
            "certscope_text / client_collector": medians["certscope_text"] / medians["client_collector"],
            "certscope_http_first / client_collector": medians["certscope_http_first"] / medians["client_collector"],
            "gzip_first / http_first": medians["certscope_http_gzip_first"] / medians["certscope_http_first"],
            "certscope_http_cached / client_collector": medians["certscope_http_cached"] / medians["client_collector"],
        },
        "snapshot_bytes_per_series": snapshot_bytes / certscope_series,
        "scrape_peak_bytes_per_series": scrape_peak / certscope_series,
        "exposition_bytes": len(text),
    }
    print(f"{certscope_series} certscope series ({files} files), medians of {repeats}:")
    for name, seconds in medians.items():
        print(f"  {name:<22} {seconds * 1000:8.1f} ms")
    for name, ratio in result["ratios"].items():
        print(f"  {name:<40} {ratio:.2f}x")
    print(f"  snapshot held between scrapes: {result['snapshot_bytes_per_series']:.0f} B per series")
    print(f"  peak allocated during a scrape: {result['scrape_peak_bytes_per_series']:.0f} B per series")
    results.write(result)


if __name__ == "__main__":
    main()
