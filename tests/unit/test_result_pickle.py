"""Results cross a process boundary pickled (files parsed in worker processes,
probes/files_workers.py): every field of every result record must come back."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any, cast

import pytest

from probes.reasons import Reason
from probes.result import CertFacts, CertObservation, ProbeResult, SourceError, StoredComparison


def _full_result() -> ProbeResult:
    """A result whose every field, at every level, differs from its default."""
    facts = CertFacts(
        fingerprint_sha256="ab" * 32,
        not_before=1.5,
        not_after=2.5,
        subject="CN=leaf,O=certscope",
        subject_cn="leaf",
        issuer="CN=ca",
        issuer_cn="ca",
        serial="0a1b",
        sans=("a.example", "b.example"),
        key_type="ec",
        key_bits=256,
        signature_algorithm="ecdsa-with-SHA256",
        is_ca=True,
        self_issued=True,
        extended_key_usage=("serverAuth",),
        spki_sha256="cd" * 32,
        problems=("the policies could not be read",),
    )
    return ProbeResult(
        success=False,
        reason=Reason.CERT_EXPIRED,
        duration_seconds=0.25,
        certificates=(CertObservation(2, "intermediate", facts, (("alias", "web"),)),),
        errors=(SourceError(Reason.PARSE_ERROR, "/etc/x.pem", "block 2 is not a certificate"),),
        phases=(("read", 0.001),),
        message="expired",
        facts=("kind", "facts"),
        revocation=(),
        target_labels=(("address", "10.0.0.1"),),
        info_labels=(("owner", "team-a"),),
        thresholds=(10.0, 5.0),
        key_exposure=("other_readable",),
        trace_id="0" * 31 + "1",
        stored=StoredComparison("stale", (("secret_name", "web-tls"),)),
    )


def _records(result: ProbeResult) -> list[Any]:
    return [result, result.certificates[0], result.certificates[0].cert, result.errors[0], result.stored]


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_every_field_of_every_record_survives_pickling(protocol: int) -> None:
    result = _full_result()
    for record in _records(result):
        rebuilt = type(record)(*[getattr(record, f.name) for f in dataclasses.fields(record)])
        assert rebuilt == record  # the constructor takes every field, in order
    back = pickle.loads(pickle.dumps(result, protocol=protocol))
    assert back == result
    for original, copy in zip(_records(result), _records(back), strict=True):
        assert type(copy) is type(original)
        for field in dataclasses.fields(original):
            assert getattr(copy, field.name) == getattr(original, field.name), field.name


def test_a_record_unpickles_through_its_constructor_not_field_by_field() -> None:
    """dataclasses' own __setstate__ for slotted classes lists the fields of every
    object in Python; the records pickle as a call of their class instead."""
    for record in _records(_full_result()):
        constructor, values = cast(tuple[Any, tuple[Any, ...]], record.__reduce__())
        assert constructor is type(record)
        assert constructor(*values) == record
