"""Label values nobody would choose: quotes, backslashes, newlines, NUL bytes and
non-UTF-8 bytes in subjects, issuers, SANs and file names, and 10,000 SANs.

The daemon serves them; the exposition must still parse with prometheus-client's
parser (both formats) and pass ``promtool check metrics``, the values must round-trip
exactly where they are valid text, and the good file beside them is still exported.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from exporter.collector import MAX_SANS_LABEL
from tests.fixtures.helpers import DaemonProcess, find, parse_metrics
from tests.fixtures.pki import Pki

NASTY_CN = 'q"uote b\\ack\nnew\x00nul <script>alert(1)</script> PLACEHOLDER'
NASTY_ISSUER_O = 'o"\n\\\x00'
NASTY_SANS = ('a"b\nc\\d\x00e.test', 'http://x/"\n\\\x00', 'a"\n@b')


def _self_signed(common_name: str, sans: list[x509.GeneralName]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "o")]
    )
    issuer = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, NASTY_ISSUER_O),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _promtool(exposition: bytes) -> subprocess.CompletedProcess[bytes]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install -y prometheus (scripts/test does)"
    return subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=60)


def test_hostile_label_values_keep_the_exposition_valid(start_daemon: Any, pki: Pki, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "good.pem").write_bytes(pki.valid.pem)
    nasty_sans: list[x509.GeneralName] = [
        x509.DNSName(NASTY_SANS[0]),
        x509.UniformResourceIdentifier(NASTY_SANS[1]),
        x509.RFC822Name(NASTY_SANS[2]),
    ]
    nasty = _self_signed(NASTY_CN, nasty_sans)
    (certs / "nasty.der").write_bytes(nasty)
    # The same certificate with invalid UTF-8 inside a UTF8String of the subject.
    assert nasty.count(b"PLACEHOLDER") == 2
    (certs / "non-utf8.der").write_bytes(nasty.replace(b"PLACEHOLDER", b"\xff\xfe\xc3(\xa0\xa1\x80\xbf\xf0\x00\n"))
    many = _self_signed("many-sans.test", [x509.DNSName(f"n{i}.example.test") for i in range(10_000)])
    (certs / "many-sans.der").write_bytes(many)
    # A directory whose name is not UTF-8 (and has a quote and a newline): the
    # target label carries it.  Before the fix this one file made every scrape fail.
    odd_dir = os.fsencode(certs) + b'/dir\xff"\nx'
    os.mkdir(odd_dir)
    with open(odd_dir + b"/leaf.pem", "wb") as handle:
        handle.write(pki.expired.pem)

    daemon: DaemonProcess = start_daemon(
        f'global: {{interval: 1h}}\nprobes: [{{name: odd, kind: files, paths: ["{certs}"]}}]\n'
    )
    daemon.wait_ready()
    response = daemon.get("/metrics")
    assert response.status_code == 200, response.text[:500]
    lint = _promtool(response.content)
    assert lint.returncode == 0, lint.stderr.decode(errors="replace") + lint.stdout.decode(errors="replace")
    metrics = parse_metrics(response.text)

    good = find(metrics, "certscope_cert_not_after_timestamp_seconds", target=str(certs / "good.pem"))
    assert [v for _, v in good] == [pki.valid.not_after], "the good file beside the hostile ones is exported"
    info = find(metrics, "certscope_cert_info", target=str(certs / "nasty.der"))
    assert len(info) == 1
    labels = info[0][0]
    assert labels["subject_cn"] == NASTY_CN and labels["issuer_cn"] == NASTY_CN
    assert labels["sans"] == ",".join(NASTY_SANS), "SANs round-trip exactly through the escaping"

    broken = find(metrics, "certscope_probe_status", target=str(certs / "non-utf8.der"))
    assert [lbl["reason"] for lbl, _ in broken] == ["malformed_certificate"]
    assert find(metrics, "certscope_cert_not_after_timestamp_seconds", target=str(certs / "non-utf8.der")), (
        "a certificate with an unreadable subject still exports its expiry"
    )

    capped = find(metrics, "certscope_cert_info", target=str(certs / "many-sans.der"))
    assert len(capped) == 1
    assert len(capped[0][0]["sans"]) == MAX_SANS_LABEL and capped[0][0]["sans"].endswith("...")

    odd_target = str(certs) + '/dir\ufffd"\nx/leaf.pem'
    assert [v for _, v in find(metrics, "certscope_cert_not_after_timestamp_seconds", target=odd_target)] == [
        pki.expired.not_after
    ]

    # OpenMetrics negotiation goes through the same labels.
    openmetrics = daemon.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    families = {family.name: family for family in parse_openmetrics(openmetrics.text)}
    om_info = [s for s in families["certscope_cert_info"].samples if s.labels["target"] == str(certs / "nasty.der")]
    assert om_info and om_info[0].labels["subject_cn"] == NASTY_CN

    page = daemon.get("/")
    assert page.status_code == 200
    assert "<script>" not in page.text and "&lt;script" in page.text  # (RFC 4514 adds a backslash)
    assert "dir?&quot;" in page.text, "the undecodable byte is shown as '?', not a 500"
