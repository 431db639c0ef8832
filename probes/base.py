"""The contract every probe kind implements, and the values probes hand back.

A probe kind is a pair (Settings dataclass, Probe class).  The Probe is built once
from its settings (the module configuration) and is then asked two things by the
scheduler:

* ``targets()``: what to probe this round (file paths, ``host:port``, ...).  Errors
  found while discovering are reported through ``Discovery.errors`` and never raise.
  A probe that can tell, while discovering, that a target's result would be the
  same as its last run's (files: an unchanged file) hands that result back in
  ``Discovery.unchanged``; the scheduler then publishes it without a run.
* ``run(target, ctx) -> ProbeResult``: probe one target.  Expected failures are
  data (a ``ProbeResult`` with ``success=False`` and a typed ``reason``); an
  exception escaping ``run`` is a bug, which the scheduler turns into
  ``Reason.INTERNAL_ERROR``.

A probe times its steps with ``with ctx.phase("connect") as phase: ...``: the timing
goes to ``ProbeResult.phases`` and, when the run is traced, the step becomes a child
span of the run (``exporter.tracing``).  Probes never import OpenTelemetry.

Certificates are reported as ``CertFacts``: a compact, immutable record of the
fields metrics and people need.  ``cryptography`` objects are never kept, since they
weigh several kilobytes once their fields have been read.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, NewType, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from probes.revocation import RevocationChecker

# Types the config loader understands beyond the builtins (exporter/config.py):
Seconds = NewType("Seconds", float)  # "30s", "5m", "28d" or a number of seconds
ByteSize = NewType("ByteSize", int)  # "16MiB", "512KiB" or a number of bytes


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> float:
    """'30s', '5m', '1h30m', '28d' -> seconds.  Raises ValueError."""
    text = text.strip()
    position = 0
    total = 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h30m, 28d)")
    return total


def path_field(default: Any = None) -> Any:
    """A settings field naming a file that must exist when the config is loaded."""
    return field(default=default, metadata={"must_exist": True})


@dataclass(frozen=True)
class TrustSettings:
    """Where trust anchors come from: the system store and/or PEM files."""

    system: bool = True
    ca_files: tuple[str, ...] = field(default=(), metadata={"must_exist": True})


@dataclass(frozen=True)
class Shard:
    """This replica's share of the work when several run side by side
    (``--shard.index``/``--shard.count``): a stable hash partition, so a target stays
    on the same replica across restarts and every replica agrees without talking."""

    index: int = 0
    count: int = 1

    def owns(self, key: str) -> bool:
        if self.count <= 1:
            return True
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index


NO_SHARD = Shard()  # one replica does everything


@dataclass(frozen=True)
class ProbeDefaults:
    """Settings a probe inherits from the config's ``global`` section (and the
    command line's shard), and the process's shared services the scheduler hands
    to every probe it builds."""

    trust: TrustSettings = TrustSettings()
    # Networks that URLs taken from certificates may reach (global.egress.allow_networks).
    allow_networks: tuple[str, ...] = ()
    shard: Shard = NO_SHARD
    # The OCSP and CRL caches shared by the probes of the process (not configuration):
    # created by the scheduler, kept across reloads.  None: the probe makes its own.
    revocation: RevocationChecker | None = field(default=None, compare=False, repr=False)


class Reason(StrEnum):
    """Why a probe run or a source item failed.  A public contract: alert rules and
    dashboards match on these values, so add freely but never rename."""

    OK = "ok"
    # network and handshake
    DNS_ERROR = "dns_error"
    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    CONNECT_FAILED = "connect_failed"  # unreachable network or host, other socket errors
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    HANDSHAKE_FAILED = "handshake_failed"
    PROTOCOL_ERROR = "protocol_error"
    STARTTLS_FAILED = "starttls_failed"
    # certificate and chain
    CERT_EXPIRED = "cert_expired"
    CERT_NOT_YET_VALID = "cert_not_yet_valid"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    UNTRUSTED_ROOT = "untrusted_root"
    SELF_SIGNED = "self_signed"
    INCOMPLETE_CHAIN = "incomplete_chain"
    CHAIN_INVALID = "chain_invalid"  # complete and anchored, and still fails validation
    REVOKED = "revoked"
    # client authentication and authorisation
    CLIENT_CERT_REQUIRED = "client_cert_required"
    CLIENT_CERT_REJECTED = "client_cert_rejected"
    HTTP_UNAUTHORIZED = "http_unauthorized"
    HTTP_FORBIDDEN = "http_forbidden"
    HTTP_UNEXPECTED_STATUS = "http_unexpected_status"
    HTTP_UNEXPECTED_BODY = "http_unexpected_body"  # the body fails a configured regexp
    HTTP_UNEXPECTED_HEADER = "http_unexpected_header"  # a header fails a configured regexp
    # revocation infrastructure
    OCSP_UNAVAILABLE = "ocsp_unavailable"
    OCSP_BAD_RESPONSE = "ocsp_bad_response"
    OCSP_UNAUTHORIZED_SIGNER = "ocsp_unauthorized_signer"
    OCSP_STALE = "ocsp_stale"
    OCSP_UNKNOWN_CERTIFICATE = "ocsp_unknown_certificate"  # the responder answered "unknown"
    CRL_UNAVAILABLE = "crl_unavailable"
    CRL_BAD_SIGNATURE = "crl_bad_signature"
    CRL_STALE = "crl_stale"
    CRL_TOO_LARGE = "crl_too_large"
    # reading sources (files, Secrets, bundles)
    READ_ERROR = "read_error"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    BROKEN_SYMLINK = "broken_symlink"
    SYMLINK_LOOP = "symlink_loop"
    NOT_REGULAR_FILE = "not_regular_file"
    FILE_TOO_LARGE = "file_too_large"
    TOO_MANY_FILES = "too_many_files"
    TOO_MANY_TARGETS = "too_many_targets"  # discovered endpoints beyond max_targets, left out
    EMPTY_FILE = "empty_file"
    NO_CERTIFICATE = "no_certificate"
    PARSE_ERROR = "parse_error"
    MALFORMED_CERTIFICATE = "malformed_certificate"
    DUPLICATE_CERTIFICATE = "duplicate_certificate"
    BAD_PASSWORD = "bad_password"
    KDF_TOO_EXPENSIVE = "kdf_too_expensive"  # a PKCS#12 asking for absurd key derivation work; not opened
    # expected identity
    SAN_MISMATCH = "san_mismatch"
    WRONG_ISSUER = "wrong_issuer"
    WEAK_KEY = "weak_key"
    WEAK_SIGNATURE = "weak_signature"  # MD5 or SHA-1 on a certificate whose signature is checked
    EKU_MISMATCH = "eku_mismatch"
    VALIDITY_TOO_LONG = "validity_too_long"
    # APIs (Kubernetes, CAs)
    API_UNAUTHORIZED = "api_unauthorized"
    API_FORBIDDEN = "api_forbidden"
    API_ERROR = "api_error"
    # certificate authorities (the ca kind)
    CA_BAD_RESPONSE = "ca_bad_response"  # the CA answered, but not what its API promises
    ISSUANCE_REFUSED = "issuance_refused"  # the CA declined to issue (a 4xx other than 401/403)
    ISSUED_CERT_INVALID = "issued_cert_invalid"  # the issued certificate does not chain to the published roots
    VALIDITY_MISMATCH = "validity_mismatch"  # the issued certificate's lifetime is not what was asked
    PROVISIONER_NOT_FOUND = "provisioner_not_found"  # step-ca lists no JWK provisioner of that name
    CREDENTIAL_UNAVAILABLE = "credential_unavailable"  # the password/key file or variable cannot be read
    # ACME (RFC 8555) issuance: the problem types that say what broke
    RATE_LIMITED = "rate_limited"  # rateLimited: the CA will not issue before Retry-After
    BAD_NONCE = "bad_nonce"  # badNonce, still after retries with fresh nonces
    UNAUTHORIZED = "unauthorized"  # the account may not act: unauthorized, deactivated, terms to accept, EAB
    ORDER_INVALID = "order_invalid"  # the order became invalid (finalize failed) or never became ready
    CHALLENGE_FAILED = "challenge_failed"  # the CA could not validate a challenge (or none could be answered)
    # ours
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL_ERROR = "internal_error"


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


@dataclass(frozen=True, slots=True)
class SourceError:
    """A problem with one source item (a file, a block in a bundle, a Secret key).

    ``message`` names the item and says what is wrong; it must never carry secret
    material (passwords, key bytes)."""

    reason: Reason
    item: str
    message: str


@dataclass(frozen=True, slots=True)
class TlsFacts:
    """What a handshake showed, beyond the certificates."""

    address: str  # the IP address connected to
    server_name: str  # SNI sent ('' for none) and the name verified
    version: str  # TLSv1.3, ...
    cipher: str
    alpn: str
    handshake_seconds: float
    chain_verified: bool
    chain_complete: bool
    hostname_match: bool | None  # None: no name was checked
    # accepted | rejected | not_requested | not_sent (requested, none configured, server went on)
    client_auth: str
    http_status: int | None = None
    verified_chain_not_after: float | None = None  # earliest notAfter on the verified path


@dataclass(frozen=True, slots=True)
class RevocationFacts:
    """One revocation check of one certificate location (``index``, ``role``)."""

    method: str  # ocsp | crl | stapled
    state: str  # good | revoked | unknown | not_applicable
    reason: Reason  # OK, REVOKED, or why the state is unknown
    source: str  # responder or CRL URL ('' when not applicable)
    message: str = ""
    stale: bool = False
    this_update: float | None = None
    next_update: float | None = None
    produced_at: float | None = None
    revocation_time: float | None = None
    revocation_reason: str = ""
    duration_seconds: float = 0.0
    http_status: int | None = None
    from_cache: bool = False
    # Wall clock of the network request that gave this answer (OCSP): a cached answer
    # keeps the time it was asked, so its age is known while it is reused.
    requested_at: float | None = None
    index: int = 0
    role: str = "leaf"


@dataclass(frozen=True, slots=True)
class CrlFacts:
    """What one CRL fetch showed (the ``crl`` kind)."""

    url: str
    signature_valid: bool
    this_update: float | None
    next_update: float | None
    number: int | None
    entries: int
    size_bytes: int
    fetch_seconds: float | None  # None when served from the cache
    http_status: int | None


@dataclass(frozen=True, slots=True)
class IssuanceFacts:
    """One synthetic issuance (the ``ca`` kind): asked, received, verified."""

    success: bool
    reason: Reason  # OK or why it failed
    # Seconds the CA took to answer the issuance request(s); None when no request
    # reached the CA (the credential could not be read, the key did not decrypt).
    seconds: float | None
    message: str = ""
    # Phase name -> seconds of the issuance's own steps (ACME: nonce, account, order, ...).
    phases: tuple[tuple[str, float], ...] = ()
    # Unix time before which the CA asked not to be asked again (ACME rateLimited).
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class CaFacts:
    """What one run of the ``ca`` kind showed about the CA's API."""

    flavor: str  # step | cfssl | acme | bundle
    up: bool  # the availability request got a well-formed answer
    response_seconds: float | None  # that request's round trip (None: no answer at all)
    issuance: IssuanceFacts | None = None  # None when synthetic issuance is off


