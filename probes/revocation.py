"""Revocation: is a certificate revoked, and could a client find out?

Two judges, each pure and never raising, over bytes fetched elsewhere:

* ``evaluate_ocsp(der, cert, issuer, now, ...)`` checks an OCSP response the way a
  careful client must, since ``cryptography`` parses but does not verify one: the
  response status, the single response for *this* serial and issuer, the signer
  (the issuer itself, or a delegated responder issued by it, with the OCSPSigning
  EKU and valid now), the signature over the response, the nonce when one was sent,
  and thisUpdate/nextUpdate with a clock skew allowance.
* ``evaluate_crl(data, issuer, now, ...)`` checks a CRL (PEM or DER): signature by the
  issuer, freshness; ``crl_lookup`` then finds a serial in it.

``RevocationChecker`` does the network side with ``probes.fetch`` (egress policy,
deadline, byte cap) and caches: an OCSP answer until its nextUpdate (bounded), a CRL
until its nextUpdate and then by conditional GET.  Nothing is queried per scrape.

States are ``good``, ``revoked``, ``unknown`` and ``not_applicable`` (no responder, no
CRL distribution point).  A stale good answer is ``unknown``: unknown is never good.
"""

from __future__ import annotations

import base64
import glob
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, ExtensionOID

from probes.der import elements, read_element
from probes.fetch import FetchError, fetch
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
MAX_OCSP_BYTES = 64 * 1024
MAX_OCSP_CACHE = 10_000
OCSP_GET_LIMIT = 255  # bytes of URL-encoded request; longer requests are POSTed (RFC 6960 A.1)
# Without a nextUpdate, an answer is trusted this long (and cached for no longer).
DEFAULT_MAX_AGE = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Judgement:
    state: str
    reason: Reason
    message: str
    stale: bool = False
    this_update: float | None = None
    next_update: float | None = None
    produced_at: float | None = None
    revocation_time: float | None = None
    revocation_reason: str = ""


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


def build_ocsp_request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def evaluate_ocsp(
    der: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime,
    *,
    nonce: bytes | None = None,
    skew: timedelta = DEFAULT_SKEW,
) -> Judgement:
    try:
        response = ocsp.load_der_ocsp_response(der)
    except Exception as exc:  # noqa: BLE001 - garbage, HTML, truncated
        return Judgement(UNKNOWN, Reason.OCSP_BAD_RESPONSE, f"not an OCSP response ({_short(exc)})")
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        status = response.response_status.name.lower()
        return Judgement(UNKNOWN, Reason.OCSP_BAD_RESPONSE, f"responder answered '{status}'")
    try:
        return _judge_successful(response, cert, issuer, now, nonce, skew)
    except Exception as exc:  # noqa: BLE001 - a field that fails to parse
        return Judgement(UNKNOWN, Reason.OCSP_BAD_RESPONSE, f"malformed OCSP response ({_short(exc)})")


