"""The two revocation judges, pure and never raising, over bytes fetched elsewhere.

* ``evaluate_ocsp(der, cert, issuer, now, ...)`` checks an OCSP response the way a
  careful client must, since ``cryptography`` parses but does not verify one: the
  response status, the single response for *this* serial and issuer, the signer
  (the issuer itself, or a delegated responder issued by it, with the OCSPSigning
  EKU and valid now), the signature over the response, the nonce when one was sent,
  and thisUpdate/nextUpdate with a clock skew allowance.
* ``evaluate_crl(data, issuer, now, ...)`` checks a CRL (PEM or DER): signature by the
  issuer, freshness; ``crl_lookup`` then finds a serial in it.

A judgement is a ``RevocationFacts`` whose ``method`` is the judge's (``ocsp`` or
``crl``) and whose ``source`` is empty: ``revocation_facts`` adds where and how the
answer was fetched.  States are ``good``, ``revoked``, ``unknown`` and
``not_applicable`` (no responder, no CRL distribution point).  A stale good answer
is ``unknown``: unknown is never good.
"""

from __future__ import annotations

import array
import bisect
import functools
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, ExtensionOID

from probes.der import elements, read_element
from probes.reasons import Reason
from probes.revocation_facts import RevocationFacts

GOOD, REVOKED, UNKNOWN, NOT_APPLICABLE = "good", "revoked", "unknown", "not_applicable"
OCSP_REASONS = (
    Reason.OCSP_UNAVAILABLE,
    Reason.OCSP_BAD_RESPONSE,
    Reason.OCSP_UNAUTHORIZED_SIGNER,
    Reason.OCSP_STALE,
    Reason.OCSP_UNKNOWN_CERTIFICATE,
)
CRL_REASONS = (Reason.CRL_UNAVAILABLE, Reason.CRL_BAD_SIGNATURE, Reason.CRL_STALE, Reason.CRL_TOO_LARGE)
DEFAULT_SKEW = timedelta(minutes=5)
# Without a nextUpdate, an answer is trusted this long (and cached for no longer).
DEFAULT_MAX_AGE = timedelta(hours=1)


def judgement(method: str, state: str, reason: Reason, message: str) -> RevocationFacts:
    """What a judge says, before anyone says where the answer came from."""
    return RevocationFacts(method, state, reason, "", message)


def revocation_facts(
    method: str, source: str, judged: RevocationFacts, seconds: float, status: int | None
) -> RevocationFacts:
    """A judgement with where it came from: the responder or CRL URL, the time the
    fetch took and its HTTP status."""
    return replace(judged, method=method, source=source, duration_seconds=seconds, http_status=status)


def not_applicable(method: str, why: str) -> RevocationFacts:
    return judgement(method, NOT_APPLICABLE, Reason.OK, why)


def ocsp_urls(cert: x509.Certificate) -> list[str]:
    try:
        access = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_INFORMATION_ACCESS).value
    except Exception:  # noqa: BLE001 - absent or unreadable: no responder
        return []
    assert isinstance(access, x509.AuthorityInformationAccess)
    return [
        d.access_location.value
        for d in access
        if d.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]


def crl_urls(cert: x509.Certificate) -> list[str]:
    try:
        points = cert.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS).value
    except Exception:  # noqa: BLE001
        return []
    assert isinstance(points, x509.CRLDistributionPoints)
    return [
        name.value
        for point in points
        for name in (point.full_name or [])
        if isinstance(name, x509.UniformResourceIdentifier)
    ]


# -- OCSP ---------------------------------------------------------------------------


def evaluate_ocsp(
    der: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime,
    *,
    nonce: bytes | None = None,
    skew: timedelta = DEFAULT_SKEW,
) -> RevocationFacts:
    try:
        response = ocsp.load_der_ocsp_response(der)
    except Exception as exc:  # noqa: BLE001 - garbage, HTML, truncated
        return judgement("ocsp", UNKNOWN, Reason.OCSP_BAD_RESPONSE, f"not an OCSP response ({_short(exc)})")
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        status = response.response_status.name.lower()
        return judgement("ocsp", UNKNOWN, Reason.OCSP_BAD_RESPONSE, f"responder answered '{status}'")
    try:
        return _judge_successful(response, cert, issuer, now, nonce, skew)
    except Exception as exc:  # noqa: BLE001 - a field that fails to parse
        return judgement("ocsp", UNKNOWN, Reason.OCSP_BAD_RESPONSE, f"malformed OCSP response ({_short(exc)})")


