"""Judging a served chain: trust anchors, path validation and hostname, in-process.

``verify_served_chain(served, trust, name, now, max_chain_depth, profile)`` never
raises.  It returns a ``Verdict`` with one primary ``reason`` and the separate
signals behind it (is the chain complete, does it verify, does the name match), so
metrics can show all three.  ``ChainMemo`` keeps a probe's facts and verdicts per
served chain, so that a chain served again is not parsed or validated again.

Path validation is ``cryptography.x509.verification`` under the verification
profile's extension policies (``probes.profiles``: ``webpki`` or ``rfc5280``); the
path it builds is then audited for the profile's other rules (security level 2 keys
and signatures, the trust anchor's identity, CA/B rules on the leaf).  Where
cryptography refuses what RFC 5280 allows, two narrow second attempts follow: a
path through self-issued intermediates (pathLenConstraint), and a trust anchor with
directoryName constraints.

cryptography says *that* a chain failed, not *why*, so the causes are told apart
here, in the order an on-call engineer acts on them:

1. ``cert_expired`` / ``cert_not_yet_valid`` - a served certificate outside its
   validity window (the leaf, or an intermediate), when no valid path exists;
2. ``hostname_mismatch`` - no SAN covers the name (RFC 6125: case-insensitive, a
   wildcard only as the whole left-most label, and under ``webpki`` never one
   directly on a public suffix; the subject CN is not consulted);
3. ``self_signed`` - the leaf is its own issuer and is not trusted;
4. ``untrusted_root`` - the chain ends in a self-signed certificate that is not a
   trust anchor;
5. ``incomplete_chain`` - the issuer of the last certificate is neither served nor
   trusted (the server left out an intermediate);
6. ``chain_invalid`` for a signature that does not verify, then ``weak_signature``
   / ``weak_key`` / ``chain_invalid`` for the profile's rules (see
   ``profiles.audit``), then ``cert_expired`` for an expired trust anchor, then
   ``chain_invalid`` with cryptography's words made readable.  Every message names
   the certificate (``the leaf (CN=...)``, ``intermediate 1 (...)``, ``the trust
   anchor (...)``) and the rule.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from probes import profiles
from probes.certfiles import load_certificates
from probes.certparse import facts_from_certificate, role_in_bundle
from probes.expect import covers
from probes.profiles import PROFILES, RFC5280, WEBPKI
from probes.reasons import Reason
from probes.result import CertFacts, CertObservation
from probes.settings import TrustSettings

log = logging.getLogger(__name__)

MAX_CHAIN_DEPTH = 8
MEMO_SIZE = 4096  # certificates and verdicts a ChainMemo remembers, at least
# Seconds a verdict is reused at most.  The trust store is fixed for the probe's
# life and time boundaries are handled exactly, so this only bounds the unforeseen;
# it must outlast the interval, or a verdict expires just before it is reused.
MEMO_MAX_AGE = 6 * 3600.0
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
        self._by_subject: dict[bytes, list[x509.Certificate]] = {}
        for anchor in self.anchors:
            self._by_subject.setdefault(anchor.subject.public_bytes(), []).append(anchor)
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

    def with_subject(self, name: x509.Name) -> list[x509.Certificate]:
        return self._by_subject.get(name.public_bytes(), [])

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
        return load_certificates(path)
    except (OSError, ValueError) as exc:
        log.error("cannot load trust anchors from %s: %s", path, exc)
        return []


@dataclass(frozen=True)
class VerifySettings:
    """How a probe judges served chains (``verify:``)."""

    # webpki | rfc5280 (probes.profiles); default: webpki when the system trust store
    # is used, rfc5280 for a private one (trust.system: false).
    profile: str | None = None

    def validate(self) -> list[tuple[str, str]]:
        if self.profile is not None and self.profile not in PROFILES:
            return [("profile", f"must be one of {', '.join(PROFILES)}, got {self.profile!r}")]
        return []


def choose_profile(verify: VerifySettings | None, trust: TrustSettings) -> str:
    if verify is not None and verify.profile is not None:
        return verify.profile
    return WEBPKI if trust.system else RFC5280


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: Reason  # OK or the primary problem
    message: str
    chain_verified: bool
    chain_complete: bool
    hostname_match: bool | None  # None when there was no name to check
    # The path built, leaf first, trust anchor last: the validated path when
    # chain_verified, else the one refused for a profile rule (a weak key, say), so
    # revocation checks still know each issuer.  Empty when no path was built.
    verified_path: tuple[x509.Certificate, ...] = ()


def verify_served_chain(
    served: Sequence[x509.Certificate],
    trust: TrustStore,
    name: str | None,
    now: datetime,
    max_chain_depth: int = MAX_CHAIN_DEPTH,
    profile: str = WEBPKI,
) -> Verdict:
    if not served:
        return Verdict(Reason.HANDSHAKE_FAILED, "the server sent no certificate", False, False, None)
    leaf, intermediates = served[0], list(served[1:])
    hostname_match = matches_hostname(leaf, name) if name else None
    mismatch = ""  # written below, only when the name does not match
    if hostname_match and name and profile == WEBPKI and (wildcard := profiles.public_suffix_wildcard(leaf, name)):
        hostname_match = False
        mismatch = (
            f"{name} is covered only by {wildcard}, a wildcard directly on a public suffix, which covers nothing "
            "(CA/B BR 3.2.2.6)"
        )
    if hostname_match is False and not mismatch:
        mismatch = f"{name} is not covered by the certificate (SANs: {', '.join(_san_strings(leaf)) or 'none'})"
    path: tuple[x509.Certificate, ...] = ()
    verify_error = ""
    # Validate the path against a name the leaf claims, so that chain trust and the
    # hostname are judged separately; the hostname verdict comes from above.
    subject_name = name if hostname_match else _first_san(leaf)
    if trust.store is None:
        verify_error = "no trust anchors configured"
    else:
        policy = _Policy(subject_name, now, max_chain_depth, profile)
        path, verify_error = _validate(leaf, intermediates, trust.store, policy)
        if not path:
            path = _across_self_issued(served, trust, policy)
        if not path and "unsupported directoryName constraint" in verify_error:
            path = _with_directory_name_constraints(served, trust, policy)
    if path:
        problem = profiles.audit(path, profile)
        if hostname_match is False:
            return Verdict(Reason.HOSTNAME_MISMATCH, mismatch, problem is None, True, False, path)
        if problem is None:
            # A valid path exists; served certificates it does not use (an expired
            # cross-sign, say) do not make the endpoint fail.
            return Verdict(Reason.OK, "", True, True, hostname_match, path)
        return Verdict(problem.reason, problem.message, False, True, hostname_match, path)

    # No path: how the served chain is broken.  (A built path is complete by
    # definition, so a chain that validates is never walked.)
    complete, structure_reason, structure_message = _walk(served, trust)
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
        return Verdict(Reason.HOSTNAME_MISMATCH, mismatch, False, complete, False)
    if structure_reason is not None:
        return Verdict(structure_reason, structure_message, False, complete, hostname_match)
    reason, message = _explain(served, trust, now, profile, verify_error)
    return Verdict(reason, message, False, complete, hostname_match)


@dataclass(frozen=True, slots=True)
class _Policy:
    """How a path is validated: for which name (None: no name is claimed), at
    which moment, how deep at most, under which verification profile."""

    subject_name: str | None
    now: datetime
    max_chain_depth: int
    profile: str

    def builder(self, store: Store, *, leaf_rules: bool = True) -> PolicyBuilder:
        """cryptography's builder over ``store``; without ``leaf_rules`` the
        certificate validated is held to the CA rules (a stretch above the leaf)."""
        ca_policy, ee_policy = profiles.extension_policies(self.profile)
        return (
            PolicyBuilder()
            .store(store)
            .time(self.now)
            .max_chain_depth(self.max_chain_depth)
            .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy if leaf_rules else ca_policy)
        )


def _validate(
    leaf: x509.Certificate, intermediates: list[x509.Certificate], store: Store, policy: _Policy
) -> tuple[tuple[x509.Certificate, ...], str]:
    """cryptography's path validation under the profile's extension policies:
    (the path, '') or ((), why not)."""
    builder = policy.builder(store)
    subject_name = policy.subject_name
    try:
        if subject_name is None:
            # No name to check and none claimed (a leaf whose only SAN is a
            # directoryName): validate the path alone, as for a client certificate.
            return tuple(builder.build_client_verifier().verify(leaf, intermediates).chain), ""
        return tuple(builder.build_server_verifier(_subject(subject_name)).verify(leaf, intermediates)), ""
    except VerificationError as exc:
        return (), str(exc)
    except Exception as exc:  # noqa: BLE001 - e.g. ValueError for a name with '_'
        return (), f"{type(exc).__name__}: {exc}"


def _across_self_issued(
    served: Sequence[x509.Certificate], trust: TrustStore, policy: _Policy
) -> tuple[x509.Certificate, ...]:
    """A path through self-issued intermediates (a CA's key rollover: same name, new
    key), which cryptography counts against pathLenConstraint although RFC 5280
    4.2.1.9 says not to, and so refuses.  Each stretch between self-issued
    certificates is validated by cryptography with the next self-issued certificate
    as its anchor (the rollover certificate itself as a CA under the stretch
    above); path length and depth are then counted over the whole path here.
    Not tried when a CA above the first self-issued certificate has name
    constraints, which would not reach the certificates below it."""
    if not any(cert.subject == cert.issuer for cert in served[1:]):
        return ()
    path, bad_link = _build_path(served, trust)
    if not path or bad_link is not None:
        return ()
    last = len(path) - 1
    splits = [i for i in range(1, last) if path[i].subject == path[i].issuer]
    if not splits or any(_has(cert, x509.NameConstraints) for cert in path[splits[0] :]):
        return ()
    if profiles.path_length_problem(path, policy.max_chain_depth) is not None:
        return ()
    bounds = [0, *splits, last]
    for lower, upper in itertools.pairwise(bounds):
        anchor_store = trust.store if upper == last else Store([path[upper]])
        assert anchor_store is not None
        builder = policy.builder(anchor_store, leaf_rules=lower == 0)
        try:
            if lower == 0 and policy.subject_name is not None:
                verifier = builder.build_server_verifier(_subject(policy.subject_name))
                verifier.verify(path[0], list(path[1:upper]))
            else:
                builder.build_client_verifier().verify(path[lower], list(path[lower + 1 : upper]))
        except Exception:  # noqa: BLE001 - any refusal: this stretch does not validate
            return ()
    return tuple(path)


def _with_directory_name_constraints(
    served: Sequence[x509.Certificate], trust: TrustStore, policy: _Policy
) -> tuple[x509.Certificate, ...]:
    """A path under a trust anchor whose name constraints include directoryName
    subtrees, which cryptography does not evaluate (it refuses the chain).  The
    anchor is handed to cryptography without those subtrees (an anchor is a name
    and a key: its own signature is never checked), and the subtrees are checked
    here: every subject and directoryName SAN below the anchor must lie in a
    permitted subtree and in no excluded one (RFC 5280 4.2.1.10: a subtree matches
    the names it is a leading part of).  Only for constraints on the anchor."""
    path, bad_link = _build_path(served, trust)
    if not path or bad_link is not None:
        return ()
    anchor = path[-1]
    try:
        constraints = anchor.extensions.get_extension_for_class(x509.NameConstraints)
    except Exception:  # noqa: BLE001
        return ()
    permitted = [n.value for n in constraints.value.permitted_subtrees or () if isinstance(n, x509.DirectoryName)]
    excluded = [n.value for n in constraints.value.excluded_subtrees or () if isinstance(n, x509.DirectoryName)]
    if any(_has(cert, x509.NameConstraints) for cert in path[:-1]):
        return ()
    for position, cert in enumerate(path[:-1]):
        if position > 0 and cert.subject == cert.issuer:
            continue  # a self-issued intermediate's names are exempt (RFC 5280 6.1.3 (b))
        names = [cert.subject] if len(cert.subject) else []
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names += san.get_values_for_type(x509.DirectoryName)
        except Exception:  # noqa: BLE001 - no SAN
            pass
        for dn in names:
            if permitted and not any(_dn_within(dn, subtree) for subtree in permitted):
                return ()
            if any(_dn_within(dn, subtree) for subtree in excluded):
                return ()
    stand_in = _anchor_without_directory_name_constraints(anchor, constraints)
    if stand_in is None:
        return ()
    found, _ = _validate(path[0], list(served[1:]), Store([stand_in]), policy)
    return (*found[:-1], anchor) if found else ()


def _dn_within(name: x509.Name, subtree: x509.Name) -> bool:
    return list(name.rdns)[: len(subtree.rdns)] == list(subtree.rdns)


def _anchor_without_directory_name_constraints(
    anchor: x509.Certificate, constraints: x509.Extension[x509.NameConstraints]
) -> x509.Certificate | None:
    value = constraints.value
    permitted = [n for n in value.permitted_subtrees or () if not isinstance(n, x509.DirectoryName)]
    excluded = [n for n in value.excluded_subtrees or () if not isinstance(n, x509.DirectoryName)]
    builder = (
        x509.CertificateBuilder()
        .subject_name(anchor.subject)
        .issuer_name(anchor.issuer)
        .public_key(anchor.public_key())
        .serial_number(anchor.serial_number)
        .not_valid_before(anchor.not_valid_before_utc)
        .not_valid_after(anchor.not_valid_after_utc)
    )
    try:
        for extension in anchor.extensions:
            if isinstance(extension.value, x509.NameConstraints):
                if permitted or excluded:
                    builder = builder.add_extension(
                        x509.NameConstraints(permitted or None, excluded or None), extension.critical
                    )
            else:
                builder = builder.add_extension(extension.value, extension.critical)
        return profiles.stand_in(anchor, builder.sign(_STAND_IN_KEY, hashes.SHA256()))
    except Exception:  # noqa: BLE001 - an extension that cannot be written again
        return None


# Signs the stand-in anchors above; their signature is never checked.
_STAND_IN_KEY = ec.generate_private_key(ec.SECP256R1())


def _build_path(
    served: Sequence[x509.Certificate], trust: TrustStore, budget: int = 64
) -> tuple[list[x509.Certificate], int | None]:
    """The path from the leaf to a trust anchor, by names, whose signatures verify:
    (path, None).  If none does: the first path by names and the position of its
    first certificate whose signature fails, (path, position).  ([], None) when no
    path by names exists.  At most ``budget`` signatures are checked."""
    remaining = [budget]
    first_by_name: list[list[x509.Certificate]] = []

    def issuers(cert: x509.Certificate, used: list[x509.Certificate]) -> list[tuple[x509.Certificate, bool]]:
        anchors = [(a, True) for a in trust.with_subject(cert.issuer)]
        others = [(c, False) for c in served[1:] if c.subject == cert.issuer and all(c is not u for u in used)]
        return anchors + others

    def extend(path: list[x509.Certificate]) -> list[x509.Certificate] | None:
        if len(path) > len(served) + 1:
            return None
        for issuer, is_anchor in issuers(path[-1], path):
            if not first_by_name and is_anchor:
                first_by_name.append([*path, issuer])
            if remaining[0] <= 0:
                return None
            remaining[0] -= 1
            if not profiles.signed_by(path[-1], issuer):
                continue
            if is_anchor:
                return [*path, issuer]
            found = extend([*path, issuer])
            if found is not None:
                return found
        return None

    good = extend([served[0]])
    if good is not None:
        return good, None
    if not first_by_name:
        return [], None
    path = first_by_name[0]
    bad = next((i for i in range(len(path) - 1) if not profiles.signed_by(path[i], path[i + 1])), None)
    return path, bad


def _explain(
    served: Sequence[x509.Certificate], trust: TrustStore, now: datetime, profile: str, verify_error: str
) -> tuple[Reason, str]:
    """Why a complete, anchored chain failed validation, the cause a person fixes
    first: a bad signature, then a weak signature or key (or a trust anchor that
    is not one), then an expired trust anchor, then cryptography's own words."""
    path, bad_link = _build_path(served, trust)
    if path:
        last = len(path) - 1
        if bad_link is not None:
            child, issuer = path[bad_link], path[bad_link + 1]
            return (
                Reason.CHAIN_INVALID,
                f"the signature of {profiles.describe(child, bad_link, last)} does not verify with the key of "
                f"{profiles.describe(issuer, bad_link + 1, last)}",
            )
        problem = profiles.audit(path, profile)
        if problem is not None:
            return problem.reason, problem.message
        anchor = path[last]
        if anchor.not_valid_after_utc < now:
            return (
                Reason.CERT_EXPIRED,
                f"{profiles.describe(anchor, last, last)} expired on {anchor.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            )
    return Reason.CHAIN_INVALID, f"chain does not verify under the {profile} profile: {_plain(verify_error)}"


_ENCOUNTERED = re.compile(r" \(encountered processing <Certificate\(subject=<Name\((.*?)\)>, \.\.\.\)>\)")
_INVALID_EXTENSION = re.compile(r"invalid extension: ([0-9.]+): (.*)")
_EXTENSION_NAMES = {
    "2.5.29.14": "subjectKeyIdentifier",
    "2.5.29.15": "keyUsage",
    "2.5.29.17": "subjectAltName",
    "2.5.29.19": "basicConstraints",
    "2.5.29.30": "nameConstraints",
    "2.5.29.35": "authorityKeyIdentifier",
    "2.5.29.37": "extendedKeyUsage",
    "1.3.6.1.5.5.7.1.1": "authorityInfoAccess",
}
_EXTENSION_PROBLEMS = {
    "Certificate is missing required extension": "lacks the {} extension",
    "Certificate contains prohibited extension": "has a {} extension, which is not allowed there",
    "Certificate extension has incorrect criticality": "marks {} with the wrong criticality",
}
_ALGORITHMS = {
    "Forbidden public key algorithm": "its issuer's key algorithm is not one cryptography's path validation accepts",
    "Forbidden signature algorithm": "its signature algorithm is not one cryptography's path validation accepts",
}


def _plain(error: str) -> str:
    """cryptography's error, readable: the certificate named first, extensions by
    name, the wrapping of our own validators' messages removed."""
    text = error.removeprefix("validation failed: ").replace("candidates exhausted: ", "")
    text = text.replace("Python extension validator failed: ValueError: ", "")
    subject = ""
    match = _ENCOUNTERED.search(text)
    if match:
        subject = match.group(1)
        text = text[: match.start()] + text[match.end() :]
    match = _INVALID_EXTENSION.search(text)
    if match:
        name = _EXTENSION_NAMES.get(match.group(1), match.group(1))
        problem = match.group(2)
        template = _EXTENSION_PROBLEMS.get(problem)
        text = template.format(name) if template else f"{name}: {problem}"
    for words, meaning in _ALGORITHMS.items():
        if text.startswith(words):
            text = meaning
    return f"{subject}: {text}" if subject else text


def _has(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> bool:
    try:
        cert.extensions.get_extension_for_class(kind)
    except Exception:  # noqa: BLE001 - absent or malformed
        return False
    return True


def _walk(served: Sequence[x509.Certificate], trust: TrustStore) -> tuple[bool, Reason | None, str]:
    """Follow issuers from the leaf through the served certificates.  Returns
    (complete, structural reason or None, message)."""
    current = served[0]
    # Reading a Name builds Python objects each time: each is read once here.
    remaining = [(cert, cert.subject) for cert in served[1:]]
    current_subject = current.subject
    for _ in range(len(served) + 1):
        if trust.contains(current):
            return True, None, ""
        current_issuer = current.issuer
        if current_issuer == current_subject:
            if current is served[0]:
                return True, Reason.SELF_SIGNED, f"the leaf ({_cn(current)}) is self-signed and not trusted"
            return True, Reason.UNTRUSTED_ROOT, f"the chain ends in {_cn(current)}, a root that is not trusted"
        if trust.has_subject(current_issuer):
            return True, None, ""
        found = next((entry for entry in remaining if entry[1] == current_issuer), None)
        if found is None:
            return (
                False,
                Reason.INCOMPLETE_CHAIN,
                f"the issuer of {_cn(current)} ({current_issuer.rfc4514_string()}) is neither served nor trusted",
            )
        remaining.remove(found)
        current, current_subject = found
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


def _as_kept(verdict: Verdict, served: Sequence[x509.Certificate], ders: list[bytes]) -> Verdict:
    """``verdict`` with each served certificate of its path loaded again from its DER.
    A certificate that has been read keeps what reading it built in Python (its
    extensions, their values, its names: about 30 objects a chain, each tracked by the
    garbage collector and walked by every full collection); a memo keeps its verdicts
    for as long as a chain is served.  Trust anchors are the trust store's own objects,
    shared by every verdict.  What revocation checks read of the path (issuers, AIA) is
    cached on these certificates again, for the probes that check it."""
    if not verdict.verified_path:
        return verdict
    position = {id(cert): index for index, cert in enumerate(served)}
    path = tuple(
        x509.load_der_x509_certificate(ders[position[id(cert)]]) if id(cert) in position else cert
        for cert in verdict.verified_path
    )
    return replace(verdict, verified_path=path)


def _cn(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string() or "(empty subject)"
    except Exception:  # noqa: BLE001
        return "(unreadable subject)"


class ChainMemo:
    """The same served chain gets the same facts and verdict, without the work.

    Reading a certificate's fields and validating a path cost more CPU than the
    handshake itself, and while they run they hold the GIL every other handshake
    needs.  Facts are kept per certificate (by DER); a verdict per (chain, name)
    until the next notBefore/notAfter of a certificate involved, or MEMO_MAX_AGE.
    A chain's observations are kept too, so that a chain seen before gives each run
    the very same objects: a later round then leaves no new ones behind for the
    garbage collector to walk until the next round replaces them (a full collection
    comes when the objects that survived since the last reach a quarter of those
    held).  All are bounded by ``capacity``, sized from the number of targets: rounds
    visit the targets in the same order, so a memo smaller than their certificates
    would be emptied before any entry is reused (measured: 0 % hits at 5,000 targets
    with a fixed 4,096).  A full memo is simply cleared."""

    def __init__(self, trust: TrustStore, capacity: int = MEMO_SIZE, profile: str = WEBPKI) -> None:
        self.trust = trust
        self.capacity = capacity
        self.profile = profile
        self._facts: dict[bytes, CertFacts] = {}
        self._observations: dict[tuple[bytes, ...], tuple[CertObservation, ...]] = {}
        self._verdicts: dict[tuple[tuple[bytes, ...], str], tuple[float, Verdict]] = {}
        self._lock = threading.Lock()

    def observe(self, ders: list[bytes], served: Sequence[x509.Certificate]) -> tuple[CertObservation, ...]:
        """``served`` is read only for a certificate not seen before (a
        ``tls_client.PeerChain`` loads the chain then)."""
        key = tuple(ders)
        known = self._observations.get(key)
        if known is not None:
            return known
        observations = []
        for index, der in enumerate(ders):
            facts = self._facts.get(der)
            if facts is None:
                facts = facts_from_certificate(served[index], der)
                with self._lock:
                    if len(self._facts) >= self.capacity:
                        self._facts.clear()
                    self._facts[der] = facts
            observations.append(CertObservation(index, "leaf" if index == 0 else role_in_bundle(facts), facts))
        kept = tuple(observations)
        with self._lock:
            if len(self._observations) >= self.capacity:
                self._observations.clear()
            self._observations[key] = kept
        return kept

    def verdict(self, ders: list[bytes], served: Sequence[x509.Certificate], name: str) -> Verdict:
        key = (tuple(ders), name)
        now = time.time()
        cached = self._verdicts.get(key)
        if cached is not None and now < cached[0]:
            return cached[1]
        verdict = verify_served_chain(served, self.trust, name, datetime.now(UTC), profile=self.profile)
        boundaries = [
            moment.timestamp()
            for cert in (*served, *verdict.verified_path)
            for moment in (cert.not_valid_before_utc, cert.not_valid_after_utc)
        ]
        expires = min([now + MEMO_MAX_AGE, *(b for b in boundaries if b > now)])
        verdict = _as_kept(verdict, served, ders)
        with self._lock:
            if len(self._verdicts) >= self.capacity:
                self._verdicts.clear()
            self._verdicts[key] = (expires, verdict)
        return verdict
