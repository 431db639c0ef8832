"""Property-based fuzzing (hypothesis) of every parser that reads bytes someone else
wrote: the PEM/bundle splitter and ``parse_container`` (PEM, DER, PKCS#7, PKCS#12),
OCSP and CRL evaluation, and the Kubernetes watch-event decoder.

Contract: no exception escapes, only the documented typed failures come back, and
each call finishes in bounded time (hypothesis' ``deadline``).  Inputs are arbitrary
bytes and mutations (flips, truncations, splices, insertions) of real, valid
objects, so the parsers are driven past their first length check.

The runs are derandomized (a fixed sequence of examples, no example database) so CI
is stable; ``CERTSCOPE_FUZZ_EXAMPLES`` raises the count for a longer local run.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509 import ocsp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from probes.certparse import Parsed, _pem_blocks, parse_container
from probes.kubewatch import read_events
from probes.reasons import Reason
from probes.revocation import GOOD, REVOKED, UNKNOWN, crl_lookup, evaluate_crl, evaluate_ocsp
from tests import pkcs12_forge
from tests.pki import build_pki

EXAMPLES = int(os.environ.get("CERTSCOPE_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=dt.timedelta(seconds=5),  # one call; generous under a loaded CI machine
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PKI = build_pki()
NOW = dt.datetime.now(dt.UTC)
P12_PASSWORD = b"fuzz-canary-password-7d1e"
P12 = pkcs12.serialize_key_and_certificates(
    b"fuzz",
    PKI.valid.key,
    PKI.valid.cert,
    [PKI.intermediate.cert],
    serialization.BestAvailableEncryption(P12_PASSWORD),
)
P7 = pkcs7.serialize_certificates([PKI.valid.cert, PKI.intermediate.cert], serialization.Encoding.DER)
BUNDLE = PKI.valid.pem + b"text between\n" + PKI.intermediate.pem + PKI.valid.key_pem + PKI.root.pem


def _ocsp_response(status: ocsp.OCSPCertStatus) -> bytes:
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=PKI.valid.cert,
            issuer=PKI.intermediate.cert,
            algorithm=hashes.SHA1(),
            cert_status=status,
            this_update=NOW - dt.timedelta(hours=1),
            next_update=NOW + dt.timedelta(days=1),
            revocation_time=NOW - dt.timedelta(days=1) if status == ocsp.OCSPCertStatus.REVOKED else None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, PKI.intermediate.cert)
    )
    return builder.sign(PKI.intermediate.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


OCSP_GOOD = _ocsp_response(ocsp.OCSPCertStatus.GOOD)
OCSP_REVOKED = _ocsp_response(ocsp.OCSPCertStatus.REVOKED)
CRL = (
    x509.CertificateRevocationListBuilder()
    .issuer_name(PKI.intermediate.cert.subject)
    .last_update(NOW - dt.timedelta(hours=1))
    .next_update(NOW + dt.timedelta(days=1))
    .add_revoked_certificate(
        x509.RevokedCertificateBuilder()
        .serial_number(PKI.valid.cert.serial_number)
        .revocation_date(NOW - dt.timedelta(days=1))
        .build()
    )
    .add_extension(x509.CRLNumber(7), critical=False)
    .sign(PKI.intermediate.key, hashes.SHA256())
)
CRL_DER = CRL.public_bytes(serialization.Encoding.DER)
CRL_PEM = CRL.public_bytes(serialization.Encoding.PEM)


@st.composite
def mutated(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A seed with a few flips, a truncation, a splice of another seed or an insertion."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 3))):
        operation = draw(st.sampled_from(("flip", "truncate", "splice", "insert", "delete")))
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        if operation == "flip":
            data[position] ^= draw(st.integers(1, 255))
        elif operation == "truncate":
            del data[position:]
        elif operation == "splice":
            other = draw(st.sampled_from(seeds))
            data[position:] = other[draw(st.integers(0, len(other) - 1)) :]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[position : position + draw(st.integers(1, 64))]
    return bytes(data)


def _pem_block(block_type: str, body: bytes) -> bytes:
    text = base64.encodebytes(body)
    return f"-----BEGIN {block_type}-----\n".encode() + text + f"-----END {block_type}-----\n".encode()


@st.composite
def pem_documents(draw: st.DrawFn) -> bytes:
    """Blocks of known and odd types around real and broken DER, with noise between."""
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        block_type = draw(
            st.sampled_from(
                ("CERTIFICATE", "TRUSTED CERTIFICATE", "PKCS7", "PRIVATE KEY", "X509 CRL", "CERTIFICATE REQUEST")
            )
            | st.text("ABCXYZ #09", min_size=0, max_size=70)
        )
        body = draw(mutated((PKI.valid.der, PKI.root.der, P7, CRL_DER)) | st.binary(max_size=200))
        block = _pem_block(block_type, body)
        if draw(st.booleans()):
            cut = draw(st.integers(0, len(block)))
            block = block[:cut]  # BEGIN without END, half a marker, ...
        parts.append(draw(st.binary(max_size=20)) + block)
    return b"".join(parts)


PARSE_REASONS = {
    Reason.EMPTY_FILE,
    Reason.PARSE_ERROR,
    Reason.NO_CERTIFICATE,
    Reason.BAD_PASSWORD,
    Reason.MALFORMED_CERTIFICATE,
    Reason.KDF_TOO_EXPENSIVE,  # a mutation that makes an iteration count absurd
}


def _check_parsed(parsed: Parsed, started: float) -> None:
    assert isinstance(parsed, Parsed)
    assert time.monotonic() - started < 5
    for error in parsed.errors:
        assert error.reason in PARSE_REASONS, error
        assert P12_PASSWORD.decode() not in error.message
    for facts in parsed.certificates:
        assert len(facts.fingerprint_sha256) == 64
        assert isinstance(facts.not_after, float)


@FUZZ
@given(st.binary(max_size=4096) | mutated((BUNDLE, PKI.valid.der, P7)) | pem_documents())
@example(b"-----BEGIN " * 10_000)
@example(b"-----BEGIN CERTIFICATE-----" * 5_000)
@example(b"\x30\x82\xff\xff" + b"\x00" * 100)
@example(b"\x30\x80" * 2_000)
def test_parse_container_never_raises(data: bytes) -> None:
    started = time.monotonic()
    blocks, truncated = _pem_blocks(data)
    assert truncated >= 0 and all(isinstance(t, bytes) for t, _ in blocks)
    _check_parsed(parse_container(data, "fuzz.pem"), started)


@FUZZ
@given(mutated((P12,)), st.sampled_from((None, b"", b"wrong", P12_PASSWORD)))
@example(P12, P12_PASSWORD)
@example(P12, None)
@example(pkcs12_forge.expensive_mac([PKI.valid.der], 2**31 - 1), None)
@example(pkcs12_forge.expensive_key_bag([PKI.valid.der], 2**31 - 1), b"wrong")
def test_pkcs12_path_never_raises(data: bytes, password: bytes | None) -> None:
    started = time.monotonic()
    parsed = parse_container(data, "fuzz.p12", pkcs12_password=lambda: password)
    _check_parsed(parsed, started)
    if data == P12 and password == P12_PASSWORD:
        assert len(parsed.certificates) == 2 and not parsed.errors
    if data == P12 and password != P12_PASSWORD:
        assert [e.reason for e in parsed.errors] == [Reason.BAD_PASSWORD]


OCSP_REASONS = {
    Reason.OK,
    Reason.REVOKED,
    Reason.OCSP_BAD_RESPONSE,
    Reason.OCSP_UNAUTHORIZED_SIGNER,
    Reason.OCSP_STALE,
    Reason.OCSP_UNKNOWN_CERTIFICATE,
}


@FUZZ
@given(st.binary(max_size=2048) | mutated((OCSP_GOOD, OCSP_REVOKED)))
@example(OCSP_GOOD)
@example(OCSP_REVOKED)
def test_evaluate_ocsp_never_raises(data: bytes) -> None:
    started = time.monotonic()
    judgement = evaluate_ocsp(data, PKI.valid.cert, PKI.intermediate.cert, NOW)
    assert time.monotonic() - started < 5
    assert judgement.state in (GOOD, REVOKED, UNKNOWN)
    assert judgement.reason in OCSP_REASONS, judgement
    if data == OCSP_GOOD:
        assert judgement.state == GOOD
    if data == OCSP_REVOKED:
        assert judgement.state == REVOKED


CRL_REASONS = {Reason.OK, Reason.CRL_BAD_SIGNATURE, Reason.CRL_STALE, Reason.CRL_UNAVAILABLE}


@FUZZ
@given(st.binary(max_size=2048) | mutated((CRL_DER, CRL_PEM)))
@example(CRL_DER)
@example(CRL_PEM)
# Found by a 5,000-example run: an issuer attribute with the RELATIVE-OID tag made
# ``crl.issuer`` raise out of evaluate_crl.
@example(CRL_DER.replace(b"\x0c\x0fcertscope tests", b"\x0d\x0fcertscope tests", 1))
def test_evaluate_crl_never_raises(data: bytes) -> None:
    started = time.monotonic()
    info = evaluate_crl(data, PKI.intermediate.cert, NOW)
    judgement = crl_lookup(info, PKI.valid.cert)
    assert time.monotonic() - started < 5
    assert info.reason in CRL_REASONS, info
    assert judgement.state in (GOOD, REVOKED, UNKNOWN)
    if data in (CRL_DER, CRL_PEM):
        assert info.reason is Reason.OK and judgement.state == REVOKED
    if judgement.state == REVOKED:
        assert info.reason in (Reason.OK, Reason.CRL_STALE), "only a verified CRL may say revoked"


class FakeResponse:
    """What ``read_events`` reads of a ``requests.Response``: ``iter_content(None)``."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def iter_content(self, chunk_size: int | None = None) -> Iterator[bytes]:
        assert chunk_size is None
        yield from self.chunks


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
watch_events = st.fixed_dictionaries(
    {"type": st.sampled_from(("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")) | st.text(max_size=8)},
    optional={
        "object": json_values
        | st.fixed_dictionaries({}, optional={"metadata": json_values, "data": json_values, "code": json_values})
    },
)


