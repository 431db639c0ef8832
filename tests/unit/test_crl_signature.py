"""A CRL's signature is checked over the bytes received, with cryptography's verdict.

``evaluate_crl`` verifies a DER CRL's signature over its tbsCertList as received
(``is_signature_valid`` encodes it again: 100 ms for 100,000 entries) and leaves
every other case to ``is_signature_valid``.  These tests hold the two to the same
answer over PKITS's CRLs (NIST's test suite, with their issuers) and over CRLs built
to take each branch; and ``crl_lookup``'s serial index to the same answers as a walk.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import cryptography_vectors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from probes.der import read_element
from probes.reasons import Reason
from probes.revocation import REVOKED, crl_lookup, evaluate_crl
from probes.revocation.judges import _crl_signed_by, _tbs_as_received
from tests.fixtures.pki import issue
from tests.fixtures.revocation_servers import build_revocation_pki

PKITS = Path(cryptography_vectors.__file__).parent / "x509" / "PKITS_data"
NOW = dt.datetime.now(dt.UTC)
SHA256 = hashes.SHA256()


def _pkits_pairs() -> list[tuple[Path, Path]]:
    """Each PKITS CRL ``<Name>CRL.crl`` with the CA certificate ``<Name>Cert.crt``."""
    pairs = []
    for crl_path in sorted((PKITS / "crls").glob("*CRL.crl")):
        cert_path = PKITS / "certs" / crl_path.name.replace("CRL.crl", "Cert.crt")
        if cert_path.exists():
            pairs.append((crl_path, cert_path))
    return pairs


PAIRS = _pkits_pairs()


def test_pkits_gives_enough_pairs() -> None:
    assert len(PAIRS) >= 50


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_the_verdict_is_cryptographys_over_every_pkits_crl() -> None:
    verdicts = []
    fast: list[str] = []
    for crl_path, cert_path in PAIRS:
        data = crl_path.read_bytes()
        try:  # a few use DSA keys with inherited parameters, which cryptography refuses
            crl = x509.load_der_x509_crl(data)
            issuer = x509.load_der_x509_certificate(cert_path.read_bytes())
        except ValueError:
            continue
        expected = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        assert _crl_signed_by(crl, data, issuer) is expected, crl_path.name
        verdicts.append(expected)
        if expected:  # the received bytes were what was signed: the fast path applies
            assert _tbs_as_received(data) == crl.tbs_certlist_bytes, crl_path.name
            fast.append(crl_path.name)
    # Both answers occur (BadCRLSignatureCACRL.crl is signed wrongly, the rest not).
    assert len(verdicts) >= 50 and True in verdicts and False in verdicts
    assert len(fast) >= 40


def _crl(
    issuer_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    issuer: x509.Certificate,
    serials: range,
    algorithm: hashes.SHA256 | hashes.SHA384 = SHA256,
    rsa_padding: padding.PSS | None = None,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(NOW - dt.timedelta(hours=1))
        .next_update(NOW + dt.timedelta(days=1))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - dt.timedelta(days=1)).build()
        )
    return builder.sign(issuer_key, algorithm, rsa_padding=rsa_padding)


def _der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def test_a_good_ec_crl_verifies_over_the_received_bytes() -> None:
    ca = issue("crl test EC CA", ca=True)
    crl = _crl(ca.key, ca.cert, range(1, 50))
    data = _der(crl)
    assert _tbs_as_received(data) == crl.tbs_certlist_bytes
    assert evaluate_crl(data, ca.cert, NOW).reason.value == "ok"


def test_an_rsa_pss_crl_is_left_to_cryptography() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = issue("crl test RSA CA", ca=True, key=key)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    crl = _crl(key, ca.cert, range(1, 5), rsa_padding=pss)
    data = _der(crl)
    assert crl.is_signature_valid(key.public_key())
    assert _crl_signed_by(crl, data, ca.cert)  # PKCS#1 v1.5 fails: cryptography says yes


def test_a_changed_entry_or_signature_fails_both_ways() -> None:
    ca = issue("crl test EC CA", ca=True)
    data = _der(_crl(ca.key, ca.cert, range(1, 50)))
    tampered = data.replace(bytes([0x02, 0x01, 0x07]), bytes([0x02, 0x01, 0x08]), 1)  # serial 7 -> 8
    assert tampered != data
    crl = x509.load_der_x509_crl(tampered)
    assert not crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    assert not _crl_signed_by(crl, tampered, ca.cert)
    other = issue("another EC CA", ca=True)
    assert not _crl_signed_by(x509.load_der_x509_crl(data), data, other.cert)


def test_different_algorithms_inside_and_outside_are_refused() -> None:
    """A tbsCertList signed with SHA-256 whose own signature field names SHA-384:
    the signature verifies under the outer algorithm; cryptography refuses to load
    such a CRL, and the bytes received are not taken as signed either."""
    ca = issue("crl test EC CA", ca=True)
    signed_384 = _crl(ca.key, ca.cert, range(1, 5), hashes.SHA384())
    tbs = signed_384.tbs_certlist_bytes
    der_256 = _der(_crl(ca.key, ca.cert, range(1, 2), hashes.SHA256()))
    _, start, end = read_element(der_256, 0)
    _, _, tbs_end = read_element(der_256, start, end)
    _, _, algorithm_end = read_element(der_256, tbs_end, end)
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    signature = ca.key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    body = tbs + der_256[tbs_end:algorithm_end] + bytes([0x03, len(signature) + 1, 0x00]) + signature
    data = bytes([0x30, 0x82]) + len(body).to_bytes(2, "big") + body
    assert _tbs_as_received(data) is None
    with pytest.raises(ValueError, match="do not match"):
        x509.load_der_x509_crl(data)
    assert evaluate_crl(data, ca.cert, NOW).reason is Reason.CRL_UNAVAILABLE


def test_a_pem_crl_is_left_to_cryptography() -> None:
    ca = issue("crl test EC CA", ca=True)
    crl = _crl(ca.key, ca.cert, range(1, 5))
    pem = crl.public_bytes(serialization.Encoding.PEM)
    assert _tbs_as_received(pem) is None
    assert evaluate_crl(pem, ca.cert, NOW).reason.value == "ok"


def test_lookups_through_the_index_find_what_a_walk_finds() -> None:
    ca = issue("crl test EC CA", ca=True)
    revoked = range(1000, 3000, 7)
    info = evaluate_crl(_der(_crl(ca.key, ca.cert, revoked)), ca.cert, NOW)
    assert info.crl is not None

    class Serial:
        def __init__(self, serial_number: int) -> None:
            self.serial_number = serial_number

    serials = [*range(990, 1100), 2996, 2997, 3003]
    answers = [crl_lookup(info, Serial(s)).state == REVOKED for s in serials]  # type: ignore[arg-type]
    assert info.index.hashes is not None  # built at the second lookup
    assert answers == [info.crl.get_revoked_certificate_by_serial_number(s) is not None for s in serials]
    first = info.crl.get_revoked_certificate_by_serial_number(1007)
    found = info.index.find(info.crl, 1007)
    assert first is not None and found is not None
    assert (found.serial_number, found.revocation_date_utc) == (first.serial_number, first.revocation_date_utc)
    assert answers == [s in revoked for s in serials]
    assert sum(answers) == len([s for s in serials if s in revoked]) > 10


def test_the_index_tells_apart_serials_of_one_hash_and_keeps_a_serial_s_first_entry() -> None:
    """Python hashes an int modulo 2**61 - 1: these serials share a hash.  A serial
    listed twice is found at its first entry, as cryptography's walk finds it."""
    ca = issue("crl test EC CA", ca=True)
    modulus = 2**61 - 1
    base = 0x1234_5678_9ABC
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(NOW - dt.timedelta(hours=1))
        .next_update(NOW + dt.timedelta(days=1))
    )
    dates = [NOW - dt.timedelta(days=days) for days in (3, 2, 1)]
    for serial, date in ((base + modulus, dates[0]), (base + 2 * modulus, dates[1]), (base + modulus, dates[2])):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(date).build()
        )
    crl = builder.sign(ca.key, SHA256)
    info = evaluate_crl(_der(crl), ca.cert, NOW)
    assert info.crl is not None
    index = info.index
    for _ in range(2):  # the first lookup walks, the second builds the index
        index.find(info.crl, base)
    assert index.hashes is not None and len(set(index.hashes)) == 1
    for serial in (base, base + modulus, base + 2 * modulus, base + 3 * modulus):
        found = index.find(info.crl, serial)
        walked = info.crl.get_revoked_certificate_by_serial_number(serial)
        assert (found is None) == (walked is None), serial
        if found is not None and walked is not None:
            assert (found.serial_number, found.revocation_date_utc) == (
                walked.serial_number,
                walked.revocation_date_utc,
            )
    first = index.find(info.crl, base + modulus)
    assert first is not None and first.revocation_date_utc == dates[0].replace(microsecond=0)


def test_a_crl_from_openssl_ca_takes_the_fast_path_and_cryptography_agrees(tmp_path: Path) -> None:
    """``openssl ca -gencrl``, the reference tool, signed by the CA and by an
    unrelated key with the CA's name."""
    pki = build_revocation_pki(tmp_path / "pki")
    for signer, expected in (("ca", True), ("wrong_key", False)):
        data = pki.gencrl(f"crl-{signer}", signer=signer).der  # type: ignore[arg-type]
        crl = x509.load_der_x509_crl(data)
        assert _tbs_as_received(data) == crl.tbs_certlist_bytes
        assert crl.is_signature_valid(pki.ca.cert.public_key()) is expected  # type: ignore[arg-type]
        assert _crl_signed_by(crl, data, pki.ca.cert) is expected
        info = evaluate_crl(data, pki.ca.cert, NOW)
        assert info.reason is (Reason.OK if expected else Reason.CRL_BAD_SIGNATURE), info.message
        if expected:
            assert crl_lookup(info, pki.revoked.cert).state == REVOKED
            assert crl_lookup(info, pki.good.cert).state != REVOKED
