"""Real-world and malformed OCSP responses and CRLs (the cryptography-vectors
package, written by cryptography's maintainers) go through certscope's judges
without an exception escaping: every one yields a state and a reason."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import cryptography_vectors
import pytest
from cryptography import x509

from probes.reasons import Reason
from probes.revocation import GOOD, REVOKED, UNKNOWN, crl_lookup, evaluate_crl, evaluate_ocsp
from tests.pki import build_pki

VECTORS = Path(cryptography_vectors.__file__).parent / "x509"
OCSP_RESPONSES = sorted(p for p in (VECTORS / "ocsp").iterdir() if "resp" in p.name)
CRLS = sorted(
    p for p in VECTORS.rglob("*") if p.is_file() and "crl" in p.name.lower() and p.suffix in (".pem", ".der", ".crl")
)
PKI = build_pki()


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("path", OCSP_RESPONSES, ids=lambda p: p.name)
def test_real_ocsp_responses_are_judged_not_crashed_on(path: Path) -> None:
    judgement = evaluate_ocsp(path.read_bytes(), PKI.valid.cert, PKI.intermediate.cert, datetime.now(UTC))
    # None of these answers is about our test certificate, so none may be "good".
    assert judgement.state == UNKNOWN
    assert judgement.reason in (Reason.OCSP_BAD_RESPONSE, Reason.OCSP_UNAUTHORIZED_SIGNER)


def test_there_are_vectors() -> None:
    assert len(OCSP_RESPONSES) >= 10 and len(CRLS) >= 100


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_real_crls_are_judged_not_crashed_on() -> None:
    states = {}
    for path in CRLS:
        info = evaluate_crl(path.read_bytes(), PKI.intermediate.cert, datetime.now(UTC))
        judgement = crl_lookup(info, PKI.valid.cert)
        states[path.name] = (info.reason, judgement.state)
        # None is signed by our test CA: never good, never revoked.
        assert judgement.state not in (GOOD, REVOKED), path
        assert info.reason in (Reason.CRL_BAD_SIGNATURE, Reason.CRL_UNAVAILABLE), path
    parsed = sum(1 for reason, _ in states.values() if reason is Reason.CRL_BAD_SIGNATURE)
    assert parsed >= len(CRLS) // 2, "most vectors are well-formed CRLs and must parse"


def test_a_crl_lists_what_it_revokes() -> None:
    # PKITS: a CRL signed by its issuer, checked for real.
    issuer = x509.load_der_x509_certificate((VECTORS / "PKITS_data" / "certs" / "GoodCACert.crt").read_bytes())
    data = (VECTORS / "PKITS_data" / "crls" / "GoodCACRL.crl").read_bytes()
    info = evaluate_crl(data, issuer, datetime(2011, 1, 1, tzinfo=UTC))
    assert info.reason is Reason.OK, info.message
    assert info.entries >= 1 and info.number is not None
    revoked = x509.load_der_x509_certificate(
        (VECTORS / "PKITS_data" / "certs" / "InvalidRevokedEETest3EE.crt").read_bytes()
    )
    assert crl_lookup(info, revoked).state == REVOKED
    assert evaluate_crl(data, issuer, datetime(2040, 1, 1, tzinfo=UTC)).reason is Reason.CRL_STALE
