"""Verification profiles: the rules a served chain must meet, beyond a path of good
signatures from the leaf to a trust anchor.

Two profiles, chosen per probe (``verify: {profile: ...}``):

``webpki``
    The public web as browsers judge it: the CA/Browser Forum Baseline Requirements
    (BR).  cryptography's web-PKI policy, plus the BR rules it leaves out: the shape
    of a CA's authorityKeyIdentifier (keyIdentifier only; a root's equal to its own
    subjectKeyIdentifier), extendedKeyUsage (required in the leaf, serverAuth and
    never anyExtendedKeyUsage; absent from roots), a subject CN that is a
    character-for-character copy of a SAN, no wildcard directly under a public suffix
    (``*.co.uk``, ``*.s3.amazonaws.com``), a positive serial number, and subscriber
    keys of the allowed kinds only (RSA of >= 2048 bits and a multiple of 8, ECDSA
    P-256/P-384/P-521).  The default for the system trust store.

``rfc5280``
    RFC 5280 path validation as OpenSSL (and so Python's ``ssl``) applies it for a TLS
    server (``openssl verify -purpose sslserver``): no authority/subject key
    identifier required, a CA's keyUsage only checked when present (keyCertSign), the
    leaf's keyUsage and extendedKeyUsage only checked when present (a usage a TLS
    server needs, serverAuth), critical extensions OpenSSL understands accepted.  The
    default for private trust stores (``trust.system: false``).

Both apply the key and signature policy of OpenSSL's default security level (2, on
every current Debian and Ubuntu): a key of fewer than 112 bits of security on any
certificate of the path, trust anchor included (RSA and DSA below 2048 bits, curves
below 224 bits), is ``weak_key``; an MD5 or SHA-1 signature on any certificate whose
signature is checked (every one but a self-signed trust anchor) is
``weak_signature``.  And both refuse a trust anchor that does not identify itself
the way OpenSSL requires (see ``anchor_problem``).

Path building, signatures, validity, basicConstraints, pathLenConstraint and name
constraints are cryptography's (``cryptography.x509.verification``); this module
supplies its extension policies and the checks on the path it returns.  Every
check returns a ``Problem`` naming the certificate and the rule, or None.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy

from probes import der
from probes.reasons import Reason

WEBPKI = "webpki"
RFC5280 = "rfc5280"
PROFILES = (WEBPKI, RFC5280)

# OpenSSL's security level 2: 112 bits for keys and signatures.
MIN_SECURITY_BITS = 112
ANY_EKU = x509.ObjectIdentifier("2.5.29.37.0")
# OpenSSL counts Server Gated Crypto as a TLS-server usage (XKU_SGC).
_SERVER_USAGES = frozenset(
    {
        ExtendedKeyUsageOID.SERVER_AUTH,
        x509.ObjectIdentifier("1.3.6.1.4.1.311.10.3.3"),  # Microsoft SGC
        x509.ObjectIdentifier("2.16.840.1.113730.4.1"),  # Netscape SGC
    }
)
# Signature algorithms named by OID whose hash cryptography cannot even load.
_BROKEN_SIGNATURE_OIDS = {
    "1.2.840.113549.1.1.2": "MD2",
    "1.2.840.113549.1.1.3": "MD4",
    "1.2.840.113549.1.1.4": "MD5",
    "1.2.840.113549.1.1.5": "SHA-1",
    "1.3.14.3.2.29": "SHA-1",
    "1.2.840.10040.4.3": "SHA-1",
    "1.2.840.10045.4.1": "SHA-1",
}
_WEAK_HASHES = {"md5": "MD5", "sha1": "SHA-1"}
_WEBPKI_CURVES = ("secp256r1", "secp384r1", "secp521r1")


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a chain is refused: the reason and a message naming certificate and rule."""

    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class Description:
    """'the leaf (CN=...)', 'intermediate 2 (CN=...)' or 'the trust anchor (CN=...)',
    spelled out only when a message is written: reading a subject as text costs
    more than all the checks of a certificate that passes them."""

    cert: x509.Certificate
    position: int
    last: int

    def __str__(self) -> str:
        try:
            subject = self.cert.subject.rfc4514_string() or "empty subject"
        except ValueError:
            subject = "unreadable subject"
        if self.position == 0:
            return f"the leaf ({subject})"
        if self.position == self.last:
            return f"the trust anchor ({subject})"
        return f"intermediate {self.position} ({subject})"


