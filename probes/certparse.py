"""Certificate containers -> ``CertFacts``, one bad block never hiding the others.

``parse_container(data, name)`` understands PEM (bundles, several blocks, text
around them, ``TRUSTED CERTIFICATE`` and ``PKCS7`` blocks), DER certificates, DER
PKCS#7 and PKCS#12.  It returns every certificate it could read plus one
``SourceError`` per problem, each naming the item (``file.pem[2]``).

Private keys: PEM blocks whose type names a key are skipped by their header alone,
so their base64 body is never decoded.  PKCS#12 forces ``cryptography`` to decrypt
the key together with the certificates; the key object is dropped at once.

Field access on a loaded certificate can still raise (bad extensions, unknown
algorithms), so every field is read on its own: a certificate whose SAN extension is
broken still reports its expiry, with the problem listed in ``CertFacts.problems``.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import utils as crypto_utils
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from probes.base import CertFacts, CertObservation, Reason, SourceError

# Real trust stores hold certificates with non-positive serials; cryptography warns on
# each load, which would flood the log of every scan.
warnings.filterwarnings("ignore", category=crypto_utils.CryptographyDeprecationWarning)

_BEGIN = b"-----BEGIN "
_DASHES = b"-----"
_BLOCK_TYPE = re.compile(rb"[A-Z0-9 #]{1,64}")
_CERT_BLOCKS = {b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"}
_PKCS7_BLOCKS = {b"PKCS7", b"PKCS #7 SIGNED DATA", b"CMS"}


@dataclass(frozen=True, slots=True)
class Parsed:
    certificates: tuple[CertFacts, ...]
    errors: tuple[SourceError, ...]
    # What the container held besides certificates, for "no certificate" messages.
    other_blocks: tuple[str, ...] = ()


PasswordSource = Callable[[], bytes | None]


def _no_password() -> bytes | None:
    return None


def parse_container(data: bytes, name: str, *, pkcs12_password: PasswordSource = _no_password) -> Parsed:
    """Every certificate in ``data``; ``name`` is only used in error messages.
    ``pkcs12_password`` is called only when the data is PKCS#12."""
    if not data.strip():
        return Parsed((), (SourceError(Reason.EMPTY_FILE, name, f"{name}: file is empty"),))
    if b"-----BEGIN " in data:
        return _parse_pem(data, name)
    return _parse_binary(data, name, pkcs12_password)


def _parse_pem(data: bytes, name: str) -> Parsed:
    certs: list[CertFacts] = []
    errors: list[SourceError] = []
    other: list[str] = []
    blocks, truncated = _pem_blocks(data)
    for block_number, (block_type, body) in enumerate(blocks):
        item = f"{name}[{block_number}]"
        if block_type not in _CERT_BLOCKS and block_type not in _PKCS7_BLOCKS:
            # Keys, CSRs, CRLs, parameters: skipped by type, body never decoded.
            other.append(block_type.decode("ascii"))
            continue
        try:
            der = binascii.a2b_base64(b"".join(body.split()), strict_mode=True)
        except binascii.Error:
            errors.append(SourceError(Reason.PARSE_ERROR, item, f"{item}: bad base64 in PEM block"))
            continue
        if block_type in _PKCS7_BLOCKS:
            _load_pkcs7(der, item, certs, errors)
            continue
        if block_type == b"TRUSTED CERTIFICATE":
            der = _first_der_element(der)
        try:
            certs.append(facts_from_der(der))
        except Exception as exc:  # noqa: BLE001 - any loader failure is a parse error
            errors.append(SourceError(Reason.PARSE_ERROR, item, f"{item}: not a valid certificate ({_short(exc)})"))
    if truncated:
        errors.append(
            SourceError(Reason.PARSE_ERROR, name, f"{name}: {truncated} PEM block(s) truncated (BEGIN without END)")
        )
    if not certs and not errors:
        kinds = ", ".join(sorted(set(other))) or "nothing"
        errors.append(SourceError(Reason.NO_CERTIFICATE, name, f"{name}: no certificate (found {kinds})"))
    return Parsed(tuple(certs), tuple(errors), tuple(other))


