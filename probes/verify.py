"""Judging a served chain: trust anchors, path validation and hostname, in-process.

``verify_served_chain(served, trust, name, now)`` never raises.  It returns a
``Verdict`` with one primary ``reason`` and the separate signals behind it (is the
chain complete, does it verify, does the name match), so metrics can show all three.

Path validation is ``cryptography.x509.verification`` (webpki rules).  It says *that*
a chain failed, not *why*, so the common causes are told apart here first, in the
order an on-call engineer acts on them:

1. ``cert_expired`` / ``cert_not_yet_valid`` - a served certificate outside its
   validity window (the leaf, or an intermediate), when no valid path exists;
2. ``hostname_mismatch`` - no SAN covers the name (RFC 6125: case-insensitive, a
   wildcard only as the whole left-most label; the subject CN is not consulted);
3. ``self_signed`` - the leaf is its own issuer and is not trusted;
4. ``untrusted_root`` - the chain ends in a self-signed certificate that is not a
   trust anchor;
5. ``incomplete_chain`` - the issuer of the last certificate is neither served nor
   trusted (the server left out an intermediate);
6. ``chain_invalid`` - the chain is complete and anchored but still fails (bad
   signature, constraints, key usage); the message carries cryptography's words.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtensionOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from probes.base import Reason, TrustSettings
from probes.expect import covers

log = logging.getLogger(__name__)

MAX_CHAIN_DEPTH = 8
# Where distributions keep the system bundle, after what Python's ssl reports.
_SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
)


class TrustStore:
    """Trust anchors loaded once per probe configuration."""

    def __init__(self, anchors: Sequence[x509.Certificate]) -> None:
        self.anchors = tuple(anchors)
        self.fingerprints = frozenset(c.fingerprint(hashes.SHA256()) for c in anchors)
        self._subjects = frozenset(c.subject.public_bytes() for c in anchors)
        self.store = Store(list(anchors)) if anchors else None

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> TrustStore:
        anchors: list[x509.Certificate] = []
        if settings.system:
            anchors.extend(_load_bundle(_system_bundle()))
        for path in settings.ca_files:
            anchors.extend(_load_bundle(path))
        return cls(anchors)

    def has_subject(self, name: x509.Name) -> bool:
        return name.public_bytes() in self._subjects

    def contains(self, cert: x509.Certificate) -> bool:
        return cert.fingerprint(hashes.SHA256()) in self.fingerprints


def _system_bundle() -> str | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, *_SYSTEM_BUNDLES):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def _load_bundle(path: str | None) -> list[x509.Certificate]:
    if path is None:
        return []
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except (OSError, ValueError) as exc:
        log.error("cannot load trust anchors from %s: %s", path, exc)
        return []


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: Reason  # OK or the primary problem
    message: str
    chain_verified: bool
    chain_complete: bool
    hostname_match: bool | None  # None when there was no name to check
    # The validated path, leaf first, trust anchor last (empty unless verified).
    verified_path: tuple[x509.Certificate, ...] = ()


def verify_served_chain(
    served: Sequence[x509.Certificate],
    trust: TrustStore,
    name: str | None,
    now: datetime,
    max_chain_depth: int = MAX_CHAIN_DEPTH,
) -> Verdict:
    if not served:
        return Verdict(Reason.HANDSHAKE_FAILED, "the server sent no certificate", False, False, None)
    leaf, intermediates = served[0], list(served[1:])
    hostname_match = matches_hostname(leaf, name) if name else None
    complete, structure_reason, structure_message = _walk(served, trust)

    verified_path: tuple[x509.Certificate, ...] = ()
    verify_error = ""
    # Validate the path against a name the leaf claims, so that chain trust and the
    # hostname are judged separately; the hostname verdict comes from above.
    subject_name = name if hostname_match else _first_san(leaf)
    if trust.store is not None and subject_name is not None:
        try:
            verifier = (
                PolicyBuilder()
                .store(trust.store)
                .time(now)
                .max_chain_depth(max_chain_depth)
                .build_server_verifier(_subject(subject_name))
            )
            verified_path = tuple(verifier.verify(leaf, intermediates))
        except VerificationError as exc:
            verify_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - e.g. ValueError for a name with '_'
            verify_error = f"{type(exc).__name__}: {exc}"
    elif trust.store is None:
        verify_error = "no trust anchors configured"
    else:
        verify_error = "the leaf names no DNS or IP subject alternative name"
    verified = bool(verified_path)
    if verified and hostname_match is not False:
        # A valid path exists; served certificates it does not use (an expired
        # cross-sign, say) do not make the endpoint fail.
        return Verdict(Reason.OK, "", True, True, hostname_match, verified_path)

    for position, cert in enumerate(served):
        what = "the leaf" if position == 0 else f"served certificate {position} ({_cn(cert)})"
        if cert.not_valid_after_utc < now:
            return Verdict(
                Reason.CERT_EXPIRED,
                f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
                False,
                complete,
                hostname_match,
            )
        if cert.not_valid_before_utc > now:
            return Verdict(
                Reason.CERT_NOT_YET_VALID,
                f"{what} is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                False,
                complete,
                hostname_match,
            )
    if hostname_match is False:
        sans = ", ".join(_san_strings(leaf)) or "none"
        return Verdict(
            Reason.HOSTNAME_MISMATCH,
            f"{name} is not covered by the certificate (SANs: {sans})",
            verified,
            complete,
            False,
            verified_path,
        )
    if structure_reason is not None:
        return Verdict(structure_reason, structure_message, False, complete, hostname_match)
    return Verdict(Reason.CHAIN_INVALID, f"chain does not verify: {verify_error}", False, complete, hostname_match)


def _walk(served: Sequence[x509.Certificate], trust: TrustStore) -> tuple[bool, Reason | None, str]:
    """Follow issuers from the leaf through the served certificates.  Returns
    (complete, structural reason or None, message)."""
    current = served[0]
    remaining = list(served[1:])
    for _ in range(len(served) + 1):
        if trust.contains(current):
            return True, None, ""
        if current.issuer == current.subject:
            if current is served[0]:
                return True, Reason.SELF_SIGNED, f"the leaf ({_cn(current)}) is self-signed and not trusted"
            return True, Reason.UNTRUSTED_ROOT, f"the chain ends in {_cn(current)}, a root that is not trusted"
        if trust.has_subject(current.issuer):
            return True, None, ""
        issuer = next((c for c in remaining if c.subject == current.issuer), None)
        if issuer is None:
            return (
                False,
                Reason.INCOMPLETE_CHAIN,
                f"the issuer of {_cn(current)} ({current.issuer.rfc4514_string()}) is neither served nor trusted",
            )
        remaining.remove(issuer)
        current = issuer
    return False, Reason.CHAIN_INVALID, "the served chain loops"


def matches_hostname(cert: x509.Certificate, name: str) -> bool:
    """RFC 6125 matching against DNS and IP SANs only."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except Exception:  # noqa: BLE001 - no or unreadable SAN: nothing matches
        return False
    assert isinstance(san, x509.SubjectAlternativeName)
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if address is not None:
        return address in san.get_values_for_type(x509.IPAddress)
    return covers(tuple(san.get_values_for_type(x509.DNSName)), name)


def _subject(name: str) -> x509.DNSName | x509.IPAddress:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _first_san(cert: x509.Certificate) -> str | None:
    names = _san_strings(cert)
    return names[0].replace("*.", "wildcard.", 1) if names else None


def _san_strings(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except Exception:  # noqa: BLE001
        return []
    assert isinstance(san, x509.SubjectAlternativeName)
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def _cn(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string() or "(empty subject)"
    except Exception:  # noqa: BLE001
        return "(unreadable subject)"
