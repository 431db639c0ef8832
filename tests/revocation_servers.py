"""Real revocation infrastructure on 127.0.0.1 for OCSP and CRL tests.

The pieces, each checked in ``tests/test_revocation_servers.py`` with ``cryptography`` and
``http.client`` only (never certscope code):

* :func:`build_revocation_pki`: an ``openssl ca`` CA in a directory (``ca.cnf`` with an
  ``index.txt`` database, ``serial``, ``crlnumber``).  Every certificate is issued by the
  openssl CLI (``openssl req -x509``, ``openssl req -new`` + ``openssl ca -batch``) except
  ``unknown``, which is signed with the CA key by ``cryptography`` and never recorded in
  ``index.txt``.  The revoked leaf is revoked by ``openssl ca -revoke -crl_reason
  keyCompromise``.  EC P-256 keys, SKI/AKI/KeyUsage everywhere (cryptography's verifier
  accepts the leaves), leaves with SANs, the AIA OCSP URL and the CRL distribution point.
* CRLs, all produced by ``openssl ca -gencrl`` (DER by ``openssl crl -outform DER``):
  :meth:`RevocationPki.gencrl` (good; ``last_update``/``next_update`` give a stale one through
  OpenSSL 3's ``-crl_lastupdate``/``-crl_nextupdate``), :func:`big_crl` (100,000 entries
  from a synthetic ``index.txt`` in a scratch copy of the CA, about 1 s), a CRL signed by a
  key that is not the CA's (``RevocationPki.gencrl(signer="wrong_key")``), and
  :func:`bad_signature_crl` (the good CRL with the last signature byte flipped).
* :func:`ocsp_responder`: ``openssl ocsp -index ... -multi 2`` with a delegated signer,
  the CA itself, a CA-issued signer without the OCSPSigning EKU, or an unrelated key.
* :func:`http_file_server`: a threaded HTTP server on 127.0.0.1 serving bytes or
  callables per path, with conditional GET (ETag/Last-Modified -> 304), request counting,
  and misbehaving bodies (:func:`huge_reply`, :func:`lying_reply`, :func:`dribble_reply`).
  :func:`ocsp_http_handler` answers OCSP POST and GET ``<prefix>/<base64>`` from a Python
  callable; :func:`python_ocsp_handler` builds the variants openssl cannot (stale,
  future, unauthorized, tryLater, garbage, another serial...).
* :func:`revocation_stack` wires all of that together (URLs in the leaves pointing at the
  running servers) and is what a test module normally uses.
* :func:`tests.servers.tarpit` and :func:`tests.servers.refused_port` are re-exported.

What ``openssl ocsp`` (OpenSSL 3.0.19) does, measured here:

* ``-port 0`` works: it prints ``ACCEPT [::]:PORT PID=N`` with the port the OS chose.
  It always binds ``*`` (all interfaces, dual stack); clients use 127.0.0.1.
* ``-ndays``/``-nmin`` must be positive, so openssl cannot produce a nextUpdate in the
  past (stale responses come from :func:`python_ocsp_handler`).  Without ``-ndays`` and
  ``-nmin`` the response has *no* nextUpdate; ``-nmin 1`` gives one a minute ahead.
* ``-multi N`` makes the parent call ``setpgid(0, 0)`` and exit with status 1 if it is a
  session leader (``start_new_session=True``), so it is started with ``process_group=0``.
  The parent ignores SIGTERM while children live (they die, it exits ~1 s later), and the
  children have no parent-death signal: here the responder runs as PID 1 of its own PID
  namespace (``unshare --pid --fork --kill-child``, under ``setpriv --pdeathsig KILL``),
  so killing it or the test process takes every child with it.
* **One malformed request kills the responder.**  A GET whose path is not ``/<base64 of
  a DER OCSPRequest>`` (``GET /``, ``GET /ocsp/<base64>``, ``GET /garbage``) or a HEAD gets
  a 400 (``GET /``: a 200) with a second, malformedRequest response after it on the same
  connection; a POST whose body is not an OCSPRequest gets no answer until the client
  gives up (or the same 400 + malformedRequest).  Then the listening socket is gone for
  every process (it looks like the exiting child's cleanup shuts the *shared* socket
  down): later connections are refused, and with ``-multi`` the surviving and respawned
  children spin at 100% CPU until stopped.  So only
  well-formed OCSP requests may go to this responder: readiness is a real OCSP POST,
  :meth:`OcspResponder.alive` tells whether it still answers, and malformed-request tests
  belong to :func:`python_ocsp_handler`.  GET takes no path prefix (``/<base64>`` only);
  the POST path is ignored.
* ``index.txt`` is re-read lazily by each child, *before* it blocks in accept(): after a
  change, each child answers its next request from the old database.  To stay
  deterministic every responder serves a snapshot copy of ``index.txt`` taken at start;
  :meth:`OcspResponder.restart` takes a new snapshot on the same port.
* With the ``wrong_key`` signer openssl happily signs with a key unrelated to ``-CA`` and
  includes that certificate.  It only checks that ``-rkey`` matches ``-rsigner``, and only
  per request: a mismatched pair starts fine, then logs "private key does not match
  certificate" and closes each connection without an answer.
* Under ``unshare --pid`` the ACCEPT line says ``PID=1``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import enum
import hashlib
import http.client
import http.server
import itertools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Literal, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtensionOID, NameOID

from tests.pki import Issued
from tests.servers import (
    HOST,
    START_TIMEOUT,
    AddressInUseError,
    ServerStartError,
    _running,
    free_port,
    refused_port,
    tarpit,
)

__all__ = [
    "CA_SUBJECT",
    "HTTP_PATHS",
    "CrlFile",
    "HttpFileServer",
    "IndexEntry",
    "OcspResponder",
    "PkiCert",
    "Reply",
    "Request",
    "RevocationCrls",
    "RevocationPki",
    "RevocationStack",
    "bad_signature_crl",
    "big_crl",
    "build_crls",
    "build_revocation_pki",
    "crl_reply",
    "dribble_reply",
    "error_reply",
    "html_reply",
    "http_file_server",
    "huge_reply",
    "lying_reply",
    "ocsp_http_handler",
    "ocsp_request",
    "ocsp_responder",
    "python_ocsp_handler",
    "python_ocsp_response",
    "read_index",
    "refused_port",
    "revocation_stack",
    "tarpit",
]

UTC = dt.UTC
DAY = dt.timedelta(days=1)
CA_SUBJECT = "/O=certscope tests/CN=certscope revocation CA"
OPENSSL_TIMEOUT = 120.0
_sequence = itertools.count()

# openssl's reason names (index.txt, -crl_reason) -> cryptography's flags
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "CACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "removeFromCRL": x509.ReasonFlags.remove_from_crl,
}


class RevocationPkiError(RuntimeError):
    """An openssl command building the PKI failed; the message has its output."""


def _now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


def _openssl_time(moment: dt.datetime) -> str:
    """GeneralizedTime as ``openssl ca -startdate/-crl_lastupdate`` take it."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