def _pem_blocks(data: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """(type, body) of every complete PEM block, and how many BEGIN lines have no
    matching END.  Plain ``bytes.find``: three times faster than a regex here."""
    blocks: list[tuple[bytes, bytes]] = []
    truncated = 0
    position = 0
    while (start := data.find(_BEGIN, position)) >= 0:
        type_end = data.find(_DASHES, start + len(_BEGIN))
        block_type = data[start + len(_BEGIN) : type_end] if type_end >= 0 else b""
        if not _BLOCK_TYPE.fullmatch(block_type):
            truncated += 1  # a BEGIN line that never closes
            position = start + len(_BEGIN)
            continue
        end_marker = b"-----END " + block_type + _DASHES
        body_start = type_end + len(_DASHES)
        end = data.find(end_marker, body_start)
        next_begin = data.find(_BEGIN, body_start)
        if end < 0 or 0 <= next_begin < end:
            truncated += 1
            position = body_start
            continue
        blocks.append((block_type, data[body_start:end]))
        position = end + len(end_marker)
    return blocks, truncated


def _parse_binary(data: bytes, name: str, pkcs12_password: PasswordSource) -> Parsed:
    if _looks_like_pkcs12(data):
        return _load_pkcs12(data, name, pkcs12_password())
    try:
        return Parsed((facts_from_der(data),), ())
    except Exception:  # noqa: BLE001 - not a DER certificate; try the next format
        pass
    certs: list[CertFacts] = []
    errors: list[SourceError] = []
    if _load_pkcs7(data, name, certs, errors, quiet=True):
        return Parsed(tuple(certs), tuple(errors))
    return Parsed((), (SourceError(Reason.PARSE_ERROR, name, f"{name}: neither PEM, DER, PKCS#7 nor PKCS#12"),))


def _load_pkcs7(
    der: bytes, item: str, certs: list[CertFacts], errors: list[SourceError], *, quiet: bool = False
) -> bool:
    try:
        loaded = pkcs7.load_der_pkcs7_certificates(der)
    except Exception as exc:  # noqa: BLE001
        if not quiet:
            errors.append(SourceError(Reason.PARSE_ERROR, item, f"{item}: not a valid PKCS#7 bundle ({_short(exc)})"))
        return False
    certs.extend(facts_from_certificate(c) for c in loaded)
    if not loaded:
        errors.append(SourceError(Reason.NO_CERTIFICATE, item, f"{item}: PKCS#7 bundle holds no certificate"))
    return True


def _load_pkcs12(data: bytes, name: str, password: bytes | None) -> Parsed:
    try:
        bundle = pkcs12.load_pkcs12(data, password)
    except ValueError:
        # cryptography says "Invalid password or PKCS12 data"; the structure looked
        # like a PFX (see _looks_like_pkcs12), so the password is the likely cause.
        hint = "no password configured" if password is None else "wrong password"
        return Parsed((), (SourceError(Reason.BAD_PASSWORD, name, f"{name}: cannot open PKCS#12 ({hint})"),))
    except Exception as exc:  # noqa: BLE001
        return Parsed((), (SourceError(Reason.PARSE_ERROR, name, f"{name}: bad PKCS#12 ({_short(exc)})"),))
    found = [bundle.cert.certificate] if bundle.cert is not None else []
    found.extend(c.certificate for c in bundle.additional_certs)
    del bundle  # holds the decrypted private key; drop it before anything else
    if not found:
        return Parsed((), (SourceError(Reason.NO_CERTIFICATE, name, f"{name}: PKCS#12 holds no certificate"),))
    return Parsed(tuple(facts_from_certificate(c) for c in found), ())


def _looks_like_pkcs12(data: bytes) -> bool:
    """PFX ::= SEQUENCE { version INTEGER (3), ... } (RFC 7292)."""
    if len(data) < 8 or data[0] != 0x30:
        return False
    length_octet = data[1]
    offset = 2 if length_octet < 0x80 else 2 + (length_octet & 0x7F)
    return data[offset : offset + 3] == b"\x02\x01\x03"


def _first_der_element(der: bytes) -> bytes:
    """OpenSSL's TRUSTED CERTIFICATE is a certificate followed by trust settings."""
    if len(der) < 2 or der[0] != 0x30:
        return der
    length_octet = der[1]
    if length_octet < 0x80:
        return der[: 2 + length_octet]
    count = length_octet & 0x7F
    length = int.from_bytes(der[2 : 2 + count], "big")
    return der[: 2 + count + length]


# Facts of every certificate in use, by SHA-256 of its DER: the intermediate and root
# repeated in thousands of Secrets or files are parsed once and kept once.  Weak
# values: an entry goes when the last observation holding it does.
_known: weakref.WeakValueDictionary[str, CertFacts] = weakref.WeakValueDictionary()


def facts_from_der(der: bytes) -> CertFacts:
    """``facts_from_certificate`` of a DER certificate, shared with every other
    holder of the same bytes.  Raises what ``load_der_x509_certificate`` raises."""
    fingerprint = hashlib.sha256(der).hexdigest()
    known = _known.get(fingerprint)
    if known is not None:
        return known
    facts = facts_from_certificate(x509.load_der_x509_certificate(der))
    _known[fingerprint] = facts
    return facts


def facts_from_certificate(cert: x509.Certificate) -> CertFacts:
    """Read each field on its own; a field that raises becomes a listed problem."""
    problems: list[str] = []

    def attempt(what: str, read, default):  # type: ignore[no-untyped-def]
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - cryptography raises many types here
            problems.append(f"{what}: {_short(exc)}")
            return default

    subject = attempt("subject", lambda: cert.subject.rfc4514_string(), "")
    issuer = attempt("issuer", lambda: cert.issuer.rfc4514_string(), "")
    key_type, key_bits, spki_sha256 = attempt("public key", lambda: _public_key_facts(cert), ("unknown", 0, ""))
    return CertFacts(
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_before=attempt("notBefore", lambda: cert.not_valid_before_utc.timestamp(), 0.0),
        not_after=attempt("notAfter", lambda: cert.not_valid_after_utc.timestamp(), 0.0),
        subject=subject,
        subject_cn=attempt("subject CN", lambda: _common_name(cert.subject), ""),
        issuer=issuer,
        issuer_cn=attempt("issuer CN", lambda: _common_name(cert.issuer), ""),
        serial=attempt("serial", lambda: format(cert.serial_number, "x"), ""),
        sans=attempt("subjectAltName", lambda: _subject_alt_names(cert), ()),
        key_type=key_type,
        key_bits=key_bits,
        spki_sha256=spki_sha256,
        signature_algorithm=attempt("signature algorithm", lambda: _signature_algorithm(cert), "unknown"),
        is_ca=attempt("basicConstraints", lambda: _is_ca(cert), False),
        # The RFC 4514 strings are already at hand; comparing them is 50x cheaper.
        self_issued=bool(subject) and subject == issuer,
        extended_key_usage=attempt("extendedKeyUsage", lambda: _extended_key_usage(cert), ()),
        problems=tuple(problems),
    )


def role_in_bundle(facts: CertFacts) -> str:
    """A certificate's role judged on its own (files, Secrets): no chain is known."""
    if facts.is_ca:
        return "root" if facts.self_issued else "intermediate"
    return "leaf"


def _common_name(name: x509.Name) -> str:
    attributes = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return ""
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _subject_alt_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        extension = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return ()
    san = extension.value
    assert isinstance(san, x509.SubjectAlternativeName)
    # One pass: DNS, IP, URI and e-mail names, in the certificate's order.
    return tuple(
        str(general.value)
        for general in san
        if isinstance(general, (x509.DNSName, x509.IPAddress, x509.UniformResourceIdentifier, x509.RFC822Name))
    )


_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}


