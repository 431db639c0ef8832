"""Real corpora nobody here wrote, through certscope's own readers.

Every file under ``x509/`` (certificates, chains, CRLs, OCSP requests and responses,
CSRs, malformed and exotic encodings: about 1,800 files), every PKCS#12 file and
every PKCS#7 file of the ``cryptography-vectors`` package goes through
``parse_container`` (the reader of the files and kubernetes kinds), and every
certificate found goes through ``bundle_observations`` and the OCSP/CRL URL readers.
Contract: nothing escapes, every file yields certificates or at least one typed
reason, and the whole run stays fast.

(tests/test_revocation_vectors.py judges the OCSP responses and CRLs.)
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from pathlib import Path

import cryptography_vectors
import pytest
from cryptography import x509

from probes.certparse import bundle_observations, parse_container
from probes.reasons import Reason
from probes.revocation import crl_urls, ocsp_urls

VECTORS = Path(cryptography_vectors.__file__).parent
# The passwords the PKCS#12 vectors are encrypted with (cryptography's own; PKITS').
VECTOR_P12_PASSWORD = b"cryptography"
PKITS_P12_PASSWORD = b"password"


def _password(path: Path) -> bytes:
    return PKITS_P12_PASSWORD if "PKITS_data" in path.parts else VECTOR_P12_PASSWORD


def _files(*directories: str) -> list[Path]:
    return sorted(p for d in directories for p in (VECTORS / d).rglob("*") if p.is_file())


def _corpus() -> list[Path]:
    """Everything, except that of PKITS' 431 PKCS#12 files (the PKITS certificates
    again, each costing a 70 ms key derivation) every 8th is read, to keep CI short."""
    files = _files("x509", "pkcs12", "pkcs7")
    pkits_p12 = [p for p in files if "PKITS_data" in p.parts and p.suffix == ".p12"]
    skipped = set(pkits_p12) - set(pkits_p12[::8])
    return [p for p in files if p not in skipped]


ALLOWED = {
    Reason.EMPTY_FILE,
    Reason.PARSE_ERROR,
    Reason.NO_CERTIFICATE,
    Reason.BAD_PASSWORD,
    Reason.MALFORMED_CERTIFICATE,
    Reason.DUPLICATE_CERTIFICATE,
}


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")  # real certificates break the rule
def test_every_vector_file_is_read_without_an_escape() -> None:
    files = _corpus()
    assert len(files) >= 1400, f"cryptography-vectors looks incomplete: {len(files)} files"
    outcome: Counter[str] = Counter()
    certificates = 0
    started = time.monotonic()
    for path in files:
        parsed = parse_container(path.read_bytes(), path.name, pkcs12_password=functools.partial(_password, path))
        observations, bundle_errors = bundle_observations(parsed.certificates, path.name)
        errors = (*parsed.errors, *bundle_errors)
        assert observations or errors, f"{path}: neither a certificate nor a reason"
        for error in errors:
            assert error.reason in ALLOWED, (path, error)
            assert error.item.startswith(path.name), (path, error)
        certificates += len(observations)
        outcome["certificates" if observations else errors[0].reason.value] += 1
    seconds = time.monotonic() - started
    print(f"\ncryptography-vectors: {len(files)} files, {certificates} certificates, {seconds:.1f}s: {dict(outcome)}")
    assert outcome["certificates"] >= 500, outcome
    assert outcome["no_certificate"] >= 10, outcome  # CRLs, CSRs, OCSP requests in PEM
    assert seconds < 20, f"the corpus took {seconds:.1f}s"


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_url_readers_on_every_vector_certificate() -> None:
    urls = 0
    for path in _files("x509"):
        data = path.read_bytes()
        try:
            pem = data.startswith(b"-----")
            cert = x509.load_pem_x509_certificate(data) if pem else x509.load_der_x509_certificate(data)
        except Exception:  # noqa: BLE001 - malformed vectors; parse_container judged them above
            continue
        found = [*ocsp_urls(cert), *crl_urls(cert)]
        assert all(isinstance(url, str) for url in found), path
        urls += len(found)
    assert urls >= 40, "PKITS and the real-world certificates carry CDP and AIA URLs"


def test_pkcs12_vectors_open_with_and_without_their_password() -> None:
    results = {
        path.name: parse_container(path.read_bytes(), path.name, pkcs12_password=lambda: VECTOR_P12_PASSWORD)
        for path in _files("pkcs12")
        if path.suffix == ".p12"
    }
    opened = [name for name, parsed in results.items() if parsed.certificates]
    assert len(opened) >= 4, results
    assert all(e.reason in ALLOWED for parsed in results.values() for e in parsed.errors)
    wrong = parse_container(
        (VECTORS / "pkcs12" / "cert-key-aes256cbc.p12").read_bytes(), "p12", pkcs12_password=lambda: b"nope"
    )
    assert [e.reason for e in wrong.errors] == [Reason.BAD_PASSWORD]
    assert "nope" not in wrong.errors[0].message