def _judge_successful(
    response: ocsp.OCSPResponse,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime,
    nonce: bytes | None,
    skew: timedelta,
) -> Judgement:
    single = _single_for(response, cert, issuer)
    if single is None:
        return Judgement(UNKNOWN, Reason.OCSP_BAD_RESPONSE, f"no answer for serial {cert.serial_number:x}")
    signer, problem = _authorised_signer(response, issuer, now)
    if signer is None:
        return Judgement(UNKNOWN, Reason.OCSP_UNAUTHORIZED_SIGNER, problem)
    if not _signature_valid(signer.public_key(), response.signature, response.tbs_response_bytes, response):
        return Judgement(UNKNOWN, Reason.OCSP_BAD_RESPONSE, "the response signature does not verify")
    if nonce is not None:
        try:
            echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            echoed = None
        if echoed is not None and echoed != nonce:
            return Judgement(UNKNOWN, Reason.OCSP_BAD_RESPONSE, "the response carries another request's nonce")

    this_update = single.this_update_utc
    next_update = single.next_update_utc
    timed = Judgement(
        GOOD,
        Reason.OK,
        "",
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
        if candidate.issuer != issuer.subject or not _signature_valid(
            issuer.public_key(), candidate.signature, candidate.tbs_certificate_bytes, candidate
        ):
            return None, f"the responder certificate ({candidate.subject.rfc4514_string()}) is not issued by the CA"
        try:
            usage = candidate.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
            usages = list(usage) if isinstance(usage, x509.ExtendedKeyUsage) else []
        except x509.ExtensionNotFound:
            usages = []
        if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
            return None, f"the responder certificate ({candidate.subject.rfc4514_string()}) lacks the OCSPSigning EKU"
        if not candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc:
            return None, "the responder certificate is outside its validity period"
        return candidate, ""
    return None, "the response is signed neither by the CA nor by a responder certificate it includes"


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
        signed = crl.issuer == issuer.subject and crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - an issuer name or signature that fails to parse
        return replace(judged, crl=None, reason=Reason.CRL_UNAVAILABLE, message=f"malformed CRL ({_short(exc)})")
    if not signed:
        return replace(judged, reason=Reason.CRL_BAD_SIGNATURE, message="the CRL is not signed by the issuer")
    if next_update is not None and next_update < now - skew:
        return replace(judged, reason=Reason.CRL_STALE, message=f"the CRL expired at {next_update:%Y-%m-%d %H:%M} UTC")
    return judged


def crl_lookup(info: CrlInfo, cert: x509.Certificate) -> Judgement:
    timed = Judgement(GOOD, Reason.OK, "", this_update=info.this_update, next_update=info.next_update)
    if info.crl is None or info.reason in (Reason.CRL_BAD_SIGNATURE, Reason.CRL_UNAVAILABLE, Reason.CRL_TOO_LARGE):
        return replace(timed, state=UNKNOWN, reason=info.reason, message=info.message)
    entry = info.crl.get_revoked_certificate_by_serial_number(cert.serial_number)
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


# -- the network side, with caches ---------------------------------------------------


@dataclass
class _CrlEntry:
    info: CrlInfo
    fetched: float  # monotonic
    etag: str | None
    last_modified: str | None


class RevocationChecker:
    """OCSP and CRL checks over the network, with their caches.  One instance is shared
    by the probes of a process: the scheduler creates it and hands it to the probes it
    builds (``ProbeDefaults.revocation``); nothing else holds one."""

    def __init__(self, *, max_crl_bytes: int = 32 * 1024 * 1024, crl_refresh: float = 3600.0) -> None:
        self._lock = threading.Lock()
        self._ocsp: OrderedDict[tuple[str, str, int, tuple[str, ...]], tuple[float, RevocationFacts]] = OrderedDict()
        self._crls: dict[tuple[str, tuple[str, ...]], _CrlEntry] = {}
        self.max_crl_bytes = max_crl_bytes
        self.crl_refresh = crl_refresh
        self.requests = 0  # network requests made, for tests and benchmarks

    def check_ocsp(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        url: str | None,
        *,
        deadline: float,
        allow_networks: tuple[str, ...] = (),
        use_nonce: bool = False,
        skew: timedelta = DEFAULT_SKEW,
    ) -> RevocationFacts:
        urls = [url] if url else ocsp_urls(cert)
        if not urls:
            return RevocationFacts("ocsp", NOT_APPLICABLE, Reason.OK, "", "the certificate names no OCSP responder")
        responder = urls[0]
        # The egress policy is part of the key: an answer fetched under a looser
        # policy must not reach a probe whose policy refuses the responder.
        key = (responder, _issuer_id(issuer), cert.serial_number, allow_networks)
        with self._lock:
            cached = self._ocsp.get(key)
            if cached is not None and time.time() < cached[0]:
                return replace(cached[1], from_cache=True)
        started = time.monotonic()
        requested_at = time.time()
        nonce = os.urandom(16) if use_nonce else None
        request = build_ocsp_request(cert, issuer, nonce)
        encoded = base64.b64encode(request).decode()
        try:
            self.requests += 1
            if len(encoded) <= OCSP_GET_LIMIT and not use_nonce:
                from urllib.parse import quote

                response = fetch(
                    responder.rstrip("/") + "/" + quote(encoded, safe=""),
                    deadline=deadline,
                    max_bytes=MAX_OCSP_BYTES,
                    allow_networks=allow_networks,
                )
            else:
                response = fetch(
                    responder,
                    method="POST",
                    body=request,
                    headers={"Content-Type": "application/ocsp-request"},
                    deadline=deadline,
                    max_bytes=MAX_OCSP_BYTES,
                    allow_networks=allow_networks,
                )
        except FetchError as exc:
            return RevocationFacts(
                "ocsp",
                UNKNOWN,
                Reason.OCSP_UNAVAILABLE,
                responder,
                str(exc),
                duration_seconds=time.monotonic() - started,
                requested_at=requested_at,
            )
        now = datetime.now(tz=cert.not_valid_after_utc.tzinfo)
        if response.status != 200:
            judgement = Judgement(UNKNOWN, Reason.OCSP_UNAVAILABLE, f"HTTP {response.status} from the responder")
        else:
            judgement = evaluate_ocsp(response.body, cert, issuer, now, nonce=nonce, skew=skew)
        facts = replace(
            revocation_facts("ocsp", responder, judgement, time.monotonic() - started, response.status),
            requested_at=requested_at,
        )
        if judgement.reason in (Reason.OK, Reason.REVOKED) and judgement.next_update:
            with self._lock:
                self._ocsp[key] = (min(judgement.next_update, time.time() + 86400), facts)
                while len(self._ocsp) > MAX_OCSP_CACHE:
                    self._ocsp.popitem(last=False)
        return facts

    def fetch_crl(
        self,
        url: str,
        issuer: x509.Certificate,
        *,
        deadline: float,
        allow_networks: tuple[str, ...] = (),
        revalidate: bool = False,
        max_bytes: int | None = None,
    ) -> tuple[CrlInfo, float | None, int | None]:
        """(CRL judgement, seconds the fetch took or None from cache, HTTP status).
        ``revalidate`` asks the server (conditionally) even before nextUpdate."""
        cache_key = (url, allow_networks)
        with self._lock:
            entry = self._crls.get(cache_key)
        now_wall = time.time()
        if (
            not revalidate
            and entry is not None
            and entry.info.crl is not None
            and entry.info.next_update is not None
            and now_wall < entry.info.next_update
            and time.monotonic() - entry.fetched < self.crl_refresh
        ):
            return entry.info, None, None
        headers = {}
        if entry is not None and entry.etag:
            headers["If-None-Match"] = entry.etag
        if entry is not None and entry.last_modified:
            headers["If-Modified-Since"] = entry.last_modified
        try:
            self.requests += 1
            response = fetch(
                url,
                deadline=deadline,
                max_bytes=max_bytes or self.max_crl_bytes,
                allow_networks=allow_networks,
                headers=headers,
            )
        except FetchError as exc:
            reason = Reason.CRL_TOO_LARGE if exc.kind == "too_large" else Reason.CRL_UNAVAILABLE
            return CrlInfo(None, reason, str(exc)), None, None
        now = datetime.now(tz=issuer.not_valid_after_utc.tzinfo)
        if response.status == 304 and entry is not None:
            # Unchanged: its signature was checked when it arrived; only the clock moved.
            info = entry.info
            if info.reason is Reason.OK and info.next_update is not None and info.next_update < time.time() - 300:
                info = replace(info, reason=Reason.CRL_STALE, message=f"the CRL expired at {info.next_update:.0f}")
        elif response.status != 200:
            return (
                CrlInfo(None, Reason.CRL_UNAVAILABLE, f"HTTP {response.status} for {url}"),
                response.seconds,
                response.status,
            )
        else:
            info = evaluate_crl(response.body, issuer, now)
        with self._lock:
            self._crls[cache_key] = _CrlEntry(
                info, time.monotonic(), response.headers.get("etag"), response.headers.get("last-modified")
            )
        return info, response.seconds, response.status

    def check_crl(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        url: str | None,
        *,
        deadline: float,
        allow_networks: tuple[str, ...] = (),
    ) -> RevocationFacts:
        urls = [url] if url else crl_urls(cert)
        if not urls:
            return RevocationFacts(
                "crl", NOT_APPLICABLE, Reason.OK, "", "the certificate names no CRL distribution point"
            )
        started = time.monotonic()
        info, _, status = self.fetch_crl(urls[0], issuer, deadline=deadline, allow_networks=allow_networks)
        judgement = crl_lookup(info, cert)
        return revocation_facts("crl", urls[0], judgement, time.monotonic() - started, status)


def revocation_facts(
    method: str, source: str, judgement: Judgement, seconds: float, status: int | None
) -> RevocationFacts:
    return RevocationFacts(
        method=method,
        state=judgement.state,
        reason=judgement.reason,
        source=source,
        message=judgement.message,
        stale=judgement.stale,
        this_update=judgement.this_update,
        next_update=judgement.next_update,
        produced_at=judgement.produced_at,
        revocation_time=judgement.revocation_time,
        revocation_reason=judgement.revocation_reason,
        duration_seconds=seconds,
        http_status=status,
    )


def expand_paths(patterns: tuple[str, ...]) -> list[str]:
    """Globs (``**`` included) expanded in order; a literal path is kept even when
    missing, so that its absence is reported rather than silently skipped."""
    found: dict[str, None] = {}
    for pattern in patterns:
        if glob.has_magic(pattern):
            found.update(dict.fromkeys(sorted(glob.glob(pattern, recursive=True))))
        else:
            found[pattern] = None
    return list(found)


def load_certificates(path: str) -> list[x509.Certificate]:
    """Certificates of a PEM or DER file (raises OSError or ValueError)."""
    with open(path, "rb") as handle:
        data = handle.read()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _issuer_id(issuer: x509.Certificate) -> str:
    return issuer.fingerprint(hashes.SHA256()).hex()


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
