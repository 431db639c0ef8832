"""Stapled OCSP: judge the OCSP response the server stapled to the probe's own
handshake (``stapled_status``) as any OCSP answer.

The handshake asks for it with the ``status_request`` extension
(``probes.tls_client.TlsClient(request_staple=True)``); the staple arrives with the
server's certificate, over direct TLS and after STARTTLS alike.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509

from probes.reasons import Reason
from probes.revocation.judges import NOT_APPLICABLE, UNKNOWN, evaluate_ocsp, revocation_facts
from probes.revocation_facts import RevocationFacts


def stapled_status(leaf: x509.Certificate, issuer: x509.Certificate | None, staple: bytes | None) -> RevocationFacts:
    """The leaf's state in the OCSP response stapled to the handshake (None: none was)."""
    if staple is None:
        return RevocationFacts("stapled", NOT_APPLICABLE, Reason.OK, "", "the server staples no OCSP response")
    if issuer is None:
        return RevocationFacts("stapled", UNKNOWN, Reason.OCSP_BAD_RESPONSE, "", "the leaf's issuer is unknown")
    judged = evaluate_ocsp(staple, leaf, issuer, datetime.now(UTC))
    return revocation_facts("stapled", "stapled", judged, 0.0, None)