def describe(cert: x509.Certificate, position: int, last: int) -> Description:
    return Description(cert, position, last)


# -- keys and signatures (both profiles) ---------------------------------------------


def key_security_bits(key: Any) -> tuple[str, int]:
    """(a name like 'RSA-1024', bits of security) as OpenSSL 3 estimates them."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}", _ifc_ffc_security_bits(key.key_size)
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA-{key.key_size}", _bn_security_bits(
            key.key_size, key.parameters().parameter_numbers().q.bit_length()
        )
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}", key.curve.key_size // 2
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 128
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 224
    return type(key).__name__, 0


def _ifc_ffc_security_bits(n: int) -> int:
    """OpenSSL 3's ``ossl_ifc_ffc_compute_security_bits``, in its own fixed-point
    arithmetic: NIST SP 800-56B's strength estimate for an RSA (or DSA/DH) modulus
    of ``n`` bits, rounded to a multiple of 8.  Exact, so that a modulus near a
    threshold (1961 bits: 104, 1963: 112) is judged here as OpenSSL judges it."""
    canonical = {2048: 112, 3072: 128, 4096: 152, 6144: 176, 7680: 192, 8192: 200, 15360: 256}
    if n in canonical:
        return canonical[n]
    if n >= 687737:
        return 1200
    if n < 8:
        return 0
    cap = 192 if n <= 7680 else 256 if n <= 15360 else 1200
    x = n * _LOG_2
    lx = _ilog_e(x)
    y = ((_mul2(_C1_923, _icbrt64(_mul2(_mul2(x, lx), lx))) - _C4_690) // _LOG_2) & 0xFFFF
    return min((y + 4) & ~7, cap)


def _bn_security_bits(p_bits: int, q_bits: int) -> int:
    """OpenSSL's ``BN_security_bits`` for DSA: a step function of the modulus,
    capped by half the subgroup order."""
    steps = ((15360, 256), (7680, 192), (3072, 128), (2048, 112), (1024, 80))
    bits = next((b for threshold, b in steps if p_bits >= threshold), 0)
    if bits == 0 or q_bits // 2 < 80:
        return 0
    return min(bits, q_bits // 2)


# OpenSSL's fixed-point constants (crypto/rsa/rsa_lib.c), scaled by 2**18.
_SCALE = 1 << 18
_CBRT_SCALE = 1 << 12
_LOG_2 = 0x02C5C8  # scale * ln(2)
_LOG_E = 0x05C551  # scale * log2(e)
_C1_923 = 0x07B126  # scale * 1.923
_C4_690 = 0x12C28F  # scale * 4.690
_U64 = (1 << 64) - 1


def _mul2(a: int, b: int) -> int:
    return ((a * b) & _U64) // _SCALE


def _icbrt64(x: int) -> int:
    root = 0
    for shift in range(63, -1, -3):
        root <<= 1
        b = 3 * root * (root + 1) + 1
        if (x >> shift) >= b:
            x -= b << shift
            root += 1
    return root * _CBRT_SCALE


def _ilog_e(v: int) -> int:
    result = 0
    while v >= 2 * _SCALE:
        v >>= 1
        result += _SCALE
    step = _SCALE // 2
    while step:
        v = _mul2(v, v)
        if v >= 2 * _SCALE:
            v >>= 1
            result += step
        step //= 2
    return (result * _SCALE) // _LOG_E


def key_problem(cert: x509.Certificate, what: Description, profile: str, is_leaf: bool) -> Problem | None:
    try:
        key = cert.public_key()
    except Exception:  # noqa: BLE001 - an unloadable key: the path validation says why
        return None
    name, bits = key_security_bits(key)
    if bits < MIN_SECURITY_BITS:
        return Problem(
            Reason.WEAK_KEY,
            f"{what} has an {name} key ({bits} bits of security); OpenSSL's security level 2 "
            f"(the Debian/Ubuntu default) refuses keys under {MIN_SECURITY_BITS} bits",
        )
    if profile != WEBPKI:
        return None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size % 8:
        return Problem(Reason.WEAK_KEY, f"{what} has an {name} key; CA/B BR 6.1.5 requires a modulus divisible by 8")
    if is_leaf:
        allowed = isinstance(key, rsa.RSAPublicKey) or (
            isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _WEBPKI_CURVES
        )
        if not allowed:
            return Problem(
                Reason.WEAK_KEY,
                f"{what} has an {name} key; CA/B BR 6.1.5 allows only RSA and ECDSA P-256/P-384/P-521",
            )
    return None


def weak_signature_hash(cert: x509.Certificate) -> str | None:
    """'SHA-1', 'MD5', ... when the certificate's signature uses a broken hash."""
    named = _BROKEN_SIGNATURE_OIDS.get(cert.signature_algorithm_oid.dotted_string)
    if named:
        return named
    try:
        algorithm = cert.signature_hash_algorithm
    except Exception:  # noqa: BLE001 - an algorithm cryptography cannot name is not ours to judge
        return None
    return _WEAK_HASHES.get(algorithm.name) if algorithm is not None else None


