"""Certificate containers -> ``CertFacts``, one bad block never hiding the others.

``parse_container(data, name)`` understands the container formats of
``CONTAINER_FORMATS``, the one registry of them: PEM (bundles, several blocks, text
around them), DER certificates, PKCS#7 and PKCS#12.  It returns every certificate it
could read plus one ``SourceError`` per problem, each naming the item
(``file.pem[2]``).

A format is one ``ContainerFormat`` entry: its name, how it is recognised, how it is
decoded, and the PEM block types that carry it.  Formats recognised from their bytes
(PEM: a ``-----BEGIN`` line; PKCS#12: a PFX's ``version 3``) are tried first, in the
registry's order; then those recognised only by decoding (a DER certificate, a DER
PKCS#7), whose ``decode`` says None for "not this format".  Inside PEM, a block is
read by the format that names its type (``CERTIFICATE``, ``TRUSTED CERTIFICATE``,
``PKCS7``...); any other block (keys, CSRs, CRLs) is skipped by its type.  Java
keystores and kubeconfig files are told apart before this parser, in
``probes/located.py``, because their certificates carry names.

Private keys: PEM blocks whose type names a key are skipped by their header alone,
so their base64 body is never decoded.  PKCS#12 forces ``cryptography`` to decrypt
the key together with the certificates; the key object is dropped at once.

Field access on a loaded certificate can still raise (bad extensions, unknown
algorithms), so every field is read on its own: a certificate whose SAN extension is
broken still reports its expiry, with the problem listed in ``CertFacts.problems``.

Speed (docs/performance.md): the fields are first read in one go, which is what
nearly every certificate allows; only if any read raises is the certificate read
again field by field, so the facts and the problems listed are those of the
field-by-field reading either way.  The one-go reading takes from the certificate's
DER what ``cryptography`` would otherwise rebuild: the SHA-256 fingerprint, the raw
issuer name (whose strings are kept once per issuer and shared by every certificate
it signed) and the raw SubjectPublicKeyInfo when it is already in the canonical
encoding that ``public_bytes`` would produce.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.hazmat.primitives.serialization import pkcs12 as pkcs12_library
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from probes import pkcs12
from probes.credentials import CredentialUnavailable
from probes.der import DerError
from probes.reasons import Reason
from probes.result import CertFacts, CertObservation, SourceError

_BEGIN = b"-----BEGIN "
_DASHES = b"-----"
_MAX_BLOCK_TYPE = 64
_BLOCK_TYPE = re.compile(rb"[A-Z0-9 #]{1,%d}" % _MAX_BLOCK_TYPE)


@dataclass(frozen=True, slots=True)
class Parsed:
    certificates: tuple[CertFacts, ...]
    errors: tuple[SourceError, ...]
    # What the container held besides certificates, for "no certificate" messages.
    other_blocks: tuple[str, ...] = ()


PasswordSource = Callable[[], bytes | None]


def _no_password() -> bytes | None:
    return None


@dataclass(frozen=True, slots=True)
class ParseOptions:
    """What a format may need besides the bytes."""

    # Called only when the data is PKCS#12 (a password read is not free, nor always possible).
    pkcs12_password: PasswordSource = _no_password
    # time.monotonic() bound on opening a PKCS#12 (never more than pkcs12.DEADLINE_SECONDS).
    deadline: float | None = None


# Reads one PEM block's DER (its type, its DER, the item to name in problems) into the
# certificates found, or a problem.
BlockReader = Callable[[bytes, bytes, str, "list[CertFacts]", "Problems"], None]


@dataclass(frozen=True, slots=True)
class ContainerFormat:
    """One container format: how it is recognised and how it is decoded."""

    name: str  # as messages say it: "PEM", "PKCS#12"
    # The whole container decoded; None: on a closer look, not this format (try the next).
    decode: Callable[[bytes, str, ParseOptions], Parsed | None]
    # Recognised from its bytes alone (tried before the formats without one, and
    # decoded only when it says yes); None: recognised only by ``decode`` succeeding.
    sniff: Callable[[bytes], bool] | None = None
    # PEM block types that carry this format's DER, and how such a block is read.
    pem_types: frozenset[bytes] = frozenset()
    read_block: BlockReader | None = None


class FormatRegistry:
    """The container formats, in order; what ``parse_container`` is driven by."""

    def __init__(self, formats: tuple[ContainerFormat, ...]) -> None:
        self.restore(formats)

    @property
    def formats(self) -> tuple[ContainerFormat, ...]:
        return self._formats

    def register(self, fmt: ContainerFormat, *, before: str | None = None) -> None:
        """Add a format (last, or before the one named ``before``)."""
        if any(known.name == fmt.name for known in self._formats):
            raise ValueError(f"container format {fmt.name!r} is already registered")
        clash = fmt.pem_types & frozenset(self._block_readers)
        if clash:
            raise ValueError(f"PEM block type(s) {sorted(clash)} already belong to another format")
        formats = list(self._formats)
        names = [known.name for known in formats]
        if before is not None and before not in names:
            raise ValueError(f"no container format {before!r} to register {fmt.name!r} before")
        position = len(formats) if before is None else names.index(before)
        formats.insert(position, fmt)
        self.restore(tuple(formats))

    def restore(self, formats: tuple[ContainerFormat, ...]) -> None:
        """Make ``formats`` the registry (what ``formats`` returned earlier, in tests)."""
        self._formats = formats
        # Derived once per change, not per container parsed.
        self._detection = tuple(f for f in formats if f.sniff is not None) + tuple(
            f for f in formats if f.sniff is None
        )
        self._block_readers = {
            block_type: fmt.read_block for fmt in formats if fmt.read_block is not None for block_type in fmt.pem_types
        }
        names = [fmt.name for fmt in formats]
        if len(names) > 1:
            self._none_of = f"neither {', '.join(names[:-1])} nor {names[-1]}"
        else:
            self._none_of = f"not {names[0]}" if names else "no container format is registered"

    def parse(self, data: bytes, name: str, options: ParseOptions) -> Parsed:
        for fmt in self._detection:
            if fmt.sniff is not None and not fmt.sniff(data):
                continue
            parsed = fmt.decode(data, name, options)
            if parsed is not None:
                return parsed
        return Parsed((), (SourceError(Reason.PARSE_ERROR, name, f"{name}: {self._none_of}"),))

    def block_reader(self, block_type: bytes) -> BlockReader | None:
        return self._block_readers.get(block_type)


def parse_container(
    data: bytes, name: str, *, pkcs12_password: PasswordSource = _no_password, deadline: float | None = None
) -> Parsed:
    """Every certificate in ``data``; ``name`` is only used in error messages.
    ``pkcs12_password`` is called only when the data is PKCS#12.  ``deadline`` (a
    ``time.monotonic()`` value) bounds the opening of a PKCS#12, which never gets
    more than ``pkcs12.DEADLINE_SECONDS`` either way."""
    if not data.strip():
        return Parsed((), (SourceError(Reason.EMPTY_FILE, name, f"{name}: file is empty"),))
    return CONTAINER_FORMATS.parse(data, name, ParseOptions(pkcs12_password, deadline))


# A container lists at most this many problems in full; beyond, one line per reason
# says how many more there were.  A 16 MiB file of empty PEM blocks is 300,000
# problems: 100 MB of messages and as many log lines, saying the same thing.
MAX_LISTED_PROBLEMS = 20


class Problems:
    """The problems of one container: the first ``MAX_LISTED_PROBLEMS`` as they
    are, then a count per reason, listed as one summary problem per reason."""

    __slots__ = ("_listed", "_name", "_unlisted")

    def __init__(self, name: str) -> None:
        self._name = name
        self._listed: list[SourceError] = []
        self._unlisted: dict[Reason, int] = {}

    def append(self, error: SourceError) -> None:
        if len(self._listed) < MAX_LISTED_PROBLEMS:
            self._listed.append(error)
        else:
            self._unlisted[error.reason] = self._unlisted.get(error.reason, 0) + 1

    def __bool__(self) -> bool:
        return bool(self._listed)

    def result(self) -> tuple[SourceError, ...]:
        summaries = (
            SourceError(reason, self._name, f"{self._name}: {count} more {reason.value} problem(s) not listed")
            for reason, count in self._unlisted.items()
        )
        return (*self._listed, *summaries)


def _decode_pem(data: bytes, name: str, options: ParseOptions) -> Parsed:
    certs: list[CertFacts] = []
    errors = Problems(name)
    # Distinct types, in order: a file of 300,000 key blocks needs one "PRIVATE KEY".
    other: dict[str, None] = {}
    blocks, truncated = _pem_blocks(data)
    for block_number, (block_type, body) in enumerate(blocks):
        item = f"{name}[{block_number}]"
        read_block = CONTAINER_FORMATS.block_reader(block_type)
        if read_block is None:
            # Keys, CSRs, CRLs, parameters: skipped by type, body never decoded.
            other[block_type.decode("ascii")] = None
            continue
        try:
            der = binascii.a2b_base64(b"".join(body.split()), strict_mode=True)
        except binascii.Error:
            errors.append(SourceError(Reason.PARSE_ERROR, item, f"{item}: bad base64 in PEM block"))
            continue
        read_block(block_type, der, item, certs, errors)
    if truncated:
        errors.append(
            SourceError(Reason.PARSE_ERROR, name, f"{name}: {truncated} PEM block(s) truncated (BEGIN without END)")
        )
    if not certs and not errors:
        kinds = ", ".join(sorted(other)) or "nothing"
        errors.append(SourceError(Reason.NO_CERTIFICATE, name, f"{name}: no certificate (found {kinds})"))
    return Parsed(tuple(certs), errors.result(), tuple(other))


def _looks_like_pem(data: bytes) -> bool:
    return _BEGIN in data


def _pem_blocks(data: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """(type, body) of every complete PEM block, and how many BEGIN lines have no
    matching END.  Plain ``bytes.find``: three times faster than a regex here.

    Linear in ``len(data)``: a block's END is only looked for up to the next BEGIN
    (a BEGIN before the END makes the block truncated anyway), and its type's closing
    dashes only within the longest type allowed.  Searching the rest of the file for
    every BEGIN made a file of repeated BEGIN lines quadratic: 42 s of CPU for 2 MiB,
    about 45 minutes at the 16 MiB cap (docs/reliability.md)."""
    blocks: list[tuple[bytes, bytes]] = []
    truncated = 0
    position = 0
    size = len(data)
    while (start := data.find(_BEGIN, position)) >= 0:
        type_start = start + len(_BEGIN)
        type_end = data.find(_DASHES, type_start, type_start + _MAX_BLOCK_TYPE + len(_DASHES))
        block_type = data[type_start:type_end] if type_end >= 0 else b""
        if not _BLOCK_TYPE.fullmatch(block_type):
            truncated += 1  # a BEGIN line that never closes
            position = type_start
            continue
        end_marker = b"-----END " + block_type + _DASHES
        body_start = type_end + len(_DASHES)
        next_begin = data.find(_BEGIN, body_start)
        end = data.find(end_marker, body_start, next_begin if next_begin >= 0 else size)
        if end < 0:
            truncated += 1
            position = body_start
            continue
        blocks.append((block_type, data[body_start:end]))
        position = end + len(end_marker)
    return blocks, truncated


def _decode_der_certificate(data: bytes, name: str, options: ParseOptions) -> Parsed | None:
    try:
        return Parsed((facts_from_der(data),), ())
    except Exception:  # noqa: BLE001 - not a DER certificate; try the next format
        return None


def _read_certificate_block(block_type: bytes, der: bytes, item: str, certs: list[CertFacts], errors: Problems) -> None:
    if block_type == b"TRUSTED CERTIFICATE":
        der = _first_der_element(der)
    try:
        certs.append(facts_from_der(der))
    except Exception as exc:  # noqa: BLE001 - any loader failure is a parse error
        errors.append(SourceError(Reason.PARSE_ERROR, item, f"{item}: not a valid certificate ({_short(exc)})"))


def _decode_pkcs7(data: bytes, name: str, options: ParseOptions) -> Parsed | None:
    certs: list[CertFacts] = []
    errors = Problems(name)
    if _load_pkcs7(data, name, certs, errors, quiet=True):
        return Parsed(tuple(certs), errors.result())
    return None


def _read_pkcs7_block(block_type: bytes, der: bytes, item: str, certs: list[CertFacts], errors: Problems) -> None:
    _load_pkcs7(der, item, certs, errors)


def _load_pkcs7(der: bytes, item: str, certs: list[CertFacts], errors: Problems, *, quiet: bool = False) -> bool:
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


def _decode_pkcs12(data: bytes, name: str, options: ParseOptions) -> Parsed:
    try:
        password = options.pkcs12_password()
    except CredentialUnavailable as exc:  # names the variable or file, never the value
        return Parsed((), (SourceError(Reason.BAD_PASSWORD, name, f"{name}: cannot open PKCS#12 ({exc})"),))
    return _load_pkcs12(data, name, password, options.deadline)


def _load_pkcs12(data: bytes, name: str, password: bytes | None, deadline: float | None) -> Parsed:
    """Priced first, opened in a worker process when it involves a password at all
    (``probes.pkcs12``); only a PKCS#12 with neither MAC nor encryption is opened
    here."""
    cost = pkcs12.price(data, password_given=password is not None)
    if cost.iterations > pkcs12.MAX_KDF_ITERATIONS:
        message = (
            f"{name}: PKCS#12 asks for {cost.iterations:,} key derivation iterations in all "
            f"(the dearest: {cost.largest}), over the {pkcs12.MAX_KDF_ITERATIONS:,} allowed; not opened"
        )
        return Parsed((), (SourceError(Reason.KDF_TOO_EXPENSIVE, name, message),))
    if not cost.password_based:
        return _load_pkcs12_here(data, name, password)
    seconds = pkcs12.DEADLINE_SECONDS if deadline is None else deadline - time.monotonic()
    try:
        ders = pkcs12.open_isolated(data, password, seconds)
    except pkcs12.Pkcs12Error as exc:
        if exc.kind == "password":
            # cryptography says "Invalid password or PKCS12 data"; the structure looked
            # like a PFX (see _looks_like_pkcs12), so the password is the likely cause.
            hint = "no password configured" if password is None else "wrong password"
            return Parsed((), (SourceError(Reason.BAD_PASSWORD, name, f"{name}: cannot open PKCS#12 ({hint})"),))
        if exc.kind == "deadline":
            return Parsed((), (SourceError(Reason.DEADLINE_EXCEEDED, name, f"{name}: PKCS#12 {exc}"),))
        if exc.kind == "worker":
            return Parsed((), (SourceError(Reason.INTERNAL_ERROR, name, f"{name}: PKCS#12 not read: {exc}"),))
        return Parsed((), (SourceError(Reason.PARSE_ERROR, name, f"{name}: bad PKCS#12 ({exc})"),))
    if not ders:
        return Parsed((), (SourceError(Reason.NO_CERTIFICATE, name, f"{name}: PKCS#12 holds no certificate"),))
    certs: list[CertFacts] = []
    errors = Problems(name)
    for index, der in enumerate(ders):
        try:
            certs.append(facts_from_der(der))
        except Exception as exc:  # noqa: BLE001 - any loader failure is a parse error
            errors.append(SourceError(Reason.PARSE_ERROR, f"{name}[{index}]", f"{name}[{index}]: {_short(exc)}"))
    return Parsed(tuple(certs), errors.result())


def _load_pkcs12_here(data: bytes, name: str, password: bytes | None) -> Parsed:
    try:
        bundle = pkcs12_library.load_pkcs12(data, password)
    except ValueError:
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


# The formats, in the order messages name them.  Tried as FormatRegistry says: PEM and
# PKCS#12 (recognised from their bytes) first, then a DER certificate, then a DER PKCS#7.
CONTAINER_FORMATS = FormatRegistry(
    (
        ContainerFormat("PEM", _decode_pem, sniff=_looks_like_pem),
        ContainerFormat(
            "DER",
            _decode_der_certificate,
            pem_types=frozenset({b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"}),
            read_block=_read_certificate_block,
        ),
        ContainerFormat(
            "PKCS#7",
            _decode_pkcs7,
            pem_types=frozenset({b"PKCS7", b"PKCS #7 SIGNED DATA", b"CMS"}),
            read_block=_read_pkcs7_block,
        ),
        ContainerFormat("PKCS#12", _decode_pkcs12, sniff=_looks_like_pkcs12),
    )
)


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
    cert = x509.load_der_x509_certificate(der)
    try:
        facts = _facts_at_once(cert, der, fingerprint)
    except Exception:  # noqa: BLE001 - some field is unreadable: read them one by one
        facts = _facts_field_by_field(cert)
    _known[fingerprint] = facts
    return facts


def shared(facts: CertFacts) -> CertFacts:
    """The facts object every holder of this certificate shares (``facts`` itself
    when it is the first): for facts built elsewhere, in a worker process."""
    known = _known.get(facts.fingerprint_sha256)
    if known is not None:
        return known
    _known[facts.fingerprint_sha256] = facts
    return facts


def facts_from_certificate(cert: x509.Certificate, der: bytes | None = None) -> CertFacts:
    """The facts of a loaded certificate (``der``: its DER, when the caller has
    it); a field that raises becomes a listed problem (read in one go first, then
    field by field: see the module docstring)."""
    try:
        if der is None:
            der = cert.public_bytes(serialization.Encoding.DER)
        return _facts_at_once(cert, der, hashlib.sha256(der).hexdigest())
    except Exception:  # noqa: BLE001 - some field is unreadable: read them one by one
        return _facts_field_by_field(cert)


def _facts_at_once(cert: x509.Certificate, der: bytes, fingerprint: str) -> CertFacts:
    """The fields of ``_facts_field_by_field`` in one go, for a certificate where no
    read raises; any exception means "read field by field instead".

    ``der`` must be the certificate's own DER (what it was loaded from, or its
    ``public_bytes``): ``cryptography``'s ``fingerprint()`` hashes the re-encoding
    of the parsed certificate, which is those very bytes (its parser accepts DER
    only), so ``fingerprint`` is the SHA-256 of ``der`` and costs a tenth."""
    issuer_der, spki_der = _issuer_and_spki(der)
    issuer_names = _issuer_names.get(issuer_der)
    if issuer_names is None:
        issuer_names = _name_strings(cert.issuer)
        if len(_issuer_names) >= _ISSUER_NAMES_MAX:
            _issuer_names.clear()  # a pathological number of issuers: start over
        _issuer_names[issuer_der] = issuer_names
    issuer, issuer_cn = issuer_names
    subject, subject_cn = _name_strings(cert.subject)
    key = cert.public_key()
    key_type, key_bits = _key_type_and_bits(key)
    if not _spki_is_canonical(spki_der, key_type):
        spki_der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    sans: tuple[str, ...] = ()
    is_ca = False
    extended_key_usage: tuple[str, ...] = ()
    # One pass over the extensions instead of a lookup (and a raised
    # ExtensionNotFound) per extension wanted.
    for extension in cert.extensions:
        oid = extension.oid
        if oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            sans = _san_strings(extension.value)
        elif oid == ExtensionOID.BASIC_CONSTRAINTS:
            constraints = extension.value
            assert isinstance(constraints, x509.BasicConstraints)
            is_ca = constraints.ca
        elif oid == ExtensionOID.EXTENDED_KEY_USAGE:
            extended_key_usage = _eku_names(extension.value)
    return CertFacts(
        fingerprint_sha256=fingerprint,
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        subject=subject,
        subject_cn=subject_cn,
        issuer=issuer,
        issuer_cn=issuer_cn,
        serial=format(cert.serial_number, "x"),
        sans=sans,
        key_type=key_type,
        key_bits=key_bits,
        spki_sha256=hashlib.sha256(spki_der).hexdigest(),
        signature_algorithm=_signature_algorithm(cert),
        is_ca=is_ca,
        self_issued=bool(subject) and subject == issuer,
        extended_key_usage=extended_key_usage,
    )


def _facts_field_by_field(cert: x509.Certificate) -> CertFacts:
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


# -- reading names ------------------------------------------------------------------

# (RFC 4514 string, common name) of every issuer seen, by the DER of its name: a CA
# signs thousands of the certificates scanned, and its name is decoded and formatted
# once, its strings shared by all their CertFacts.  Bounded, in case of a corpus of
# self-signed certificates.
_issuer_names: dict[bytes, tuple[str, str]] = {}
_ISSUER_NAMES_MAX = 4096


def _contents(der: bytes, position: int) -> int:
    """Where the contents of the element at ``position`` start, in DER that
    ``cryptography`` has already parsed (so well-formed, definite lengths)."""
    length = der[position + 1]
    return position + 2 + (length & 0x7F if length & 0x80 else 0)


def _end(der: bytes, position: int) -> int:
    """Where the element at ``position`` ends, in DER ``cryptography`` has parsed."""
    length = der[position + 1]
    if length < 0x80:
        return position + 2 + length
    count = length & 0x7F
    return position + 2 + count + int.from_bytes(der[position + 2 : position + 2 + count], "big")


def _issuer_and_spki(der: bytes) -> tuple[bytes, bytes]:
    """The raw issuer Name and SubjectPublicKeyInfo of a certificate ``cryptography``
    has loaded from ``der``, so the structure is known to be a well-formed
    Certificate (RFC 5280 4.1) and needs no checks on the way (one file of a large
    inventory spent 20 µs here with them)."""
    position = _contents(der, _contents(der, 0))  # into Certificate, into tbsCertificate
    if der[position] == 0xA0:  # [0] version
        position = _end(der, position)
    position = _end(der, position)  # serialNumber
    position = _end(der, position)  # signature
    issuer_end = _end(der, position)
    issuer = der[position:issuer_end]
    position = _end(der, issuer_end)  # validity
    position = _end(der, position)  # subject
    return issuer, der[position : _end(der, position)]


# Values the RFC 4514 escaping leaves as they are: none of \ " + , ; < > NUL, not
# starting with # or a space, not ending with a space.
_PLAIN_VALUE = re.compile(r'[^\\"+,;<>\x00# ](?:[^\\"+,;<>\x00]*[^\\"+,;<>\x00 ])?')
_attribute_labels: dict[x509.ObjectIdentifier, str] = {}


def _name_strings(name: x509.Name) -> tuple[str, str]:
    """``(name.rfc4514_string(), _common_name(name))`` in one pass over the
    attributes.  An attribute whose value needs escaping (or is not text) is
    formatted by ``cryptography`` itself, so the string is always the same."""
    rdns: list[str] = []
    common_name: str | None = None
    for rdn in name.rdns:
        parts = []
        for attribute in rdn:
            oid = attribute.oid
            value = attribute.value
            if common_name is None and oid == NameOID.COMMON_NAME:
                common_name = value if isinstance(value, str) else value.decode("utf-8", "replace")
            label = _attribute_labels.get(oid)
            if label is None:
                label = attribute.rfc4514_attribute_name
                if len(_attribute_labels) < 256:
                    _attribute_labels[oid] = label
            if isinstance(value, str) and _PLAIN_VALUE.fullmatch(value):
                parts.append(f"{label}={value}")
            else:
                parts.append(attribute.rfc4514_string())
        rdns.append("+".join(parts))
    rdns.reverse()  # RFC 4514 2.1: the last RDN first
    return ",".join(rdns), common_name or ""


def _common_name(name: x509.Name) -> str:
    attributes = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return ""
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


# -- reading extensions -------------------------------------------------------------

_SAN_TYPES = (x509.DNSName, x509.IPAddress, x509.UniformResourceIdentifier, x509.RFC822Name)


def _subject_alt_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        extension = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return ()
    return _san_strings(extension.value)


def _san_strings(san: object) -> tuple[str, ...]:
    assert isinstance(san, x509.SubjectAlternativeName)
    # One pass: DNS, IP, URI and e-mail names, in the certificate's order.
    return tuple(str(general.value) for general in san if isinstance(general, _SAN_TYPES))


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
    return _eku_names(usage)


def _eku_names(usage: object) -> tuple[str, ...]:
    assert isinstance(usage, x509.ExtendedKeyUsage)
    return tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in usage)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        return False
    assert isinstance(constraints, x509.BasicConstraints)
    return constraints.ca


# -- reading the public key ---------------------------------------------------------


def _public_key_facts(cert: x509.Certificate) -> tuple[str, int, str]:
    """Key type, size, and the SHA-256 of the SubjectPublicKeyInfo (for key reuse)."""
    key = cert.public_key()
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return (*_key_type_and_bits(key), hashlib.sha256(spki).hexdigest())


# Key class -> type name, filled from the isinstance checks below: those are checks
# against abstract classes, several times dearer than a dict lookup.
_key_types: dict[type, str] = {}


def _key_type_and_bits(key: object) -> tuple[str, int]:
    key_type = _key_types.get(type(key))
    if key_type is None:
        key_type = _key_type(key)
        if len(_key_types) < 64:
            _key_types[type(key)] = key_type
    if key_type in ("rsa", "ec", "dsa"):
        return key_type, key.key_size  # type: ignore[attr-defined]
    return key_type, _FIXED_KEY_BITS.get(key_type, 0)


_FIXED_KEY_BITS = {"ed25519": 256, "ed448": 456}


def _key_type(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return "dsa"
    return "unknown"


# AlgorithmIdentifiers whose SubjectPublicKeyInfo ``public_bytes`` writes back byte
# for byte: rsaEncryption with its NULL parameters (RFC 3279; some certificates omit
# them, public_bytes adds them), Ed25519 and Ed448 without parameters (RFC 8410).
_RSA_ALGORITHM = bytes.fromhex("300d06092a864886f70d0101010500")
_ED_ALGORITHMS = {"ed25519": bytes.fromhex("300506032b6570"), "ed448": bytes.fromhex("300506032b6571")}
# id-ecPublicKey followed by a namedCurve OID (RFC 5480), with an uncompressed point.
_EC_ALGORITHM_START = bytes.fromhex("06072a8648ce3d0201")


def _spki_is_canonical(spki: bytes, key_type: str) -> bool:
    """Whether the raw SubjectPublicKeyInfo of a key ``cryptography`` loaded is
    exactly what ``public_bytes(DER, SubjectPublicKeyInfo)`` writes, so that its
    digest can be taken without re-encoding the key.  False when unsure."""
    try:
        return _spki_written_as_is(spki, key_type)
    except (DerError, IndexError):
        return False


def _spki_written_as_is(spki: bytes, key_type: str) -> bool:
    algorithm_start = _contents(spki, 0)
    algorithm_end = _end(spki, algorithm_start)
    algorithm = spki[algorithm_start:algorithm_end]
    bits_start = _contents(spki, algorithm_end)
    if spki[algorithm_end] != 0x03 or spki[bits_start] != 0:  # a BIT STRING with no unused bits
        return False
    if key_type == "rsa":
        return algorithm == _RSA_ALGORITHM
    if key_type == "ec":
        # SEQUENCE { id-ecPublicKey, OID } and nothing else; the point uncompressed.
        curve_at = 2 + len(_EC_ALGORITHM_START)
        return (
            algorithm[2:curve_at] == _EC_ALGORITHM_START
            and algorithm[curve_at] == 0x06
            and _end(algorithm, curve_at) == len(algorithm)
            and spki[bits_start + 1] == 0x04
        )
    return algorithm == _ED_ALGORITHMS.get(key_type)


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
    if len(certificates) == 1 and not certificates[0].problems:  # most files: no set, no lists
        return (CertObservation(0, role_in_bundle(certificates[0]), certificates[0]),), ()
    seen: set[str] = set()
    observations: list[CertObservation] = []
    errors = Problems(name)
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
    return tuple(observations), errors.result()
