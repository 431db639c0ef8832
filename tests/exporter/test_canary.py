"""Canaries: distinctive strings in private keys, PKCS#12 passwords and the
Kubernetes token must never come out of certscope, wherever it writes.

The secrets are real inputs: PEM key blocks beside certificates (a textual canary
inside the base64 body, which still decodes, and the body lines of a real key), a
Secret whose ``tls.key`` holds such a key, PKCS#12 files opened with the canary
password (and one it cannot open), the client certificate's key and password of a
probe, and the kubeconfig's bearer token.  Everything certscope prints is searched:
``/metrics``, the status page, the daemon's log at debug level, and ``certscope
scan`` / ``certscope probe`` output in both formats, failures included.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.fixtures.helpers import DaemonProcess, find
from tests.fixtures.kube_apiserver import FakeApiServer
from tests.fixtures.pki import Pki
from tests.fixtures.servers import build_tls_pki, openssl_s_server, write_tls_files

KEY_CANARY = "KEYCANARYq7Xw2Zp9"  # valid base64: a decoder would not stop at it
P12_CANARY = "p12-canary-Vb3kLm8"
TOKEN_CANARY = "kube-token-canary-Hs6tRn4"
CLIENT_P12_CANARY = "client-p12-canary-Jy5cWd1"
P12_ENV = "CERTSCOPE_CANARY_P12"
CLIENT_ENV = "CERTSCOPE_CANARY_CLIENT"


def _canary_key_pem(key_pem: bytes) -> bytes:
    """A PEM key block with the textual canary as its first body line."""
    lines = key_pem.splitlines(keepends=True)
    return lines[0] + KEY_CANARY.encode() + b"\n" + b"".join(lines[1:])


def _body_lines(key_pem: bytes) -> list[str]:
    return [line for line in key_pem.decode().splitlines() if not line.startswith("-----") and len(line) >= 32]


def _assert_clean(where: str, text: str, canaries: list[str]) -> None:
    for canary in canaries:
        assert canary not in text, f"{canary!r} leaked into {where}"


def test_secrets_never_leave_certscope(pki: Pki, tmp_path: Path, start_daemon: Any) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "valid.pem").write_bytes(pki.valid.pem)
    (certs / "leaf-and-key.pem").write_bytes(pki.expired.pem + _canary_key_pem(pki.expired.key_pem))
    (certs / "only-a-key.pem").write_bytes(_canary_key_pem(pki.valid.key_pem))
    encrypted = pki.root.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(P12_CANARY.encode()),
    )
    (certs / "encrypted.key").write_bytes(encrypted)
    (certs / "bundle.p12").write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"bundle",
            pki.valid.key,
            pki.valid.cert,
            [pki.intermediate.cert],
            serialization.BestAvailableEncryption(P12_CANARY.encode()),
        )
    )
    (certs / "other-password.p12").write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"other", pki.expired.key, pki.expired.cert, None, serialization.BestAvailableEncryption(b"not-ours-123")
        )
    )
    secret_key = _canary_key_pem(pki.intermediate.key_pem)
    canaries = [
        KEY_CANARY,
        P12_CANARY,
        TOKEN_CANARY,
        CLIENT_P12_CANARY,
        base64.b64encode(secret_key).decode()[8:48],  # the Secret's tls.key as the API sends it
        *(line for key in (pki.valid, pki.expired, pki.intermediate) for line in _body_lines(key.key_pem)),
    ]

    tls_pki = build_tls_pki(pki)
    tls = write_tls_files(tls_pki, tmp_path / "tls", password=CLIENT_P12_CANARY.encode())
    canaries += _body_lines(tls.client.key.read_bytes())
    api = FakeApiServer().start()
    api.allow(token=TOKEN_CANARY)
    try:
        api.put(
            "secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {"namespace": "web", "name": "site"},
                "data": {
                    "tls.crt": base64.b64encode(pki.valid.pem).decode(),
                    "tls.key": base64.b64encode(secret_key).decode(),
                },
            },
        )
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
            "contexts: [{name: t, context: {cluster: c, user: u}}]\n"
            f"clusters: [{{name: c, cluster: {{server: '{api.url}'}}}}]\n"
            f"users: [{{name: u, user: {{token: {TOKEN_CANARY}}}}}]\n"
        )
        leaf = tls.localhost
        with openssl_s_server(leaf.cert, leaf.key, leaf.chain) as server:
            _, port = server.address
            config = f"""