def signature_problem(cert: x509.Certificate, what: Description) -> Problem | None:
    weak = weak_signature_hash(cert)
    if weak is None:
        return None
    return Problem(
        Reason.WEAK_SIGNATURE,
        f"{what} is signed with {weak} ({cert.signature_algorithm_oid._name}); OpenSSL's security level 2 "
        "refuses MD5 and SHA-1 signatures",
    )


def is_self_signed(cert: x509.Certificate) -> bool:
    """OpenSSL's notion (EXFLAG_SS): subject equals issuer, an authorityKeyIdentifier
    (if any) identifies the certificate itself, and a keyUsage (if any) allows
    certificate signing.  Only a self-signed trust anchor's own signature goes
    unchecked, and only a self-signed anchor needs no issuer."""
    return cert.subject == cert.issuer and aki_mismatch(cert, cert) is None and _ku_allows_cert_sign(cert)


def aki_mismatch(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """Why ``cert``'s authorityKeyIdentifier does not identify ``issuer`` (OpenSSL's
    X509_check_akid), or None."""
    aki = der.authority_key_identifier(cert)
    if aki is None:
        return None
    if aki.key_identifier is not None:
        ski = _extension(issuer, x509.SubjectKeyIdentifier)
        if ski is not None and ski.digest != aki.key_identifier:
            return "its authorityKeyIdentifier keyIdentifier differs from the issuer's subjectKeyIdentifier"
    if aki.serial_number is not None and aki.serial_number != issuer.serial_number:
        return f"its authorityKeyIdentifier names serial number {aki.serial_number:#x}, not the issuer's"
    if aki.directory_names and issuer.issuer.public_bytes() not in aki.directory_names:
        return "its authorityKeyIdentifier names another issuer (authorityCertIssuer)"
    return None


def _ku_allows_cert_sign(cert: x509.Certificate) -> bool:
    usage = _extension(cert, x509.KeyUsage)
    return usage is None or usage.key_cert_sign


def anchor_problem(anchor: x509.Certificate, what: Description) -> Problem | None:
    """A trust anchor must be self-signed, or, if it is a CA certificate issued by
    another (an intermediate or cross-signed root placed in the trust store), carry
    the authorityKeyIdentifier RFC 5280 4.2.1.1 requires of every certificate that is
    not self-signed.  OpenSSL (without -partial_chain) refuses both kinds; Go and
    browsers accept the second; x509-limbo expects the first refused and the second
    accepted when it carries an AKI."""
    if anchor.subject == anchor.issuer:
        mismatch = aki_mismatch(anchor, anchor)
        if mismatch is not None:
            return Problem(
                Reason.CHAIN_INVALID,
                f"{what} has the same subject and issuer but does not identify itself: {mismatch}; "
                "it is not a self-signed root, and its issuer is not trusted",
            )
        return None
    if der.authority_key_identifier(anchor) is None:
        return Problem(
            Reason.CHAIN_INVALID,
            f"{what} is issued by {anchor.issuer.rfc4514_string()} and has no authorityKeyIdentifier "
            "(RFC 5280 4.2.1.1 requires one on every certificate that is not self-signed); "
            "trust its root instead",
        )
    return None


# -- CA/Browser Forum rules on the leaf (webpki) -------------------------------------


def webpki_leaf_problem(leaf: x509.Certificate) -> Problem | None:
    what = describe(leaf, 0, 1)
    if leaf.serial_number <= 0:
        return Problem(
            Reason.CHAIN_INVALID, f"{what} has serial number {leaf.serial_number}; CA/B BR 7.1 requires a positive one"
        )
    san = _extension(leaf, x509.SubjectAlternativeName)
    dns_names = san.get_values_for_type(x509.DNSName) if san is not None else []
    addresses = [str(a) for a in san.get_values_for_type(x509.IPAddress)] if san is not None else []
    for attribute in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value if isinstance(attribute.value, str) else attribute.value.decode("latin-1")
        if _looks_like_ip(value):
            # An address must be the canonical text of an IP SAN (RFC 5952 for
            # IPv6): not 0xC0A80101, 192.168.001.001 or upper-case hex.
            copies, kind = addresses, "IP address"
        else:
            # A wildcard's base domain is accepted too (CN example.com beside
            # *.example.com), as x509-limbo's web-PKI cases expect.
            copies, kind = [*dns_names, *(n[2:] for n in dns_names if n.startswith("*."))], "DNS name"
        if copies and value not in copies:
            return Problem(
                Reason.CHAIN_INVALID,
                f"{what} has subject CN {value!r}, which is not a character-for-character copy of one of its "
                f"{kind} SANs (CA/B BR 7.1.4.3)",
            )
    return None


def _looks_like_ip(text: str) -> bool:
    """An address in any notation a resolver accepts (inet_aton's hex, octal and
    short forms included), so that a CN naming an address in a non-canonical form
    is compared with the IP SANs, not the DNS ones."""
    if not text[:1].isdigit() and ":" not in text:
        return False  # every such notation starts with a digit, or is IPv6
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(text)
    except (OSError, ValueError):  # ValueError: a NUL in the text (a null-prefix CN)
        return False
    return True


def public_suffix_wildcard(leaf: x509.Certificate, name: str) -> str | None:
    """The wildcard SAN ``name`` depends on when the wildcard stands directly on a
    public suffix (``*.co.uk``, ``*.s3.amazonaws.com``): such a SAN covers nothing
    (CA/B BR 3.2.2.6, as browsers match names).  None when ``name`` is covered
    without one.  Suffixes come from the Public Suffix List, ICANN and private
    sections; a TLD the list does not know (``.internal``, ``.corp``) is not one."""
    san = _extension(leaf, x509.SubjectAlternativeName)
    if san is None:
        return None
    wanted = name.rstrip(".").lower()
    offending = None
    for pattern in san.get_values_for_type(x509.DNSName):
        labels = pattern.rstrip(".").lower().split(".")
        if labels == wanted.split("."):
            return None  # an exact SAN covers it
        base = ".".join(labels[1:])
        if labels[0] == "*" and wanted.partition(".")[2] == base:
            if not _public_suffixes().is_public(base):
                return None
            offending = pattern
    return offending


@functools.cache
def _public_suffixes() -> Any:
    # The list ships inside the package (dated in its version); loading it takes a
    # few milliseconds, so it is done once, on the first wildcard seen.
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(accept_unknown=False)


# -- extension policies for cryptography's path validation ---------------------------


def _extension(cert: x509.Certificate, kind: type[Any]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except Exception:  # noqa: BLE001 - malformed extensions: the path validation says so
        return None


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Does ``issuer``'s key verify ``cert``'s signature?  Also for the MD5 and
    SHA-1 signatures cryptography's own check refuses to look at, so that such a
    signature is reported as weak, and a wrong one as wrong."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except InvalidSignature:
        return False
    except Exception:  # noqa: BLE001 - "Unsupported signature algorithm": check by hand below
        pass
    try:
        key = issuer.public_key()
        algorithm = cert.signature_hash_algorithm
        if algorithm is None:
            return False
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, dsa.DSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, algorithm)
        else:
            return False
    except Exception:  # noqa: BLE001 - InvalidSignature, or an algorithm nobody here can check
        return False
    return True


@functools.lru_cache(maxsize=256)
def _signs_itself(cert: x509.Certificate) -> bool:
    """A root: its own key verifies its signature (a self-issued certificate of a
    key rollover has the same name but another key's signature).  A stand-in for a
    trust anchor (see ``stand_in``) is judged as the anchor it stands for."""
    cert = _STAND_INS.get(cert, cert)
    return cert.subject == cert.issuer and signed_by(cert, cert)


# Stand-in trust anchor -> the anchor it replaces.  Bounded: one per anchor with
# directoryName constraints, which are rare.
_STAND_INS: dict[x509.Certificate, x509.Certificate] = {}


def stand_in(anchor: x509.Certificate, replacement: x509.Certificate) -> x509.Certificate:
    """Record that ``replacement`` (the anchor re-expressed for cryptography, signed
    by a throwaway key) stands for ``anchor`` when the extension policies ask
    whether it is a root."""
    if len(_STAND_INS) > 1024:
        _STAND_INS.clear()
    _STAND_INS[replacement] = anchor
    return replacement


def _ca_basic_constraints(_policy: Any, cert: x509.Certificate, value: x509.BasicConstraints) -> None:
    if not value.ca:
        raise ValueError("it is used as a CA but basicConstraints does not assert cA")


def _ca_key_usage(_policy: Any, cert: x509.Certificate, value: x509.KeyUsage | None) -> None:
    if value is not None and not value.key_cert_sign:
        raise ValueError("it is used as a CA but its keyUsage does not allow keyCertSign")


def _ca_server_usage(_policy: Any, cert: x509.Certificate, value: x509.ExtendedKeyUsage | None) -> None:
    # OpenSSL's -purpose sslserver checks a CA's extendedKeyUsage too.
    if value is not None and not _SERVER_USAGES.intersection(value):
        raise ValueError("its extendedKeyUsage does not allow serverAuth, so it cannot vouch for a TLS server")


def _ee_server_usage(_policy: Any, cert: x509.Certificate, value: x509.ExtendedKeyUsage | None) -> None:
    if value is not None and not _SERVER_USAGES.intersection(value):
        usages = ", ".join(oid._name for oid in value) or "none"
        raise ValueError(f"its extendedKeyUsage ({usages}) does not include serverAuth")


def _ee_key_usage(_policy: Any, cert: x509.Certificate, value: x509.KeyUsage | None) -> None:
    # OpenSSL's ku_reject for a TLS server: one of these must be there if keyUsage is.
    if value is not None and not (value.digital_signature or value.key_encipherment or value.key_agreement):
        raise ValueError("its keyUsage allows none of digitalSignature, keyEncipherment, keyAgreement")


def _webpki_ca_aki(_policy: Any, cert: x509.Certificate, value: x509.AuthorityKeyIdentifier | None) -> None:
    # CA/B BR 7.1.2.11.1: a subordinate CA's names its issuer's key by keyIdentifier
    # only.  A root's (7.1.2.1.3) must name the root itself; older roots in every
    # trust store carry an issuer and serial there too, so only that is checked.
    if _signs_itself(cert):
        if value is None:
            return
        if value.key_identifier is None:
            raise ValueError("it is a root whose authorityKeyIdentifier has no keyIdentifier (CA/B BR 7.1.2.1.3)")
        ski = _extension(cert, x509.SubjectKeyIdentifier)
        if ski is not None and value.key_identifier != ski.digest:
            raise ValueError("it is a root whose authorityKeyIdentifier differs from its subjectKeyIdentifier")
        return
    if value is None:
        raise ValueError("it is a subordinate CA without authorityKeyIdentifier (CA/B BR 7.1.2.10.5)")
    if value.key_identifier is None:
        raise ValueError("its authorityKeyIdentifier has no keyIdentifier (CA/B BR 7.1.2.11.1)")
    if value.authority_cert_issuer is not None:
        raise ValueError("its authorityKeyIdentifier has an authorityCertIssuer (CA/B BR 7.1.2.11.1 forbids it)")
    if value.authority_cert_serial_number is not None:
        raise ValueError("its authorityKeyIdentifier has an authorityCertSerialNumber (CA/B BR 7.1.2.11.1 forbids it)")


def _webpki_ca_eku(_policy: Any, cert: x509.Certificate, value: x509.ExtendedKeyUsage | None) -> None:
    if value is None:
        return
    if _signs_itself(cert):
        raise ValueError("it is a root with an extendedKeyUsage (CA/B BR 7.1.2.1 forbids one)")
    if ExtendedKeyUsageOID.SERVER_AUTH not in value and ANY_EKU not in value:
        raise ValueError("its extendedKeyUsage does not allow serverAuth")


def _webpki_ee_eku(_policy: Any, cert: x509.Certificate, value: x509.ExtendedKeyUsage) -> None:
    if ANY_EKU in value:
        raise ValueError("its extendedKeyUsage contains anyExtendedKeyUsage (CA/B BR 7.1.2.7.10 forbids it)")
    if ExtendedKeyUsageOID.SERVER_AUTH not in value:
        raise ValueError("its extendedKeyUsage does not include serverAuth")


@functools.cache
def extension_policies(profile: str) -> tuple[ExtensionPolicy, ExtensionPolicy]:
    """(CA policy, end-entity policy) for cryptography's verifier."""
    agnostic, non_critical = Criticality.AGNOSTIC, Criticality.NON_CRITICAL
    if profile == WEBPKI:
        # keyUsage may be absent from a CA, as RFC 5280 6.1.4 (n) and browsers
        # allow (cryptography requires it; BR 7.1.2.10.7 is an issuance rule).
        ca = (
            ExtensionPolicy.webpki_defaults_ca()
            .may_be_present(x509.KeyUsage, agnostic, _ca_key_usage)
            .may_be_present(x509.AuthorityKeyIdentifier, non_critical, _webpki_ca_aki)
            .may_be_present(x509.ExtendedKeyUsage, non_critical, _webpki_ca_eku)
        )
        ee = ExtensionPolicy.webpki_defaults_ee().require_present(x509.ExtendedKeyUsage, non_critical, _webpki_ee_eku)
        return ca, ee
    # rfc5280: what OpenSSL checks for -purpose sslserver, and no more.  Key
    # identifiers and authorityInfoAccess are optional but, as RFC 5280 says and
    # OpenSSL enforces, never critical; the policy extensions OpenSSL understands
    # may be critical.
    common = (
        ExtensionPolicy.permit_all()
        .may_be_present(x509.AuthorityInformationAccess, non_critical, None)
        .may_be_present(x509.AuthorityKeyIdentifier, non_critical, None)
        .may_be_present(x509.SubjectKeyIdentifier, non_critical, None)
        .may_be_present(x509.CertificatePolicies, agnostic, None)
        .may_be_present(x509.PolicyConstraints, agnostic, None)
        .may_be_present(x509.InhibitAnyPolicy, agnostic, None)
    )
    ca = (
        common.require_present(x509.BasicConstraints, agnostic, _ca_basic_constraints)
        .may_be_present(x509.KeyUsage, agnostic, _ca_key_usage)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _ca_server_usage)
        .may_be_present(x509.NameConstraints, agnostic, None)
    )
    ee = (
        common.require_present(x509.SubjectAlternativeName, agnostic, None)
        .may_be_present(x509.KeyUsage, agnostic, _ee_key_usage)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _ee_server_usage)
        .may_be_present(x509.BasicConstraints, agnostic, None)
        .may_be_present(x509.NameConstraints, agnostic, None)
    )
    return ca, ee


