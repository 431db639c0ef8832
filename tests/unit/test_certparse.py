"""PEM block splitting and field extraction on hand-made edge cases."""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from pathlib import Path

import cryptography_vectors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from probes import certparse
from probes.certparse import _pem_blocks, parse_container
from tests.fixtures.pki import Pki

VECTORS = Path(cryptography_vectors.__file__).parent


def body(pem: bytes) -> bytes:
    return pem.split(b"-----", 3)[2].split(b"-----END")[0]


@pytest.mark.parametrize(
    ("text", "types", "truncated"),
    [
        (b"", [], 0),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", [b"CERTIFICATE"], 0),
        (b"junk -----BEGIN X-----\nA\n-----END X----- junk -----BEGIN Y-----\nB\n-----END Y-----", [b"X", b"Y"], 0),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n", [], 1),  # no END
        (b"-----BEGIN A-----\nA\n-----END B-----\n", [], 1),  # END of another type
        (b"-----BEGIN A-----\nA\n-----BEGIN B-----\nB\n-----END B-----\n-----END A-----", [b"B"], 1),  # nested
        (b"-----BEGIN lower-----\nA\n-----END lower-----", [], 1),  # not a PEM type
        (b"-----BEGIN CERTIFICATE", [], 1),
    ],
)
def test_pem_blocks(text: bytes, types: list[bytes], truncated: int) -> None:
    blocks, counted = _pem_blocks(text)
    assert [block_type for block_type, _ in blocks] == types
    assert counted == truncated


def test_a_bad_block_does_not_hide_the_good_ones(pki: Pki) -> None:
    broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"
    parsed = parse_container(pki.valid.pem + broken + pki.root.pem + b"-----BEGIN CERTIFICATE-----\nAB", "bundle")
    assert [c.subject_cn for c in parsed.certificates] == ["valid.test", "certscope test root"]
    assert [e.reason.value for e in parsed.errors] == ["parse_error", "parse_error"]
    assert [e.item for e in parsed.errors] == ["bundle[1]", "bundle"]
    root = parsed.certificates[1]
    assert root.self_issued and root.is_ca and not parsed.certificates[0].self_issued


# -- the one-go reading gives the facts of the field-by-field reading ----------------


def _vector_certificates() -> list[tuple[str, bytes]]:
    """(name, DER) of every certificate ``cryptography`` loads from its own x509
    vectors: odd names, odd keys, unusual encodings and broken extensions."""
    found: list[tuple[str, bytes]] = []
    for path in sorted((VECTORS / "x509").rglob("*")):
        if not path.is_file() or path.stat().st_size > 1_000_000:
            continue
        data = path.read_bytes()
        blocks = [b for t, b in _pem_blocks(data)[0] if t == b"CERTIFICATE"] if b"-----BEGIN " in data else None
        ders = [base64.b64decode(b"".join(b.split())) for b in blocks] if blocks is not None else [data]
        for number, der in enumerate(ders):
            try:
                x509.load_der_x509_certificate(der)
            except Exception:  # noqa: BLE001 - not a certificate cryptography loads
                continue
            found.append((f"{path.name}[{number}]", der))
    return found


VECTOR_CERTIFICATES = _vector_certificates()


def test_vectors_cover_both_readings_and_both_spki_paths() -> None:
    """The comparison below means something only if the corpus holds certificates
    the one-go reading gives up on, and keys whose SPKI is or is not canonical."""
    gave_up = 0
    canonical: Counter[bool] = Counter()
    for _, der in VECTOR_CERTIFICATES:
        cert = x509.load_der_x509_certificate(der)
        try:
            certparse._facts_at_once(cert, der, "")
        except Exception:  # noqa: BLE001
            gave_up += 1
            continue
        canonical[certparse._spki_is_canonical(certparse._issuer_and_spki(der)[1], _key_type(cert))] += 1
    assert len(VECTOR_CERTIFICATES) > 400
    assert gave_up > 10
    assert canonical[True] > 300 and canonical[False] >= 5


