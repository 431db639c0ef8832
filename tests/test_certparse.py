"""PEM block splitting and field extraction on hand-made edge cases."""

from __future__ import annotations

import pytest

from probes.certparse import _pem_blocks, parse_container
from tests.pki import Pki


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
