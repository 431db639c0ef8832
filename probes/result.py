"""What a probe run hands back: ``ProbeResult``, the certificates it saw
(``CertFacts`` at a location, ``CertObservation``), the problems with source items
(``SourceError``), and what one round of discovery found (``Discovery``).

Certificates are reported as ``CertFacts``: a compact, immutable record of the
fields metrics and people need.  ``cryptography`` objects are never kept, since they
weigh several kilobytes once their fields have been read.

What a kind shows beyond certificates is its own ``facts`` value, of a type the kind
defines and maps onto metrics and spans through its registry entry (probes/metrics.py);
``ProbeResult`` names no kind.  The few fields beside it that several kinds produce
(``revocation``: tls, ocsp, crl; ``key_exposure``: files, kubernetes) or that the
daemon joins across probes (``stored``) stay generic (docs/architecture.md).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

from probes.reasons import Reason

if TYPE_CHECKING:
    from probes.revocation_facts import RevocationFacts

# The role of a certificate that nothing serves (a CA's synthetic issuance): its
# expiry is no one's renewal task, so its thresholds are 0.
ISSUED_ROLE = "issued"

_Record = TypeVar("_Record")


def _pickled_as_call(cls: type[_Record]) -> type[_Record]:
    """Pickle a frozen, slotted dataclass (of two fields or more) as a call of the
    class with its field values.  dataclasses' own ``__getstate__``/``__setstate__``
    for slotted classes list the fields and set them one by one in Python, for every
    object; the results of files parsed in worker processes (probes/files_workers.py)
    cross back that way (per file, three alternated runs: 16.7-23.8 -> 11.3-16.2 µs to
    load, 14.7-21.1 -> 7.7-10.5 µs to dump).
    Every field is passed, so a field added later travels too."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    if len(names) < 2:  # attrgetter of one name gives a value, not a tuple
        raise TypeError(f"{cls.__name__}: pickled as a call only with two fields or more")
    values: Callable[[Any], tuple[Any, ...]] = operator.attrgetter(*names)

    def __reduce__(self: _Record) -> tuple[type[_Record], tuple[Any, ...]]:
        return cls, values(self)

    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return cls


@_pickled_as_call
@dataclass(frozen=True, slots=True, weakref_slot=True)
class CertFacts:
    """What certscope keeps of one certificate (about half a kilobyte)."""

    fingerprint_sha256: str
    not_before: float  # Unix seconds
    not_after: float  # Unix seconds
    subject: str  # RFC 4514
    subject_cn: str
    issuer: str
    issuer_cn: str
    serial: str  # lower-case hex, no separators
    sans: tuple[str, ...]
    key_type: str  # rsa | ec | ed25519 | ed448 | dsa | unknown
    key_bits: int
    signature_algorithm: str
    is_ca: bool
    self_issued: bool  # subject == issuer
    extended_key_usage: tuple[str, ...] = ()  # serverAuth, clientAuth, ... (dotted OID if unnamed)
    spki_sha256: str = ""  # SHA-256 of the SubjectPublicKeyInfo: the same key in other certificates
    # Fields that could not be read (the certificate is still exported).
    problems: tuple[str, ...] = ()


@_pickled_as_call
@dataclass(frozen=True, slots=True)
class CertObservation:
    """One certificate seen at one location: a position in a file, bundle or chain.

    ``labels`` say where inside its target the certificate sits when the position
    alone does not tell a person (a keystore alias, a kubeconfig cluster or user);
    they join this certificate's series only (docs/metrics.md)."""

    index: int
    role: str  # leaf | intermediate | root | client
    cert: CertFacts
    labels: tuple[tuple[str, str], ...] = ()


@_pickled_as_call
@dataclass(frozen=True, slots=True)
class SourceError:
    """A problem with one source item (a file, a block in a bundle, a Secret key).

    ``message`` names the item and says what is wrong; it must never carry secret
    material (passwords, key bytes)."""

    reason: Reason
    item: str
    message: str


