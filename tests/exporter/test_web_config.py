"""``--web.config.file``: HTTPS, mTLS and basic auth on the daemon's own web server.

Every test runs the real daemon process and talks to it with real TLS clients
(``requests`` and ``ssl``), with the test PKI of :mod:`tests.fixtures.servers`: the server
certificate is the ``localhost`` leaf (SAN IP:127.0.0.1) under the test root, and
client certificates come from ``client_ca`` (trusted) and ``wrong_ca`` (not trusted).
The last test has a real Prometheus scrape over TLS with a client certificate and
basic auth.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exporter.webconfig import WebConfigError, load_web_config
from tests.e2e.test_e2e_prometheus import PrometheusServer, launch_ready_prometheus, require_binary
from tests.fixtures.helpers import DaemonProcess, wait_for
from tests.fixtures.pki import DAY, NOW, Issued, Pki, issue
from tests.fixtures.servers import TlsFiles, build_tls_pki, localhost_sans, write_tls_files

PASSWORD = "scrape-secret-7d1c"  # never to be seen in a log
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=6)).decode()
StartDaemon = Callable[..., DaemonProcess]


@pytest.fixture(scope="module")
def tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return write_tls_files(build_tls_pki(pki), tmp_path_factory.mktemp("web-tls"))


@pytest.fixture
def pki_dir(pki: Pki, tmp_path: Path) -> Path:
    directory = tmp_path / "watched"
    directory.mkdir()
    (directory / "valid.pem").write_bytes(pki.valid.pem)
    return directory


def files_config(directory: Path, web_config: Path | None = None) -> str:
    web = f"web: {{config_file: {web_config}}}\n" if web_config else ""
    return f"global: {{interval: 1s}}\n{web}probes:\n  - {{name: pki, kind: files, paths: ['{directory}']}}\n"


def write_web_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def https_url(daemon: DaemonProcess, path: str = "/metrics") -> str:
    return daemon.base_url.replace("http://", "https://") + path


def peer_fingerprint(port: int, ca_file: Path) -> str:
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex()


def test_https_scrape_with_the_test_pki(
    start_daemon: StartDaemon, tls: TlsFiles, pki_dir: Path, tmp_path: Path
) -> None:
    web = write_web_config(
        tmp_path / "web.yml",
        f"tls_server_config:\n  cert_file: {tls.localhost.fullchain}\n  key_file: {tls.localhost.key}\n"
        "  min_version: TLS13\n"
        "http_server_config:\n  headers: {Strict-Transport-Security: max-age=31536000, X-Frame-Options: DENY}\n",
    )
    daemon = start_daemon(files_config(pki_dir), f"--web.config.file={web}")
    assert "(https)" in daemon.log()
    port = int(daemon.base_url.rsplit(":", 1)[1])
    wait_for(lambda: requests.get(https_url(daemon, "/-/ready"), verify=tls.root_ca, timeout=5).ok, what="ready")

    response = requests.get(https_url(daemon), verify=tls.root_ca, timeout=10)
    assert response.status_code == 200
    assert "certscope_cert_not_after_timestamp_seconds" in response.text
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert peer_fingerprint(port, tls.root_ca) == build_fingerprint(tls.localhost.cert)

    # Plain HTTP on the TLS port gets no metrics.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(daemon.base_url + "/metrics", timeout=5)
    # TLS 1.2 is below min_version.
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw).close()
    # The server still serves after the refused clients.
    assert requests.get(https_url(daemon), verify=tls.root_ca, timeout=10).status_code == 200


def build_fingerprint(cert_path: Path) -> str:
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).fingerprint(hashes.SHA256()).hex()


def test_mtls_required_accepts_trusted_clients_and_refuses_the_rest(
    start_daemon: StartDaemon, tls: TlsFiles, pki_dir: Path, tmp_path: Path
) -> None:
    web = write_web_config(
        tmp_path / "web.yml",
        f"tls_server_config:\n  cert_file: {tls.localhost.fullchain}\n  key_file: {tls.localhost.key}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {tls.client_ca}\n",
    )
    daemon = start_daemon(files_config(pki_dir, web))  # from the config file this time, not the flag
    client = (str(tls.client.cert), str(tls.client.key))
    wait_for(
        lambda: requests.get(https_url(daemon, "/-/ready"), verify=tls.root_ca, cert=client, timeout=5).ok,
        what="ready",
    )
    response = requests.get(https_url(daemon), verify=tls.root_ca, cert=client, timeout=10)
    assert response.status_code == 200 and "certscope_probe_success" in response.text

    for cert in (None, (str(tls.wrong_ca_client.cert), str(tls.wrong_ca_client.key))):
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(https_url(daemon), verify=tls.root_ca, cert=cert, timeout=10)
    # Still serving the trusted client after refusing the others.
    assert requests.get(https_url(daemon), verify=tls.root_ca, cert=client, timeout=10).status_code == 200


def test_client_allowed_sans(start_daemon: StartDaemon, tls: TlsFiles, pki_dir: Path, tmp_path: Path) -> None:
    def config(allowed: str) -> str:
        return (
            f"tls_server_config:\n  cert_file: {tls.localhost.fullchain}\n  key_file: {tls.localhost.key}\n"
            f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {tls.client_ca}\n"
            f"  client_allowed_sans: [{allowed}]\n"
        )

    # tls.client has no SAN at all, so no allow-list admits it; a client leaf with SANs is issued here.
    ca = issue("certscope allowed-sans CA", ca=True)
    leaf = client_with_sans(ca, "localhost")
    (tmp_path / "c.crt").write_bytes(leaf.pem)
    (tmp_path / "c.key").write_bytes(leaf.key_pem)
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    web = write_web_config(
        tmp_path / "web.yml",
        config("localhost").replace(str(tls.client_ca), str(tmp_path / "ca.crt")),
    )
    daemon = start_daemon(files_config(pki_dir), f"--web.config.file={web}")
    cert = (str(tmp_path / "c.crt"), str(tmp_path / "c.key"))
    ok = wait_for(lambda: requests.get(https_url(daemon), verify=tls.root_ca, cert=cert, timeout=5), what="scrape")
    assert ok.status_code == 200

    web.write_text(config("someone-else.example").replace(str(tls.client_ca), str(tmp_path / "ca.crt")))
    time.sleep(1.1)  # the web config is looked at again at most once a second

    def refused() -> bool:
        try:
            requests.get(https_url(daemon), verify=tls.root_ca, cert=cert, timeout=5)
        except requests.exceptions.ConnectionError:
            return True
        return False

    wait_for(refused, what="the client refused by client_allowed_sans")


def client_with_sans(ca: Issued, *names: str) -> Issued:
    """A clientAuth leaf with DNS SANs (``issue_client`` makes none, ``issue`` sets serverAuth)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def test_basic_auth(start_daemon: StartDaemon, tls: TlsFiles, pki_dir: Path, tmp_path: Path) -> None:
    web = write_web_config(
        tmp_path / "web.yml",
        f"tls_server_config:\n  cert_file: {tls.localhost.fullchain}\n  key_file: {tls.localhost.key}\n"
        f"basic_auth_users:\n  prometheus: '{HASH}'\n  other: '{bcrypt.hashpw(b'x', bcrypt.gensalt(4)).decode()}'\n",
    )
    daemon = start_daemon(files_config(pki_dir), f"--web.config.file={web}")
    # Health and readiness stay open for a kubelet without credentials.
    wait_for(lambda: requests.get(https_url(daemon, "/-/ready"), verify=tls.root_ca, timeout=5).ok, what="ready")
    assert requests.get(https_url(daemon, "/-/healthy"), verify=tls.root_ca, timeout=5).status_code == 200

    for auth in (None, ("prometheus", "wrong"), ("nobody", PASSWORD), ("other", PASSWORD)):
        refused = requests.get(https_url(daemon), verify=tls.root_ca, auth=auth, timeout=10)
        assert refused.status_code == 401, auth
        assert refused.headers["WWW-Authenticate"].startswith("Basic realm=")
        assert "certscope_" not in refused.text
    for path in ("/", "/-/reload"):
        assert requests.get(https_url(daemon, path), verify=tls.root_ca, timeout=10).status_code == 401, path
    garbled = requests.get(https_url(daemon), verify=tls.root_ca, headers={"Authorization": "Basic %%%"}, timeout=10)
    assert garbled.status_code == 401

    for _ in range(3):  # the second and third are served from the success cache
        accepted = requests.get(https_url(daemon), verify=tls.root_ca, auth=("prometheus", PASSWORD), timeout=10)
        assert accepted.status_code == 200 and "certscope_cert_info" in accepted.text

    # A changed hash is picked up without a restart, and the old password stops working.
    new_hash = bcrypt.hashpw(b"rotated", bcrypt.gensalt(rounds=4)).decode()
    web.write_text(web.read_text().replace(HASH, new_hash))
    wait_for(
        lambda: (
            requests.get(https_url(daemon), verify=tls.root_ca, auth=("prometheus", PASSWORD), timeout=5).status_code
            == 401
        ),
        what="the old password refused after the hash changed",
    )
    assert requests.get(https_url(daemon), verify=tls.root_ca, auth=("prometheus", "rotated"), timeout=5).ok

    log = daemon.log()
    assert PASSWORD not in log and HASH not in log and new_hash not in log