@dataclass(frozen=True, slots=True)
class StoredComparison:
    """How the leaf an endpoint serves compares with the certificate stored where it
    should come from (a discovered endpoint's Secret: probes/kubediscovery.py)."""

    state: str  # match | stale | other | secret_missing
    labels: tuple[tuple[str, str], ...]  # where it is stored: secret_namespace, secret_name


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
    tls: TlsFacts | None = None
    revocation: tuple[RevocationFacts, ...] = ()
    crl: CrlFacts | None = None
    ca: CaFacts | None = None
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


AttributeValue = str | bool | int | float


class PhaseSpan(Protocol):
    """A span opened for one phase of a run (see ``ProbeContext.phase``).  Implemented
    by ``exporter.tracing``; probes never import OpenTelemetry themselves."""

    def set_attribute(self, key: str, value: AttributeValue) -> None: ...

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue]) -> None: ...

    def end(self, elapsed_ns: int, error_type: str | None, message: str) -> None: ...


class RunTracer(Protocol):
    """Opens phase spans below the run's root span (or below another phase)."""

    def start_phase(self, name: str, parent: PhaseSpan | None, started_ns: int) -> PhaseSpan: ...

    def set_attribute(self, key: str, value: AttributeValue) -> None: ...


class Phase:
    """One timed phase of a run: ``with ctx.phase("tls.handshake") as phase: ...``.

    On exit the phase's duration goes to ``ctx.phases`` (top-level phases only, so
    that they add up to at most the run's duration) and, when the run is traced, a
    child span with the same duration is ended.  A phase left by an exception, or
    marked with ``fail(reason)``, ends with status ERROR and ``error.type``.  Without
    a tracer this costs two clock reads and an append (docs/tracing.md)."""

    __slots__ = ("_ctx", "_error", "_message", "_span", "_started", "name")

    def __init__(self, ctx: ProbeContext, name: str) -> None:
        self._ctx = ctx
        self.name = name
        self._span: PhaseSpan | None = None
        self._error: str | None = None
        self._message = ""
        self._started = 0

    def __enter__(self) -> Phase:
        ctx = self._ctx
        self._started = time.monotonic_ns()
        if ctx.tracer is not None:
            parent = ctx._open[-1] if ctx._open else None
            self._span = ctx.tracer.start_phase(self.name, parent, self._started)
            ctx._open.append(self._span)
        else:
            ctx._depth += 1
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        elapsed = time.monotonic_ns() - self._started
        ctx = self._ctx
        span = self._span
        if span is not None:
            ctx._open.pop()
            top_level = not ctx._open
            if exc is not None and self._error is None:
                # A probe's own failure carries a Reason and a secret-free message;
                # anything else is a bug, named by its type only.
                reason = getattr(exc, "reason", None)
                if isinstance(reason, Reason):
                    self._error, self._message = reason.value, str(exc)
                else:
                    self._error = type(exc).__name__
            span.end(elapsed, self._error, self._message)
        else:
            ctx._depth -= 1
            top_level = ctx._depth == 0
        if top_level:
            ctx.phases.append((self.name, elapsed / 1e9))

    @property
    def traced(self) -> bool:
        return self._span is not None

    def set(self, key: str, value: AttributeValue) -> None:
        """An attribute on this phase's span (nothing when the run is not traced)."""
        if self._span is not None:
            self._span.set_attribute(key, value)

    def event(self, name: str, **attributes: AttributeValue) -> None:
        if self._span is not None:
            self._span.add_event(name, attributes)

    def fail(self, reason: Reason, message: str = "") -> None:
        """Mark the phase failed without raising (the run goes on to report it)."""
        self._error = reason.value
        self._message = message