@_pickled_as_call
@dataclass(frozen=True, slots=True)
class StoredComparison:
    """How the leaf an endpoint serves compares with the certificate stored where it
    should come from (a discovered endpoint's Secret: probes/kubediscovery.py)."""

    state: str  # match | stale | other | secret_missing
    labels: tuple[tuple[str, str], ...]  # where it is stored: secret_namespace, secret_name


@_pickled_as_call
@dataclass(frozen=True, slots=True)
class ProbeResult:
    success: bool
    reason: Reason
    duration_seconds: float
    certificates: tuple[CertObservation, ...] = ()
    errors: tuple[SourceError, ...] = ()
    # Phase name -> seconds spent (dns, connect, tls.handshake, read, parse, ...).
    phases: tuple[tuple[str, float], ...] = ()
    message: str = ""
    # What the kind saw beyond certificates; its type is the kind's own (TlsFacts,
    # CrlFacts, CaFacts, ...), rendered by the kind's hooks (probes/metrics.py).
    facts: object | None = None
    # Revocation checks of the certificates (tls, ocsp and crl kinds).
    revocation: tuple[RevocationFacts, ...] = ()
    # Labels that replace or join the target's own on its series; e.g. a target
    # probed per resolved address is labelled target=host:port, address=IP.
    target_labels: tuple[tuple[str, str], ...] = ()
    # Labels for this target's ``certscope_cert_info`` only (owner, team, issuer from
    # annotations): identity lives on info, numeric series keep small label sets.
    info_labels: tuple[tuple[str, str], ...] = ()
    # (warning, critical) seconds replacing the probe's thresholds for this target.
    thresholds: tuple[float, float] | None = None
    # Why a private key stored with this target is exposed (other_readable, ...),
    # judged from PEM headers and file metadata; the key itself is never decoded.
    key_exposure: tuple[str, ...] = ()
    # The run's trace id (32 hex digits), set by the scheduler when the run was
    # traced and sampled; the histograms carry it as an exemplar.
    trace_id: str = ""
    # Served vs stored, for an endpoint whose backing Secret is known.
    stored: StoredComparison | None = None


@dataclass(frozen=True, slots=True)
class Discovery:
    """The targets of one round, with problems found while looking for them.

    ``up`` is False when discovery itself failed (nothing could be looked at), so
    the source's metrics can say "blind", not "empty"."""

    targets: tuple[str, ...]
    errors: tuple[SourceError, ...] = ()
    up: bool = True
    # Sources made of several independently failing parts (a Kubernetes watch per
    # namespace): (scope, up) of each, so one forbidden namespace is visible alone.
    scopes: tuple[tuple[str, bool], ...] = ()
    # Cumulative counters the source keeps itself: (reason, count) of watch restarts.
    watch_restarts: tuple[tuple[str, int], ...] = ()
    # Targets whose result the probe already knows without a run, because what it
    # would read has not changed since its last run (files: same device, inode,
    # size, mtime, mode and owner).  The scheduler publishes these results as they
    # are instead of calling run(), unless runs are traced.  Every key is a target.
    # Left out of repr (100,000 results in a log line) and of equality and hash.
    unchanged: Mapping[str, ProbeResult] = field(default_factory=dict, compare=False, repr=False)
    # Targets not run in this round whose published state stays as it is (runs and
    # failures not counted again): a round woken early for a new discovered target
    # runs that one and carries the others over.  Every one is a target.
    carried: frozenset[str] = frozenset()
    # Targets the source found but left out, over its cap (max_targets).
    dropped: int = 0


def failed(
    reason: Reason,
    started: float,
    message: str,
    *,
    errors: Iterable[SourceError] = (),
    certificates: Iterable[CertObservation] = (),
) -> ProbeResult:
    """A failed result timed from ``started`` (a ``time.monotonic()`` value)."""
    return ProbeResult(
        success=False,
        reason=reason,
        duration_seconds=time.monotonic() - started,
        certificates=tuple(certificates),
        errors=tuple(errors),
        message=message,
    )