@st.composite
def watch_streams(draw: st.DrawFn) -> list[bytes]:
    lines = draw(
        st.lists(
            st.builds(lambda e: json.dumps(e).encode(), watch_events | json_values) | st.binary(max_size=40),
            max_size=6,
        )
    )
    stream = b"\n".join(lines) + draw(st.sampled_from((b"", b"\n", b"\r\n")))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


@FUZZ
@given(watch_streams())
@example([b"[" * 100_000 + b"]" * 100_000 + b"\n"])
@example([b'{"type":"ADDED","object":{"metadata":"x"}}\n'])
@example([b'{"type":"ADDED","object":[1]}\n', b"1\n"])
@example([b'{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "5"}}}\n'])
def test_watch_event_decoder_yields_objects_or_raises_value_error(chunks: list[bytes]) -> None:
    started = time.monotonic()
    events: list[Any] = []
    try:
        for event in read_events(FakeResponse(chunks)):  # type: ignore[arg-type]
            events.append(event)
    except ValueError:
        pass  # the documented failure: the watch loop counts it as "dropped" and reconnects
    assert time.monotonic() - started < 5
    for event in events:
        assert isinstance(event, dict)
        obj = event.get("object") or {}
        assert isinstance(obj, dict) and isinstance(obj.get("metadata") or {}, dict)


def test_a_watch_line_without_end_is_bounded() -> None:
    endless = [b'{"type": "ADDED", "object": {"data": "' + b"A" * (1 << 20)] * 17
    with pytest.raises(ValueError, match="longer than"):
        list(read_events(FakeResponse(endless)))  # type: ignore[arg-type]
