"""The container-format registry (``probes.certparse.CONTAINER_FORMATS``) is the one
place a format is known: each registered format is recognised from a sample built
with ``cryptography`` (and by no other entry), and a format registered in a test is
parsed everywhere ``parse_container`` is, the ``files`` probe included."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from probes import certparse
from probes.certparse import CONTAINER_FORMATS, ContainerFormat, Parsed, ParseOptions, parse_container
from probes.context import ProbeContext
from probes.files import FilesProbe, FilesSettings
from probes.reasons import Reason
from probes.result import CertFacts, SourceError
from tests.pki import Pki

PASSWORD = b"correct horse"
STANDARD = ("PEM", "DER", "PKCS#7", "PKCS#12")


@pytest.fixture
def registry() -> Iterator[certparse.FormatRegistry]:
    """The registry, put back as it was whatever the test registers."""
    saved = CONTAINER_FORMATS.formats
    yield CONTAINER_FORMATS
    CONTAINER_FORMATS.restore(saved)


def samples(pki: Pki) -> dict[str, tuple[bytes, list[str]]]:
    """One sample per standard format: its bytes and the fingerprints it holds."""
    chain = [pki.valid.cert, pki.intermediate.cert]
    return {
        "PEM": (b"leaf:\n" + pki.valid.pem + pki.root.pem, [pki.valid.fingerprint, pki.root.fingerprint]),
        "DER": (pki.valid.der, [pki.valid.fingerprint]),
        "PKCS#7": (
            pkcs7.serialize_certificates(chain, serialization.Encoding.DER),
            [pki.valid.fingerprint, pki.intermediate.fingerprint],
        ),
        "PKCS#12": (
            pkcs12.serialize_key_and_certificates(
                b"bundle",
                pki.valid.key,
                pki.valid.cert,
                [pki.intermediate.cert],
                serialization.BestAvailableEncryption(PASSWORD),
            ),
            [pki.valid.fingerprint, pki.intermediate.fingerprint],
        ),
    }


def test_the_standard_formats_are_registered_in_order() -> None:
    assert tuple(f.name for f in CONTAINER_FORMATS.formats) == STANDARD


@pytest.mark.parametrize("name", STANDARD)
def test_each_format_is_recognised_by_its_entry_alone(name: str, pki: Pki) -> None:
    data, expected = samples(pki)[name]
    options = ParseOptions(pkcs12_password=lambda: PASSWORD, deadline=time.monotonic() + 30)
    claimed = {}
    for fmt in CONTAINER_FORMATS.formats:
        if fmt.sniff is not None and not fmt.sniff(data):
            continue
        parsed = fmt.decode(data, "sample", options)
        if parsed is not None:
            claimed[fmt.name] = parsed
    assert list(claimed) == [name]
    assert sorted(c.fingerprint_sha256 for c in claimed[name].certificates) == sorted(expected)
    assert claimed[name].errors == ()
    # And parse_container, driven by the registry, finds the same.
    whole = parse_container(data, "sample", pkcs12_password=lambda: PASSWORD)
    assert sorted(c.fingerprint_sha256 for c in whole.certificates) == sorted(expected)


def test_every_registered_format_has_a_sample(pki: Pki) -> None:
    """A format added to the registry without a sample here fails this test."""
    assert set(samples(pki)) == {f.name for f in CONTAINER_FORMATS.formats}


# -- a toy format: one registry entry, and it parses -----------------------------------

TOY_MAGIC = b"TOYCERTS\n"


def _toy_decode(data: bytes, name: str, options: ParseOptions) -> Parsed:
    """``TOYCERTS`` then one base64 DER certificate per line."""
    certificates: list[CertFacts] = []
    errors: list[SourceError] = []
    for number, line in enumerate(data[len(TOY_MAGIC) :].split()):
        item = f"{name}[{number}]"
        try:
            certificates.append(certparse.facts_from_der(base64.b64decode(line, validate=True)))
        except Exception:  # noqa: BLE001 - any failure is this line's problem
            errors.append(SourceError(Reason.PARSE_ERROR, item, f"{item}: not a toy certificate line"))
    return Parsed(tuple(certificates), tuple(errors))


def _toy_block(block_type: bytes, der: bytes, item: str, certs: list[CertFacts], errors: certparse.Problems) -> None:
    """A ``TOY CERTIFICATE`` PEM block: a DER certificate, reversed."""
    certs.append(certparse.facts_from_der(der[::-1]))


TOY = ContainerFormat(
    "TOY",
    _toy_decode,
    sniff=lambda data: data.startswith(TOY_MAGIC),
    pem_types=frozenset({b"TOY CERTIFICATE"}),
    read_block=_toy_block,
)


def _toy_file(pki: Pki) -> bytes:
    return TOY_MAGIC + base64.b64encode(pki.valid.der) + b"\n" + base64.b64encode(pki.root.der) + b"\n"


def test_a_registered_format_parses_in_the_files_probe(
    registry: certparse.FormatRegistry, pki: Pki, tmp_path: Path
) -> None:
    path = tmp_path / "bundle.toy"
    path.write_bytes(_toy_file(pki))
    probe = FilesProbe(FilesSettings(paths=(str(path),)))

    before = probe.run(str(path), ProbeContext(deadline=time.monotonic() + 10))
    assert not before.success and before.reason is Reason.PARSE_ERROR
    assert before.message.endswith("neither PEM, DER, PKCS#7 nor PKCS#12")

    registry.register(TOY)
    path.write_bytes(_toy_file(pki) + b"\n")  # a new identity: not the cached result
    after = probe.run(str(path), ProbeContext(deadline=time.monotonic() + 10))
    assert after.success, after
    assert [o.cert.fingerprint_sha256 for o in after.certificates] == [pki.valid.fingerprint, pki.root.fingerprint]
    assert [o.role for o in after.certificates] == ["leaf", "root"]


def test_a_registered_format_names_itself_and_reads_its_pem_blocks(
    registry: certparse.FormatRegistry, pki: Pki
) -> None:
    registry.register(TOY)
    assert parse_container(b"\x00garbage", "x").errors[0].message == "x: neither PEM, DER, PKCS#7, PKCS#12 nor TOY"
    block = base64.encodebytes(pki.valid.der[::-1])
    pem = pki.root.pem + b"-----BEGIN TOY CERTIFICATE-----\n" + block + b"-----END TOY CERTIFICATE-----\n"
    parsed = parse_container(pem, "mixed.pem")
    assert [c.fingerprint_sha256 for c in parsed.certificates] == [pki.root.fingerprint, pki.valid.fingerprint]


def test_a_format_registered_before_another_is_tried_first(registry: certparse.FormatRegistry, pki: Pki) -> None:
    """A DER certificate is read by whatever claims it first."""
    claims_all = ContainerFormat("EVERYTHING", lambda data, name, options: Parsed((), ()), sniff=lambda data: True)
    registry.register(claims_all, before="PEM")
    assert parse_container(pki.valid.pem, "x") == Parsed((), ())
    registry.restore(registry.formats[1:])
    assert len(parse_container(pki.valid.pem, "x").certificates) == 1


def test_names_and_block_types_are_registered_once(registry: certparse.FormatRegistry) -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register(ContainerFormat("PEM", lambda data, name, options: None))
    with pytest.raises(ValueError, match="CERTIFICATE"):
        registry.register(
            ContainerFormat(
                "X", lambda data, name, options: None, pem_types=frozenset({b"CERTIFICATE"}), read_block=_toy_block
            )
        )
    assert tuple(f.name for f in registry.formats) == STANDARD