def _extended_key_usage(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        usage = cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
    except x509.ExtensionNotFound:
        return ()
    assert isinstance(usage, x509.ExtendedKeyUsage)
    return tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in usage)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        return False
    assert isinstance(constraints, x509.BasicConstraints)
    return constraints.ca


def _public_key_facts(cert: x509.Certificate) -> tuple[str, int, str]:
    """Key type, size, and the SHA-256 of the SubjectPublicKeyInfo (for key reuse)."""
    key = cert.public_key()
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return (*_key_type_and_bits(key), hashlib.sha256(spki).hexdigest())


def _key_type_and_bits(key: object) -> tuple[str, int]:
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec", key.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "dsa", key.key_size
    return "unknown", 0


def _signature_algorithm(cert: x509.Certificate) -> str:
    oid = cert.signature_algorithm_oid
    name = getattr(oid, "_name", None)
    return name if isinstance(name, str) and name != "Unknown OID" else oid.dotted_string


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def bundle_observations(
    certificates: tuple[CertFacts, ...], name: str
) -> tuple[tuple[CertObservation, ...], tuple[SourceError, ...]]:
    """Number the certificates of one container by position.  A repeated
    certificate is reported and skipped, so it never makes a duplicate series; a
    certificate with unreadable fields is reported and still exported."""
    seen: set[str] = set()
    observations: list[CertObservation] = []
    errors: list[SourceError] = []
    for index, facts in enumerate(certificates):
        if facts.fingerprint_sha256 in seen:
            item = f"{name}[{index}]"
            errors.append(
                SourceError(
                    Reason.DUPLICATE_CERTIFICATE,
                    item,
                    f"{item}: same certificate as an earlier block (sha256 {facts.fingerprint_sha256[:16]}...)",
                )
            )
            continue
        seen.add(facts.fingerprint_sha256)
        if facts.problems:
            item = f"{name}[{index}]"
            errors.append(
                SourceError(
                    Reason.MALFORMED_CERTIFICATE, item, f"{item}: unreadable fields: {'; '.join(facts.problems)}"
                )
            )
        observations.append(CertObservation(index, role_in_bundle(facts), facts))
    return tuple(observations), tuple(errors)