def test_certificate_rotation_without_restart(
    start_daemon: StartDaemon, pki: Pki, tls: TlsFiles, pki_dir: Path, tmp_path: Path
) -> None:
    certs = tmp_path / "serving"
    certs.mkdir()
    cert, key = certs / "tls.crt", certs / "tls.key"
    cert.write_bytes(tls.localhost.fullchain.read_bytes())
    key.write_bytes(tls.localhost.key.read_bytes())
    web = write_web_config(
        tmp_path / "web.yml", "tls_server_config: {cert_file: serving/tls.crt, key_file: serving/tls.key}\n"
    )
    daemon = start_daemon(files_config(pki_dir), f"--web.config.file={web}")  # relative to the web config's directory
    port = int(daemon.base_url.rsplit(":", 1)[1])
    assert peer_fingerprint(port, tls.root_ca) == build_fingerprint(tls.localhost.cert)

    renewed = issue("localhost", pki.intermediate, extra_extensions=(localhost_sans(),))
    # Half-way through a rotation the new key does not match the old certificate:
    # the old pair keeps serving.
    key.write_bytes(renewed.key_pem)
    time.sleep(1.2)
    assert peer_fingerprint(port, tls.root_ca) == build_fingerprint(tls.localhost.cert)
    wait_for(lambda: "web config not reloaded" in daemon.log(), what="the mismatched pair logged")
    cert.write_bytes(renewed.pem + pki.intermediate.pem)
    wait_for(lambda: peer_fingerprint(port, tls.root_ca) == renewed.fingerprint, what="the renewed certificate served")
    log = daemon.log()
    assert "web config reloaded" in log
    assert renewed.key_pem.decode().splitlines()[1] not in log


