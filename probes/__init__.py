"""Probe kinds.  ``KINDS`` is the one registry: the config loader reads each kind's
settings dataclass from it, and the scheduler builds probes through it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from probes.base import Probe, ProbeDefaults
from probes.ca import CaProbe, CaSettings
from probes.crl import CrlProbe, CrlSettings
from probes.files import FilesProbe, FilesSettings
from probes.kubernetes import KubernetesProbe, KubernetesSettings
from probes.ocsp import OcspProbe, OcspSettings
from probes.tls import TlsProbe, TlsSettings


@dataclass(frozen=True)
class ProbeKind:
    name: str
    settings: type[Any]  # a frozen dataclass; its fields are the YAML keys of the kind
    build: Callable[[Any, ProbeDefaults], Probe]  # (settings, defaults) -> a ready Probe


KINDS: dict[str, ProbeKind] = {
    "files": ProbeKind("files", FilesSettings, FilesProbe),
    "tls": ProbeKind("tls", TlsSettings, TlsProbe),
    "ocsp": ProbeKind("ocsp", OcspSettings, OcspProbe),
    "crl": ProbeKind("crl", CrlSettings, CrlProbe),
    "kubernetes": ProbeKind("kubernetes", KubernetesSettings, KubernetesProbe),
    "ca": ProbeKind("ca", CaSettings, CaProbe),
}
