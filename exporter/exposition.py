"""Prometheus text (0.0.4) and OpenMetrics (1.0.0) exposition of metric families,
byte for byte what prometheus-client writes, at a third of its cost.

prometheus-client validates and escapes every label *name* of every sample, which
for 100,000 series is most of a scrape; certscope's label names are fixed, valid
identifiers, so only label *values* need escaping, and only when they hold a
backslash, a quote or a newline.  Anything this encoder does not handle (native
histograms, ``_created`` samples, names that need UTF-8 escaping, other formats or
escaping schemes) is handed to prometheus-client's own encoder whole.

``tests/test_exposition_cache.py`` checks the output is identical to the client's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, cast

from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.exposition import generate_latest as client_text
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_1_0_0
from prometheus_client.openmetrics.exposition import generate_latest as client_openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString as _untyped_go_float

_go_float = cast(Callable[[Any], str], _untyped_go_float)  # 1.0 -> "1.0", inf -> "+Inf"

_LEGACY_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_TEXT_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_OPENMETRICS_ONLY_SUFFIXES = ("_created", "_gsum", "_gcount")


class _Unsupported(Exception):
    """A family this encoder does not write; the client's encoder takes over."""


def encoder_for(content_type: str) -> Callable[[Collector], bytes] | None:
    """The fast encoder for a content type ``choose_encoder`` picked, or None."""
    if content_type == CONTENT_TYPE_PLAIN_0_0_4:
        return encode_text
    if content_type == OPENMETRICS_1_0_0:
        return encode_openmetrics
    return None


def encode_text(registry: Collector) -> bytes:
    metrics = list(registry.collect())
    try:
        return _encode(metrics, openmetrics=False)
    except _Unsupported:
        return client_text(_Fixed(metrics))


def encode_openmetrics(registry: Collector) -> bytes:
    metrics = list(registry.collect())
    try:
        return _encode(metrics, openmetrics=True)
    except _Unsupported:
        return client_openmetrics(_Fixed(metrics))  # type: ignore[no-untyped-call,no-any-return]


class _Fixed(Collector):
    """Already collected families, for the client's encoder (collect only once)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def _value(text: str) -> str:
    if "\\" in text or "\n" in text or '"' in text:
        return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return text


def _encode(metrics: list[Metric], *, openmetrics: bool) -> bytes:
    out: list[str] = []
    append = out.append
    for metric in metrics:
        name, kind = metric.name, metric.type
        if not _LEGACY_NAME.match(name):
            raise _Unsupported(name)
        if openmetrics:
            append(f"# HELP {name} {_value(metric.documentation)}\n# TYPE {name} {kind}\n")
            if metric.unit:
                append(f"# UNIT {name} {metric.unit}\n")
        else:
            exposed = name + "_total" if kind == "counter" else name + "_info" if kind == "info" else name
            documentation = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            append(f"# HELP {exposed} {documentation}\n# TYPE {exposed} {_TEXT_TYPES.get(kind, kind)}\n")
        # Samples of one family mostly share their label names: sort and check them
        # once per distinct set, with each name's 'name="' prefix made once.
        prefixes: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        for sample in metric.samples:
            if sample.native_histogram is not None or sample.name.endswith(_OPENMETRICS_ONLY_SUFFIXES):
                raise _Unsupported(sample.name)
            labels = sample.labels
            if labels:
                names = tuple(labels)
                ordered = prefixes.get(names)
                if ordered is None:
                    for label in names:
                        if not _LEGACY_NAME.match(label) or ":" in label:
                            raise _Unsupported(label)
                    ordered = prefixes[names] = [(label, f'{label}="') for label in sorted(names)]
                label_text = "{" + '",'.join(prefix + _value(labels[label]) for label, prefix in ordered) + '"}'
            else:
                label_text = ""
            line = f"{sample.name}{label_text} {_go_float(sample.value)}"
            if sample.timestamp is not None:
                line += f" {sample.timestamp}" if openmetrics else f" {int(float(sample.timestamp) * 1000):d}"
            if openmetrics and sample.exemplar is not None:
                line += _exemplar(sample.exemplar)
            append(line + "\n")
    if openmetrics:
        append("# EOF\n")
    return "".join(out).encode("utf-8")


def _exemplar(exemplar: Exemplar) -> str:
    label_text = ",".join(f'{k}="{_value(v)}"' for k, v in sorted(exemplar.labels.items()))
    text = f" # {{{label_text}}} {_go_float(exemplar.value)}"
    return text + (f" {exemplar.timestamp}" if exemplar.timestamp is not None else "")
