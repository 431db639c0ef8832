"""The OCSP client: builds a request, asks the responder, caches the answer.

``OcspClient.status(query)`` asks the responder the query names (else the first one
in the certificate's AIA) over ``probes.fetch`` (egress policy, deadline, byte cap):
a GET when the encoded request is short enough (RFC 6960 A.1), else a POST, and
always a POST with a nonce.  The answer is judged by ``judges.evaluate_ocsp`` and a
definite one (good or revoked, with a nextUpdate) is reused until its nextUpdate,
one day at most, so a responder is not asked more often than its answers expire.
The ``ocsp`` probe kind (``probes/ocsp.py``) and the ``tls`` kind both ask through
the one client a process shares (``RevocationChecker.ocsp``).
"""

from __future__ import annotations

import base64
import functools
import os
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from datetime import datetime, timedelta
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from probes.fetch import FetchError, fetch
from probes.reasons import Reason
from probes.revocation.judges import (
    DEFAULT_SKEW,
    UNKNOWN,
    RevocationQuery,
    evaluate_ocsp,
    judgement,
    not_applicable,
    ocsp_urls,
    revocation_facts,
)
from probes.revocation_facts import RevocationFacts

MAX_OCSP_BYTES = 64 * 1024
MAX_OCSP_CACHE = 10_000
OCSP_GET_LIMIT = 255  # bytes of URL-encoded request; longer requests are POSTed (RFC 6960 A.1)


def build_ocsp_request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


class OcspClient:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: OrderedDict[tuple[str, str, int, tuple[str, ...]], tuple[float, RevocationFacts]] = OrderedDict()
        self.requests = 0  # network requests made, for tests and benchmarks

    def status(
        self, query: RevocationQuery, *, use_nonce: bool = False, skew: timedelta = DEFAULT_SKEW
    ) -> RevocationFacts:
        cert, issuer = query.cert, query.issuer
        urls = [query.url] if query.url else ocsp_urls(cert)
        if not urls:
            return not_applicable("ocsp", "the certificate names no OCSP responder")
        responder = urls[0]
        # The egress policy is part of the key: an answer fetched under a looser
        # policy must not reach a probe whose policy refuses the responder.
        key = (responder, _issuer_id(issuer), cert.serial_number, query.allow_networks)
        with self._lock:
            cached = self._answers.get(key)
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
                response = fetch(
                    responder.rstrip("/") + "/" + quote(encoded, safe=""),
                    deadline=query.deadline,
                    max_bytes=MAX_OCSP_BYTES,
                    allow_networks=query.allow_networks,
                )
            else:
                response = fetch(
                    responder,
                    method="POST",
                    body=request,
                    headers={"Content-Type": "application/ocsp-request"},
                    deadline=query.deadline,
                    max_bytes=MAX_OCSP_BYTES,
                    allow_networks=query.allow_networks,
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
            judged = judgement("ocsp", UNKNOWN, Reason.OCSP_UNAVAILABLE, f"HTTP {response.status} from the responder")
        else:
            judged = evaluate_ocsp(response.body, cert, issuer, now, nonce=nonce, skew=skew)
        facts = replace(
            revocation_facts("ocsp", responder, judged, time.monotonic() - started, response.status),
            requested_at=requested_at,
        )
        if judged.reason in (Reason.OK, Reason.REVOKED) and judged.next_update:
            with self._lock:
                self._answers[key] = (min(judged.next_update, time.time() + 86400), facts)
                while len(self._answers) > MAX_OCSP_CACHE:
                    self._answers.popitem(last=False)
        return facts


@functools.lru_cache(maxsize=1024)  # 9 µs a call, once per check, cached or not
def _issuer_id(issuer: x509.Certificate) -> str:
    return issuer.fingerprint(hashes.SHA256()).hex()