def _key_type(cert: x509.Certificate) -> str:
    return certparse._key_type_and_bits(cert.public_key())[0]


@pytest.mark.parametrize(("name", "der"), VECTOR_CERTIFICATES, ids=[n for n, _ in VECTOR_CERTIFICATES])
def test_one_go_reading_matches_field_by_field(name: str, der: bytes) -> None:
    cert = x509.load_der_x509_certificate(der)
    expected = certparse._facts_field_by_field(cert)
    certparse._known.pop(hashlib.sha256(der).hexdigest(), None)
    assert certparse.facts_from_der(der) == expected
    assert certparse.facts_from_certificate(cert) == expected
    # And on a second certificate from the same issuer, its names now from the cache.
    assert certparse.facts_from_certificate(x509.load_der_x509_certificate(der)) == expected


def test_issuer_strings_are_shared(pki: Pki) -> None:
    first = certparse.facts_from_certificate(pki.valid.cert)
    second = certparse.facts_from_certificate(pki.expired.cert)
    assert first.issuer == "CN=certscope test intermediate,O=certscope tests"
    assert first.issuer is second.issuer and first.issuer_cn is second.issuer_cn


def _spki_der(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_spki_digest_is_taken_raw_only_when_public_bytes_would_write_it_again() -> None:
    ec_key = ec.generate_private_key(ec.SECP384R1()).public_key()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    assert certparse._spki_is_canonical(_spki_der(ec_key), "ec")
    assert certparse._spki_is_canonical(_spki_der(rsa_key), "rsa")
    # The same keys as some certificates carry them: a compressed EC point, and
    # rsaEncryption without its NULL parameters.  public_bytes writes neither back.
    compressed = ec_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    ec_algorithm = _spki_der(ec_key)[2:23]  # SEQUENCE { id-ecPublicKey, secp384r1 }
    ec_compressed = _der(0x30, ec_algorithm + _der(0x03, b"\x00" + compressed))
    assert not certparse._spki_is_canonical(ec_compressed, "ec")
    rsa_bits = _spki_der(rsa_key)[2 + 2 + 15 :]  # the BIT STRING after the AlgorithmIdentifier
    rsa_no_null = _der(0x30, bytes.fromhex("300b06092a864886f70d010101") + rsa_bits)
    assert not certparse._spki_is_canonical(rsa_no_null, "rsa")


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(encoded)]) + encoded + content


# Text the RFC 4514 escaping changes (\ " + , ; < > NUL, leading # or space, trailing
# space) mixed with text it leaves alone.
_NAME_TEXT = st.text(alphabet=st.sampled_from(list('ab é#\\"+,;<>\x00=.-')), min_size=1, max_size=12)
_NAME_OIDS = [NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.USER_ID]
_NAME_OIDS.append(x509.ObjectIdentifier("1.2.3.4.5"))  # no short name: dotted in the string
_ATTRIBUTES = st.builds(
    lambda oid, value: x509.NameAttribute(oid, value, _validate=False), st.sampled_from(_NAME_OIDS), _NAME_TEXT
)
_RDNS = st.lists(_ATTRIBUTES, min_size=1, max_size=3, unique_by=lambda a: (a.oid, a.value)).map(
    x509.RelativeDistinguishedName
)


@settings(max_examples=300, derandomize=True, database=None)
@given(st.lists(_RDNS, max_size=4))
def test_name_strings_are_cryptographys(rdns: list[x509.RelativeDistinguishedName]) -> None:
    name = x509.Name(rdns)
    assert certparse._name_strings(name) == (name.rfc4514_string(), certparse._common_name(name))


def test_name_strings_of_a_bit_string_attribute() -> None:
    unique_id = x509.NameAttribute(NameOID.X500_UNIQUE_IDENTIFIER, b"\x01\xff", _type=x509.name._ASN1Type.BitString)
    name = x509.Name(
        [
            x509.RelativeDistinguishedName([unique_id]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "x")]),
        ]
    )
    assert certparse._name_strings(name) == (name.rfc4514_string(), "x")