@dataclass
class ProbeContext:
    """Per-run facilities handed to ``Probe.run``.

    ``tracer`` is set by the scheduler when the run is traced; probes only see it
    through ``phase()`` and ``set_attribute()``, both cheap when it is None."""

    deadline: float  # time.monotonic() value after which the run must give up
    probe_name: str = ""
    phases: list[tuple[str, float]] = field(default_factory=list)
    tracer: RunTracer | None = None
    _open: list[PhaseSpan] = field(default_factory=list, init=False, repr=False)  # traced phases, innermost last
    _depth: int = field(default=0, init=False, repr=False)  # untraced phases open

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def record_phase(self, name: str, seconds: float) -> None:
        self.phases.append((name, seconds))

    def phase(self, name: str) -> Phase:
        return Phase(self, name)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """An attribute on the run's root span (nothing when the run is not traced)."""
        if self.tracer is not None:
            self.tracer.set_attribute(key, value)


def annotate_revocation(phase: Phase, facts: RevocationFacts, index: int, role: str) -> None:
    """Describe one revocation check on its phase span.  A revoked certificate or an
    unknown state (no usable answer) fails the phase; the run's own outcome is
    decided elsewhere (an unknown state fails the run only with ``hard_fail``)."""
    if not phase.traced:
        return
    phase.set("certscope.revocation.method", facts.method)
    phase.set("certscope.revocation.state", facts.state)
    phase.set("certscope.revocation.cached", facts.from_cache)
    phase.set("certscope.certificate.index", index)
    phase.set("certscope.certificate.role", role)
    host = urlsplit(facts.source).hostname if "://" in facts.source else None
    if host:
        phase.set("server.address", host)  # never the URL: it could carry credentials
    if facts.http_status is not None:
        phase.set("http.response.status_code", facts.http_status)
    if facts.state == "revoked":
        phase.event("certscope.revoked", **{"error.type": Reason.REVOKED.value, "certscope.message": facts.message})
        phase.fail(Reason.REVOKED, facts.message)
    elif facts.state == "unknown":
        phase.fail(facts.reason, facts.message)