def test_invalid_web_config_names_every_key(tls: TlsFiles, tmp_path: Path, pki_dir: Path) -> None:
    web = write_web_config(
        tmp_path / "web.yml",
        "tls_server_confg: {}\n"
        "tls_server_config:\n"
        f"  cert_file: {tls.localhost.fullchain}\n"
        "  key_file: missing.key\n"
        "  client_auth_type: RequireAnyClientCert\n"
        "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"
        "  min_version: TLS14\n"
        "  colour: blue\n"
        "http_server_config: {headers: {Server: nginx}}\n"
        f"basic_auth_users: {{alice: {PASSWORD}}}\n",
    )
    with pytest.raises(WebConfigError) as caught:
        load_web_config(str(web))
    messages = caught.value.messages
    expected = [
        "tls_server_confg: unknown key",
        "tls_server_config.cipher_suites: not supported",
        "tls_server_config.colour: unknown key",
        f"tls_server_config.key_file: file not found: {tmp_path / 'missing.key'}",
        "tls_server_config.client_auth_type: RequireAnyClientCert is not supported",
        "tls_server_config.min_version: must be one of TLS10, TLS11, TLS12, TLS13, got 'TLS14'",
        "http_server_config.headers.Server: not one of",
        "basic_auth_users.alice: must be a bcrypt hash",
    ]
    for start in expected:
        assert [m for m in messages if m.startswith(start)], (start, messages)
    assert len(messages) == len(expected), messages
    assert not [m for m in messages if PASSWORD in m]

    # check-config reports it through the main config and through the flag; run refuses to start.
    main = tmp_path / "certscope.yaml"
    main.write_text(files_config(pki_dir, web))
    for args in (["check-config", str(main)], ["check-config", str(main), f"--web.config.file={web}"]):
        checked = subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=60)
        assert checked.returncode == 1
        assert "tls_server_config.colour: unknown key" in checked.stderr
        assert PASSWORD not in checked.stderr + checked.stdout
    log = tmp_path / "refused.log"
    with pytest.raises(AssertionError, match="exited early with 1"):
        DaemonProcess(None, log, f"--web.config.file={web}")
    assert "invalid web config" in log.read_text() and PASSWORD not in log.read_text()

    mismatched = write_web_config(
        tmp_path / "mismatch.yml",
        f"tls_server_config: {{cert_file: {tls.localhost.cert}, key_file: {tls.client.key}}}\n",
    )
    with pytest.raises(WebConfigError, match="cannot load the certificate, key or CA"):
        load_web_config(str(mismatched))
    needs_ca = write_web_config(
        tmp_path / "needs-ca.yml",
        f"tls_server_config: {{cert_file: {tls.localhost.cert}, key_file: {tls.localhost.key},"
        " client_auth_type: RequireAndVerifyClientCert}\n",
    )
    with pytest.raises(WebConfigError, match="client_ca_file: required when client_auth_type"):
        load_web_config(str(needs_ca))


