"""The ``ca`` kind against a real cfssl and a real step-ca (``tests/ca_servers.py``).

Covered: CA up, down (refused) and answering 500; the published root (close to expiry)
in the inventory; synthetic issuance that succeeds, with its latency, and issuance
refused for a bad credential (a password that does not open the provisioner key; a
provisioner key the CA does not know; a wrong cfssl auth key), each with its reason;
the ACME directory; a PKCS#7 bundle URL; config errors naming the field; and through
the running daemon, the metrics - with the credentials nowhere in /metrics or the log.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from exporter.config import ConfigError, parse_config
from probes.ca import CaFailure, CaIssuance, CaProbe, CaSettings
from probes.ca_issue import verify_issued
from probes.context import ProbeContext
from probes.jose import BadPassword, JoseError, b64url_decode, decrypt_jwk
from probes.reasons import Reason
from probes.result import ProbeResult
from probes.settings import ProbeDefaults, Seconds, TrustSettings
from tests.ca_servers import CfsslServer, StepCaServer, cfssl_server, step_binaries, step_ca_server
from tests.helpers import DaemonProcess, find
from tests.pki import DAY, NOW, Pki, issue
from tests.revocation_servers import Reply, http_file_server
from tests.servers import refused_port

STEP_PASSWORD = "step-provisioner-Pa55"
ROOT_EXPIRES = NOW + 20 * DAY  # inside any 28-day warning threshold
LOOPBACK = ("127.0.0.0/8",)


@pytest.fixture(scope="module")
def step(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StepCaServer]:
    server = step_ca_server(tmp_path_factory.mktemp("step-ca"), STEP_PASSWORD, root_not_after=ROOT_EXPIRES)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cfssl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CfsslServer]:
    server = cfssl_server(tmp_path_factory.mktemp("cfssl"))
    yield server
    server.stop()


NO_TRUST = TrustSettings(system=False)


def run(settings: CaSettings, trust: TrustSettings = NO_TRUST, timeout: float = 10) -> ProbeResult:
    probe = CaProbe(settings, ProbeDefaults(trust=trust, allow_networks=LOOPBACK))
    (target,) = probe.targets().targets
    return probe.run(target, ProbeContext(deadline=time.monotonic() + timeout))


def lifetime(pki: Pki) -> Seconds:
    cert = pki.valid.cert
    return Seconds((cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds())


def step_trust(step: StepCaServer) -> TrustSettings:
    return TrustSettings(system=False, ca_files=(str(step.root_file),))


def step_issuance(step: StepCaServer, **overrides: Any) -> CaIssuance:
    fields: dict[str, Any] = {
        "enabled": True,
        "provisioner": "probe",
        "password_file": str(step.password_file),
        "common_name": "svc.certscope.test",
        "sans": ("svc.certscope.test", "127.0.0.1"),
        "validity": 600.0,
    }
    fields.update(overrides)
    return CaIssuance(**fields)


# -- step-ca ---------------------------------------------------------------------------


def test_step_ca_up_publishes_its_root_close_to_expiry(step: StepCaServer) -> None:
    result = run(CaSettings(url=step.url, flavor="step"), step_trust(step))
    assert result.success, result.message
    assert result.facts is not None and result.facts.up and result.facts.issuance is None
    assert result.facts.response_seconds is not None and 0 < result.facts.response_seconds < 5
    (root,) = result.certificates  # /roots.pem and /federation list the same root once
    assert (root.index, root.role) == (0, "root")
    assert root.cert.fingerprint_sha256 == step.root.fingerprint
    assert root.cert.not_after == pytest.approx(ROOT_EXPIRES.timestamp())
    assert root.cert.not_after - time.time() < 21 * 86400


def test_step_ca_issues_a_short_lived_certificate(step: StepCaServer) -> None:
    result = run(CaSettings(url=step.url, flavor="step", issuance=step_issuance(step)), step_trust(step))
    assert result.success, result.message
    assert result.facts is not None and result.facts.issuance is not None
    issuance = result.facts.issuance
    assert issuance.success and issuance.reason is Reason.OK
    assert issuance.seconds is not None and 0 < issuance.seconds < 5
    phases = dict(result.phases)
    assert {"issuance.keygen", "issuance.token", "issuance.request", "issuance.verify"} <= set(phases)
    print(f"step-ca issuance: {issuance.seconds * 1000:.1f} ms at the CA, run {result.duration_seconds * 1000:.1f} ms")


def test_step_ca_wrong_password_is_bad_password(step: StepCaServer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    result = run(
        CaSettings(url=step.url, flavor="step", issuance=step_issuance(step, password_file=str(wrong))),
        step_trust(step),
    )
    assert not result.success and result.reason is Reason.BAD_PASSWORD
    assert result.facts is not None and result.facts.up  # the CA is fine; the credential is not
    assert result.facts.issuance is not None and result.facts.issuance.seconds is None
    assert "not-the-password" not in result.message and STEP_PASSWORD not in result.message


def test_step_ca_refuses_a_token_signed_with_a_key_it_does_not_know(step: StepCaServer) -> None:
    result = run(
        CaSettings(url=step.url, flavor="step", issuance=step_issuance(step, provisioner="stale")), step_trust(step)
    )
    assert not result.success and result.reason is Reason.API_UNAUTHORIZED, result.message
    assert result.facts is not None and result.facts.issuance is not None
    assert result.facts.issuance.seconds is not None  # the CA answered: its refusal is timed
    assert "HTTP 401" in result.message
    assert "eyJ" not in result.message  # no JWT (they all start with a base64 '{"')


def test_step_ca_unknown_provisioner(step: StepCaServer) -> None:
    result = run(
        CaSettings(url=step.url, flavor="step", issuance=step_issuance(step, provisioner="nope")), step_trust(step)
    )
    assert result.reason is Reason.PROVISIONER_NOT_FOUND and "'nope'" in result.message


def test_step_ca_password_from_an_unset_variable(step: StepCaServer) -> None:
    issuance = step_issuance(step, password_file=None, password_env="CERTSCOPE_TEST_UNSET_VARIABLE")
    result = run(CaSettings(url=step.url, flavor="step", issuance=issuance), step_trust(step))
    assert result.reason is Reason.CREDENTIAL_UNAVAILABLE
    assert "CERTSCOPE_TEST_UNSET_VARIABLE" in result.message


def test_step_ca_untrusted_https(step: StepCaServer) -> None:
    result = run(CaSettings(url=step.url, flavor="step"), TrustSettings(system=True))
    assert not result.success and result.reason is Reason.HANDSHAKE_FAILED
    assert result.facts is not None and not result.facts.up


def test_validity_other_than_asked_is_reported(step: StepCaServer) -> None:
    # step-ca backdates notBefore by a minute; a zero tolerance makes that a mismatch.
    issuance = step_issuance(step, validity_tolerance=0.0)
    result = run(CaSettings(url=step.url, flavor="step", issuance=issuance), step_trust(step))
    assert result.reason is Reason.VALIDITY_MISMATCH, result.message
    assert "660 s" in result.message


def test_acme_directory_of_step_ca(step: StepCaServer) -> None:
    result = run(CaSettings(url=step.url + "/acme/acme/directory", flavor="acme"), step_trust(step))
    assert result.success, result.message
    assert result.facts is not None and result.facts.up


def test_acme_directory_without_meta_is_a_bad_response() -> None:
    directory = {"newNonce": "x", "newAccount": "y", "newOrder": "z"}
    with http_file_server({"/directory": Reply(body=json.dumps(directory).encode())}) as server:
        result = run(CaSettings(url=server.url("/directory"), flavor="acme"))
    assert result.reason is Reason.CA_BAD_RESPONSE and "meta" in result.message
    assert result.facts is not None and not result.facts.up


def test_jwe_from_smallstep_decrypts_and_rejects_a_wrong_password(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("jwe-test\n")
    made = json.loads(subprocess.run([str(step_binaries() / "step-jwk"), str(password)], capture_output=True).stdout)
    key, members = decrypt_jwk(made["encryptedKey"], b"jwe-test")
    assert members["kid"] == made["key"]["kid"] and "d" not in members
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers().x == int.from_bytes(b64url_decode(made["key"]["x"]), "big")
    with pytest.raises(BadPassword):
        decrypt_jwk(made["encryptedKey"], b"jwe-tesT")
    header, *rest = made["encryptedKey"].split(".")
    with pytest.raises(JoseError):
        decrypt_jwk(".".join([header, *rest[:-1], "AAAA"]), b"jwe-test")


# -- cfssl -------------------------------------------------------------------------------


def test_cfssl_up_publishes_its_ca(cfssl: CfsslServer) -> None:
    result = run(CaSettings(url=cfssl.url, flavor="cfssl"))
    assert result.success, result.message
    assert result.facts is not None and result.facts.up and result.facts.response_seconds
    (ca,) = result.certificates
    assert ca.role == "root" and ca.cert.subject_cn == "certscope cfssl test CA"


@pytest.mark.parametrize("endpoint", ["sign", "newcert"])
def test_cfssl_issues(cfssl: CfsslServer, endpoint: str) -> None:
    issuance = CaIssuance(enabled=True, profile="probe", endpoint=endpoint, sans=("a.certscope.test", "127.0.0.1"))
    result = run(CaSettings(url=cfssl.url, flavor="cfssl", issuance=issuance))
    assert result.success, result.message
    assert result.facts is not None and result.facts.issuance is not None and result.facts.issuance.success
    assert result.facts.issuance.seconds is not None and result.facts.issuance.seconds < 5
    print(f"cfssl {endpoint}: {result.facts.issuance.seconds * 1000:.1f} ms at the CA")


def test_cfssl_authsign_with_the_right_and_a_wrong_key(cfssl: CfsslServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTSCOPE_TEST_CFSSL_KEY", cfssl.auth_key)
    issuance = CaIssuance(enabled=True, profile="authed", auth_key_env="CERTSCOPE_TEST_CFSSL_KEY")
    assert run(CaSettings(url=cfssl.url, flavor="cfssl", issuance=issuance)).success
    wrong = "ff" * 16
    monkeypatch.setenv("CERTSCOPE_TEST_CFSSL_KEY", wrong)
    result = run(CaSettings(url=cfssl.url, flavor="cfssl", issuance=issuance))
    assert result.reason is Reason.API_UNAUTHORIZED and "invalid token" in result.message
    assert result.facts is not None and result.facts.up
    assert wrong not in result.message and cfssl.auth_key not in result.message


def test_cfssl_profile_longer_than_asked_is_a_validity_mismatch(cfssl: CfsslServer) -> None:
    issuance = CaIssuance(enabled=True, profile="probe", validity=300.0)
    result = run(CaSettings(url=cfssl.url, flavor="cfssl", issuance=issuance))
    assert result.reason is Reason.VALIDITY_MISMATCH


def test_issued_certificate_checks(pki: Pki) -> None:
    """The checks on what a CA sends back, on certificates no real CA here would issue."""
    chain = [pki.valid.cert, pki.intermediate.cert]
    names = CaIssuance(sans=("valid.test",), validity=lifetime(pki))
    verify_issued(chain, [pki.root.cert], names)  # passes
    with pytest.raises(CaFailure) as caught:
        verify_issued(chain, [pki.root.cert], CaIssuance(sans=("valid.test", "other.test"), validity=names.validity))
    assert caught.value.reason is Reason.SAN_MISMATCH and "other.test" in str(caught.value)
    with pytest.raises(CaFailure) as caught:
        verify_issued(chain, [issue("unrelated root", ca=True).cert], names)
    assert caught.value.reason is Reason.ISSUED_CERT_INVALID
    with pytest.raises(CaFailure) as caught:
        verify_issued(chain, [], names)
    assert caught.value.reason is Reason.ISSUED_CERT_INVALID


# -- faults -------------------------------------------------------------------------------


def test_ca_down_is_connect_refused_and_issuance_fails() -> None:
    url = f"http://127.0.0.1:{refused_port()}"
    result = run(CaSettings(url=url, flavor="cfssl", issuance=CaIssuance(enabled=True)))
    assert not result.success and result.reason is Reason.CONNECT_REFUSED
    assert result.facts is not None and not result.facts.up and result.facts.response_seconds is None
    assert result.facts.issuance is not None and not result.facts.issuance.success
    assert result.facts.issuance.reason is Reason.CONNECT_REFUSED


def test_ca_answering_500_is_api_error() -> None:
    body = b'{"success":false,"result":null,"errors":[{"code":500,"message":"internal error"}]}'
    with http_file_server({"/api/v1/cfssl/info": Reply(status=500, body=body)}) as server:
        result = run(CaSettings(url=server.url(""), flavor="cfssl"))
    assert not result.success and result.reason is Reason.API_ERROR
    assert "HTTP 500: internal error" in result.message
    assert result.facts is not None and not result.facts.up and result.facts.response_seconds is not None


def test_a_configured_ca_url_on_loopback_is_trusted(cfssl: CfsslServer) -> None:
    """The operator's URL is trusted like a configured TLS target: no allow_networks
    needed for a CA on loopback (the egress policy is for URLs from certificates)."""
    probe = CaProbe(CaSettings(url=cfssl.url, flavor="cfssl"), ProbeDefaults())
    result = probe.run(cfssl.url, ProbeContext(deadline=time.monotonic() + 5))
    assert result.facts is not None and result.facts.up, result.message
    assert "egress" not in result.message


def test_pkcs7_bundle_url(pki: Pki) -> None:
    bundle = pkcs7.serialize_certificates([pki.root.cert, pki.intermediate.cert], Encoding.DER)
    with http_file_server({"/ca.p7b": bundle}) as server:
        result = run(CaSettings(url=server.url("/ca.p7b"), flavor="bundle"))
    assert result.success, result.message
    assert [(o.role, o.cert.fingerprint_sha256) for o in result.certificates] == [
        ("root", pki.root.fingerprint),
        ("intermediate", pki.intermediate.fingerprint),
    ]


def test_bundle_without_certificates() -> None:
    with http_file_server({"/empty.pem": b"nothing here\n"}) as server:
        result = run(CaSettings(url=server.url("/empty.pem"), flavor="bundle"))
    assert result.reason is Reason.NO_CERTIFICATE


# -- config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"flavor": "vault"}, "probes[0].flavor: must be one of step, cfssl, acme, bundle, got 'vault'"),
        ({"url": "ftp://ca"}, "probes[0].url: must be an http or https URL"),
        ({"flavor": "acme", "issuance": {"enabled": True}}, "probes[0].issuance.sans: required for acme"),
        ({"flavor": "bundle", "issuance": {"enabled": True}}, "available for step, cfssl, acme, not 'bundle'"),
        ({"flavor": "step", "issuance": {"enabled": True}}, "probes[0].issuance.provisioner: required for step"),
        ({"issuance": {"password_file": "/nonexistent/pw"}}, "probes[0].issuance.password_file: file not found"),
        ({"issuance": {"password": "inline"}}, "probes[0].issuance.password: unknown key"),
        ({"issuance": {"endpoint": "authsign"}}, "probes[0].issuance.endpoint: must be sign or newcert"),
    ],
)
def test_config_errors_name_the_field(entry: dict[str, Any], message: str) -> None:
    config = {"probes": [{"name": "ca", "kind": "ca", "url": "https://ca.example:9000", **entry}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(config), "test.yaml")
    assert any(message in m for m in caught.value.messages), caught.value.messages


# -- through the daemon ------------------------------------------------------------


def test_daemon_exports_ca_metrics_without_credentials(
    step: StepCaServer, cfssl: CfsslServer, start_daemon: Any, tmp_path: Path
) -> None:
    wrong_password = "Wr0ng-provisioner-pass"
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text(wrong_password)
    trust = {"system": False, "ca_files": [str(step.root_file)]}
    issuance = {"enabled": True, "provisioner": "probe", "common_name": "svc.certscope.test", "validity": "10m"}
    config = {
        "global": {"interval": "1h", "egress": {"allow_networks": ["127.0.0.0/8"]}},
        "probes": [
            {
                "name": "step-ok",
                "kind": "ca",
                "flavor": "step",
                "url": step.url,
                "trust": trust,
                "issuance": {**issuance, "password_env": "CERTSCOPE_STEP_PASSWORD"},
            },
            {
                "name": "step-bad",
                "kind": "ca",
                "flavor": "step",
                "url": step.url,
                "trust": trust,
                "issuance": {**issuance, "password_file": str(wrong_file)},
            },
            {"name": "step-stale", "kind": "ca", "flavor": "step", "url": step.url, "trust": trust,
             "issuance": {**issuance, "provisioner": "stale", "password_env": "CERTSCOPE_STEP_PASSWORD"}},
            {"name": "cfssl", "kind": "ca", "flavor": "cfssl", "url": cfssl.url},
            {"name": "down", "kind": "ca", "flavor": "cfssl", "url": f"http://127.0.0.1:{refused_port()}"},
        ],
    }  # fmt: skip
    daemon: DaemonProcess = start_daemon(yaml.safe_dump(config), env={"CERTSCOPE_STEP_PASSWORD": STEP_PASSWORD})
    daemon.wait_ready()
    metrics = daemon.metrics()

    def one(name: str, **labels: str) -> float:
        samples = find(metrics, name, **labels)
        assert len(samples) == 1, (name, labels, samples)
        return samples[0][1]

    assert one("certscope_ca_up", probe="step-ok", kind="ca", target=step.url) == 1
    assert 0 < one("certscope_ca_response_duration_seconds", probe="step-ok") < 5
    assert one("certscope_ca_issuance_success", probe="step-ok") == 1
    assert 0 < one("certscope_ca_issuance_duration_seconds", probe="step-ok") < 5
    assert one("certscope_ca_issuance_total", probe="step-ok", result="success") == 1
    assert one("certscope_ca_issuance_total", probe="step-ok", result="failure") == 0
    assert one("certscope_probe_success", probe="step-ok") == 1
    # The published root is in the inventory, with kind="ca", expiring within 21 days.
    not_after = one("certscope_cert_not_after_timestamp_seconds", probe="step-ok", kind="ca", role="root")
    assert not_after == pytest.approx(ROOT_EXPIRES.timestamp())
    assert one("certscope_cert_info", probe="step-ok", fingerprint_sha256=step.root.fingerprint) == 1

    assert one("certscope_ca_up", probe="step-bad") == 1
    assert one("certscope_ca_issuance_success", probe="step-bad") == 0
    assert one("certscope_ca_issuance_total", probe="step-bad", result="failure") == 1
    assert one("certscope_probe_status", probe="step-bad", reason="bad_password") == 1
    assert not find(metrics, "certscope_ca_issuance_duration_seconds", probe="step-bad")  # never reached the CA
    assert one("certscope_probe_status", probe="step-stale", reason="api_unauthorized") == 1
    assert one("certscope_ca_issuance_duration_seconds", probe="step-stale") > 0

    assert one("certscope_ca_up", probe="cfssl") == 1
    assert not find(metrics, "certscope_ca_issuance_success", probe="cfssl")  # issuance is off by default
    assert one("certscope_ca_up", probe="down") == 0
    assert one("certscope_probe_status", probe="down", reason="connect_refused") == 1
    assert one("certscope_probe_failures_total", probe="down", reason="connect_refused") == 1
    assert one("certscope_probe_failures_total", probe="step-ok", reason="bad_password") == 0  # pre-initialised

    text = daemon.get("/metrics").text + daemon.get("/").text + daemon.log()
    for secret in (STEP_PASSWORD, wrong_password):
        assert secret not in text
    assert "eyJ" not in text  # no JWT, JWE or JWK in any form
    assert "bad_password" in daemon.log()  # the failure itself is logged


def test_ca_metric_families_are_documented() -> None:
    from exporter.collector import render
    from exporter.store import Snapshot

    documented = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    rendered = {family.name for family in render(Snapshot()) if family.name.startswith("certscope_ca_")}
    assert rendered == {
        "certscope_ca_up",
        "certscope_ca_response_duration_seconds",
        "certscope_ca_issuance_success",
        "certscope_ca_issuance_duration_seconds",
        "certscope_ca_issuance",  # the counter's family name; samples end in _total
        "certscope_ca_issuance_phase_duration_seconds",  # ACME
        "certscope_ca_issuance_retry_after_timestamp_seconds",  # ACME
    }
    for name in rendered:
        assert f"`{name}{'_total' if name == 'certscope_ca_issuance' else ''}`" in documented, name
