"""Prove every piece of :mod:`tests.fixtures.revocation_servers` is real and behaves as documented.

Only ``cryptography``, ``http.client``/``urllib`` and ``socket`` talk to the servers here,
never certscope code: these servers are the ground truth for the OCSP and CRL checks.
One :func:`revocation_stack` serves the whole module; tests that change a CA database or
break a responder build their own.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from cryptography.x509.verification import PolicyBuilder, Store

from tests.fixtures.revocation_servers import (
    BIG_SERIAL_BASE,
    HTTP_PATHS,
    OcspResponder,
    RevocationPki,
    RevocationStack,
    build_revocation_pki,
    ocsp_request,
    ocsp_responder,
    read_index,
    refused_port,
    revocation_stack,
    tarpit,
)

REPO = Path(__file__).resolve().parents[2]
NONCE = bytes(range(16))
Response = tuple[int, dict[str, str], bytes]


# --------------------------------------------------------------------------- helpers


def http_request(
    url: str, *, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> Response:
    """One request with http.client (no proxies, no redirects): status, lower-cased headers, body."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def ocsp_post(url: str, request: bytes) -> ocsp.OCSPResponse:
    status, headers, body = http_request(
        url, method="POST", body=request, headers={"Content-Type": "application/ocsp-request"}
    )
    assert status == 200
    assert headers["content-type"] == "application/ocsp-response"
    return ocsp.load_der_ocsp_response(body)


def ocsp_get(url: str, request: bytes) -> ocsp.OCSPResponse:
    """RFC 6960 A.1 GET: url + "/" + url-encoded base64 of the DER request."""
    encoded = urllib.parse.quote(base64.b64encode(request).decode(), safe="")
    status, _, body = http_request(url.rstrip("/") + "/" + encoded)
    assert status == 200
    return ocsp.load_der_ocsp_response(body)


def ask(url: str, cert: x509.Certificate, issuer: x509.Certificate, method: str) -> ocsp.OCSPResponse:
    request = ocsp_request(cert, issuer, nonce=NONCE)
    return ocsp_post(url, request) if method == "POST" else ocsp_get(url, request)


def signature_valid(response: ocsp.OCSPResponse, public_key: object) -> bool:
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert response.signature_hash_algorithm is not None
    try:
        public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return True


def has_ocsp_signing(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.OCSP_SIGNING in eku


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def openssl_processes() -> str:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return "\n".join(line for line in out.splitlines() if "openssl ocsp" in line)


def gone(responder: OcspResponder) -> bool:
    return all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in responder.openssl_pids)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RevocationStack]:
    built = revocation_stack(tmp_path_factory.mktemp("revocation"))
    yield built
    responders = [built.ocsp, *built.responders.values()]
    built.stop()
    assert built.http.errors == []
    assert all(gone(r) for r in responders), openssl_processes()
    for responder in responders:
        assert f"-index {responder.index} " not in openssl_processes()


@pytest.fixture(scope="module")
def pki(stack: RevocationStack) -> RevocationPki:
    return stack.pki


# --------------------------------------------------------------------------- the PKI


def test_stack_builds_quickly(stack: RevocationStack) -> None:
    assert stack.build_seconds < 10, stack.build_seconds


def test_ca_is_an_openssl_ca_database(pki: RevocationPki) -> None:
    config = pki.config.read_text()
    for setting in (
        "database         = $dir/index.txt",
        "serial           = $dir/serial",
        "crlnumber        = $dir/crlnumber",
        "copy_extensions  = copy",
        "default_crl_days = 7",
        "policy           = policy_loose",
    ):
        assert setting in config
    entries = read_index(pki.index)
    good, revoked = entries[pki.good.serial], entries[pki.revoked.serial]
    assert (good.status, good.revoked_at, good.subject) == ("V", None, "/O=certscope tests/CN=good.test")
    assert revoked.status == "R"
    assert revoked.reason == x509.ReasonFlags.key_compromise
    assert revoked.revoked_at is not None and abs(revoked.revoked_at - now()) < dt.timedelta(minutes=10)
    assert pki.unknown.serial not in entries
    assert pki.ocsp_signer.serial in entries and pki.bad_eku_signer.serial in entries
    index_line = next(line for line in pki.index.read_text().splitlines() if line.startswith("R\t"))
    assert index_line.split("\t")[2].endswith("Z,keyCompromise")