def _judge_successful(
    response: ocsp.OCSPResponse,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime,
    nonce: bytes | None,
    skew: timedelta,
) -> RevocationFacts:
    single = _single_for(response, cert, issuer)
    if single is None:
        return judgement("ocsp", UNKNOWN, Reason.OCSP_BAD_RESPONSE, f"no answer for serial {cert.serial_number:x}")
    signer, problem = _authorised_signer(response, issuer, now)
    if signer is None:
        return judgement("ocsp", UNKNOWN, Reason.OCSP_UNAUTHORIZED_SIGNER, problem)
    if not _signature_valid(signer.public_key(), response.signature, response.tbs_response_bytes, response):
        return judgement("ocsp", UNKNOWN, Reason.OCSP_BAD_RESPONSE, "the response signature does not verify")
    if nonce is not None:
        try:
            echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            echoed = None
        if echoed is not None and echoed != nonce:
            return judgement("ocsp", UNKNOWN, Reason.OCSP_BAD_RESPONSE, "the response carries another request's nonce")

    this_update = single.this_update_utc
    next_update = single.next_update_utc
    timed = replace(
        judgement("ocsp", GOOD, Reason.OK, ""),
        this_update=this_update.timestamp(),
        next_update=next_update.timestamp() if next_update else None,
        produced_at=response.produced_at_utc.timestamp(),
    )
    if this_update > now + skew:
        message = f"thisUpdate {this_update:%Y-%m-%d %H:%M} is in the future"
        return replace(timed, state=UNKNOWN, reason=Reason.OCSP_BAD_RESPONSE, message=message)
    expires = next_update or this_update + DEFAULT_MAX_AGE
    stale = expires < now - skew
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.REVOKED:
        revoked_at = single.revocation_time_utc
        flag = single.revocation_reason.value if single.revocation_reason else ""
        return replace(
            timed,
            state=REVOKED,
            reason=Reason.REVOKED,
            message=f"revoked at {revoked_at:%Y-%m-%d %H:%M} UTC" + (f" ({flag})" if flag else ""),
            stale=stale,
            revocation_time=revoked_at.timestamp() if revoked_at else None,
            revocation_reason=flag,
        )
    if stale:
        message = f"response expired at {expires:%Y-%m-%d %H:%M} UTC"
        return replace(timed, state=UNKNOWN, reason=Reason.OCSP_STALE, message=message, stale=True)
    if status == ocsp.OCSPCertStatus.UNKNOWN:
        message = "the responder does not know this certificate"
        return replace(timed, state=UNKNOWN, reason=Reason.OCSP_UNKNOWN_CERTIFICATE, message=message)
    return timed


def _single_for(
    response: ocsp.OCSPResponse, cert: x509.Certificate, issuer: x509.Certificate
) -> ocsp.OCSPSingleResponse | None:
    key_bits = _subject_public_key_bits(issuer)
    for single in response.responses:
        if single.serial_number != cert.serial_number:
            continue
        digest = hashes.Hash(single.hash_algorithm)
        digest.update(key_bits)
        if digest.finalize() == single.issuer_key_hash:
            return single
    return None


@functools.lru_cache(maxsize=1024)  # an issuer's, for each of its certificates checked
def _subject_public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents: what OCSP's issuerKeyHash hashes."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    # SPKI ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
    _, start, end = read_element(spki, 0)
    _, bits_start, bits_end = elements(spki, start, end)[1]
    return spki[bits_start + 1 : bits_end]  # past the unused-bits octet


def _authorised_signer(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime
) -> tuple[x509.Certificate | None, str]:
    """The certificate entitled to sign this response (RFC 6960 4.2.2.2), or why none is."""
    if _is_responder(response, issuer):
        return issuer, ""
    for candidate in response.certificates:
        if not _is_responder(response, candidate):
            continue
        problem = _delegation_problem(issuer, candidate)
        if problem:
            return None, problem
        if not candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc:
            return None, "the responder certificate is outside its validity period"
        return candidate, ""
    return None, "the response is signed neither by the CA nor by a responder certificate it includes"