global: {{interval: 1h, trust: {{system: false, ca_files: ["{tls.root_ca}"]}}}}
probes:
  - {{name: disk, kind: files, paths: ["{certs}"], pkcs12: {{password_env: {P12_ENV}}}}}
  - {{name: cluster, kind: kubernetes, kubeconfig: "{kubeconfig}"}}
  - name: client
    kind: tls
    targets: ["localhost:{port}"]
    client_cert: {{pkcs12_file: "{tls.client_p12}", password_env: {CLIENT_ENV}}}
  - name: client-pem
    kind: tls
    targets: ["localhost:{port}"]
    client_cert: {{cert_file: "{tls.client.cert}", key_file: "{tls.client.key}"}}
"""
            env = {P12_ENV: P12_CANARY, CLIENT_ENV: CLIENT_P12_CANARY}
            daemon: DaemonProcess = start_daemon(config, env=env)
            daemon.wait_ready()
            metrics_text = daemon.get("/metrics").text
            samples = daemon.metrics()
            # The inputs were read: the canaries had their chance to leak.
            expiry = "certscope_cert_not_after_timestamp_seconds"
            assert find(samples, expiry, target=str(certs / "bundle.p12"))
            status = "certscope_probe_status"
            assert find(samples, status, target=str(certs / "only-a-key.pem"), reason="no_certificate")
            assert find(samples, status, target=str(certs / "other-password.p12"), reason="bad_password")
            assert find(samples, expiry, probe="cluster", target="web/site/tls.crt")
            assert find(samples, expiry, probe="client", role="client")
            assert find(samples, expiry, probe="client-pem", role="client")
            status_page = daemon.get("/").text
            assert "only-a-key.pem" in status_page

            outputs = {"/metrics": metrics_text, "the status page": status_page}
            cli = [sys.executable, "-m", "exporter"]
            runs = {
                "scan table": [*cli, "scan", str(certs), "--pkcs12-password-env", P12_ENV],
                "scan json": [*cli, "scan", str(certs), "--pkcs12-password-env", P12_ENV, "--output", "json"],
                "scan, wrong password": [*cli, "scan", str(certs / "bundle.p12"), "--pkcs12-password-env", "NOPE"],
            }
            probe = [*cli, "probe", f"localhost:{port}", "--ca-file", str(tls.root_ca)]
            for output in ("table", "json"):
                runs[f"probe {output} p12"] = [
                    *probe,
                    *("--client-pkcs12", str(tls.client_p12), "--client-password-env", CLIENT_ENV),
                    *("--output", output),
                ]
                runs[f"probe {output} pem"] = [
                    *probe,
                    *("--client-cert", str(tls.client.cert), "--client-key", str(tls.client.key)),
                    *("--output", output),
                ]
            runs["probe, wrong p12 password"] = [
                *probe,
                *("--client-pkcs12", str(tls.client_p12), "--client-password-env", P12_ENV),
            ]
            runs["probe, key as certificate"] = [
                *probe,
                *("--client-cert", str(certs / "only-a-key.pem"), "--client-key", str(certs / "only-a-key.pem")),
            ]
            for name, args in runs.items():
                done = subprocess.run(
                    args, capture_output=True, text=True, timeout=60, env={**os.environ, **env, "NOPE": "x"}
                )
                assert done.stdout or done.stderr, name
                outputs[f"certscope {name} (exit {done.returncode})"] = done.stdout + done.stderr
            scan_json = next(text for key, text in outputs.items() if key.startswith("certscope scan json"))
            assert "bundle.p12" in scan_json and "only-a-key.pem" in scan_json
            daemon.stop()
            outputs["the daemon log (debug)"] = daemon.log()
            assert "level=debug" in outputs["the daemon log (debug)"] or "DEBUG" in outputs["the daemon log (debug)"]
    finally:
        api.stop()
    for where, text in outputs.items():
        _assert_clean(where, text, canaries)
