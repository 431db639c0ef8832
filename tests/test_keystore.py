"""Java keystores (JKS, JCEKS) made by the JDK's own ``keytool``.

Each store holds what real ones hold: a private key entry with its chain (imported
from a PKCS#12, as a Kafka or Tomcat keystore is built), a trusted CA entry, a key
pair keytool generated itself, and, in the JCEKS, a secret key (the kind a Hadoop
credential store is made of) that must be stepped over.  What certscope reads is
compared with what keytool exports, certificate by certificate; the password and
corruption cases must come back as their reasons, never as a traceback.

keytool comes from Debian's openjdk-17-jre-headless (scripts/install-test-deps);
without it these tests fail, they do not skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from hypothesis import given
from hypothesis import strategies as st

from probes.context import ProbeContext
from probes.files import FilesProbe, FilesSettings, Pkcs12Password
from probes.keystore import parse_keystore
from probes.reasons import Reason
from tests.helpers import find
from tests.pki import Pki, build_pki
from tests.test_fuzz import FUZZ, mutated

PASSWORD = "st0re-pass-" + "9f3c"  # must never appear in a message, log or metric
OTHER_PASSWORD = "p12-pass-" + "7a1b"


def keytool() -> str:
    path = shutil.which("keytool")
    if path is None:
        pytest.fail("keytool is not installed: run scripts/install-test-deps (Debian openjdk-17-jre-headless)")
    return path


def run_keytool(*args: str) -> str:
    done = subprocess.run([keytool(), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@dataclass(frozen=True)
class Stores:
    jks: Path
    jceks: Path
    pki: Pki
    # alias -> the certificates keytool exports for it (the chain of a key entry), by store
    exported: dict[str, dict[str, list[x509.Certificate]]]


def exported_chain(store: Path, store_type: str, alias: str) -> list[x509.Certificate]:
    """What keytool itself says an alias holds: ``-list -rfc`` prints the whole chain."""
    text = run_keytool(
        "-list", "-rfc", "-alias", alias, "-keystore", str(store), "-storetype", store_type, "-storepass", PASSWORD
    )
    return x509.load_pem_x509_certificates(text.encode())


def build_store(directory: Path, pki: Pki, store_type: str) -> Path:
    store = directory / f"app.{store_type.lower()}"
    common = ["-keystore", str(store), "-storetype", store_type, "-storepass", PASSWORD]
    root = directory / "root.pem"
    root.write_bytes(pki.root.pem)
    run_keytool("-importcert", "-noprompt", "-alias", "rootca", "-file", str(root), *common)
    # A key entry with its chain, from a PKCS#12: how a Kafka or Tomcat keystore is made.
    p12 = directory / f"leaf-{store_type}.p12"
    p12.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"leaf",
            pki.valid.key,
            pki.valid.cert,
            [pki.intermediate.cert, pki.root.cert],
            serialization.BestAvailableEncryption(OTHER_PASSWORD.encode()),
        )
    )
    run_keytool(
        "-importkeystore", "-noprompt", "-srckeystore", str(p12), "-srcstoretype", "PKCS12",
        "-srcstorepass", OTHER_PASSWORD, "-srcalias", "leaf", "-destalias", "kafka-broker",
        "-destkeystore", str(store), "-deststoretype", store_type, "-deststorepass", PASSWORD,
        "-destkeypass", PASSWORD,
    )  # fmt: skip
    run_keytool(
        "-genkeypair", "-alias", "selfsigned", "-keyalg", "RSA", "-keysize", "2048", "-validity", "30",
        "-dname", "CN=keytool self-signed", "-keypass", PASSWORD, *common,
    )  # fmt: skip
    if store_type == "JCEKS":
        run_keytool("-genseckey", "-alias", "hadoop-secret", "-keyalg", "AES", "-keysize", "128",
                    "-keypass", PASSWORD, *common)  # fmt: skip
    return store


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    pki = build_pki()
    directory = tmp_path_factory.mktemp("keystores")
    jks = build_store(directory, pki, "JKS")
    jceks = build_store(directory, pki, "JCEKS")
    exported = {
        str(store): {alias: exported_chain(store, kind, alias) for alias in ("rootca", "kafka-broker", "selfsigned")}
        for store, kind in ((jks, "JKS"), (jceks, "JCEKS"))
    }
    return Stores(jks, jceks, pki, exported)


def probe_run(path: Path, **settings: object) -> tuple[object, ...]:
    probe = FilesProbe(FilesSettings(paths=(str(path),), **settings))  # type: ignore[arg-type]
    result = probe.run(str(path), ProbeContext(deadline=time.monotonic() + 30))
    return result  # type: ignore[return-value]


def by_alias(result: object) -> dict[str, list[tuple[str, float, str]]]:
    found: dict[str, list[tuple[str, float, str]]] = {}
    for observation in result.certificates:  # type: ignore[attr-defined]
        alias = dict(observation.labels)["keystore_alias"]
        found.setdefault(alias, []).append(
            (observation.cert.fingerprint_sha256, observation.cert.not_after, observation.role)
        )
    return found


@pytest.mark.parametrize("store_type", ["JKS", "JCEKS"])
def test_every_entry_is_read_by_alias_as_keytool_exports_it(
    stores: Stores, store_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stores.jks if store_type == "JKS" else stores.jceks
    assert store.read_bytes()[:4] == (b"\xfe\xed\xfe\xed" if store_type == "JKS" else b"\xce\xce\xce\xce")
    monkeypatch.setenv("KEYSTORE_PASSWORD", PASSWORD)
    result = probe_run(store, keystore=Pkcs12Password(password_env="KEYSTORE_PASSWORD"))
    assert result.success, result.errors  # type: ignore[attr-defined]
    found = by_alias(result)
    assert set(found) == {"rootca", "kafka-broker", "selfsigned"}  # the secret key holds no certificate
    for alias, chain in stores.exported[str(store)].items():
        expected = [(c.fingerprint(hashes_sha256()).hex(), c.not_valid_after_utc.timestamp()) for c in chain]
        assert [(fingerprint, not_after) for fingerprint, not_after, _ in found[alias]] == expected, alias
    # The broker's chain: leaf, intermediate, root, with the expiry the PKI gave them.
    assert [role for *_, role in found["kafka-broker"]] == ["leaf", "intermediate", "root"]
    assert found["kafka-broker"][0][1] == stores.pki.valid.not_after
    assert found["rootca"] == [(stores.pki.root.fingerprint, stores.pki.root.not_after, "root")]
    # keytool's own key pair: valid for 30 days from now.
    assert abs(found["selfsigned"][0][1] - (time.time() + 30 * 86400)) < 600


def hashes_sha256() -> object:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


@pytest.mark.parametrize("store_type", ["JKS", "JCEKS"])
def test_wrong_or_missing_password_is_bad_password_and_never_quoted(
    stores: Stores, store_type: str, tmp_path: Path
) -> None:
    store = stores.jks if store_type == "JKS" else stores.jceks
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-" + PASSWORD + "\n")
    for settings in ({"keystore": Pkcs12Password(password_file=str(wrong))}, {}):
        result = probe_run(store, **settings)
        assert not result.success and result.reason is Reason.BAD_PASSWORD  # type: ignore[attr-defined]
        assert not result.certificates  # type: ignore[attr-defined]
        assert PASSWORD not in result.message and store_type in result.message  # type: ignore[attr-defined]
    assert "no password configured" in probe_run(store).message  # type: ignore[attr-defined]


def test_the_pkcs12_password_opens_keystores_when_no_keystore_password_is_set(stores: Stores, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n")
    result = probe_run(stores.jks, pkcs12=Pkcs12Password(password_file=str(password)))
    assert result.success and len(result.certificates) == 5  # type: ignore[attr-defined]


@pytest.mark.parametrize("store_type", ["JKS", "JCEKS"])
def test_corrupt_stores_are_parse_errors(
    stores: Stores, store_type: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = (stores.jks if store_type == "JKS" else stores.jceks).read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "no digest": data[:-20],
        "bad version": data[:4] + b"\x00\x00\x00\x07" + data[8:],
        "huge count": data[:8] + b"\x7f\xff\xff\xff" + data[12:],
        "unknown entry": data[:12] + b"\x00\x00\x00\x09" + data[16:],
        "magic only": data[:12],
    }
    for case, corrupt in cases.items():
        path = tmp_path / f"{case.replace(' ', '-')}.{store_type.lower()}"
        path.write_bytes(corrupt)
        result = probe_run(path, keystore=Pkcs12Password(password_env="UNSET_VARIABLE_FOR_TEST"))
        # A structure that breaks is parse_error even before any password is asked for.
        assert result.reason is Reason.PARSE_ERROR, (case, result.message)  # type: ignore[attr-defined]
        assert f"corrupt {store_type} keystore" in result.message, case  # type: ignore[attr-defined]
    # A flipped byte inside a certificate keeps the layout but breaks the digest: Java
    # cannot tell that from a wrong password either.
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    path = tmp_path / f"flipped.{store_type.lower()}"
    path.write_bytes(bytes(flipped))
    monkeypatch.setenv("CERTSCOPE_TEST_KEYSTORE_PASSWORD", PASSWORD)
    result = probe_run(path, keystore=Pkcs12Password(password_env="CERTSCOPE_TEST_KEYSTORE_PASSWORD"))
    assert result.reason in (Reason.BAD_PASSWORD, Reason.PARSE_ERROR)  # type: ignore[attr-defined]
    assert not result.certificates  # type: ignore[attr-defined]


@FUZZ
@given(data=st.data())
def test_mutated_keystores_never_raise(stores: Stores, data: st.DataObject) -> None:
    seeds = (stores.jks.read_bytes(), stores.jceks.read_bytes())
    store = data.draw(mutated(seeds))
    password = data.draw(st.sampled_from((None, b"wrong", PASSWORD.encode())))
    started = time.monotonic()
    located = parse_keystore(store, "fuzz.jks", lambda: password)
    assert time.monotonic() - started < 5
    for error in located.errors:
        assert error.reason in (Reason.PARSE_ERROR, Reason.BAD_PASSWORD), error
        assert PASSWORD not in error.message
    if located.certificates:
        # Certificates only ever come out of a store whose digest matched.
        assert password == PASSWORD.encode()


def test_scan_reads_a_keystore(stores: Stores) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "scan", "--output", "json", "--pkcs12-password-env", "STORE_PW",
         str(stores.jceks)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "STORE_PW": PASSWORD},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert document["errors"] == []
    aliases = sorted({c["where"]["keystore_alias"] for c in document["certificates"]})
    assert aliases == ["kafka-broker", "rootca", "selfsigned"]
    table = subprocess.run(
        [sys.executable, "-m", "exporter", "scan", "--pkcs12-password-env", "STORE_PW", str(stores.jks)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "STORE_PW": PASSWORD},
    )  # fmt: skip
    assert "(leaf) keystore_alias=kafka-broker: ok" in table.stdout, table.stdout
    assert PASSWORD not in table.stdout


def test_daemon_exports_keystore_certificates_with_their_alias(
    stores: Stores, start_daemon: object, tmp_path: Path
) -> None:
    config = f"""
global: {{interval: 1s}}
probes:
  - name: keystores
    kind: files
    paths: ["{stores.jks}", "{stores.jceks}"]
    keystore: {{password_env: STORE_PW}}
"""
    daemon = start_daemon(config, env={"STORE_PW": PASSWORD})  # type: ignore[operator]
    metrics = daemon.wait_metrics(
        lambda m: len(find(m, "certscope_cert_not_after_timestamp_seconds", probe="keystores")) == 10
    )
    broker = find(
        metrics, "certscope_cert_not_after_timestamp_seconds", target=str(stores.jks), keystore_alias="kafka-broker"
    )
    assert sorted(v for _, v in broker) == sorted(
        [stores.pki.valid.not_after, stores.pki.intermediate.not_after, stores.pki.root.not_after]
    )
    info = find(metrics, "certscope_cert_info", target=str(stores.jceks), keystore_alias="rootca")
    assert len(info) == 1 and info[0][0]["subject_cn"] == "certscope test root"
    assert PASSWORD not in daemon.get("/metrics").text and PASSWORD not in daemon.log()
    page = daemon.get("/").text
    assert "keystore_alias=kafka-broker" in page