def _openssl(args: list[str], cwd: Path) -> str:
    """Run ``openssl args...`` in ``cwd``; its combined output, or RevocationPkiError."""
    result = subprocess.run(
        ["openssl", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=OPENSSL_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RevocationPkiError(
            f"openssl {' '.join(args)} failed ({result.returncode}) in {cwd}:\n{result.stdout}{result.stderr}"
        )
    return result.stdout + result.stderr


# --------------------------------------------------------------------------- PKI

_CA_CNF = """\
# An openssl ca database for certscope's revocation tests (see tests/revocation_servers.py).
[ ca ]
default_ca = CA_default

[ CA_default ]
dir              = .
database         = $dir/index.txt
serial           = $dir/serial
crlnumber        = $dir/crlnumber
new_certs_dir    = $dir/newcerts
certificate      = $dir/ca.pem
private_key      = $dir/ca.key
default_md       = sha256
default_days     = 90
default_crl_days = {crl_days}
copy_extensions  = copy
unique_subject   = no
policy           = policy_loose
crl_extensions   = crl_ext

[ policy_loose ]
countryName      = optional
organizationName = optional
commonName       = supplied

[ crl_ext ]
authorityKeyIdentifier = keyid:always

[ req ]
distinguished_name = req_dn

[ req_dn ]

[ v3_ca ]
basicConstraints       = critical, CA:true
keyUsage               = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_ocsp_signer ]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature
extendedKeyUsage       = OCSPSigning
noCheck                = ignored
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_bad_eku_signer ]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth, clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
"""


class _Default(enum.Enum):
    PKI = "pki"


PKI_URL = _Default.PKI  # issue_leaf(ocsp_url=PKI_URL): the URL the PKI was built with


@dataclass(frozen=True)
class PkiCert:
    """One certificate with its EC P-256 key, as objects and as PEM files."""

    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def issued(self) -> Issued:
        """The same certificate as a :class:`tests.pki.Issued`."""
        return Issued(self.cert, self.key)


@dataclass(frozen=True)
class IndexEntry:
    """One line of an ``openssl ca`` ``index.txt``."""

    status: str  # V valid, R revoked, E expired
    expires: dt.datetime
    revoked_at: dt.datetime | None
    reason: x509.ReasonFlags | None
    serial: int
    subject: str


def _index_time(text: str) -> dt.datetime:
    """UTCTime (YYMMDDHHMMSSZ, 50-99 -> 19xx) or GeneralizedTime, as openssl writes them."""
    if len(text) == 13:
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)


def read_index(path: Path) -> dict[int, IndexEntry]:
    """Parse an ``index.txt``: serial -> entry."""
    entries: dict[int, IndexEntry] = {}
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 6:
            continue
        status, expires, revocation, serial, _, subject = fields[:6]
        revoked_at = reason = None
        if revocation:
            parts = revocation.split(",")
            revoked_at = _index_time(parts[0])
            if len(parts) > 1:
                reason = REASONS.get(parts[1])
        entries[int(serial, 16)] = IndexEntry(
            status, _index_time(expires), revoked_at, reason, int(serial, 16), subject
        )
    return entries


@dataclass(frozen=True)
class CrlFile:
    """A CRL as written to disk (PEM and DER) and parsed."""

    name: str
    pem_path: Path
    der_path: Path
    crl: x509.CertificateRevocationList

    @property
    def der(self) -> bytes:
        return self.der_path.read_bytes()

    @property
    def pem(self) -> bytes:
        return self.pem_path.read_bytes()


@dataclass(frozen=True)
class RevocationPki:
    """An ``openssl ca`` CA in ``directory`` and the certificates the revocation tests need.

    ``good``, ``revoked`` (revoked with keyCompromise) and ``unknown`` (CA-signed, serial not
    in ``index.txt``) are server leaves with SAN ``DNS:<name>.test``, EKU serverAuth and
    clientAuth, and, when the PKI was built with them, the AIA OCSP URL ``ocsp_url`` and
    the CRL distribution point ``crl_url``.  ``ocsp_signer`` is a delegated responder (EKU
    OCSPSigning, id-pkix-ocsp-nocheck), ``bad_eku_signer`` is issued by the CA with EKU
    serverAuth/clientAuth only, ``rogue`` is a self-signed certificate with the CA's exact
    subject but an unrelated key ("signed by the wrong key").
    """

    directory: Path
    config: Path
    index: Path
    ca: PkiCert
    good: PkiCert
    revoked: PkiCert
    unknown: PkiCert
    ocsp_signer: PkiCert
    bad_eku_signer: PkiCert
    rogue: PkiCert
    ocsp_url: str | None
    crl_url: str | None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def entries(self) -> dict[int, IndexEntry]:
        """The CA database now (serial -> entry)."""
        return read_index(self.index)

    @property
    def revoked_entry(self) -> IndexEntry:
        """The index entry of ``revoked`` (its revocation time and reason)."""
        return self.entries()[self.revoked.serial]

    def issue_leaf(
        self,
        common_name: str,
        *,
        ocsp_url: str | _Default | None = PKI_URL,
        crl_url: str | _Default | None = PKI_URL,
        sans: Iterable[str] | None = None,
        days: int = 90,
        not_before: dt.datetime | None = None,
    ) -> PkiCert:
        """A server leaf issued by ``openssl ca -batch`` (recorded in ``index.txt``).

        ``ocsp_url``/``crl_url`` default to the PKI's; None leaves the extension out.
        ``sans`` defaults to ``(common_name,)``.  notBefore is a day ago unless given.
        Running OCSP responders serve a snapshot of ``index.txt``: restart them to see it.
        """
        aia = self.ocsp_url if ocsp_url is PKI_URL else ocsp_url
        cdp = self.crl_url if crl_url is PKI_URL else crl_url
        lines = [
            "basicConstraints = critical, CA:false",
            "keyUsage = critical, digitalSignature",
            "extendedKeyUsage = serverAuth, clientAuth",
            "subjectKeyIdentifier = hash",
            "authorityKeyIdentifier = keyid:always",
            "subjectAltName = " + ", ".join(f"DNS:{name}" for name in (sans or (common_name,))),
        ]
        if isinstance(aia, str):
            lines.append(f"authorityInfoAccess = OCSP;URI:{aia}")
        if isinstance(cdp, str):
            lines.append(f"crlDistributionPoints = URI:{cdp}")
        with self._lock:
            return _issue_with_ca(
                self.directory,
                _safe_name(common_name),
                f"/O=certscope tests/CN={common_name}",
                "[ leaf ]\n" + "\n".join(lines) + "\n",
                "leaf",
                days=days,
                not_before=not_before,
            )

    def revoke(self, cert: PkiCert, reason: str = "keyCompromise") -> IndexEntry:
        """``openssl ca -revoke cert -crl_reason reason``; the new index entry.  ``reason`` is
        an openssl name (keyCompromise, superseded, cessationOfOperation, ...)."""
        with self._lock:
            _openssl(
                ["ca", "-config", self.config.name, "-revoke", str(cert.cert_path), "-crl_reason", reason],
                self.directory,
            )
        return self.entries()[cert.serial]

    def gencrl(
        self,
        name: str,
        *,
        last_update: dt.datetime | None = None,
        next_update: dt.datetime | None = None,
        signer: Literal["ca", "wrong_key"] = "ca",
    ) -> CrlFile:
        """``openssl ca -gencrl`` into ``<name>.crl.pem``, converted to DER
        (``<name>.crl``) by ``openssl crl``.  ``last_update``/``next_update`` map to
        ``-crl_lastupdate``/``-crl_nextupdate`` (OpenSSL 3; both in the past give a stale
        CRL), else lastUpdate is now and nextUpdate now + default_crl_days.
        ``signer="wrong_key"`` signs with ``rogue`` (same issuer name, unrelated key).
        Every call takes the next crlNumber."""
        with self._lock:
            return _gencrl(
                self.directory, self.config, name, last_update, next_update, self.rogue if signer != "ca" else None
            )


def _safe_name(common_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", common_name)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise RevocationPkiError(f"{path} is not an EC key")
    return key


def _load_pki_cert(directory: Path, name: str) -> PkiCert:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    return PkiCert(
        name, x509.load_pem_x509_certificate(cert_path.read_bytes()), _load_key(key_path), cert_path, key_path
    )


_NEWKEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc"]


def _issue_with_ca(
    directory: Path,
    name: str,
    subject: str,
    extfile: str | None,
    extensions: str,
    *,
    days: int = 90,
    not_before: dt.datetime | None = None,
) -> PkiCert:
    """``openssl req -new`` (key + CSR) then ``openssl ca -batch`` with the extension
    section ``extensions`` from ``extfile`` (text) or from ca.cnf."""
    _openssl(["req", "-new", *_NEWKEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject], directory)
    args = ["ca", "-batch", "-config", "ca.cnf", "-notext", "-in", f"{name}.csr", "-out", f"{name}.pem"]
    args += ["-extensions", extensions, "-days", str(days), "-startdate", _openssl_time(not_before or _now() - DAY)]
    if extfile is not None:
        (directory / f"{name}.ext").write_text(extfile)
        args += ["-extfile", f"{name}.ext"]
    _openssl(args, directory)
    (directory / f"{name}.key").chmod(0o600)
    return _load_pki_cert(directory, name)


def _gencrl(
    directory: Path,
    config: Path,
    name: str,
    last_update: dt.datetime | None,
    next_update: dt.datetime | None,
    signer: PkiCert | None,
) -> CrlFile:
    pem, der = directory / f"{name}.crl.pem", directory / f"{name}.crl"
    args = ["ca", "-config", str(config), "-gencrl", "-out", str(pem)]
    if last_update is not None:
        args += ["-crl_lastupdate", _openssl_time(last_update)]
    if next_update is not None:
        args += ["-crl_nextupdate", _openssl_time(next_update)]
    if signer is not None:
        args += ["-cert", str(signer.cert_path), "-keyfile", str(signer.key_path)]
    _openssl(args, directory)
    _openssl(["crl", "-in", str(pem), "-outform", "DER", "-out", str(der)], directory)
    return CrlFile(name, pem, der, x509.load_der_x509_crl(der.read_bytes()))


def _unrecorded_leaf(directory: Path, ca: PkiCert, template: PkiCert, known: Iterable[int]) -> PkiCert:
    """A leaf signed by the CA key with ``cryptography`` (same extensions as ``template``,
    new key, SAN unknown.test), whose random serial is not in ``index.txt``."""
    key = ec.generate_private_key(ec.SECP256R1())
    taken = set(known)
    serial = x509.random_serial_number()
    while serial in taken:
        serial = x509.random_serial_number()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certscope tests"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "unknown.test"),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - DAY)
        .not_valid_after(now + 90 * DAY)
    )
    for extension in template.cert.extensions:
        value: x509.ExtensionType = extension.value
        if extension.oid == ExtensionOID.SUBJECT_KEY_IDENTIFIER:
            value = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        elif extension.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            value = x509.SubjectAlternativeName([x509.DNSName("unknown.test")])
        builder = builder.add_extension(value, critical=extension.critical)
    cert = builder.sign(ca.key, hashes.SHA256())
    cert_path, key_path = directory / "unknown.pem", directory / "unknown.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return PkiCert("unknown", cert, key, cert_path, key_path)


def build_revocation_pki(
    directory: Path, *, ocsp_url: str | None = None, crl_url: str | None = None, crl_days: int = 7
) -> RevocationPki:
    """Build the CA and its certificates in ``directory`` (created; must not hold a CA).

    The leaves carry ``ocsp_url`` (AIA OCSP) and ``crl_url`` (CRL distribution point)
    when given: pick the ports first (see :func:`revocation_stack`).  ``crl_days`` is
    ``default_crl_days``.  About 15 openssl runs, ~0.1-0.2 s.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "index.txt").exists():
        raise RevocationPkiError(f"{directory} already holds a CA")
    (directory / "newcerts").mkdir()
    config = directory / "ca.cnf"
    config.write_text(_CA_CNF.format(crl_days=crl_days))
    (directory / "index.txt").write_text("")
    (directory / "serial").write_text(f"{secrets.randbits(62) | (1 << 62):016X}\n")
    (directory / "crlnumber").write_text("1000\n")

    # The CA (and its rogue twin: same subject, unrelated key) by openssl req -x509.
    for name in ("ca", "rogue"):
        _openssl(
            [
                *["req", "-x509", "-config", "ca.cnf", *_NEWKEY, "-keyout", f"{name}.key", "-out", f"{name}.pem"],
                *["-subj", CA_SUBJECT, "-days", "3650", "-extensions", "v3_ca"],
            ],
            directory,
        )
        (directory / f"{name}.key").chmod(0o600)
    ca = _load_pki_cert(directory, "ca")
    rogue = _load_pki_cert(directory, "rogue")
    ocsp_signer = _issue_with_ca(
        directory, "ocsp_signer", "/O=certscope tests/CN=certscope OCSP signer", None, "v3_ocsp_signer"
    )
    bad_eku_signer = _issue_with_ca(
        directory,
        "bad_eku_signer",
        "/O=certscope tests/CN=certscope signer without OCSPSigning",
        None,
        "v3_bad_eku_signer",
    )
    pki = RevocationPki(
        directory=directory,
        config=config,
        index=directory / "index.txt",
        ca=ca,
        good=ca,  # replaced below
        revoked=ca,
        unknown=ca,
        ocsp_signer=ocsp_signer,
        bad_eku_signer=bad_eku_signer,
        rogue=rogue,
        ocsp_url=ocsp_url,
        crl_url=crl_url,
    )
    good = pki.issue_leaf("good.test")
    revoked = pki.issue_leaf("revoked.test")
    pki.revoke(revoked, "keyCompromise")
    unknown = _unrecorded_leaf(directory, ca, good, read_index(pki.index))
    return RevocationPki(
        directory=directory,
        config=config,
        index=pki.index,
        ca=ca,
        good=good,
        revoked=revoked,
        unknown=unknown,
        ocsp_signer=ocsp_signer,
        bad_eku_signer=bad_eku_signer,
        rogue=rogue,
        ocsp_url=ocsp_url,
        crl_url=crl_url,
    )


# --------------------------------------------------------------------------- CRLs


def bad_signature_crl(crl: CrlFile, name: str = "bad-signature") -> CrlFile:
    """``crl`` with the last byte of its DER (the end of the ECDSA signature value)
    flipped: it still parses, ``is_signature_valid`` is False.  Written as DER and PEM."""
    der = bytearray(crl.der)
    der[-1] ^= 0x01
    der_path = crl.der_path.with_name(f"{name}.crl")
    pem_path = crl.der_path.with_name(f"{name}.crl.pem")
    der_path.write_bytes(bytes(der))
    body = base64.encodebytes(bytes(der)).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    pem_path.write_bytes(b"-----BEGIN X509 CRL-----\n" + b"\n".join(lines) + b"\n-----END X509 CRL-----\n")
    return CrlFile(name, pem_path, der_path, x509.load_der_x509_crl(bytes(der)))


_BIG_REASONS = ("keyCompromise", "superseded", "cessationOfOperation", "affiliationChanged", "")
BIG_SERIAL_BASE = 0x5EED << 104  # synthetic serials: BIG_SERIAL_BASE + i


def big_crl(pki: RevocationPki, entries: int = 100_000, name: str = "big") -> CrlFile:
    """A CRL with the PKI's revocations plus ``entries`` synthetic ones (serials
    ``BIG_SERIAL_BASE + i``, reasons cycling, one without a reason), signed by the CA via
    ``openssl ca -gencrl`` in a scratch copy of the CA (``<directory>/<name>-ca``) whose
    ``index.txt`` is written here.  100,000 entries: ~3.7 MB DER, ~1 s."""
    scratch = pki.directory / f"{name}-ca"
    if scratch.exists():
        shutil.rmtree(scratch)
    (scratch / "newcerts").mkdir(parents=True)
    for file in ("ca.cnf", "ca.pem", "ca.key", "serial"):
        shutil.copyfile(pki.directory / file, scratch / file)
    (scratch / "crlnumber").write_text("01\n")
    now = _now()
    expires = (now + 365 * DAY).strftime("%y%m%d%H%M%SZ")
    revoked = (now - 30 * DAY).strftime("%y%m%d%H%M%SZ")
    with open(scratch / "index.txt", "w") as index:
        index.write(pki.index.read_text())
        for i in range(entries):
            reason = _BIG_REASONS[i % len(_BIG_REASONS)]
            when = f"{revoked},{reason}" if reason else revoked
            index.write(f"R\t{expires}\t{when}\t{BIG_SERIAL_BASE + i:030X}\tunknown\t/CN=big-{i}\n")
    crl = _gencrl(scratch, scratch / "ca.cnf", name, None, None, None)
    return crl


@dataclass(frozen=True)
class RevocationCrls:
    """The CRL variants of one PKI (see :func:`build_crls`)."""

    good: CrlFile
    stale: CrlFile
    bad_signature: CrlFile
    wrong_key: CrlFile
    big: CrlFile | None


def build_crls(pki: RevocationPki, *, big_entries: int | None = 100_000) -> RevocationCrls:
    """All by ``openssl ca -gencrl``: ``good`` (now, next update in default_crl_days),
    ``stale`` (lastUpdate 10 days ago, nextUpdate 1 day ago), ``wrong_key`` (signed by
    ``pki.rogue``), ``bad_signature`` (``good`` with a flipped signature byte) and ``big``
    (None when ``big_entries`` is None)."""
    now = _now()
    good = pki.gencrl("ca")
    return RevocationCrls(
        good=good,
        stale=pki.gencrl("stale", last_update=now - 10 * DAY, next_update=now - DAY),
        bad_signature=bad_signature_crl(good),
        wrong_key=pki.gencrl("wrong-key", signer="wrong_key"),
        big=big_crl(pki, big_entries) if big_entries is not None else None,
    )


# --------------------------------------------------------------------------- OCSP (Python)

OcspVariant = Literal[
    "good",  # a correct answer from the delegated signer (status from index.txt)
    "stale",  # thisUpdate 10 days ago, nextUpdate 1 day ago
    "future",  # thisUpdate 1 day ahead
    "no_next_update",  # no nextUpdate
    "wrong_key",  # signed by pki.rogue (CA's subject, unrelated key), rogue cert included
    "bad_eku",  # signed by pki.bad_eku_signer (CA-issued, no OCSPSigning EKU)
    "ca",  # signed by the CA itself
    "no_certs",  # delegated signer, but its certificate left out of the response
    "wrong_serial",  # answers GOOD for serial + 1
    "revoked",  # REVOKED (keyCompromise, 1 hour ago) whatever the index says
    "unauthorized",  # responseStatus unauthorized (6)
    "try_later",  # responseStatus tryLater (3)
    "malformed_request",  # responseStatus malformedRequest (1)
    "internal_error",  # responseStatus internalError (2)
    "garbage",  # bytes that are not DER
]
_UNSUCCESSFUL = {
    "unauthorized": ocsp.OCSPResponseStatus.UNAUTHORIZED,
    "try_later": ocsp.OCSPResponseStatus.TRY_LATER,
    "malformed_request": ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
    "internal_error": ocsp.OCSPResponseStatus.INTERNAL_ERROR,
}
GARBAGE = b"<this is not DER> \x00\xff\x30\x82\xff\xff"


def ocsp_request(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    nonce: bytes | None = None,
    algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    """A DER OCSPRequest for ``cert`` (CertID with SHA-1 unless ``algorithm``), with an
    OCSP nonce extension when ``nonce`` is given."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def python_ocsp_response(
    pki: RevocationPki, request_der: bytes, variant: OcspVariant = "good", *, now: dt.datetime | None = None
) -> bytes:
    """A DER OCSPResponse to ``request_der`` built with ``OCSPResponseBuilder``.

    The status comes from ``pki.index`` read now (V -> GOOD, R -> REVOKED with its time
    and reason, absent or another issuer -> UNKNOWN), the nonce is echoed, the responder ID
    is by name, thisUpdate is now and nextUpdate now + 1 day, except as ``variant`` says
    (see :data:`OcspVariant`).  An unparsable request gets malformedRequest.
    """
    if variant == "garbage":
        return GARBAGE
    if variant in _UNSUCCESSFUL:
        return _der(ocsp.OCSPResponseBuilder.build_unsuccessful(_UNSUCCESSFUL[variant]))
    try:
        request = ocsp.load_der_ocsp_request(request_der)
    except ValueError:
        return _der(ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST))
    now = now or _now()
    this_update: dt.datetime = now
    next_update: dt.datetime | None = now + DAY
    if variant == "stale":
        this_update, next_update = now - 10 * DAY, now - DAY
    elif variant == "future":
        this_update, next_update = now + DAY, now + 2 * DAY
    elif variant == "no_next_update":
        next_update = None
    signer = {"wrong_key": pki.rogue, "bad_eku": pki.bad_eku_signer, "ca": pki.ca}.get(variant, pki.ocsp_signer)

    serial = request.serial_number
    status, revoked_at, reason = ocsp.OCSPCertStatus.UNKNOWN, None, None
    ours = ocsp_request_for_issuer(pki.ca.cert, pki.good.cert, request.hash_algorithm)
    if (request.issuer_key_hash, request.issuer_name_hash) == ours:
        entry = read_index(pki.index).get(serial)
        if entry is not None and entry.status == "R":
            status, revoked_at, reason = ocsp.OCSPCertStatus.REVOKED, entry.revoked_at, entry.reason
        elif entry is not None and entry.status == "V":
            status = ocsp.OCSPCertStatus.GOOD
    if variant == "wrong_serial":
        serial, status, revoked_at, reason = serial + 1, ocsp.OCSPCertStatus.GOOD, None, None
    elif variant == "revoked":
        status, revoked_at, reason = (
            ocsp.OCSPCertStatus.REVOKED,
            now - dt.timedelta(hours=1),
            x509.ReasonFlags.key_compromise,
        )
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            request.issuer_name_hash,
            request.issuer_key_hash,
            serial,
            request.hash_algorithm,
            status,
            this_update,
            next_update,
            revoked_at,
            reason,
        )
        .responder_id(ocsp.OCSPResponderEncoding.NAME, signer.cert)
    )
    if variant != "no_certs":
        builder = builder.certificates([signer.cert])
    with contextlib.suppress(x509.ExtensionNotFound):
        nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value
        builder = builder.add_extension(nonce, critical=False)
    return _der(builder.sign(signer.key, hashes.SHA256()))