# -- the audit of a built path -------------------------------------------------------


def audit(path: Sequence[x509.Certificate], profile: str) -> Problem | None:
    """The first problem of a path cryptography built (leaf first, anchor last), in
    the order a person fixes them: the trust anchor, signatures, keys, then the
    CA/B rules on the leaf."""
    last = len(path) - 1
    checks = [
        (_certificate_problems if position == 0 else _ca_problems)(cert, position, last, profile)
        for position, cert in enumerate(path)
    ]
    anchor, _, _ = checks[last]
    if anchor is not None:
        return anchor
    for _, signature, _ in checks:
        if signature is not None:
            return signature
    for _, _, key in checks:
        if key is not None:
            return key
    if profile == WEBPKI:
        return webpki_leaf_problem(path[0])
    return None


def _certificate_problems(
    cert: x509.Certificate, position: int, last: int, profile: str
) -> tuple[Problem | None, Problem | None, Problem | None]:
    """(anchor, signature, key) problems of the certificate at ``position``."""
    what = describe(cert, position, last)
    anchor = anchor_problem(cert, what) if position == last else None
    # Nobody checks a root's signature on itself.
    signature = None if position == last and is_self_signed(cert) else signature_problem(cert, what)
    return anchor, signature, key_problem(cert, what, profile, position == 0)


