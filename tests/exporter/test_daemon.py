"""The daemon as a real process: metrics over HTTP, bad input, rotation, reload, stop."""

from __future__ import annotations

import gzip
import os
import signal
import time
from collections import Counter
from pathlib import Path

import requests

from tests.fixtures.badinputs import BAD_FILES, make_bad_files
from tests.fixtures.helpers import DaemonProcess, find, value, wait_for
from tests.fixtures.pki import Pki, write_formats

P12_PASSWORD = "canary-p12-password-9f3b"


def files_config(*paths: Path, interval: str = "1s", extra: str = "") -> str:
    listed = ", ".join(f'"{p}"' for p in paths)
    return f"""
global: {{interval: {interval}, timeout: 5s}}
probes:
  - name: pki
    kind: files
    paths: [{listed}]
    labels: {{team: platform}}
    pkcs12: {{password_env: CERTSCOPE_TEST_P12}}
{extra}"""


def test_good_and_bad_files_side_by_side(start_daemon, pki: Pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = write_formats(pki, tmp_path / "certs", password=P12_PASSWORD.encode())
    bad = make_bad_files(tmp_path / "certs" / "bad", pki)
    daemon: DaemonProcess = start_daemon(files_config(tmp_path / "certs"), env={"CERTSCOPE_TEST_P12": P12_PASSWORD})
    daemon.wait_ready()
    response = daemon.get("/metrics")
    assert response.status_code == 200
    metrics = daemon.metrics()

    # Good files are exported, with exact times and identity.
    expired = str(good["expired.pem"])
    assert (
        value(metrics, "certscope_cert_not_after_timestamp_seconds", target=expired, index="0") == pki.expired.not_after
    )
    assert value(metrics, "certscope_probe_success", target=expired) == 1
    info = find(metrics, "certscope_cert_info", target=str(good["chain.pem"]), index="0")[0][0]
    assert info["fingerprint_sha256"] == pki.valid.fingerprint
    assert info["team"] == "platform" and info["role"] == "leaf" and info["sans"] == "valid.test,www.valid.test"
    assert len(find(metrics, "certscope_cert_not_after_timestamp_seconds", target=str(good["bundle.p12"]))) == 2

    # Every bad file: its reason on the target and on the source counter, a log line naming it.
    log = daemon.log()
    for name, (_, reason) in BAD_FILES.items():
        path = str(bad[name])
        status = find(metrics, "certscope_probe_status", target=path)
        assert status, f"{name}: no status series"
        expected_status = "ok" if reason == "duplicate_certificate" else reason
        assert status[0][0]["reason"] == expected_status, (name, status)
        assert value(metrics, "certscope_source_errors_total", probe="pki", reason=reason) >= 1, name
        assert path in log, f"{name}: no log line names {path}"
    assert value(metrics, "certscope_probe_failures_total", target=str(bad["empty.pem"]), reason="empty_file") >= 1
    # Per-file counters appear on the first failure (no 15 zero series per file).
    assert not find(metrics, "certscope_probe_failures_total", target=str(bad["empty.pem"]), reason="parse_error")
    # The malformed certificate still exports its expiry.
    assert find(metrics, "certscope_cert_not_after_timestamp_seconds", target=str(bad["raising-fields.pem"]))
    # The duplicate is exported once per distinct certificate.
    assert len(find(metrics, "certscope_cert_info", target=str(bad["duplicate.pem"]))) == 2

    # No duplicate series anywhere in the exposition.
    lines = [line for line in response.text.splitlines() if line and not line.startswith("#")]
    series = Counter(line.rsplit(" ", 1)[0] for line in lines)
    assert [s for s, n in series.items() if n > 1] == []

    # Secrets never leave the process: neither the password nor any line of key material.
    key_lines = [line.decode() for line in pki.valid.key_pem.splitlines()[1:-1]]
    for text in (response.text, daemon.get("/").text, daemon.log()):
        assert P12_PASSWORD not in text
        assert not [line for line in key_lines if line in text]


def test_rotation_and_deletion(start_daemon, pki: Pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "live"
    directory.mkdir()
    current = directory / "current.pem"
    current.write_bytes(pki.valid.pem)
    doomed = directory / "doomed.pem"
    doomed.write_bytes(pki.expired.pem)
    daemon: DaemonProcess = start_daemon(files_config(directory))
    daemon.wait_ready()
    metrics = daemon.metrics()
    assert value(metrics, "certscope_cert_rotations_total", target=str(current)) == 0
    assert not find(metrics, "certscope_cert_last_rotation_timestamp_seconds", target=str(current))

    before = time.time()
    replacement = directory / ".current.tmp"
    replacement.write_bytes(pki.not_yet_valid.pem)
    os.replace(replacement, current)  # how cert-manager and certbot swap files
    doomed.unlink()
    metrics = daemon.wait_metrics(
        lambda m: find(m, "certscope_cert_rotations_total", target=str(current))[0][1] == 1, what="a rotation"
    )
    assert value(metrics, "certscope_cert_last_rotation_timestamp_seconds", target=str(current)) >= before - 1
    info = find(metrics, "certscope_cert_info", target=str(current))
    assert [i["fingerprint_sha256"] for i, _ in info] == [pki.not_yet_valid.fingerprint]
    for name in ("certscope_cert_not_after_timestamp_seconds", "certscope_probe_success", "certscope_cert_info"):
        assert not find(metrics, name, target=str(doomed)), f"{name} still exported for a deleted file"
    assert value(metrics, "certscope_source_objects", probe="pki") == 1


def test_reload_by_signal_and_http_keeps_the_old_config_on_error(start_daemon, pki: Pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = tmp_path / "first"
    second = tmp_path / "second"
    write_formats(pki, first)
    write_formats(pki, second)
    daemon: DaemonProcess = start_daemon(files_config(first), "--web.enable-lifecycle")
    daemon.wait_ready()
    config_path = Path(daemon.process.args[-1].split("=", 1)[1])  # type: ignore[index, union-attr]

    config_path.write_text(files_config(second))
    daemon.signal(signal.SIGHUP)
    metrics = daemon.wait_metrics(
        lambda m: (
            find(m, "certscope_probe_success", target=str(second / "valid.pem"))
            and not find(m, "certscope_probe_success", target=str(first / "valid.pem"))
        ),
        what="the reloaded config",
    )
    assert value(metrics, "certscope_config_last_reload_successful") == 1

    config_path.write_text(files_config(second) + "    colour: blue\n")
    assert daemon.get("/-/reload").status_code == 405
    response = requests.post(daemon.base_url + "/-/reload", timeout=10)
    assert response.status_code == 500
    assert "probes[0].colour: unknown key" in response.text
    metrics = daemon.metrics()
    assert value(metrics, "certscope_config_last_reload_successful") == 0
    assert find(metrics, "certscope_probe_success", target=str(second / "valid.pem")), "old config stopped"
    daemon.signal(signal.SIGHUP)
    wait_for(
        lambda: daemon.log().count("probes[0].colour: unknown key") >= 2, what="the SIGHUP reload error in the log"
    )

    config_path.write_text(files_config(first))
    assert requests.post(daemon.base_url + "/-/reload", timeout=10).status_code == 200
    assert value(daemon.metrics(), "certscope_config_last_reload_successful") == 1


def test_http_endpoints_and_exposition_formats(start_daemon, pki: Pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_formats(pki, tmp_path / "certs")
    daemon: DaemonProcess = start_daemon(files_config(tmp_path / "certs"))
    assert daemon.get("/-/healthy").status_code == 200
    daemon.wait_ready()
    assert daemon.get("/nope").status_code == 404
    raw = requests.get(daemon.base_url + "/metrics", headers={"Accept-Encoding": "gzip"}, timeout=10, stream=True)
    assert raw.headers["Content-Encoding"] == "gzip"
    assert b"certscope_cert_not_after_timestamp_seconds" in gzip.decompress(raw.raw.read())
    openmetrics = daemon.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
    page = daemon.get("/")
    assert page.headers["Content-Type"].startswith("text/html")
    assert "expired.test" in page.text


def test_sigterm_stops_within_ten_seconds(start_daemon, pki: Pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_formats(pki, tmp_path / "certs")
    daemon: DaemonProcess = start_daemon(files_config(tmp_path / "certs"))
    daemon.wait_ready()
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    daemon.process.wait(timeout=10)
    assert time.monotonic() - started < 10
    assert daemon.process.returncode == 0


def test_invalid_config_at_start_exits_non_zero_with_the_errors(start_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "broken.yaml"
    config.write_text("probes: [{name: x, kind: files, paths: [rel]}]\n")
    log = tmp_path / "broken.log"
    try:
        DaemonProcess(config, log)
    except AssertionError as exc:
        assert "exited early with 1" in str(exc)
    else:
        raise AssertionError("the daemon started on an invalid config")
    assert "probes[0].paths[0]: must be absolute" in log.read_text()


def test_a_directory_of_ten_thousand_files(start_daemon, pki: Pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "many"
    directory.mkdir()
    blobs = [pki.valid.pem, pki.expired.pem, pki.not_yet_valid.pem, pki.intermediate.pem]
    for number in range(10_000):
        (directory / f"{number:05d}.pem").write_bytes(blobs[number % len(blobs)])
    (directory / "zz-empty.pem").write_bytes(b"")
    daemon: DaemonProcess = start_daemon(files_config(directory, interval="1m"))
    daemon.wait_ready(timeout=60)
    metrics = daemon.metrics()
    assert value(metrics, "certscope_source_objects", probe="pki") == 10_001
    assert len(metrics["certscope_cert_not_after_timestamp_seconds"]) == 10_000
    assert value(metrics, "certscope_source_errors_total", probe="pki", reason="empty_file") == 1
