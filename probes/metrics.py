"""How a probe kind shows what it saw: the hooks of its registry entry (``probes.kinds.KINDS``).

A kind whose results carry facts of their own (``ProbeResult.facts``: ``TlsFacts``,
``CrlFacts``, ``CaFacts``, ...) declares through one ``KindHooks`` value:

* ``families``: its metric families (name, help, type, label names), rendered on
  every scrape after the families every kind shares, in the order of the registry;
  a family several kinds write (the revocation families) is declared by each with
  the same ``Family`` value and appears once.
* ``render(view, rows)``: how one target's facts become rows of those families.
  ``view`` is the target's last result, its labels and its tallies; ``rows.add``
  takes a declared family, the label values in its order, the value, and the
  target's extra labels.  It must be pure: it reads the view and nothing else.
* ``histograms``: distributions of a value over every run of the probe (the TLS
  handshake seconds), kept by the store across rounds.
* ``tallies``: values per target carried from run to run (a counter of synthetic
  issuances, when a certificate was first seen revoked), folded by the store each
  time the target's result is published.
* ``span_attributes(result, attributes)``: attributes for the run's root span,
  added to the generic ones (docs/tracing.md).
* ``cross_probe``: the kind's part in the facts that join probes: its leaves are
  ``STORED`` (certificates at rest) or ``SERVED`` (what a server hands out), for
  ``certscope_cert_served_mismatch``.
* ``reports_dropped_targets``: its discovery may leave targets out over a cap, so
  ``certscope_source_targets_dropped`` is exported when it discovers.

The daemon (``exporter/``) implements ``Rows`` and reads these hooks; it never
names a kind.  ``probes/`` never imports ``exporter/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from probes.context import AttributeValue
    from probes.result import ProbeResult

Labels = tuple[tuple[str, str], ...]
TARGET_LABELS = ("probe", "kind", "target")
CERT_LABELS = (*TARGET_LABELS, "index", "role")


@dataclass(frozen=True, slots=True)
class Family:
    """One gauge or counter family (a counter's samples get ``_total``)."""

    name: str
    help: str
    type: Literal["gauge", "counter"]
    labels: tuple[str, ...]


def gauge(name: str, help: str, labels: tuple[str, ...]) -> Family:  # noqa: A002 - the exposition's word
    return Family(name, help, "gauge", labels)


def counter(name: str, help: str, labels: tuple[str, ...]) -> Family:  # noqa: A002 - the exposition's word
    return Family(name, help, "counter", labels)


@dataclass(frozen=True, slots=True)
class HistogramFamily:
    """A histogram over every run of a probe (labels: probe, kind).  ``observe``
    gives a run's value, or None when the run has none to add."""

    name: str
    help: str
    bounds: tuple[float, ...]
    observe: Callable[[ProbeResult], float | None]


@dataclass(frozen=True, slots=True)
class Tally:
    """A value a target carries from run to run.  ``update(previous, result,
    finished)`` folds one published run into it (``previous`` is None at first,
    ``finished`` the run's wall-clock end) and returns the new value, or None for
    none.  Values must be immutable: the snapshot holding them is shared."""

    name: str
    update: Callable[[Any, ProbeResult, float], Any]


class Rows(Protocol):
    """Where ``render`` writes (implemented by exporter/collector.py).  A label set
    already written to a family is dropped, so no input makes a duplicate series."""

    def add(self, family: Family, labels: tuple[str, ...], value: float, extra: Labels = ()) -> None: ...


@dataclass(frozen=True, slots=True)
class TargetView:
    """What ``render`` may read of one target."""

    key: tuple[str, str, str]  # probe, kind, target: the first label values of every target family
    extra: Labels  # labels that join or replace the target's own (ProbeResult.target_labels)
    result: ProbeResult  # the last run's
    tallies: Mapping[str, Any]  # by Tally.name; a tally with no value is absent

    @property
    def facts(self) -> object | None:
        return self.result.facts


class CrossProbeRole(StrEnum):
    STORED = "stored"  # certificates at rest (files, Secrets): what should be served
    SERVED = "served"  # certificates a server hands out


SpanAttributes = Callable[["ProbeResult", dict[str, "AttributeValue"]], None]


@dataclass(frozen=True, slots=True)
class KindHooks:
    """How one kind's results show beyond what every kind shares (see the module doc)."""

    families: tuple[Family, ...] = ()
    render: Callable[[TargetView, Rows], None] | None = None
    histograms: tuple[HistogramFamily, ...] = ()
    tallies: tuple[Tally, ...] = ()
    span_attributes: SpanAttributes | None = None
    cross_probe: CrossProbeRole | None = None
    reports_dropped_targets: bool = False


NO_HOOKS = KindHooks()  # a kind showing certificates only
