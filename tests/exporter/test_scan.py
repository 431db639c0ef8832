"""`certscope scan`: the one-shot view of certificate files, and its exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fixtures.pki import Pki, write_formats


def scan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", "scan", *args], capture_output=True, text=True, timeout=60)


def test_json_lists_every_certificate_soonest_first(pki: Pki, tmp_path: Path) -> None:
    write_formats(pki, tmp_path)
    result = scan(str(tmp_path / "*.pem"), "--output", "json")
    assert result.returncode == 1, result.stderr  # expired.pem is in there
    document = json.loads(result.stdout)
    first = document["certificates"][0]
    assert first["fingerprint_sha256"] == pki.expired.fingerprint
    assert first["problems"][0] == "expired"
    assert first["days_left"] < -9
    assert first["key"] == "ec-256"
    assert first["sans"] == ["expired.test"]
    not_afters = [c["not_after"] for c in document["certificates"]]
    assert not_afters == sorted(not_afters)
    assert document["errors"] == []


def test_exit_status_follows_the_warn_window(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "valid.pem").write_bytes(pki.valid.pem)  # 90 days left
    assert scan(str(tmp_path), "--warn", "7d").returncode == 0
    table = scan(str(tmp_path), "--warn", "100d")
    assert table.returncode == 1
    assert "expires within 100 days" in table.stdout
    assert "subject     CN=valid.test,O=certscope tests" in table.stdout


def test_unreadable_input_exits_two_and_says_why(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "valid.pem").write_bytes(pki.valid.pem)
    (tmp_path / "empty.pem").write_bytes(b"")
    result = scan(str(tmp_path), str(tmp_path / "missing.pem"))
    assert result.returncode == 2
    assert f"error [empty_file] {tmp_path / 'empty.pem'}: file is empty" in result.stdout
    assert f"error [not_found] {tmp_path / 'missing.pem'}" in result.stdout
    assert scan(str(tmp_path), "--warn", "soon").returncode == 2