class Probe(Protocol):
    """One configured probe (a module config) able to probe its targets.

    Class attributes describe the kind to the scheduler and the renderer:

    * ``target_reasons``: the reasons whose per-target failure counters start at 0
      (for burn-rate alerts on endpoints).  Kinds with very many targets (files)
      leave it empty: their counters appear on the first failure, and the
      ``source_reasons`` counters of the whole source are pre-initialised instead.
    * ``concurrent_targets``: targets are network endpoints and may run in parallel.
    * ``keeps_last_good``: a failing target keeps exporting its last good
      certificates for up to three intervals (a network blip must not make expiry
      series vanish); local kinds report what is on disk now.

    Optional, read by the scheduler with a default when absent (most kinds need none):

    * ``shards_itself`` (False): the probe applies ``ProbeDefaults.shard`` itself
      (kubernetes: by namespace, before parsing) instead of the scheduler filtering
      its targets.
    * ``traced_runs`` (True): False for a kind whose run only reads a cache, so a run
      makes no span.
    * ``close()``: called when the probe's config is replaced or the daemon stops, for
      kinds holding threads or connections (the kubernetes watches).
    """

    kind: ClassVar[str]
    target_reasons: ClassVar[tuple[Reason, ...]]
    source_reasons: ClassVar[tuple[Reason, ...]]
    concurrent_targets: ClassVar[bool]
    keeps_last_good: ClassVar[bool]

    def targets(self) -> Discovery: ...

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult: ...


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
