"""The ``tls`` kind's facts (``TlsFacts``: what a handshake showed beyond the
certificates) and how they show: metric families, the handshake histogram, span
attributes, and the kind's hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from probes.context import AttributeValue
from probes.metrics import TARGET_LABELS, CrossProbeRole, HistogramFamily, KindHooks, Rows, TargetView, gauge
from probes.result import CertFacts, ProbeResult
from probes.revocation_facts import REVOCATION_FAMILIES, REVOKED_SINCE, render_revocation


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


# -- metrics ---------------------------------------------------------------------------

_P = "certscope_"
HANDSHAKE = gauge(_P + "tls_handshake_duration_seconds", "Duration of the last TLS handshake.", TARGET_LABELS)
VERSION = gauge(_P + "tls_version_info", "TLS version of the last handshake; always 1.", (*TARGET_LABELS, "version"))
CIPHER = gauge(_P + "tls_cipher_info", "Cipher of the last handshake; always 1.", (*TARGET_LABELS, "cipher"))
CONNECTION = gauge(
    _P + "tls_connection_info",
    "Where the last handshake went; always 1.",
    (*TARGET_LABELS, "address", "server_name", "alpn"),
)
CHAIN_VERIFIED = gauge(
    _P + "tls_chain_verified", "1 if the served chain verified against the trust store.", TARGET_LABELS
)
CHAIN_COMPLETE = gauge(
    _P + "tls_chain_complete", "1 if the served chain reaches a trust anchor or a self-signed root.", TARGET_LABELS
)
HOSTNAME_MATCH = gauge(
    _P + "tls_hostname_match", "1 if the leaf covers the name verified (absent when none was).", TARGET_LABELS
)
CLIENT_AUTH = gauge(
    _P + "tls_client_auth",
    "Client authentication outcome; always 1 (accepted, rejected, not_requested, not_sent).",
    (*TARGET_LABELS, "result"),
)
HTTP_STATUS = gauge(_P + "http_status_code", "HTTP status of the check after the handshake.", TARGET_LABELS)
VERIFIED_EXPIRY = gauge(
    _P + "tls_verified_chain_expiry_timestamp_seconds",
    "Earliest notAfter on the verified path, trust anchor included (absent unless verified).",
    TARGET_LABELS,
)
TLS_FAMILIES = (
    HANDSHAKE,
    VERSION,
    CIPHER,
    CONNECTION,
    CHAIN_VERIFIED,
    CHAIN_COMPLETE,
    HOSTNAME_MATCH,
    CLIENT_AUTH,
    HTTP_STATUS,
    VERIFIED_EXPIRY,
)

HANDSHAKE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _handshake_seconds(result: ProbeResult) -> float | None:
    return result.facts.handshake_seconds if isinstance(result.facts, TlsFacts) else None


HANDSHAKES = HistogramFamily(
    _P + "tls_handshake_seconds",
    "TLS handshake durations of every run of the probe.",
    HANDSHAKE_BUCKETS,
    _handshake_seconds,
)


def render_tls(view: TargetView, rows: Rows) -> None:
    tls = view.facts
    if isinstance(tls, TlsFacts):
        key, extra = view.key, view.extra
        rows.add(HANDSHAKE, key, tls.handshake_seconds, extra)
        if tls.version:  # empty when the handshake broke off
            rows.add(VERSION, (*key, tls.version), 1, extra)
            rows.add(CIPHER, (*key, tls.cipher), 1, extra)
        rows.add(CONNECTION, (*key, tls.address, tls.server_name, tls.alpn), 1, extra)
        rows.add(CHAIN_VERIFIED, key, 1 if tls.chain_verified else 0, extra)
        rows.add(CHAIN_COMPLETE, key, 1 if tls.chain_complete else 0, extra)
        if tls.hostname_match is not None:
            rows.add(HOSTNAME_MATCH, key, 1 if tls.hostname_match else 0, extra)
        rows.add(CLIENT_AUTH, (*key, tls.client_auth), 1, extra)
        if tls.http_status is not None:
            rows.add(HTTP_STATUS, key, tls.http_status, extra)
        if tls.verified_chain_not_after is not None:
            rows.add(VERIFIED_EXPIRY, key, tls.verified_chain_not_after, extra)
    render_revocation(view, rows)


# -- spans -----------------------------------------------------------------------------


def span_attributes(result: ProbeResult, attributes: dict[str, AttributeValue]) -> None:
    """The semantic-convention attributes of a handshake (``network.peer.*``,
    ``tls.*``) and certscope's own, on the run's root span (docs/tracing.md)."""
    tls = result.facts
    if not isinstance(tls, TlsFacts):
        return
    if tls.address:
        attributes["network.peer.address"] = tls.address
    attributes["tls.established"] = bool(tls.version)
    if tls.version:
        name, _, number = tls.version.partition("v")  # TLSv1.3 -> tls, 1.3
        attributes["tls.protocol.name"] = name.lower()
        attributes["tls.protocol.version"] = number
        attributes["tls.cipher"] = tls.cipher
    if tls.alpn:
        attributes["tls.next_protocol"] = tls.alpn
    attributes["certscope.tls.chain_verified"] = tls.chain_verified
    if tls.hostname_match is not None:
        attributes["certscope.tls.hostname_match"] = tls.hostname_match
    attributes["certscope.tls.client_auth"] = tls.client_auth
    if tls.http_status is not None:
        attributes["http.response.status_code"] = tls.http_status
    for observation in result.certificates:
        if observation.role == "leaf" and observation.index == 0:
            _certificate_attributes(attributes, "tls.server", observation.cert)
            break
    for observation in result.certificates:
        if observation.role == "client" and observation.index == 0:
            _certificate_attributes(attributes, "tls.client", observation.cert)
            break


def _certificate_attributes(attributes: dict[str, AttributeValue], prefix: str, cert: CertFacts) -> None:
    attributes[f"{prefix}.subject"] = cert.subject
    attributes[f"{prefix}.issuer"] = cert.issuer
    attributes[f"{prefix}.not_before"] = _iso(cert.not_before)
    attributes[f"{prefix}.not_after"] = _iso(cert.not_after)
    attributes[f"{prefix}.hash.sha256"] = cert.fingerprint_sha256.upper()


def _iso(timestamp: float) -> str:
    """Semantic-convention date: 2021-01-01T00:00:00.000Z."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


TLS_HOOKS = KindHooks(
    families=(*TLS_FAMILIES, *REVOCATION_FAMILIES),
    render=render_tls,
    histograms=(HANDSHAKES,),
    tallies=(REVOKED_SINCE,),
    span_attributes=span_attributes,
    cross_probe=CrossProbeRole.SERVED,
    reports_dropped_targets=True,
)
