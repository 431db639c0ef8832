"""The registry of probe kinds.  ``KINDS`` is the one registry: the config loader reads each kind's
settings dataclass from it, the scheduler builds probes through it, and the daemon
shows each kind's facts through its hooks (probes/metrics.py), never naming a kind."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from probes.ca import CaProbe, CaSettings
from probes.ca_facts import CA_HOOKS
from probes.context import Probe
from probes.crl import CrlProbe, CrlSettings
from probes.crl_facts import CRL_HOOKS
from probes.files import FilesProbe, FilesSettings
from probes.kubernetes import KubernetesProbe, KubernetesSettings
from probes.metrics import NO_HOOKS, CrossProbeRole, Family, HistogramFamily, KindHooks
from probes.ocsp import OcspProbe, OcspSettings
from probes.revocation_facts import REVOCATION_HOOKS
from probes.settings import ProbeDefaults
from probes.tls import TlsProbe, TlsSettings
from probes.tls_facts import TLS_HOOKS

STORED = KindHooks(cross_probe=CrossProbeRole.STORED)  # certificates at rest, nothing else


@dataclass(frozen=True)
class ProbeKind:
    name: str
    settings: type[Any]  # a frozen dataclass; its fields are the YAML keys of the kind
    build: Callable[[Any, ProbeDefaults], Probe]  # (settings, defaults) -> a ready Probe
    hooks: KindHooks = NO_HOOKS  # how its facts show: metric families, tallies, spans


KINDS: dict[str, ProbeKind] = {
    "files": ProbeKind("files", FilesSettings, FilesProbe, STORED),
    "tls": ProbeKind("tls", TlsSettings, TlsProbe, TLS_HOOKS),
    "ocsp": ProbeKind("ocsp", OcspSettings, OcspProbe, REVOCATION_HOOKS),
    "crl": ProbeKind("crl", CrlSettings, CrlProbe, CRL_HOOKS),
    "kubernetes": ProbeKind("kubernetes", KubernetesSettings, KubernetesProbe, STORED),
    "ca": ProbeKind("ca", CaSettings, CaProbe, CA_HOOKS),
}


def hooks_of(kind: str) -> KindHooks:
    """The hooks of ``kind``; none for a kind the registry does not hold."""
    entry = KINDS.get(kind)
    return entry.hooks if entry is not None else NO_HOOKS


def _merged(groups: Iterable[Iterable[Family]]) -> tuple[Family, ...]:
    """Families in registry order, each once; two kinds declaring one name must
    declare the same family."""
    merged: dict[str, Family] = {}
    for families in groups:
        for family in families:
            known = merged.setdefault(family.name, family)
            if known != family:
                raise ValueError(f"metric family {family.name} is declared twice, differently: {known} and {family}")
    return tuple(merged.values())


def _merged_histograms(groups: Iterable[Iterable[HistogramFamily]]) -> tuple[HistogramFamily, ...]:
    merged: dict[str, HistogramFamily] = {}
    for histograms in groups:
        for histogram in histograms:
            if merged.setdefault(histogram.name, histogram) is not histogram:
                raise ValueError(f"histogram {histogram.name} is declared by two kinds")
    return tuple(merged.values())


def kind_families() -> tuple[Family, ...]:
    """Every family the kinds declare, each once, in registry order: every scrape
    shows them all (empty when no probe of the kind is configured)."""
    return _merged(kind.hooks.families for kind in KINDS.values())


def kind_histograms() -> tuple[HistogramFamily, ...]:
    """Every histogram the kinds declare, each once, in registry order."""
    return _merged_histograms(kind.hooks.histograms for kind in KINDS.values())


kind_families()  # two kinds declaring one family differently fail at import, not on a scrape
