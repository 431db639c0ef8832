"""A delegated OCSP responder's certificate, once found entitled, is not checked again
for each response; no other certificate may take its place in that memory.

The PKI is ``openssl ca``'s (tests.fixtures.revocation_servers); the forged responder
certificate copies the real one's subject, key, issuer name and extensions, and is
signed by a key that is not the CA's.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from probes.reasons import Reason
from probes.revocation import GOOD, UNKNOWN, evaluate_ocsp
from probes.revocation.judges import _delegation_problem
from tests.fixtures.revocation_servers import build_revocation_pki


def _response(
    cert: x509.Certificate, issuer: x509.Certificate, signer_key: ec.EllipticCurvePrivateKey, signer: x509.Certificate
) -> bytes:
    now = dt.datetime.now(dt.UTC)
    response = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert, issuer, hashes.SHA1(), ocsp.OCSPCertStatus.GOOD, now, now + dt.timedelta(days=1), None, None
        )
        .responder_id(ocsp.OCSPResponderEncoding.NAME, signer)
        .certificates([signer])
        .sign(signer_key, hashes.SHA256())
    )
    return response.public_bytes(Encoding.DER)


def _forged(real: x509.Certificate) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(real.issuer)
        .public_key(real.public_key())
        .serial_number(real.serial_number)
        .not_valid_before(real.not_valid_before_utc)
        .not_valid_after(real.not_valid_after_utc)
    )
    for extension in real.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())


def test_a_forged_copy_of_a_trusted_responder_certificate_is_refused(tmp_path: Path) -> None:
    pki = build_revocation_pki(tmp_path / "pki")
    now = dt.datetime.now(dt.UTC)
    real = pki.ocsp_signer.cert
    genuine = _response(pki.good.cert, pki.ca.cert, pki.ocsp_signer.key, real)
    for _ in range(2):  # the second from the memory
        judged = evaluate_ocsp(genuine, pki.good.cert, pki.ca.cert, now)
        assert (judged.state, judged.reason) == (GOOD, Reason.OK), judged.message
    assert _delegation_problem.cache_info().hits >= 1

    forged = _forged(real)
    assert forged.subject == real.subject and forged.public_key() == real.public_key() and forged != real
    judged = evaluate_ocsp(
        _response(pki.good.cert, pki.ca.cert, pki.ocsp_signer.key, forged), pki.good.cert, pki.ca.cert, now
    )
    assert (judged.state, judged.reason) == (UNKNOWN, Reason.OCSP_UNAUTHORIZED_SIGNER)
    assert "not issued by the CA" in judged.message


def test_a_responder_certificate_past_its_validity_is_refused_though_remembered(tmp_path: Path) -> None:
    pki = build_revocation_pki(tmp_path / "pki")
    real = pki.ocsp_signer.cert
    genuine = _response(pki.good.cert, pki.ca.cert, pki.ocsp_signer.key, real)
    assert evaluate_ocsp(genuine, pki.good.cert, pki.ca.cert, dt.datetime.now(dt.UTC)).state == GOOD
    later = real.not_valid_after_utc + dt.timedelta(days=1)
    judged = evaluate_ocsp(genuine, pki.good.cert, pki.ca.cert, later)
    assert judged.reason is Reason.OCSP_UNAUTHORIZED_SIGNER
    assert "validity" in judged.message