def test_leaves_verify_and_carry_the_stack_urls(stack: RevocationStack, pki: RevocationPki) -> None:
    for leaf, name in ((pki.good, "good.test"), (pki.revoked, "revoked.test"), (pki.unknown, "unknown.test")):
        verifier = PolicyBuilder().store(Store([pki.ca.cert])).build_server_verifier(x509.DNSName(name))
        chain = verifier.verify(leaf.cert, [])
        assert chain[-1] == pki.ca.cert
        aia = leaf.cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        assert [d.access_location.value for d in aia] == [stack.ocsp.url]
        cdp = leaf.cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        assert [n.value for d in cdp for n in d.full_name or []] == [stack.http.url(HTTP_PATHS["crl"])]
        assert isinstance(leaf.key, ec.EllipticCurvePrivateKey) and leaf.key_path.stat().st_mode & 0o077 == 0
        ski = leaf.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.key.public_key())


def test_signers(pki: RevocationPki) -> None:
    assert issued_by(pki.ocsp_signer.cert, pki.ca.cert) and has_ocsp_signing(pki.ocsp_signer.cert)
    nocheck = pki.ocsp_signer.cert.extensions.get_extension_for_oid(x509.OCSPNoCheck.oid)
    assert isinstance(nocheck.value, x509.OCSPNoCheck)
    assert issued_by(pki.bad_eku_signer.cert, pki.ca.cert) and not has_ocsp_signing(pki.bad_eku_signer.cert)
    eku = pki.bad_eku_signer.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    # rogue: the CA's exact name, an unrelated key
    assert pki.rogue.cert.subject == pki.ca.cert.subject
    assert not issued_by(pki.rogue.cert, pki.ca.cert) and issued_by(pki.rogue.cert, pki.rogue.cert)
    assert pki.rogue.cert.public_key() != pki.ca.cert.public_key()
    assert issued_by(pki.unknown.cert, pki.ca.cert)
    ca_ku = pki.ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ca_ku.key_cert_sign and ca_ku.crl_sign


# --------------------------------------------------------------------------- openssl ocsp


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_openssl_responder_statuses(stack: RevocationStack, pki: RevocationPki, method: str) -> None:
    url = stack.ocsp.url
    good = ask(url, pki.good.cert, pki.ca.cert, method)
    revoked = ask(url, pki.revoked.cert, pki.ca.cert, method)
    unknown = ask(url, pki.unknown.cert, pki.ca.cert, method)
    assert good.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert revoked.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_reason == x509.ReasonFlags.key_compromise
    assert revoked.revocation_time_utc == pki.revoked_entry.revoked_at
    assert unknown.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    for response, leaf in ((good, pki.good), (revoked, pki.revoked), (unknown, pki.unknown)):
        assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        assert response.serial_number == leaf.serial
        assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == NONCE
        assert response.responder_name == pki.ocsp_signer.cert.subject
        assert response.certificates == [pki.ocsp_signer.cert]
        assert has_ocsp_signing(response.certificates[0]) and issued_by(response.certificates[0], pki.ca.cert)
        assert signature_valid(response, pki.ocsp_signer.cert.public_key())
        assert not signature_valid(response, pki.ca.cert.public_key())
        assert response.next_update_utc is not None
        assert response.next_update_utc - response.this_update_utc == dt.timedelta(days=1)
        assert abs(response.this_update_utc - now()) < dt.timedelta(minutes=5)


def test_openssl_responder_sha256_certid(stack: RevocationStack, pki: RevocationPki) -> None:
    request = ocsp_request(pki.revoked.cert, pki.ca.cert, algorithm=hashes.SHA256())
    response = ocsp_post(stack.ocsp.url, request)
    assert response.hash_algorithm.name == "sha256"
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED


def test_responder_signed_by_the_ca(stack: RevocationStack, pki: RevocationPki) -> None:
    response = ask(stack.responder("ca").url, pki.good.cert, pki.ca.cert, "POST")
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert response.responder_name == pki.ca.cert.subject
    assert signature_valid(response, pki.ca.cert.public_key())


def test_responder_without_ocsp_signing_eku(stack: RevocationStack, pki: RevocationPki) -> None:
    response = ask(stack.responder("bad_eku").url, pki.revoked.cert, pki.ca.cert, "GET")
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    [signer] = response.certificates
    assert signer == pki.bad_eku_signer.cert
    assert issued_by(signer, pki.ca.cert)  # a real CA-issued certificate...
    assert not has_ocsp_signing(signer)  # ...but not authorised for OCSP
    assert signature_valid(response, signer.public_key())


def test_responder_signed_by_the_wrong_key(stack: RevocationStack, pki: RevocationPki) -> None:
    response = ask(stack.responder("wrong_key").url, pki.good.cert, pki.ca.cert, "POST")
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert response.responder_name == pki.ca.cert.subject  # the name matches the CA...
    assert not signature_valid(response, pki.ca.cert.public_key())  # ...the key does not
    [signer] = response.certificates
    assert signature_valid(response, signer.public_key())  # only against the cert it brought
    assert not issued_by(signer, pki.ca.cert)


def test_responder_next_update_options(stack: RevocationStack, pki: RevocationPki) -> None:
    without = stack.responder("delegated", ndays=None).query(pki.good.cert)
    assert without.next_update_utc is None
    one_minute = stack.responder("delegated", ndays=None, nmin=1).query(pki.good.cert)
    assert one_minute.next_update_utc is not None
    assert one_minute.next_update_utc - one_minute.this_update_utc == dt.timedelta(minutes=1)
    by_key = stack.responder("delegated", resp_key_id=True).query(pki.good.cert)
    assert by_key.responder_name is None
    assert (
        by_key.responder_key_hash
        == pki.ocsp_signer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )


def test_openssl_cannot_make_a_stale_response(pki: RevocationPki) -> None:
    """Why stale responses come from Python: -ndays/-nmin must be positive."""
    for option in ("-ndays", "-nmin"):
        result = subprocess.run(
            ["openssl", "ocsp", "-index", str(pki.index), "-port", "0", option, "-1"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert result.returncode != 0 and "Non-positive number" in result.stderr
    with pytest.raises(ValueError, match="non-positive"):
        ocsp_responder(pki, ndays=0)


@pytest.fixture
def own_pki(tmp_path: Path) -> RevocationPki:
    return build_revocation_pki(tmp_path / "ca", ocsp_url="http://127.0.0.1:9/", crl_url=None)


def test_index_snapshot_and_restart(own_pki: RevocationPki) -> None:
    with ocsp_responder(own_pki) as responder:
        leaf = own_pki.issue_leaf("late.test", sans=("late.test", "www.late.test"))
        aia = leaf.cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        assert aia[0].access_location.value == "http://127.0.0.1:9/"
        with pytest.raises(x509.ExtensionNotFound):
            leaf.cert.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS)
        assert responder.query(leaf.cert).certificate_status == ocsp.OCSPCertStatus.UNKNOWN  # snapshot
        port = responder.port
        responder.restart()
        assert responder.port == port
        assert responder.query(leaf.cert).certificate_status == ocsp.OCSPCertStatus.GOOD
        entry = own_pki.revoke(leaf, "superseded")
        assert entry.status == "R" and entry.reason == x509.ReasonFlags.superseded
        assert responder.query(leaf.cert).certificate_status == ocsp.OCSPCertStatus.GOOD
        responder.restart()
        response = responder.query(leaf.cert)
        assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert response.revocation_reason == x509.ReasonFlags.superseded
    assert gone(responder), openssl_processes()


def test_one_malformed_request_kills_the_openssl_responder(own_pki: RevocationPki) -> None:
    """OpenSSL 3.0.19: a GET that is not /<base64 OCSP request> gets an answer, then the
    child's cleanup shuts the shared listening socket down for every child."""
    with ocsp_responder(own_pki) as responder:
        assert responder.alive()
        status, _, body = http_request(responder.url + "/ocsp/not-base64")
        assert status == 400 and b"application/ocsp-response" in body  # a second response follows
        deadline = time.monotonic() + 5
        while responder.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not responder.alive()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(responder.address, timeout=1).close()
    assert gone(responder), openssl_processes()


def test_responder_dies_with_its_owner(tmp_path: Path) -> None:
    """kill -9 of the process that started it takes every openssl process down."""
    script = (
        "import sys, time; from pathlib import Path\n"
        "from tests.fixtures.revocation_servers import build_revocation_pki, ocsp_responder\n"
        "r = ocsp_responder(build_revocation_pki(Path(sys.argv[1])))\n"
        "print(' '.join(map(str, r.openssl_pids)), flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "ca")], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 3  # the -multi parent and two children
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids), openssl_processes()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


# --------------------------------------------------------------------------- Python OCSP variants


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_python_ocsp_good_and_stale(stack: RevocationStack, pki: RevocationPki, method: str) -> None:
    good = ask(stack.ocsp_variant_url("good"), pki.revoked.cert, pki.ca.cert, method)
    assert good.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert good.revocation_reason == x509.ReasonFlags.key_compromise
    assert good.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == NONCE
    assert signature_valid(good, pki.ocsp_signer.cert.public_key())
    stale = ask(stack.ocsp_variant_url("stale"), pki.good.cert, pki.ca.cert, method)
    assert stale.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert stale.next_update_utc is not None and stale.next_update_utc < now() - dt.timedelta(hours=23)
    assert stale.this_update_utc < now() - dt.timedelta(days=9)
    assert signature_valid(stale, pki.ocsp_signer.cert.public_key())
    unknown = ask(stack.ocsp_variant_url("good"), pki.unknown.cert, pki.ca.cert, method)
    assert unknown.certificate_status == ocsp.OCSPCertStatus.UNKNOWN


def test_python_ocsp_variants(stack: RevocationStack, pki: RevocationPki) -> None:
    def answer(variant: str, cert: x509.Certificate = pki.good.cert) -> ocsp.OCSPResponse:
        return ask(stack.ocsp_variant_url(variant), cert, pki.ca.cert, "POST")  # type: ignore[arg-type]

    wrong_key = answer("wrong_key")
    assert wrong_key.responder_name == pki.ca.cert.subject
    assert not signature_valid(wrong_key, pki.ca.cert.public_key())
    assert signature_valid(wrong_key, wrong_key.certificates[0].public_key())
    bad_eku = answer("bad_eku")
    assert not has_ocsp_signing(bad_eku.certificates[0]) and issued_by(bad_eku.certificates[0], pki.ca.cert)
    future = answer("future")
    assert future.this_update_utc > now() + dt.timedelta(hours=23)
    assert answer("no_next_update").next_update_utc is None
    assert answer("no_certs").certificates == []
    assert answer("wrong_serial").serial_number == pki.good.serial + 1
    revoked = answer("revoked")
    assert revoked.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_reason == x509.ReasonFlags.key_compromise
    for variant, status in (
        ("unauthorized", ocsp.OCSPResponseStatus.UNAUTHORIZED),
        ("try_later", ocsp.OCSPResponseStatus.TRY_LATER),
        ("malformed_request", ocsp.OCSPResponseStatus.MALFORMED_REQUEST),
        ("internal_error", ocsp.OCSPResponseStatus.INTERNAL_ERROR),
    ):
        assert answer(variant).response_status == status
    code, headers, body = http_request(
        stack.ocsp_variant_url("garbage"), method="POST", body=ocsp_request(pki.good.cert, pki.ca.cert)
    )
    assert code == 200 and headers["content-type"] == "application/ocsp-response"
    with pytest.raises(ValueError):
        ocsp.load_der_ocsp_response(body)
    # a request that is not DER gets malformedRequest (the openssl responder would die)
    malformed = http_request(stack.ocsp_variant_url("good"), method="POST", body=b"garbage")
    assert ocsp.load_der_ocsp_response(malformed[2]).response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_python_ocsp_requests_are_counted(stack: RevocationStack, pki: RevocationPki) -> None:
    path = "/ocsp/stale/"
    before = stack.http.count(path)
    ask(stack.ocsp_variant_url("stale"), pki.good.cert, pki.ca.cert, "GET")
    ask(stack.ocsp_variant_url("stale").rstrip("/"), pki.good.cert, pki.ca.cert, "POST")
    assert stack.http.count(path) == before + 2
    assert stack.http.count(path, method="GET") >= 1 and stack.http.count(path, method="POST") >= 1


# --------------------------------------------------------------------------- CRLs


def test_good_crl_der_and_pem(stack: RevocationStack, pki: RevocationPki) -> None:
    status, headers, der = http_request(stack.http.url(HTTP_PATHS["crl"]))
    assert status == 200 and headers["content-type"] == "application/pkix-crl"
    status, _, pem = http_request(stack.http.url(HTTP_PATHS["crl_pem"]))
    assert status == 200 and pem.startswith(b"-----BEGIN X509 CRL-----")
    crl, from_pem = x509.load_der_x509_crl(der), x509.load_pem_x509_crl(pem)
    assert crl == from_pem == stack.crls.good.crl
    assert crl.issuer == pki.ca.cert.subject
    assert crl.is_signature_valid(pki.ca.key.public_key())
    assert not crl.is_signature_valid(pki.rogue.key.public_key())
    entry = crl.get_revoked_certificate_by_serial_number(pki.revoked.serial)
    assert entry is not None
    assert entry.revocation_date_utc == pki.revoked_entry.revoked_at
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(pki.good.serial) is None
    assert len(crl) == 1
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number >= 0x1000
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = pki.ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(days=7)


def test_stale_crl(stack: RevocationStack, pki: RevocationPki) -> None:
    crl = x509.load_der_x509_crl(http_request(stack.http.url(HTTP_PATHS["crl_stale"]))[2])
    assert crl.next_update_utc is not None and crl.next_update_utc < now() - dt.timedelta(hours=23)
    assert crl.last_update_utc < now() - dt.timedelta(days=9)
    assert crl.is_signature_valid(pki.ca.key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(pki.revoked.serial) is not None
    numbers = [
        c.crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        for c in (stack.crls.good, stack.crls.stale)
    ]
    assert numbers[1] == numbers[0] + 1  # every -gencrl takes the next crlNumber


def test_bad_signature_and_wrong_key_crls(stack: RevocationStack, pki: RevocationPki) -> None:
    bad = x509.load_der_x509_crl(http_request(stack.http.url(HTTP_PATHS["crl_bad_signature"]))[2])
    assert bad.tbs_certlist_bytes == stack.crls.good.crl.tbs_certlist_bytes
    assert not bad.is_signature_valid(pki.ca.key.public_key())
    assert x509.load_pem_x509_crl(stack.crls.bad_signature.pem) == bad
    wrong = x509.load_der_x509_crl(http_request(stack.http.url(HTTP_PATHS["crl_wrong_key"]))[2])
    assert wrong.issuer == pki.ca.cert.subject
    assert not wrong.is_signature_valid(pki.ca.key.public_key())
    assert wrong.is_signature_valid(pki.rogue.key.public_key())


def test_big_crl(stack: RevocationStack, pki: RevocationPki) -> None:
    status, headers, der = http_request(stack.http.url(HTTP_PATHS["crl_big"]))
    assert status == 200 and int(headers["content-length"]) == len(der) > 3_000_000
    crl = x509.load_der_x509_crl(der)
    assert len(crl) == 100_001
    assert crl.is_signature_valid(pki.ca.key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(pki.revoked.serial) is not None
    last = crl.get_revoked_certificate_by_serial_number(BIG_SERIAL_BASE + 99_999)
    assert last is not None
    no_reason = crl.get_revoked_certificate_by_serial_number(BIG_SERIAL_BASE + 4)
    assert no_reason is not None and len(no_reason.extensions) == 0


# --------------------------------------------------------------------------- HTTP behaviours


def test_conditional_get_and_counting(stack: RevocationStack) -> None:
    path = HTTP_PATHS["crl"]
    url = stack.http.url(path)
    before, before_304 = stack.http.count(path), stack.http.count(path, status=304)
    status, headers, body = http_request(url)
    assert status == 200 and body == stack.crls.good.der
    etag, last_modified = headers["etag"], headers["last-modified"]
    assert etag.startswith('"') and last_modified.endswith("GMT")
    status, headers, body = http_request(url, headers={"If-None-Match": etag})
    assert (status, body, headers["etag"]) == (304, b"", etag)
    status, _, body = http_request(url, headers={"If-Modified-Since": last_modified})
    assert (status, body) == (304, b"")
    status, _, body = http_request(url, headers={"If-None-Match": '"something-else"'})
    assert status == 200 and body == stack.crls.good.der
    older = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert http_request(url, headers={"If-Modified-Since": older})[0] == 200
    assert stack.http.count(path) == before + 5
    assert stack.http.count(path, status=304) == before_304 + 2
    assert stack.http.hits()[path] == before + 5


def test_error_html_garbage_and_missing(stack: RevocationStack) -> None:
    status, _, body = http_request(stack.http.url(HTTP_PATHS["error"]))
    assert status == 500
    status, headers, body = http_request(stack.http.url(HTTP_PATHS["html"]))
    assert status == 200 and headers["content-type"].startswith("text/html") and body.startswith(b"<!doctype html>")
    status, _, body = http_request(stack.http.url(HTTP_PATHS["crl_garbage"]))
    assert status == 200
    with pytest.raises(ValueError):
        x509.load_der_x509_crl(body)
    assert http_request(stack.http.url("/no/such/path"))[0] == 404
    assert stack.http.count("/no/such/path", status=404) >= 1


def test_huge_body_has_an_honest_length(stack: RevocationStack) -> None:
    conn = http.client.HTTPConnection(stack.http.host, stack.http.port, timeout=10)
    try:
        conn.request("GET", HTTP_PATHS["huge"])
        response = conn.getresponse()
        length = int(response.getheader("Content-Length") or 0)
        assert length > 20_000_000
        first = response.read(6)
        assert first == b"\x30\x84" + (length - 6).to_bytes(4, "big")
        total = len(first)
        while chunk := response.read(1 << 20):
            total += len(chunk)
        assert total == length
    finally:
        conn.close()


def test_lying_content_length(stack: RevocationStack) -> None:
    conn = http.client.HTTPConnection(stack.http.host, stack.http.port, timeout=10)
    try:
        conn.request("GET", HTTP_PATHS["lying"])
        response = conn.getresponse()
        assert response.getheader("Content-Length") == "100000000"
        with pytest.raises(http.client.IncompleteRead) as caught:
            response.read()
        assert len(caught.value.partial) == 16
    finally:
        conn.close()


def test_dribble_defeats_a_per_read_timeout(stack: RevocationStack) -> None:
    """urllib's timeout=1.0 is per read: a byte every 0.3 s never trips it."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.monotonic()
    received = b""
    with opener.open(stack.http.url(HTTP_PATHS["dribble"]), timeout=1.0) as response:
        assert response.headers["Content-Length"] == "1000000"
        while time.monotonic() - started < 1.5:
            received += response.read(1)
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 3.0
    assert 3 <= len(received) <= 7 and set(received) == {0x30}


def test_tarpit_and_refused_port_are_reexported() -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", refused_port()), timeout=1).close()
    with tarpit() as pit:
        conn = http.client.HTTPConnection(pit.host, pit.port, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.request("GET", "/crl")
            conn.getresponse()
        conn.close()
        assert time.monotonic() - started < 2