def ocsp_request_for_issuer(
    issuer: x509.Certificate, any_cert: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> tuple[bytes, bytes]:
    """(issuer key hash, issuer name hash) of ``issuer`` under ``algorithm`` (computed by
    cryptography through a request for ``any_cert``, which it must have issued)."""
    request = ocsp.OCSPRequestBuilder().add_certificate(any_cert, issuer, algorithm).build()
    return request.issuer_key_hash, request.issuer_name_hash


def _der(response: ocsp.OCSPResponse) -> bytes:
    return response.public_bytes(serialization.Encoding.DER)


# --------------------------------------------------------------------------- HTTP server


@dataclass(frozen=True)
class Request:
    """What a route callable is given."""

    method: str
    path: str  # the request path, without the query string, not unquoted
    route: str  # the route key that matched
    query: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def rest(self) -> str:
        """The part of ``path`` after the route prefix (for ``/ocsp/<base64>`` routes)."""
        return self.path[len(self.route) :] if self.path.startswith(self.route) else ""


Body = bytes | Callable[[], Iterable[bytes]]


@dataclass(frozen=True)
class Reply:
    """An HTTP answer.

    ``body`` is bytes or a callable returning an iterable of chunks (generated while
    sending).  ``content_length`` overrides the Content-Length header (None: the length of
    bytes; for a callable, no header and the connection closes after the body).
    ``chunk_delay`` sleeps before every chunk but the first.  ``etag`` and/or
    ``last_modified`` make a 200 conditional: a matching If-None-Match (checked first) or
    an If-Modified-Since not older than ``last_modified`` gets 304 without a body.
    ``close`` closes the connection after the reply (a short body with a longer
    Content-Length is then a truncated response).
    """

    status: int = 200
    body: Body = b""
    content_type: str | None = "application/octet-stream"
    headers: Mapping[str, str] = field(default_factory=dict)
    content_length: int | None = None
    chunk_delay: float = 0.0
    etag: str | None = None
    last_modified: dt.datetime | None = None
    close: bool = False


Handler = Callable[[Request], "Reply | bytes"]
Route = bytes | Reply | Handler


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered (``status`` is what it decided to send; the body
    may have been cut short by the client)."""

    method: str
    path: str
    route: str | None
    status: int
    headers: Mapping[str, str]
    at: float


def crl_reply(
    data: bytes, *, content_type: str = "application/pkix-crl", last_modified: dt.datetime | None = None
) -> Reply:
    """A CRL body with a strong ETag (``"<sha256 prefix>"``) and Last-Modified (now,
    unless given): re-requests with If-None-Match/If-Modified-Since get 304."""
    return Reply(
        body=data,
        content_type=content_type,
        etag='"' + hashlib.sha256(data).hexdigest()[:32] + '"',
        last_modified=(last_modified or _now()).astimezone(UTC),
    )


def error_reply(status: int = 500, body: bytes = b"internal server error\n") -> Reply:
    return Reply(status=status, body=body, content_type="text/plain; charset=utf-8")


HTML_BODY = b"<!doctype html><html><head><title>Login</title></head><body><p>Please sign in.</p></body></html>\n"


def html_reply(status: int = 200, body: bytes = HTML_BODY) -> Reply:
    """A captive-portal-like HTML page (HTTP 200 unless ``status``)."""
    return Reply(status=status, body=body, content_type="text/html; charset=utf-8")


def huge_reply(size: int = 24 * 1024 * 1024, chunk: int = 64 * 1024) -> Reply:
    """``size`` bytes with an honest Content-Length, generated lazily: a DER SEQUENCE
    header announcing ``size - 6`` bytes, then zeros (looks like the start of a CRL)."""
    if size < 6:
        raise ValueError("size must be at least 6")

    def chunks() -> Iterator[bytes]:
        zeros = bytes(chunk)
        head = b"\x30\x84" + (size - 6).to_bytes(4, "big")
        yield head
        left = size - len(head)
        while left > 0:
            yield zeros[: min(chunk, left)]
            left -= chunk

    return Reply(body=chunks, content_type="application/pkix-crl", content_length=size)


LYING_PREFIX = b"\x30\x84\x05\xf5\xe0\xfa\x30\x84\x05\xf5\xe0\xf4\x02\x01\x01\x30"


def lying_reply(claimed: int = 100_000_000, sent: bytes = LYING_PREFIX) -> Reply:
    """Content-Length ``claimed`` (100 MB), then ``sent`` (16 bytes) and the connection
    closes."""
    return Reply(body=sent, content_type="application/pkix-crl", content_length=claimed, close=True)


def dribble_reply(interval: float = 0.3, content_length: int = 1_000_000, byte: bytes = b"\x30") -> Reply:
    """One byte every ``interval`` seconds under a Content-Length of ``content_length``,
    until the client goes away or the server stops: per-read socket timeouts never fire."""

    def chunks() -> Iterator[bytes]:
        for _ in range(content_length):
            yield byte

    return Reply(body=chunks, content_type="application/pkix-crl", content_length=content_length, chunk_delay=interval)


OcspResponderFn = Callable[[bytes], bytes]


def _decode_get(rest: str) -> bytes:
    """The DER of a GET OCSP request path: URL-decoded, then base64 (padding optional)."""
    text = urllib.parse.unquote(rest.lstrip("/"))
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=False)


def ocsp_http_handler(responder: OcspResponderFn) -> Handler:
    """A route answering OCSP over HTTP (RFC 6960 appendix A) with ``responder(der)``:
    POST with the DER request as body, or GET ``<route>/<url-encoded base64>``.
    Register it under a key ending in ``/`` (``"/ocsp/stale/"``), which also matches POSTs to
    the path without the slash.  Other methods get 405; a GET whose path does not decode is
    passed on as empty bytes (the responder then answers malformedRequest)."""

    def handle(request: Request) -> Reply:
        if request.method == "POST":
            der = request.body
        elif request.method in ("GET", "HEAD"):
            try:
                der = _decode_get(request.rest)
            except (binascii.Error, ValueError):
                der = b""
        else:
            return error_reply(405, b"method not allowed\n")
        return Reply(body=responder(der), content_type="application/ocsp-response")

    return handle


def python_ocsp_handler(pki: RevocationPki, variant: OcspVariant = "good") -> Handler:
    """:func:`ocsp_http_handler` answering with :func:`python_ocsp_response` ``variant``."""
    return ocsp_http_handler(lambda der: python_ocsp_response(pki, der, variant))


MAX_REQUEST_BODY = 1024 * 1024


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: HttpFileServer

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients going away are normal here; anything else is kept in ``owner.errors``."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            return
        self.owner.errors.append(repr(error))
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "certscope-test-http/1"
    timeout = 30  # idle keep-alive connections
    server: _HttpServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.owner._track(self.connection, add=False)

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def _serve(self) -> None:
        owner = self.server.owner
        path, _, query = self.path.partition("?")
        headers = {k.lower(): v for k, v in self.headers.items()}
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_REQUEST_BODY:
            self._send(Reply(413, b"too large\n"), None, path, headers)
            return
        body = self.rfile.read(length) if length else b""
        key, route = owner._match(path)
        if route is None:
            self._send(error_reply(404, b"not found\n"), None, path, headers)
            return
        reply: Reply | bytes
        if isinstance(route, bytes | Reply):
            reply = route
        else:
            reply = route(Request(self.command, path, key or "", query, headers, body))
        if isinstance(reply, bytes):
            reply = Reply(body=reply)
        self._send(reply, key, path, headers)

    def _not_modified(self, reply: Reply, headers: Mapping[str, str]) -> bool:
        if reply.status != 200 or self.command not in ("GET", "HEAD"):
            return False
        if reply.etag is not None and "if-none-match" in headers:
            tags = [t.strip() for t in headers["if-none-match"].split(",")]
            return "*" in tags or reply.etag in tags or f"W/{reply.etag}" in tags
        if reply.last_modified is not None and "if-modified-since" in headers:
            try:
                since = parsedate_to_datetime(headers["if-modified-since"])
            except (TypeError, ValueError):
                return False
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            return reply.last_modified.replace(microsecond=0) <= since
        return False

    def _send(self, reply: Reply, key: str | None, path: str, headers: Mapping[str, str]) -> None:
        owner = self.server.owner
        status = 304 if self._not_modified(reply, headers) else reply.status
        owner._record(RequestRecord(self.command, path, key, status, dict(headers), time.monotonic()))
        self.send_response(status)
        if reply.etag is not None:
            self.send_header("ETag", reply.etag)
        if reply.last_modified is not None:
            self.send_header("Last-Modified", format_datetime(reply.last_modified, usegmt=True))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        close = reply.close
        if status == 304:
            self.end_headers()
            return
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        if reply.content_length is not None:
            self.send_header("Content-Length", str(reply.content_length))
        elif isinstance(reply.body, bytes):
            self.send_header("Content-Length", str(len(reply.body)))
        else:
            close = True  # body delimited by the end of the connection
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        chunks: Iterable[bytes] = [reply.body] if isinstance(reply.body, bytes) else reply.body()
        try:
            for index, chunk in enumerate(chunks):
                if index and reply.chunk_delay and owner._stopping.wait(reply.chunk_delay):
                    break
                if owner._stopping.is_set():
                    break
                self.wfile.write(chunk)
        except OSError:  # the client went away
            self.close_connection = True


class HttpFileServer:
    """A ThreadingHTTPServer on 127.0.0.1 (port 0) serving ``routes`` from a daemon thread.

    A route key is a path; a key ending in ``/`` also matches every path below it (the
    longest such key wins) and the path without the trailing slash.  The value is bytes
    (200, application/octet-stream), a :class:`Reply`, or a callable taking a
    :class:`Request` and returning either.  Unknown paths get 404.  Routes may be set or
    replaced while running (``server["/x"] = ...``).

    Every request is recorded (:attr:`requests`, :meth:`count`) under its route key, or
    its path when no route matched, with the status decided (304 included).  HTTP/1.1 with
    keep-alive; :meth:`stop` ends dribbling bodies and closes open connections.
    """

    def __init__(self, routes: Mapping[str, Route] | None = None) -> None:
        self.kind = "http"
        self.host = HOST
        self.errors: list[str] = []
        self.requests: list[RequestRecord] = []
        self._routes: dict[str, Route] = dict(routes or {})
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd = _HttpServer((HOST, 0), _Handler)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="revocation-http", daemon=True
        )
        self._thread.start()
        _running.add(self)

    def __repr__(self) -> str:
        state = "stopped" if self._stopping.is_set() else f"{len(self.requests)} requests"
        return f"<http {self.base_url} {state}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __setitem__(self, path: str, route: Route) -> None:
        with self._lock:
            self._routes[path] = route

    def __delitem__(self, path: str) -> None:
        with self._lock:
            del self._routes[path]

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        return self.base_url + path

    def count(self, path: str, *, status: int | None = None, method: str | None = None) -> int:
        """Requests recorded under route key (or unmatched path) ``path``."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (r.route or r.path) == path
                and (status is None or r.status == status)
                and (method is None or r.method == method)
            )

    def hits(self) -> Counter[str]:
        """Requests per route key (unmatched paths under their path)."""
        with self._lock:
            return Counter(r.route or r.path for r in self.requests)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()

    def _match(self, path: str) -> tuple[str | None, Route | None]:
        with self._lock:
            if path in self._routes:
                return path, self._routes[path]
            if path + "/" in self._routes:
                return path + "/", self._routes[path + "/"]
            prefixes = [key for key in self._routes if key.endswith("/") and path.startswith(key)]
            if prefixes:
                key = max(prefixes, key=len)
                return key, self._routes[key]
        return None, None

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def stop(self) -> None:
        """Stop serving, end dribbling bodies, close open connections.  Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        _running.discard(self)
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def http_file_server(files: Mapping[str, Route] | None = None) -> HttpFileServer:
    """Start an :class:`HttpFileServer` serving ``files`` (path -> bytes, Reply or callable)."""
    return HttpFileServer(files)


# --------------------------------------------------------------------------- openssl ocsp

OcspSigner = Literal["delegated", "ca", "bad_eku", "wrong_key"]
_ACCEPT = re.compile(r"^ACCEPT \S+:(\d+)", re.MULTILINE)
_ADDRESS_IN_USE = re.compile(r"address already in use", re.IGNORECASE)
_PIDNS: list[bool] = []


def _pid_namespace_available() -> bool:
    """Whether ``unshare --pid --fork --kill-child`` works here (root or CAP_SYS_ADMIN)."""
    if not _PIDNS:
        try:
            ok = (
                shutil.which("unshare") is not None
                and subprocess.run(
                    ["unshare", "--pid", "--fork", "--kill-child", "true"],
                    capture_output=True,
                    timeout=10,
                    check=False,
                ).returncode
                == 0
            )
        except (OSError, subprocess.SubprocessError):
            ok = False
        _PIDNS.append(ok)
    return _PIDNS[0]


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _process_identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time) of a live, non-zombie process, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return pid, fields[19]


class OcspResponder:
    """A running ``openssl ocsp`` responder for a :class:`RevocationPki`.

    ``url`` (``http://127.0.0.1:PORT``, no trailing slash) takes POST and GET
    ``/<base64>``.  ``pid`` is the launcher's; ``openssl_pids`` the openssl processes.
    Stopping kills them all (SIGKILL; nothing to flush).  See the module docstring for what
    this responder cannot take (anything but a well-formed OCSP request).
    """

    def __init__(
        self,
        pki: RevocationPki,
        signer: OcspSigner,
        *,
        ndays: int | None,
        nmin: int | None,
        port: int,
        multi: int,
        resp_key_id: bool,
        workdir: Path,
        timeout: float,
    ) -> None:
        if signer not in ("delegated", "ca", "bad_eku", "wrong_key"):
            raise ValueError(f"unknown signer {signer!r}")
        for name, value in (("ndays", ndays), ("nmin", nmin)):
            if value is not None and value <= 0:
                raise ValueError(f"openssl ocsp refuses a non-positive -{name} ({value}): use python_ocsp_handler")
        self.kind = "openssl-ocsp"
        self.host = HOST
        self.pki = pki
        self.signer = signer
        self.signer_cert: PkiCert = {
            "delegated": pki.ocsp_signer,
            "ca": pki.ca,
            "bad_eku": pki.bad_eku_signer,
            "wrong_key": pki.rogue,
        }[signer]
        self.ndays, self.nmin, self.multi, self.resp_key_id = ndays, nmin, multi, resp_key_id
        self.workdir = workdir
        self.port = port
        self.openssl_pids: list[int] = []
        self._identities: list[tuple[int, str]] = []
        self._stopped = True
        self._start(port, timeout)

    # -- lifecycle

    def _args(self, port: int) -> list[str]:
        args = ["openssl", "ocsp", "-index", str(self.index), "-port", str(port)]
        args += ["-rsigner", str(self.signer_cert.cert_path), "-rkey", str(self.signer_cert.key_path)]
        args += ["-CA", str(self.pki.ca.cert_path)]
        if self.ndays is not None:
            args += ["-ndays", str(self.ndays)]
        if self.nmin is not None:
            args += ["-nmin", str(self.nmin)]
        if self.multi > 1:
            args += ["-multi", str(self.multi)]
        if self.resp_key_id:
            args.append("-resp_key_id")
        return args

    def _start(self, port: int, timeout: float) -> None:
        self.index = self.workdir / "index.txt"  # a snapshot: see the module docstring
        shutil.copyfile(self.pki.index, self.index)
        self.output_log = self.workdir / "ocsp.out"
        self._log_offset = self.output_log.stat().st_size if self.output_log.exists() else 0
        launcher = ["setpriv", "--pdeathsig", "KILL", "--"]
        if _pid_namespace_available():
            launcher += ["unshare", "--pid", "--fork", "--kill-child", "--"]
        self.args = self._args(port)
        with open(self.output_log, "ab") as out:
            self.process = subprocess.Popen(
                [*launcher, *self.args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                process_group=0,  # not a new session: -multi calls setpgid(0, 0)
            )
        self.pid = self.process.pid
        self._stopped = False
        _running.add(self)
        self._wait_ready(port, timeout)

    def _wait_ready(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        problem = f"not ready after {timeout:.0f}s"
        request = ocsp_request(self.pki.good.cert, self.pki.ca.cert)
        while time.monotonic() < deadline:
            logs = self.logs()
            if _ADDRESS_IN_USE.search(logs):
                self.stop()
                raise AddressInUseError(f"{self!r}: port {port} already in use\n{logs}")
            if self.process.poll() is not None:
                problem = f"exited with status {self.process.returncode}"
                break
            match = _ACCEPT.search(logs)
            if match:
                self.port = int(match.group(1))
                with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                    response = ocsp.load_der_ocsp_response(self._post(request, 2.0))
                    if response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL:
                        self._remember_pids()
                        return
            time.sleep(0.02)
        self.stop()
        raise ServerStartError(f"openssl ocsp {problem}: {' '.join(self.args)}\n{self.logs()}")

    def _remember_pids(self) -> None:
        """The openssl processes: the parent and, with -multi, its children (waiting up to
        a second for all of them to be forked)."""
        top = self.pid
        if _pid_namespace_available():
            kids = _children(self.pid)
            top = kids[0] if kids else self.pid
        deadline = time.monotonic() + 1.0
        while self.multi > 1 and len(_children(top)) < self.multi and time.monotonic() < deadline:
            time.sleep(0.01)
        pids = [top, *_children(top)]
        self.openssl_pids = pids
        self._identities = [ident for pid in pids if (ident := _process_identity(pid)) is not None]

    def _post(self, request: bytes, timeout: float) -> bytes:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("POST", "/", body=request, headers={"Content-Type": "application/ocsp-request"})
            response = conn.getresponse()
            return response.read()
        finally:
            conn.close()

    def query(self, cert: x509.Certificate, *, nonce: bytes | None = None, timeout: float = 5.0) -> ocsp.OCSPResponse:
        """POST an OCSP request for ``cert`` (issued by the PKI's CA) and parse the answer."""
        return ocsp.load_der_ocsp_response(self._post(ocsp_request(cert, self.pki.ca.cert, nonce=nonce), timeout))

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop, take a new snapshot of ``index.txt`` and start again on the same port (the
        certificates' AIA URL stays right).  AddressInUseError if the port was taken meanwhile."""
        port = self.port
        self.stop()
        self._start(port, timeout)

    def running(self) -> bool:
        return not self._stopped and self.process.poll() is None

    def alive(self) -> bool:
        """Running and answering a real OCSP request (see the malformed-request gotcha)."""
        if not self.running():
            return False
        try:
            return self.query(self.pki.good.cert, timeout=2.0).response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        except (OSError, http.client.HTTPException, ValueError):
            return False

    def logs(self) -> str:
        try:
            with open(self.output_log, "rb") as file:
                file.seek(self._log_offset)
                return file.read().decode(errors="replace")[-6000:]
        except OSError as exc:
            return f"(cannot read {self.output_log}: {exc})"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"pid={self.pid}"
        return f"<openssl ocsp signer={self.signer} {self.url} {state} workdir={self.workdir}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGKILL the launcher's process group: ``unshare --kill-child`` then kills openssl
        (PID 1 of the namespace) and the kernel the rest of the namespace; without a PID
        namespace the group holds openssl and its children.  Waits (up to 5 s) until every
        openssl process is gone.  Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _running.discard(self)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if all(_process_identity(pid) != (pid, start) for pid, start in self._identities):
                return
            time.sleep(0.02)
        for pid, start in self._identities:  # not reached in practice: force it
            if _process_identity(pid) == (pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def ocsp_responder(
    pki: RevocationPki,
    *,
    signer: OcspSigner = "delegated",
    ndays: int | None = 1,
    nmin: int | None = None,
    port: int | None = None,
    multi: int = 2,
    resp_key_id: bool = False,
    workdir: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> OcspResponder:
    """Start ``openssl ocsp -index <snapshot of index.txt> -port PORT -rsigner ... -rkey ...
    -CA ca.pem [-ndays N] [-nmin M] -multi 2`` and return once it answers a real OCSP POST.

    ``signer``: ``delegated`` (``pki.ocsp_signer``, EKU OCSPSigning), ``ca`` (the CA key),
    ``bad_eku`` (``pki.bad_eku_signer``), ``wrong_key`` (``pki.rogue``).  ``ndays``/``nmin``
    set nextUpdate (both None: no nextUpdate; openssl refuses values <= 0).  ``port`` None
    lets the OS choose (``-port 0``, no race); a given port raises AddressInUseError when
    taken.  ``multi`` <= 1 runs a single process.  ``resp_key_id`` identifies the responder
    by key hash instead of name.  Logs and the index snapshot go to ``workdir`` (default:
    a new directory in ``pki.directory``).
    """
    if workdir is None:
        workdir = pki.directory / f"ocsp-{signer}-{next(_sequence)}"
    workdir.mkdir(parents=True, exist_ok=True)
    return OcspResponder(
        pki,
        signer,
        ndays=ndays,
        nmin=nmin,
        port=port or 0,
        multi=multi,
        resp_key_id=resp_key_id,
        workdir=workdir,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- the whole stack

HTTP_PATHS: dict[str, str] = {
    "crl": "/crl/ca.crl",  # the good CRL, DER, conditional (ETag + Last-Modified); leaves' CDP
    "crl_pem": "/crl/ca.crl.pem",  # the same CRL as PEM, conditional
    "crl_stale": "/crl/stale.crl",
    "crl_bad_signature": "/crl/bad-signature.crl",
    "crl_wrong_key": "/crl/wrong-key.crl",
    "crl_big": "/crl/big.crl",  # 100,000 entries, DER
    "crl_garbage": "/crl/garbage.crl",  # 200, bytes that are not a CRL
    "error": "/error",  # 500
    "html": "/html",  # 200 text/html
    "huge": "/huge",  # 24 MiB, honest Content-Length, generated lazily
    "lying": "/lying",  # Content-Length 100000000, 16 bytes, close
    "dribble": "/dribble",  # 1 byte / 0.3 s, Content-Length 1000000
}
OCSP_VARIANT_PATH = "/ocsp/{variant}/"  # python_ocsp_handler(pki, variant), e.g. /ocsp/stale/<base64>
STACK_OCSP_VARIANTS: tuple[OcspVariant, ...] = (
    "good",
    "stale",
    "future",
    "no_next_update",
    "wrong_key",
    "bad_eku",
    "no_certs",
    "wrong_serial",
    "revoked",
    "unauthorized",
    "try_later",
    "malformed_request",
    "internal_error",
    "garbage",
)


@dataclass
class RevocationStack:
    """A PKI whose leaves point at running servers: ``ocsp`` (openssl, delegated signer)
    is the AIA OCSP URL, ``http`` serves :data:`HTTP_PATHS` and the Python OCSP variants
    under :data:`OCSP_VARIANT_PATH`; ``http.url(HTTP_PATHS["crl"])`` is the CDP."""

    pki: RevocationPki
    crls: RevocationCrls
    http: HttpFileServer
    ocsp: OcspResponder
    responders: dict[str, OcspResponder] = field(default_factory=dict)
    build_seconds: float = 0.0  # how long revocation_stack took

    def responder(self, signer: OcspSigner, **options: int | bool | None) -> OcspResponder:
        """An extra openssl responder (OS-chosen port), started once per (signer, options)
        and stopped with the stack."""
        key = f"{signer}:{sorted(options.items())}"
        if key not in self.responders or not self.responders[key].running():
            self.responders[key] = ocsp_responder(self.pki, signer=signer, **options)  # type: ignore[arg-type]
        return self.responders[key]

    def ocsp_variant_url(self, variant: OcspVariant) -> str:
        """The URL (ending in ``/``) of a Python OCSP variant: POST to it or GET url + base64."""
        return self.http.url(OCSP_VARIANT_PATH.format(variant=variant.replace("_", "-")))

    def stop(self) -> None:
        for responder in self.responders.values():
            responder.stop()
        self.ocsp.stop()
        self.http.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def revocation_stack(
    directory: Path, *, big_entries: int | None = 100_000, ndays: int | None = 1, attempts: int = 5
) -> RevocationStack:
    """Start the HTTP server, pick a free port for the OCSP responder, build the PKI with
    both URLs in its leaves, start ``openssl ocsp`` (delegated signer) on that port and
    publish the CRLs.  If the port was taken in between, everything is rebuilt on a new
    port (in ``directory/attempt-N``).  ~1.5 s with the big CRL, ~0.3 s without."""
    started = time.monotonic()
    http = http_file_server()
    responder: OcspResponder | None = None
    try:
        for attempt in range(attempts):
            port = free_port()
            pki = build_revocation_pki(
                directory / f"attempt-{attempt}",
                ocsp_url=f"http://{HOST}:{port}",
                crl_url=http.url(HTTP_PATHS["crl"]),
            )
            try:
                responder = ocsp_responder(pki, port=port, ndays=ndays)
                break
            except AddressInUseError:
                if attempt == attempts - 1:
                    raise
        assert responder is not None
        crls = build_crls(pki, big_entries=big_entries)
        routes: dict[str, Route] = {
            HTTP_PATHS["crl"]: crl_reply(crls.good.der),
            HTTP_PATHS["crl_pem"]: crl_reply(crls.good.pem, content_type="application/x-pem-file"),
            HTTP_PATHS["crl_stale"]: crl_reply(crls.stale.der),
            HTTP_PATHS["crl_bad_signature"]: crl_reply(crls.bad_signature.der),
            HTTP_PATHS["crl_wrong_key"]: crl_reply(crls.wrong_key.der),
            HTTP_PATHS["crl_garbage"]: Reply(body=GARBAGE, content_type="application/pkix-crl"),
            HTTP_PATHS["error"]: error_reply(500),
            HTTP_PATHS["html"]: html_reply(),
            HTTP_PATHS["huge"]: huge_reply(),
            HTTP_PATHS["lying"]: lying_reply(),
            HTTP_PATHS["dribble"]: dribble_reply(),
        }
        if crls.big is not None:
            routes[HTTP_PATHS["crl_big"]] = crl_reply(crls.big.der)
        for variant in STACK_OCSP_VARIANTS:
            routes[OCSP_VARIANT_PATH.format(variant=variant.replace("_", "-"))] = python_ocsp_handler(pki, variant)
        for path, route in routes.items():
            http[path] = route
    except BaseException:
        if responder is not None:
            responder.stop()
        http.stop()
        raise
    return RevocationStack(pki=pki, crls=crls, http=http, ocsp=responder, build_seconds=time.monotonic() - started)
