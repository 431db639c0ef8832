"""``certscope scan PATH...``: what certificates are in these files, and what is wrong.

Uses the ``files`` probe exactly as the daemon does, so a scan shows what the daemon
would export: PEM, DER, PKCS#7, PKCS#12, Java keystores (JKS, JCEKS; the PKCS#12
password options give their store password) and kubeconfig files.  Exit status:
0 all fine; 1 a certificate has expired or expires within ``--warn``; 2 a path
could not be read or parsed (this wins over 1, since an unreadable file may hide
an expiring certificate).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from probes.certfiles import load_certificates
from probes.context import ProbeContext
from probes.files import FilesProbe, FilesSettings, Pkcs12Password
from probes.result import CertObservation, SourceError
from probes.revocation import RevocationChecker, RevocationQuery

EXIT_OK, EXIT_EXPIRING, EXIT_ERRORS = 0, 1, 2


def scan(
    paths: list[str],
    warn_seconds: float,
    output: str = "table",
    pkcs12_password_env: str | None = None,
    pkcs12_password_file: str | None = None,
    stream: TextIO = sys.stdout,
    now: float | None = None,
    revocation: tuple[str, ...] = (),
    allow_networks: tuple[str, ...] = (),
) -> int:
    now = time.time() if now is None else now
    password = (
        Pkcs12Password(password_file=pkcs12_password_file, password_env=pkcs12_password_env)
        if pkcs12_password_env or pkcs12_password_file
        else None
    )
    probe = FilesProbe(FilesSettings(paths=tuple(os.path.abspath(p) for p in paths), pkcs12=password))
    discovery = probe.targets()
    errors: list[SourceError] = list(discovery.errors)
    found: list[tuple[str, CertObservation]] = []
    for target in discovery.targets:
        result = probe.run(target, ProbeContext(deadline=time.monotonic() + 30))
        errors.extend(result.errors)
        found.extend((target, observation) for observation in result.certificates)
    found.sort(key=lambda item: item[1].cert.not_after)
    records = [_record(path, observation, now, warn_seconds) for path, observation in found]
    if revocation:
        _add_revocation(records, discovery.targets, revocation, allow_networks)

    if output == "json":
        document = {
            "certificates": records,
            "errors": [{"item": e.item, "reason": e.reason.value, "message": e.message} for e in errors],
        }
        json.dump(document, stream, indent=2)
        stream.write("\n")
    else:
        _print_table(records, errors, stream)

    if any(e.reason.value != "duplicate_certificate" for e in errors):
        return EXIT_ERRORS
    if any(r["expiring"] for r in records):
        return EXIT_EXPIRING
    return EXIT_OK


def _add_revocation(
    records: list[dict[str, Any]], files: tuple[str, ...], methods: tuple[str, ...], allow_networks: tuple[str, ...]
) -> None:
    """OCSP/CRL status for each certificate whose issuer is among the scanned ones
    (PEM and DER files; PKCS#12 is not reopened here)."""
    certificates: dict[str, x509.Certificate] = {}
    for path in files:
        try:
            for cert in load_certificates(path):
                certificates[cert.fingerprint(hashes.SHA256()).hex()] = cert
        except (OSError, ValueError):
            continue
    by_subject = {loaded.subject: loaded for loaded in certificates.values()}
    checker = RevocationChecker()  # one scan: a responder or CRL shared by certificates is asked once
    for record in records:
        record["revocation"] = []
        subject = certificates.get(record["fingerprint_sha256"])
        issuer = by_subject.get(subject.issuer) if subject is not None else None
        if subject is None or issuer is None or subject.issuer == subject.subject:
            continue
        for method in methods:
            query = RevocationQuery(subject, issuer, None, time.monotonic() + 10, allow_networks)
            answer = checker.ocsp.status(query) if method == "ocsp" else checker.crl.status(query)
            record["revocation"].append(
                {"method": method, "state": answer.state, "source": answer.source, "message": answer.message}
            )
            if answer.state == "revoked":
                record["problems"].insert(0, f"revoked ({method})")
                record["expiring"] = True  # revoked counts as failing the scan


def _record(path: str, observation: CertObservation, now: float, warn_seconds: float) -> dict[str, Any]:
    cert = observation.cert
    seconds_left = cert.not_after - now
    problems = list(cert.problems)
    if seconds_left <= 0:
        problems.insert(0, "expired")
    elif seconds_left <= warn_seconds:
        problems.insert(0, f"expires within {warn_seconds / 86400:g} days")
    if cert.not_before > now:
        problems.insert(0, "not yet valid")
    return {
        "path": path,
        "index": observation.index,
        "role": observation.role,
        # Where inside the file: a keystore alias, a kubeconfig cluster or user.
        "where": dict(observation.labels),
        "subject": cert.subject,
        "issuer": cert.issuer,
        "sans": list(cert.sans),
        "not_before": _iso(cert.not_before),
        "not_after": _iso(cert.not_after),
        "days_left": round(seconds_left / 86400, 2),
        "key": f"{cert.key_type}-{cert.key_bits}",
        "signature_algorithm": cert.signature_algorithm,
        "serial": cert.serial,
        "fingerprint_sha256": cert.fingerprint_sha256,
        "problems": problems,
        "expiring": seconds_left <= warn_seconds,
    }


def _print_table(records: list[dict[str, Any]], errors: list[SourceError], stream: TextIO) -> None:
    def line(text: str) -> None:
        stream.write(printable(text) + "\n")

    for record in records:
        status = "; ".join(record["problems"]) or "ok"
        where = "".join(f" {name}={value}" for name, value in record["where"].items())
        line(f"{record['path']}[{record['index']}] ({record['role']}){where}: {status}")
        rows = [
            ("subject", record["subject"] or "(empty)"),
            ("issuer", record["issuer"]),
            ("sans", ", ".join(record["sans"]) or "-"),
            ("not after", f"{record['not_after']}  ({record['days_left']:.1f} days left)"),
            ("not before", record["not_before"]),
            ("key", record["key"]),
            ("signature", record["signature_algorithm"]),
            ("serial", record["serial"]),
            ("sha256", record["fingerprint_sha256"]),
            *(
                ("revocation", f"{r['method']}: {r['state']}" + (f" from {r['source']}" if r["source"] else ""))
                for r in record.get("revocation", [])
            ),
        ]
        for name, value in rows:
            line(f"    {name:<11} {value}")
    for error in errors:
        line(f"error [{error.reason.value}] {error.message}")
    expiring = sum(1 for r in records if r["expiring"])
    stream.write(f"\n{len(records)} certificate(s), {expiring} expired or expiring, {len(errors)} problem(s)\n")


# What a terminal would act on or what cannot be written: C0 and C1 controls (ESC
# starts escape sequences, CR rewrites the line), DEL, line and paragraph
# separators, bidirectional overrides (text that reads differently than it is), and
# the lone surrogates that stand for a file name's undecodable bytes.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` for a terminal: each unprintable character as a visible escape
    (``\\x1b``, ``\\u202e``; a file name's undecodable byte as ``\\xNN``).
    Backslashes stay as they are: RFC 4514 names use them (``CN=Doe\\, John``)."""
    return _UNPRINTABLE.sub(_escape, text) if _UNPRINTABLE.search(text) else text


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte it stands for
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