# The CAs of a fleet's paths are few and each is judged the same way in every path
# it ends at the same place in; only the leaf is new.  By value: certificates
# compare and hash by their DER.
_ca_problems = functools.lru_cache(maxsize=4096)(_certificate_problems)


def path_length_problem(path: Sequence[x509.Certificate], max_chain_depth: int) -> Problem | None:
    """RFC 5280 6.1.4 (l)-(m) over a whole path, self-issued intermediates not
    counted; and the depth limit counted the same way."""
    last = len(path) - 1
    intermediates = [c for c in path[1:last] if not _self_issued(c)]
    if len(intermediates) > max_chain_depth:
        return Problem(Reason.CHAIN_INVALID, f"the path has {len(intermediates)} intermediates, over {max_chain_depth}")
    remaining: int | None = None
    for position in range(last, 0, -1):  # from the anchor down to the leaf's issuer
        cert = path[position]
        if remaining is not None and position < last and not _self_issued(cert):
            if remaining <= 0:
                return Problem(
                    Reason.CHAIN_INVALID,
                    f"{describe(cert, position, last)} exceeds a pathLenConstraint above it",
                )
            remaining -= 1
        constraints = _extension(cert, x509.BasicConstraints)
        if constraints is not None and constraints.path_length is not None:
            remaining = constraints.path_length if remaining is None else min(remaining, constraints.path_length)
    return None
