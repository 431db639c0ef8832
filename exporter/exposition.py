"""Prometheus text (0.0.4) and OpenMetrics (1.0.0) exposition of metric families,
byte for byte what prometheus-client writes, at a third of its cost.

prometheus-client validates and escapes every label *name* of every sample, which
for 100,000 series is most of a scrape; certscope's label names are fixed, valid
identifiers, so only label *values* need escaping, and only when they hold a
backslash, a quote or a newline.  Anything this encoder does not handle (native
histograms, ``_created`` samples, names that need UTF-8 escaping, other formats or
escaping schemes) is handed to prometheus-client's own encoder whole.

``RowFamily`` goes one step further for the families certscope renders itself: a
gauge or counter whose label names are fixed keeps its series as rows of label
values, and its lines come from one format template per family, with the labels
already in the exposition's sorted order; no ``Sample`` is built unless someone
other than this encoder reads ``samples``.

``tests/exporter/test_exposition_cache.py`` checks the output is identical to the client's.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any, cast

from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.exposition import generate_latest as client_text
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_1_0_0
from prometheus_client.openmetrics.exposition import generate_latest as client_openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString as _untyped_go_float

_go_float = cast(Callable[[Any], str], _untyped_go_float)  # 1.0 -> "1.0", inf -> "+Inf"

_Prefixes = list[tuple[str, str]]  # (label, 'label="') in output order

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
    try:
        return _encode(list(registry.collect()), openmetrics=False)
    except _Unsupported:
        # The families were consumed: collect again for the client (a family this
        # encoder does not write is never one of certscope's own).
        return client_text(registry)


def encode_openmetrics(registry: Collector) -> bytes:
    try:
        return _encode(list(registry.collect()), openmetrics=True)
    except _Unsupported:
        return client_openmetrics(registry)  # type: ignore[no-untyped-call,no-any-return]


def encode_snapshot(
    registry: Collector, content_type: str, client_encoder: Callable[[Collector], bytes], *, compress: bool
) -> bytes:
    """The body of a scrape without its end: OpenMetrics' ``# EOF`` is left out
    (the caller appends the process's own series, then the end), and the whole is
    gzipped (level 1) when ``compress``.  With certscope's own encoders the text
    goes through zlib as it is written, so a compressed scrape never holds the
    uncompressed body whole: 50,000 files are 35-53 MB of text, 1-2 MB gzipped."""
    openmetrics = content_type == OPENMETRICS_1_0_0
    if encoder_for(content_type) is not None:
        try:
            return _encode(list(registry.collect()), openmetrics=openmetrics, eof=False, compress=compress)
        except _Unsupported:
            pass
        client_encoder = client_openmetrics if openmetrics else client_text
    body = client_encoder(registry)
    if content_type.startswith("application/openmetrics-text"):
        body = body.removesuffix(b"# EOF\n")
    return gzip.compress(body, compresslevel=1) if compress else body


def _value(text: str) -> str:
    if "\\" in text or "\n" in text or '"' in text:
        return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return text


# A row: label values in the family's order, the value, and either None or (when a
# sample adds or replaces labels) its whole label dict; the last item says whether a
# label value holds a character that must be escaped.
Row = tuple[tuple[str, ...], float, "dict[str, str] | None", bool]


class RowFamily(Metric):
    """A gauge or counter with fixed label names, kept as rows (see the module doc).

    ``add`` refuses a label set it has already seen, so no input makes a duplicate
    series.  ``extra`` labels join or replace the named ones on that one sample."""

    def __init__(self, name: str, documentation: str, kind: str, label_names: Sequence[str]) -> None:
        if kind not in ("gauge", "counter"):
            raise ValueError(f"RowFamily is for gauges and counters, not {kind!r}")
        super().__init__(name, documentation, kind)
        self.label_names = tuple(label_names)
        self.sample_name = name + "_total" if kind == "counter" else name
        self.rows: list[Row] = []
        self._seen: set[tuple[object, ...]] = set()
        self._samples: list[Sample] = []

    @property
    def samples(self) -> list[Sample]:
        """The rows as prometheus-client Samples, for any reader but this encoder."""
        if len(self._samples) != len(self.rows):
            names, sample_name = self.label_names, self.sample_name
            self._samples = [
                Sample(sample_name, dict(zip(names, labels, strict=True)) if merged is None else merged, value)
                for labels, value, merged, _ in self.rows
            ]
        return self._samples

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        if value:  # Metric.__init__ sets []; samples come from rows only
            raise TypeError("RowFamily samples are added with add()")

    def add(self, labels: tuple[str, ...], value: float, extra: tuple[tuple[str, str], ...] = ()) -> None:
        # The hot loop of a scrape (one call per series): one join answers both
        # "all ASCII?" and "anything to escape?" for the whole label set.
        joined = "".join(labels)
        if not joined.isascii():
            labels = tuple(_utf8_label(label) for label in labels)
            joined = "".join(labels)
        if extra:
            if not all(item.isascii() for pair in extra for item in pair):
                extra = tuple((name, _utf8_label(item)) for name, item in extra)
            merged = dict(zip(self.label_names, labels, strict=True))
            merged.update(extra)
            if len(merged) == len(self.label_names):
                # The extras only replaced named labels: a plain row, deduplicated
                # with the others by its final values.
                labels = tuple(merged[name] for name in self.label_names)
                joined = "".join(labels)
            else:
                key = tuple(sorted(merged.items()))  # pairs: never equal to a plain row's key
                if key not in self._seen:
                    self._seen.add(key)
                    self.rows.append((labels, value, merged, True))
                return
        if labels in self._seen:
            return
        self._seen.add(labels)
        self.rows.append((labels, value, None, "\\" in joined or "\n" in joined or '"' in joined))

    def template(self) -> str:
        """``name{a="{i}",b="{j}"} {n}\\n``: str.format puts the label values, given in
        the family's order, into the exposition's sorted order in one C call."""
        names = self.label_names
        if not names:
            return self.sample_name + " {0}\n"
        order = sorted(range(len(names)), key=names.__getitem__)
        labels = ",".join(f'{names[i]}="{{{i}}}"' for i in order)
        return f"{self.sample_name}{{{{{labels}}}}} {{{len(names)}}}\n"


def _utf8_label(text: str) -> str:
    """A label value the exposition can encode: file names arrive with their
    undecodable bytes as lone surrogates (surrogateescape), and one of them would
    make the whole scrape fail with UnicodeEncodeError.  They become U+FFFD."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that was never a byte
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _value_text(value: float, seen: dict[float, str]) -> str:
    """``floatToGoString`` with a memo: most values of a scrape (0, 1, thresholds,
    counts) repeat.  Zero is not memoised, because -0.0 == 0.0 is one dict key."""
    if not value:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    text = seen.get(value)
    if text is None:
        text = _go_float(value)
        if len(seen) < 4096:
            seen[value] = text
    return text


def _write_rows(family: RowFamily, append: Callable[[str], object], seen: dict[float, str]) -> None:
    for label in family.label_names:
        if not _LEGACY_NAME.match(label) or ":" in label:
            raise _Unsupported(label)
    template = family.template().format
    prefixes: dict[tuple[str, ...], _Prefixes] = {}
    for labels, value, merged, escape in family.rows:
        if merged is None:
            if escape:
                labels = tuple(_value(label) for label in labels)
            append(template(*labels, _value_text(value, seen)))
            continue
        ordered = _label_prefixes(tuple(merged), prefixes)
        label_text = '",'.join(prefix + _value(merged[label]) for label, prefix in ordered)
        append(f'{family.sample_name}{{{label_text}"}} {_value_text(value, seen)}\n')


class _Chunks:
    """The exposition written as UTF-8 every ``_CHUNK_LINES`` lines into one
    growing buffer, gzipped on the way when asked, so that a scrape holds neither
    one str per line of the whole body nor the body twice (as str and bytes, or as
    chunks and their join): 50,000 files are 35 MB of text, and rendering them
    peaked at 166 MB over the daemon's size before (docs/reliability.md).
    ``BytesIO`` grows in place and hands its buffer over without a copy."""

    __slots__ = ("buffer", "compressor", "lines")

    def __init__(self, compress: bool) -> None:
        self.buffer = io.BytesIO()
        self.lines: list[str] = []
        # wbits 31: a gzip member (RFC 1952), as gzip.compress writes, with mtime 0.
        self.compressor = zlib.compressobj(1, zlib.DEFLATED, 31) if compress else None

    def append(self, line: str) -> None:
        lines = self.lines
        lines.append(line)
        if len(lines) >= _CHUNK_LINES:
            self._flush()

    def _flush(self) -> None:
        data = "".join(self.lines).encode("utf-8")
        self.lines.clear()
        self.buffer.write(self.compressor.compress(data) if self.compressor is not None else data)

    def result(self) -> bytes:
        self._flush()
        if self.compressor is not None:
            self.buffer.write(self.compressor.flush())
        return self.buffer.getvalue()


_CHUNK_LINES = 4096


def _encode(metrics: list[Metric], *, openmetrics: bool, eof: bool = True, compress: bool = False) -> bytes:
    """The families of ``metrics``, each dropped from the list once written, so
    that its rows can go while the next is encoded."""
    out = _Chunks(compress)
    append = out.append
    seen: dict[float, str] = {}
    metrics.reverse()
    while metrics:
        metric = metrics.pop()
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
        if isinstance(metric, RowFamily):
            _write_rows(metric, append, seen)
            continue
        # Samples of one family mostly share their label names: sort and check them
        # once per distinct set, with each name's 'name="' prefix made once.
        prefixes: dict[tuple[str, ...], _Prefixes] = {}
        for sample in metric.samples:
            if sample.native_histogram is not None or sample.name.endswith(_OPENMETRICS_ONLY_SUFFIXES):
                raise _Unsupported(sample.name)
            labels = sample.labels
            if labels:
                ordered = _label_prefixes(tuple(labels), prefixes)
                label_text = "{" + '",'.join(prefix + _value(labels[label]) for label, prefix in ordered) + '"}'
            else:
                label_text = ""
            line = f"{sample.name}{label_text} {_go_float(sample.value)}"
            if sample.timestamp is not None:
                line += f" {sample.timestamp}" if openmetrics else f" {int(float(sample.timestamp) * 1000):d}"
            if openmetrics and sample.exemplar is not None:
                line += _exemplar(sample.exemplar)
            append(line + "\n")
    if openmetrics and eof:
        append("# EOF\n")
    return out.result()


def _exemplar(exemplar: Exemplar) -> str:
    label_text = ",".join(f'{k}="{_value(v)}"' for k, v in sorted(exemplar.labels.items()))
    text = f" # {{{label_text}}} {_go_float(exemplar.value)}"
    return text + (f" {exemplar.timestamp}" if exemplar.timestamp is not None else "")


def _label_prefixes(names: tuple[str, ...], known: dict[tuple[str, ...], _Prefixes]) -> _Prefixes:
    """(label, 'label="') in sorted order for a label set, worked out once per set;
    a name the text format cannot carry raises _Unsupported."""
    ordered = known.get(names)
    if ordered is None:
        for label in names:
            if not _LEGACY_NAME.match(label) or ":" in label:
                raise _Unsupported(label)
        ordered = known[names] = [(label, f'{label}="') for label in sorted(names)]
    return ordered
