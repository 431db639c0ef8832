"""``/metrics`` bodies are rendered once per snapshot and format, and say the same as
prometheus-client's own exposition of the same registry."""

from __future__ import annotations

import gzip
from dataclasses import replace
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Exemplar

import exporter.collector
from exporter.exposition import RowFamily, encode_openmetrics, encode_text
from exporter.store import ProbeState, ResultStore, Snapshot
from exporter.web import WebApp, WebServer
from probes.reasons import Reason
from probes.result import CertObservation, Discovery, ProbeResult
from tests.test_collector import FACTS, info

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def certscope_samples(text: str, openmetrics: bool) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    parse = parse_openmetrics if openmetrics else text_string_to_metric_families
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in parse(text)
        for s in family.samples
        if s.name.startswith("certscope_")
    )


@pytest.fixture
def served() -> Any:
    store = ResultStore()
    probe = info()
    store.configure([probe], "test")
    result = ProbeResult(True, Reason.OK, 0.01, (CertObservation(0, "leaf", FACTS),))
    store.publish_round(probe, Discovery(("/a.pem",)), {"/a.pem": (result, 1.0)}, 0.1)
    app = WebApp(store, lambda: True, lambda: None)
    server = WebServer(app, "127.0.0.1", 0)
    server.start()
    yield store, probe, app, f"http://127.0.0.1:{server.port}/metrics"
    server.stop()


@pytest.mark.parametrize("openmetrics", [False, True])
@pytest.mark.parametrize("compress", [False, True])
def test_cached_body_says_what_the_client_would(served: Any, openmetrics: bool, compress: bool) -> None:
    _, _, app, url = served
    headers = {"Accept-Encoding": "gzip" if compress else "identity"}
    if openmetrics:
        headers["Accept"] = OPENMETRICS
    response = requests.get(url, headers=headers, timeout=10, stream=True)
    raw = response.raw.read()
    assert (response.headers.get("Content-Encoding") == "gzip") is compress
    body = gzip.decompress(raw) if compress else raw  # two gzip members decode as one stream
    reference = (generate_openmetrics if openmetrics else generate_latest)(app.registry)
    assert certscope_samples(body.decode(), openmetrics) == certscope_samples(reference.decode(), openmetrics)
    assert body.count(b"# EOF") == (1 if openmetrics else 0) and body.endswith(b"# EOF\n") is openmetrics
    assert b"process_cpu_seconds_total" in body


def test_one_render_per_snapshot(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store, probe, _, url = served
    calls = []
    real_render = exporter.collector.render

    def counting_render(snapshot: Any) -> Any:
        calls.append(snapshot)
        return real_render(snapshot)

    monkeypatch.setattr(exporter.collector, "render", counting_render)
    first = requests.get(url, timeout=10).text
    for _ in range(4):
        assert certscope_samples(requests.get(url, timeout=10).text, False) == certscope_samples(first, False)
    assert len(calls) == 1
    # A new round is a new snapshot: rendered again, with the new value.
    failing = ProbeResult(False, Reason.PARSE_ERROR, 0.01)
    store.publish_round(probe, Discovery(("/a.pem",)), {"/a.pem": (failing, 2.0)}, 0.1)
    after = requests.get(url, timeout=10).text
    assert len(calls) == 2
    assert 'certscope_probe_success{kind="files",probe="pki",target="/a.pem"} 0.0' in after


def test_fast_encoder_is_byte_identical_to_the_client(served: Any) -> None:
    store, probe, _, _ = served
    odd = replace(FACTS, subject_cn='quote " back\\slash\nnewline', sans=("ü.example", "tab\there"))
    observation = CertObservation(0, "leaf", odd)
    state = store.snapshot().probes["pki"]
    target = replace(state.targets["/a.pem"], certificates=(observation,))
    # A target whose samples carry extra labels (one replacing "target"), a file name
    # with an undecodable byte, and values that format specially.
    per_address = replace(
        target,
        result=replace(
            target.result,
            target_labels=(("target", 'x"y'), ("address", "127.0.0.1:443")),
            duration_seconds=-0.0,
        ),
        last_run=float("nan"),
        last_success=float("inf"),
    )
    targets = {"/a.pem": target, "/b\udcff.pem": per_address}
    weird = Snapshot(probes={"pki": ProbeState(info=probe, targets=targets, source=state.source)})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter.collector.SnapshotCollector(type("S", (), {"snapshot": lambda self: weird})()))

    class Extra:
        def collect(self) -> Any:
            gauge = GaugeMetricFamily("x_gauge", 'doc with "quotes" and \\ and\nnewline', labels=["a"])
            gauge.add_metric(["v"], 1.5, timestamp=1700000000.25)
            counter = CounterMetricFamily("x_events", "events", labels=["b"])
            counter.add_metric(["w"], 3)
            histogram = HistogramMetricFamily("x_seconds", "latency", labels=["c"])
            traced = Exemplar({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}, 0.42, 1700000000.5)
            histogram.add_metric(["u"], [("0.5", 1, traced), ("+Inf", 2)], sum_value=0.9)
            return [gauge, counter, histogram]

    registry.register(Extra())  # type: ignore[arg-type]
    assert encode_text(registry) == generate_latest(registry)
    assert encode_openmetrics(registry) == generate_openmetrics(registry)
    assert b'# {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.42 1700000000.5' in encode_openmetrics(registry)
    assert b'subject_cn="quote \\" back\\\\slash\\nnewline"' in encode_text(registry)


_label_text = st.text(st.characters(codec="utf-8") | st.sampled_from(['"', "\\", "\n", "{", "}", "\udcff"]))
_values = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**53), 2**53) | st.sampled_from([0.0, -0.0])


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.tuples(_label_text, _label_text),
            _values,
            st.lists(st.tuples(st.sampled_from(["a", "b", "z", "extra"]), _label_text), max_size=2),
        ),
        max_size=12,
    ),
    kind=st.sampled_from(["gauge", "counter"]),
)
def test_row_families_encode_as_the_client_would(
    rows: list[tuple[tuple[str, str], float, list[tuple[str, str]]]], kind: str
) -> None:
    """Any label values (quotes, newlines, braces, lone surrogates) and any values
    (NaN, infinities, -0.0, large integers), with or without extra labels: the fast
    rows give the bytes prometheus-client writes for the same family's samples."""
    family = RowFamily("x_family", "doc", kind, ("b", "a"))
    for labels, value, extra in rows:
        family.add(labels, value, tuple(dict(extra).items()))
    registry = CollectorRegistry(auto_describe=False)

    class Families:
        def collect(self) -> Any:
            return [family]

    registry.register(Families())  # type: ignore[arg-type]
    assert encode_text(registry) == generate_latest(registry)
    assert encode_openmetrics(registry) == generate_openmetrics(registry)
    assert len({tuple(sorted(s.labels.items())) for s in family.samples}) == len(family.samples)