# A responder keeps its certificate for days and signs every answer with it; checking
# that certificate (its issuer, the CA's signature over it, its EKU) was 0.12 ms of an
# uncached OCSP check of about 0.7 (docs/performance.md, "Revocation").  The answer is a
# function of the two certificates alone, which key the cache by their whole DER
# (a Certificate's hash and equality), so no other certificate can take one's place.
@functools.lru_cache(maxsize=1024)
def _delegation_problem(issuer: x509.Certificate, candidate: x509.Certificate) -> str:
    """Why ``candidate`` may not answer for ``issuer``'s certificates ('' when it may),
    its validity aside."""
    if candidate.issuer != issuer.subject or not _signature_valid(
        issuer.public_key(), candidate.signature, candidate.tbs_certificate_bytes, candidate
    ):
        return f"the responder certificate ({candidate.subject.rfc4514_string()}) is not issued by the CA"
    try:
        usage = candidate.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
        usages = list(usage) if isinstance(usage, x509.ExtendedKeyUsage) else []
    except x509.ExtensionNotFound:
        usages = []
    if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        return f"the responder certificate ({candidate.subject.rfc4514_string()}) lacks the OCSPSigning EKU"
    return ""


def _is_responder(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    digest = hashes.Hash(hashes.SHA1())
    digest.update(_subject_public_key_bits(cert))
    return digest.finalize() == response.responder_key_hash


def _signature_valid(key: object, signature: bytes, data: bytes, signed: object) -> bool:
    algorithm = getattr(signed, "signature_hash_algorithm", None)
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


# -- CRL ----------------------------------------------------------------------------


class _SerialIndex:
    """Where each serial of one CRL is in its entries, built at the CRL's second
    lookup: without it a lookup walks the entries (8.3 ms at 100,000, for a serial
    absent or near the end).  Kept as the serials' hashes, sorted, beside their
    positions: 12 bytes an entry (1.2 MB at 100,000, where a dict of the serials took
    13 MB), a lookup a bisection, built in about what ten walks cost
    (docs/performance.md, "Revocation")."""

    __slots__ = ("hashes", "lookups", "positions")

    def __init__(self) -> None:
        self.lookups = 0
        self.hashes: array.array[int] | None = None
        self.positions: array.array[int] = array.array("I")

    def find(self, crl: x509.CertificateRevocationList, serial: int) -> x509.RevokedCertificate | None:
        """What ``crl.get_revoked_certificate_by_serial_number(serial)`` gives."""
        hashes = self.hashes
        if hashes is None:
            self.lookups += 1
            if self.lookups < 2:
                return crl.get_revoked_certificate_by_serial_number(serial)
            # Two threads may both build it at once: the same, no harm.
            keys = [hash(entry.serial_number) for entry in crl]
            order = sorted(range(len(keys)), key=keys.__getitem__)  # stable: equal hashes by position
            self.positions = array.array("I", order)
            self.hashes = hashes = array.array("q", [keys[position] for position in order])
        wanted = hash(serial)
        # Equal hashes are in the order of their entries, so a serial listed twice is
        # found at its first entry, as the walk finds it.
        index = bisect.bisect_left(hashes, wanted)
        while index < len(hashes) and hashes[index] == wanted:
            entry = crl[self.positions[index]]
            if entry.serial_number == serial:
                return entry
            index += 1
        return None


@dataclass(frozen=True, slots=True)
class CrlInfo:
    crl: x509.CertificateRevocationList | None
    reason: Reason  # OK, CRL_BAD_SIGNATURE, CRL_STALE, or a parse failure as CRL_UNAVAILABLE
    message: str
    this_update: float | None = None
    next_update: float | None = None
    number: int | None = None
    entries: int = 0
    size_bytes: int = 0
    # Shared by the copies ``replace`` makes of this CrlInfo: they hold the same CRL.
    index: _SerialIndex = field(default_factory=_SerialIndex, compare=False, repr=False)


def evaluate_crl(data: bytes, issuer: x509.Certificate, now: datetime, skew: timedelta = DEFAULT_SKEW) -> CrlInfo:
    try:
        crl = x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----BEGIN") else x509.load_der_x509_crl(data)
        this_update = crl.last_update_utc
        next_update = crl.next_update_utc
        entries = len(crl)
    except Exception as exc:  # noqa: BLE001
        return CrlInfo(None, Reason.CRL_UNAVAILABLE, f"not a CRL ({_short(exc)})", size_bytes=len(data))
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except Exception:  # noqa: BLE001 - absent or unreadable
        number = None
    judged = CrlInfo(
        crl,
        Reason.OK,
        "",
        this_update=this_update.timestamp(),
        next_update=next_update.timestamp() if next_update else None,
        number=number,
        entries=entries,
        size_bytes=len(data),
    )
    try:
        signed = crl.issuer == issuer.subject and _crl_signed_by(crl, data, issuer)
    except Exception as exc:  # noqa: BLE001 - an issuer name or signature that fails to parse
        return replace(judged, crl=None, reason=Reason.CRL_UNAVAILABLE, message=f"malformed CRL ({_short(exc)})")
    if not signed:
        return replace(judged, reason=Reason.CRL_BAD_SIGNATURE, message="the CRL is not signed by the issuer")
    if next_update is not None and next_update < now - skew:
        return replace(judged, reason=Reason.CRL_STALE, message=f"the CRL expired at {next_update:%Y-%m-%d %H:%M} UTC")
    return judged


def _crl_signed_by(crl: x509.CertificateRevocationList, data: bytes, issuer: x509.Certificate) -> bool:
    """``crl.is_signature_valid(issuer's key)``, checked first over the tbsCertList as
    received when the CRL came as DER.  Why: ``is_signature_valid`` encodes the
    tbsCertList again, 100 ms for 100,000 entries, against 3 ms for the signature
    itself (docs/performance.md, "Revocation").  DER encodes a value one way, so a
    signature that verifies over the received bytes, under the same algorithm inside
    and outside tbsCertList (what ``is_signature_valid`` requires), verifies over the
    encoding.  Anything else (PEM, an algorithm ``_signature_valid`` does not take such
    as RSA-PSS, a signature that does not verify) is left to ``cryptography``, so the
    verdict is always its own."""
    key = issuer.public_key()
    received = _tbs_as_received(data)
    if received is not None and _signature_valid(key, crl.signature, received, crl):
        return True
    return crl.is_signature_valid(key)  # type: ignore[arg-type]


def _tbs_as_received(data: bytes) -> bytes | None:
    """The DER of a CertificateList's tbsCertList as ``data`` holds it, when its
    signature algorithm is the same inside and out; None for PEM or anything else."""
    try:
        _, start, end = read_element(data, 0)  # CertificateList
        _, contents, tbs_end = read_element(data, start, end)  # tbsCertList, from start
        _, _, outer_end = read_element(data, tbs_end, end)  # signatureAlgorithm, from tbs_end
        offset = contents
        tag, _, after = read_element(data, offset, tbs_end)
        if tag == 0x02:  # the optional version
            offset = after
            _, _, after = read_element(data, offset, tbs_end)
    except (IndexError, ValueError):
        return None
    return data[start:tbs_end] if data[offset:after] == data[tbs_end:outer_end] else None


def crl_lookup(info: CrlInfo, cert: x509.Certificate) -> RevocationFacts:
    timed = replace(judgement("crl", GOOD, Reason.OK, ""), this_update=info.this_update, next_update=info.next_update)
    if info.crl is None or info.reason in (Reason.CRL_BAD_SIGNATURE, Reason.CRL_UNAVAILABLE, Reason.CRL_TOO_LARGE):
        return replace(timed, state=UNKNOWN, reason=info.reason, message=info.message)
    entry = info.index.find(info.crl, cert.serial_number)
    if entry is not None:
        try:
            flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
        except Exception:  # noqa: BLE001 - no or unreadable reason code
            flag = ""
        revoked_at = entry.revocation_date_utc
        return replace(
            timed,
            state=REVOKED,
            reason=Reason.REVOKED,
            message=f"on the CRL since {revoked_at:%Y-%m-%d %H:%M} UTC" + (f" ({flag})" if flag else ""),
            stale=info.reason is Reason.CRL_STALE,
            revocation_time=revoked_at.timestamp(),
            revocation_reason=flag,
        )
    if info.reason is Reason.CRL_STALE:
        return replace(timed, state=UNKNOWN, reason=Reason.CRL_STALE, message=info.message, stale=True)
    return timed


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


@dataclass(frozen=True, slots=True)
class RevocationQuery:
    """What a client is asked: the state of ``cert``, issued by ``issuer``, from
    ``url`` (None: the one the certificate names), before ``deadline`` (monotonic),
    reaching only what the egress policy lets through."""

    cert: x509.Certificate
    issuer: x509.Certificate
    url: str | None
    deadline: float
    allow_networks: tuple[str, ...] = ()
