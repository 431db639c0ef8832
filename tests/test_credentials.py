"""One way to read a secret (probes/credentials.py), and every kind using it: an unset
or empty variable, a missing, unreadable or empty file is an error naming the config
key and the variable or file, never the value."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from probes.ca import CaFailure
from probes.ca_issue import require_secret
from probes.context import ProbeContext
from probes.credentials import CredentialUnavailable, read_secret
from probes.files import FilesProbe, FilesSettings, Pkcs12Password
from probes.reasons import Reason
from probes.tls import ClientCert, TlsProbe, TlsSettings
from tests.pki import Pki, write_formats

SECRET = "correct horse"


def test_a_secret_is_read_without_its_trailing_newline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "password"
    path.write_text(SECRET + "\r\n")
    assert read_secret(None, str(path), "pkcs12.password") == SECRET.encode()
    monkeypatch.setenv("CERTSCOPE_TEST_SECRET", SECRET + "\n")
    assert read_secret("CERTSCOPE_TEST_SECRET", None, "pkcs12.password") == SECRET.encode()
    assert read_secret(None, None, "pkcs12.password") is None  # nothing configured


def unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str | None, str | None, str]]:
    """(env, file, what the message must name) of every way a secret is unusable."""
    empty = tmp_path / "empty"
    empty.write_text("\n")
    large = tmp_path / "large"
    large.write_bytes(b"x" * (64 * 1024 + 1))
    monkeypatch.setenv("CERTSCOPE_TEST_EMPTY", "")
    monkeypatch.delenv("CERTSCOPE_TEST_UNSET", raising=False)
    return {
        "unset variable": ("CERTSCOPE_TEST_UNSET", None, "_env: environment variable CERTSCOPE_TEST_UNSET is not set"),
        "empty variable": ("CERTSCOPE_TEST_EMPTY", None, "_env: environment variable CERTSCOPE_TEST_EMPTY is empty"),
        "missing file": (None, str(tmp_path / "missing"), f"_file: cannot read {tmp_path / 'missing'}"),
        "a directory": (None, str(tmp_path), f"_file: cannot read {tmp_path}"),
        "empty file": (None, str(empty), f"_file: {empty} is empty"),
        "large file": (None, str(large), f"_file: {large} is larger than 64 KiB"),
    }


def test_an_unusable_secret_is_an_error_naming_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for case, (env, path, named) in unusable(tmp_path, monkeypatch).items():
        with pytest.raises(CredentialUnavailable) as caught:
            read_secret(env, path, "client_cert.password")
        assert str(caught.value).startswith("client_cert.password" + named), case
        # The CA kinds turn it into credential_unavailable with the same message.
        with pytest.raises(CaFailure) as failure:
            require_secret(path, env, "issuance.password")
        assert failure.value.reason is Reason.CREDENTIAL_UNAVAILABLE
        assert str(failure.value).startswith("issuance.password" + named), case


def test_files_name_the_unusable_password_on_the_pkcs12_file(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = write_formats(pki, tmp_path / "formats")["bundle.p12"]
    for case, (env, path, named) in unusable(tmp_path, monkeypatch).items():
        probe = FilesProbe(
            FilesSettings(paths=(str(bundle),), pkcs12=Pkcs12Password(password_env=env, password_file=path))
        )
        result = probe.run(str(bundle), ProbeContext(deadline=time.monotonic() + 10))
        assert result.reason is Reason.BAD_PASSWORD, case
        assert f"cannot open PKCS#12 (pkcs12.password{named}" in result.message, (case, result.message)
    # The value itself never shows, not even when it is wrong.
    monkeypatch.setenv("CERTSCOPE_TEST_SECRET", "hunter2-not-it")
    probe = FilesProbe(FilesSettings(paths=(str(bundle),), pkcs12=Pkcs12Password(password_env="CERTSCOPE_TEST_SECRET")))
    result = probe.run(str(bundle), ProbeContext(deadline=time.monotonic() + 10))
    assert result.reason is Reason.BAD_PASSWORD and "hunter2" not in result.message


def test_a_tls_client_password_that_cannot_be_used_stops_the_build(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = write_formats(pki, tmp_path / "formats")["bundle.p12"]
    monkeypatch.setenv("CERTSCOPE_TEST_SECRET", SECRET)
    good = ClientCert(pkcs12_file=str(bundle), password_env="CERTSCOPE_TEST_SECRET")
    assert TlsProbe(TlsSettings(targets=("a.test:443",), client_cert=good)).client_certificates
    for case, (env, path, named) in unusable(tmp_path, monkeypatch).items():
        client = ClientCert(pkcs12_file=str(bundle), password_env=env, password_file=path)
        with pytest.raises(CredentialUnavailable) as caught:
            TlsProbe(TlsSettings(targets=("a.test:443",), client_cert=client))
        assert str(caught.value).startswith("client_cert.password" + named), case
