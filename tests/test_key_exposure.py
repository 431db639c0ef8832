"""Private keys stored where others can read them, and public keys shared between
identities: seen from PEM headers, file metadata and SPKI digests, never by decoding
a key."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from probes.context import ProbeContext
from probes.files import FilesProbe, FilesSettings
from probes.kubernetes import KubernetesProbe, KubernetesSettings
from tests.helpers import find, value
from tests.kube_apiserver import FakeApiServer
from tests.pki import Issued, Pki, issue

NOBODY = 65534


def exposure(path: Path) -> tuple[str, ...]:
    probe = FilesProbe(FilesSettings(paths=(str(path),)))
    return probe.run(str(path), ProbeContext(deadline=float("inf"))).key_exposure


def encrypted_key_pem(issued: Issued) -> bytes:
    return issued.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a passphrase"),
    )


def test_file_exposure_by_mode_and_owner(pki: Pki, tmp_path: Path) -> None:
    bundle = tmp_path / "server.pem"
    bundle.write_bytes(pki.valid.pem + pki.valid.key_pem)
    bundle.chmod(0o600)
    assert exposure(bundle) == ()
    bundle.chmod(0o640)
    assert exposure(bundle) == ("group_readable",)
    bundle.chmod(0o644)
    assert exposure(bundle) == ("other_readable", "group_readable")
    bundle.chmod(0o600)
    os.chown(bundle, NOBODY, -1)  # the directory is root's
    assert exposure(bundle) == ("owner_mismatch",)

    # A key-only file is exposed the same way; an encrypted key is not judged exposed.
    key_only = tmp_path / "server.key"
    key_only.write_bytes(pki.valid.key_pem)
    key_only.chmod(0o644)
    assert exposure(key_only) == ("other_readable", "group_readable")
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(pki.valid.pem + encrypted_key_pem(pki.valid))
    encrypted.chmod(0o644)
    assert exposure(encrypted) == ()
    certificate_only = tmp_path / "cert.pem"
    certificate_only.write_bytes(pki.valid.pem)
    certificate_only.chmod(0o644)
    assert exposure(certificate_only) == ()


def test_daemon_exports_exposure_and_key_reuse(pki: Pki, tmp_path: Path, start_daemon: Any) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    exposed = certs / "exposed.pem"
    exposed.write_bytes(pki.valid.pem + pki.valid.key_pem)
    exposed.chmod(0o644)
    (certs / "safe.pem").write_bytes(pki.expired.pem)
    # One key pair behind two identities: the classic key baked into an image.
    shared = issue("shared-a.test", pki.intermediate)
    other = issue("other.test", pki.intermediate)
    twin = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "shared-c.test")]))
        .issuer_name(pki.intermediate.cert.subject)
        .public_key(shared.cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(shared.cert.not_valid_before_utc)
        .not_valid_after(shared.cert.not_valid_after_utc)
        .sign(pki.intermediate.key, hashes.SHA256())
    )
    (certs / "a.pem").write_bytes(shared.pem)
    (certs / "c.pem").write_bytes(twin.public_bytes(serialization.Encoding.PEM))
    (certs / "b.pem").write_bytes(other.pem)
    daemon = start_daemon(f"probes:\n  - {{name: disk, kind: files, paths: ['{certs}'], interval: 1s}}\n")
    samples = daemon.wait_metrics(lambda s: find(s, "certscope_private_key_exposed"), 20, "exposure")
    causes = {labels["cause"] for labels, _ in find(samples, "certscope_private_key_exposed", target=str(exposed))}
    assert causes == {"other_readable", "group_readable"}
    assert not find(samples, "certscope_private_key_exposed", target=str(certs / "safe.pem"))
    [(labels, count)] = find(samples, "certscope_key_reuse_subjects")
    assert count == 2 and labels["key_type"] == "ec"
    [(info, _)] = find(samples, "certscope_cert_info", target=str(certs / "a.pem"))
    assert info["spki_sha256"] == labels["spki_sha256"]
    assert value(samples, "certscope_probe_success", target=str(exposed)) == 1  # exposure is its own signal


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    server.allow(token="exposure-token")
    try:
        yield server
    finally:
        server.stop()


def test_private_key_in_a_configmap(api: FakeApiServer, pki: Pki, tmp_path: Path) -> None:
    api.put(
        "configmaps",
        {
            "metadata": {"namespace": "apps", "name": "leaky"},
            "data": {"server.key": pki.valid.key_pem.decode(), "ca.crt": pki.root.pem.decode()},
        },
    )
    api.put(
        "configmaps",
        {"metadata": {"namespace": "apps", "name": "fine"}, "data": {"note": "-----BEGIN ENCRYPTED PRIVATE KEY-----"}},
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "current-context": "t",
                "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [{"name": "c", "cluster": {"server": api.url}}],
                "users": [{"name": "u", "user": {"token": "exposure-token"}}],
            }
        )
    )
    probe = KubernetesProbe(KubernetesSettings(kubeconfig=str(kubeconfig), secret_types=(), configmaps=True))
    try:
        discovery = probe.targets()
        ctx = ProbeContext(deadline=float("inf"))
        flagged = {t: probe.run(t, ctx).key_exposure for t in discovery.targets}
        assert flagged == {
            "configmap/apps/leaky/ca.crt": (),
            "configmap/apps/leaky/server.key": ("configmap",),
        }
        assert probe.run("configmap/apps/leaky/server.key", ctx).certificates == ()
    finally:
        probe.close()