@pytest.fixture
def prometheus_with(tmp_path: Path) -> Iterator[Callable[[str], PrometheusServer]]:
    started: list[PrometheusServer] = []

    def start(scrape_config: str) -> PrometheusServer:
        binary = require_binary("prometheus")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\nscrape_configs:\n"
            + scrape_config
        )
        server = launch_ready_prometheus(binary, tmp_path, config)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.mark.e2e
def test_prometheus_scrapes_over_mtls_with_basic_auth(
    start_daemon: StartDaemon,
    prometheus_with: Callable[[str], PrometheusServer],
    tls: TlsFiles,
    pki: Pki,
    pki_dir: Path,
    tmp_path: Path,
) -> None:
    web = write_web_config(
        tmp_path / "web.yml",
        f"tls_server_config:\n  cert_file: {tls.localhost.fullchain}\n  key_file: {tls.localhost.key}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {tls.client_ca}\n"
        f"basic_auth_users: {{prometheus: '{HASH}'}}\n",
    )
    daemon = start_daemon(files_config(pki_dir), f"--web.config.file={web}")
    address = daemon.base_url.removeprefix("http://")
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    tls_config = f"{{ca_file: {tls.root_ca}, cert_file: {tls.client.cert}, key_file: {tls.client.key}}}"
    prometheus = prometheus_with(
        f"  - job_name: good\n    scheme: https\n    tls_config: {tls_config}\n"
        f"    basic_auth: {{username: prometheus, password_file: {password_file}}}\n"
        f"    static_configs: [{{targets: ['{address}']}}]\n"
        f"  - job_name: wrong-password\n    scheme: https\n    tls_config: {tls_config}\n"
        f"    basic_auth: {{username: prometheus, password: nope}}\n"
        f"    static_configs: [{{targets: ['{address}']}}]\n"
        f"  - job_name: no-client-cert\n    scheme: https\n    tls_config: {{ca_file: {tls.root_ca}}}\n"
        f"    basic_auth: {{username: prometheus, password_file: {password_file}}}\n"
        f"    static_configs: [{{targets: ['{address}']}}]\n"
    )
    query = f'certscope_cert_not_after_timestamp_seconds{{job="good",target="{pki_dir / "valid.pem"}"}}'

    def scraped() -> Any:
        return prometheus.query(query)

    try:
        result = wait_for(scraped, 30, "Prometheus to scrape over mTLS and basic auth")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nPrometheus log:\n{prometheus.log()}\ndaemon log:\n{daemon.log()}") from None
    assert float(result[0]["value"][1]) == pki.valid.not_after

    def target_health() -> dict[str, tuple[str, str]]:
        targets = prometheus.api("targets", state="active")["activeTargets"]
        return {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets}

    health = wait_for(
        lambda: (h := target_health()) and all(state != "unknown" for state, _ in h.values()) and h,
        20,
        "every target scraped once",
    )
    assert health["good"] == ("up", ""), health
    assert health["wrong-password"][0] == "down" and "401" in health["wrong-password"][1], health
    assert health["no-client-cert"][0] == "down", health
    assert targets_use_https(prometheus)


def targets_use_https(prometheus: PrometheusServer) -> bool:
    targets = prometheus.api("targets", state="active")["activeTargets"]
    return all(t["scrapeUrl"].startswith("https://") for t in targets)


def test_web_config_unreadable_by_the_daemon_user_is_reported(tls: TlsFiles, tmp_path: Path) -> None:
    """As root every file is readable, so a forked child drops to nobody first."""
    directory = tmp_path / "private"
    directory.mkdir()
    key = directory / "tls.key"
    key.write_bytes(tls.localhost.key.read_bytes())
    key.chmod(0o600)
    web = write_web_config(
        directory / "web.yml", f"tls_server_config: {{cert_file: {tls.localhost.cert}, key_file: tls.key}}\n"
    )
    for parent in [directory, *directory.parents]:
        parent.chmod(parent.stat().st_mode | 0o005)
    tls.localhost.cert.parent.chmod(0o755)
    web.chmod(0o644)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                load_web_config(str(web))
                message = "loaded"
            except WebConfigError as exc:
                message = "\n".join(exc.messages)
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(child, 0)
    assert os.getuid() == 0, "this test needs root to drop to nobody"
    assert "cannot load the certificate, key or CA" in message and "Permission denied" in message, message
