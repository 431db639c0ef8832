"""Every alert and every panel, proven on a real Prometheus that scrapes two certscope instances.

The estate, on 127.0.0.1 (every piece real: files, ``openssl s_server``, ``openssl ocsp``,
CRLs from ``openssl ca -gencrl`` over HTTP, ``cfssl serve``):

* files (probe ``disk``): a valid, an expired and a not-yet-valid certificate, one 3 days
  from expiry (inside the default 7-day critical threshold), a 90-day leaf 70 days old
  (warning threshold, and past two thirds of its life), a root 20 days from expiry, a
  certificate with its unencrypted key in a file others can read (two causes), two
  subjects sharing one key, and a renewed copy of the certificate the wrong-host endpoint
  serves; and one certificate rotated while the test runs;
* files under a stricter policy (probe ``policy``, critical 30 days): one 20 days out;
* TLS (probe ``web``): healthy, expired, wrong host, missing intermediate;
* mTLS (probe ``mtls``): accepted, with a client certificate that expires in 3 days;
  (probe ``mtls-rejected``): a client certificate from a CA the server does not trust;
* revocation: a TLS endpoint serving a revoked certificate, checked through OCSP and the
  CRL (probe ``tls-revoked``); the ``ocsp`` and ``crl`` probes on the same certificate; an
  OCSP responder whose answers are stale and one that answers HTTP 500; a stale CRL;
* CAs: a cfssl with synthetic issuance, and a CA that is down;
* Kubernetes discovery (probe ``ingress``): the API server fixture holds an Ingress with two
  hosts and their Secrets; a real nginx stands in for the ingress controller and serves the
  certificate before the Secret's renewal for one host, and its default (fake) certificate
  for the other.

Two daemons run the same config, as two replicas or two DaemonSet pods would; the second
probes its TLS targets with ``resolve: all`` (so its series carry ``address``).  A real
Prometheus scrapes both every second as ordinary targets of one job (``job``,
``instance`` and a ``pod`` target label, as a user's relabelling adds) with
``alerts/certscope.rules.yml`` loaded.  The rule file is changed in exactly two ways,
checked by comparing the parsed files: every ``for:`` is 0s and the recording group's
``interval`` is the scrape interval, so the test takes seconds, not hours; every
expression is evaluated as shipped.

Asserted: every rule evaluates without error (no many-to-many matching); the firing
alerts are exactly the expected set, each once per certificate (or target) and cause
whatever number of instances see it; every alert about a probe carries its owner labels
and the example Alertmanager config routes it to that team; a cached OCSP answer keeps
the responder visible; every expression of the three dashboards (panels, template
variables, annotations; Grafana's variables substituted) evaluates without error or
warning and returns a number, except the few listed in ``EXPECTED_EMPTY`` with the reason.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.test_dashboards import DASHBOARDS, Query, queries, substitute, variable_queries, variable_values
from tests.e2e.test_e2e_prometheus import PrometheusServer, launch_ready_prometheus, require_binary
from tests.fixtures import kube_objects, servers
from tests.fixtures.ca_servers import CfsslServer, cfssl_server
from tests.fixtures.helpers import DaemonProcess, wait_for
from tests.fixtures.kube_apiserver import FakeApiServer
from tests.fixtures.kube_objects import write_kubeconfig
from tests.fixtures.pki import DAY, NOW, Issued, Pki, issue
from tests.fixtures.revocation_servers import HTTP_PATHS, RevocationStack, error_reply, revocation_stack
from tests.probes.test_kubernetes import TOKEN

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "certscope.rules.yml"
ALERTMANAGER_EXAMPLE = ROOT / "alerts" / "alertmanager.example.yml"
SCRAPE = 1  # seconds: Prometheus's scrape and evaluation interval, and the probes' interval
JOB = "certscope"
PODS = ("certscope-a", "certscope-b")  # a target label, as relabelling adds one

# --------------------------------------------------------------------------- expectations

# (alertname, labels that identify it): each must fire exactly once, and nothing else.
Expected = tuple[str, dict[str, str]]


def expected_alerts(estate: Estate) -> list[Expected]:
    f = {name: str(path) for name, path in estate.files.items()}
    e, rev = estate.endpoints, estate.revocation
    return [
        ("CertscopeCertificateExpired", {"probe": "disk", "target": f["expired.pem"], "subject_cn": "expired.test"}),
        ("CertscopeCertificateExpired", {"probe": "web", "target": e["expired"], "index": "0", "role": "leaf"}),
        ("CertscopeCertificateExpiringSoon", {"probe": "disk", "target": f["soon.pem"], "subject_cn": "soon.test"}),
        ("CertscopeCertificateExpiringSoon", {"probe": "policy", "target": f["policy.pem"], "team": "payments"}),
        (
            "CertscopeCertificateExpiringSoon",
            {"probe": "mtls", "target": e["mtls"], "role": "client", "subject_cn": "expiring-client.localhost"},
        ),
        ("CertscopeCertificateExpiring", {"probe": "disk", "target": f["overdue.pem"], "subject_cn": "overdue.test"}),
        ("CertscopeCertificateRenewalOverdue", {"probe": "disk", "target": f["overdue.pem"]}),
        ("CertscopeCertificateNotYetValid", {"probe": "disk", "target": f["future.pem"]}),
        ("CertscopeTrustAnchorExpiring", {"probe": "disk", "target": f["old-root.pem"], "role": "root"}),
        ("CertscopeCertificateRevoked", {"serial": format(rev.pki.revoked.serial, "x"), "team": "pki"}),
        ("CertscopePrivateKeyExposed", {"probe": "disk", "target": f["keyed.pem"]}),
        ("CertscopeKeyReused", {"spki_sha256": estate.reused_spki}),
        ("CertscopeServedCertificateOutdated", {"probe": "web", "target": e["wrong-host"]}),
        ("CertscopeTLSProbeFailing", {"probe": "web", "target": e["wrong-host"], "reason": "hostname_mismatch"}),
        ("CertscopeTLSProbeFailing", {"probe": "web", "target": e["incomplete"], "reason": "incomplete_chain"}),
        ("CertscopeClientCertificateRejected", {"probe": "mtls-rejected", "target": e["mtls-rejected"]}),
        # Every TLS probe with failing targets burns its budget (the SLI counts every failure).
        *(
            (name, {"probe": probe})
            for probe in ("web", "tls-revoked", "mtls-rejected")
            for name in ("CertscopeValidationBudgetFastBurn", "CertscopeValidationBudgetSlowBurn")
        ),
        ("CertscopeOCSPResponseStale", {"probe": "ocsp-stale", "method": "ocsp"}),
        ("CertscopeOCSPResponderDown", {"responder": estate.down_responder}),
        ("CertscopeCRLStale", {"probe": "crl-stale", "target": rev.http.url(HTTP_PATHS["crl_stale"])}),
        ("CertscopeCAUnavailable", {"probe": "ca-down"}),
        # Discovered in Kubernetes: renewed in the Secret, the controller serves the old one;
        # another host gets the controller's default certificate (which fails validation too:
        # one alert says why, and the probe burns its budget).
        (
            "CertscopeRenewedCertificateNotServed",
            {"probe": "ingress", "target": "ingress/shop/web/stale.shop.test", "secret_name": "stale-tls"},
        ),
        (
            "CertscopeDefaultCertificateServed",
            {"probe": "ingress", "target": "ingress/shop/web/default.shop.test", "state": "other", "team": "shop"},
        ),
        *(
            (name, {"probe": "ingress"})
            for name in ("CertscopeValidationBudgetFastBurn", "CertscopeValidationBudgetSlowBurn")
        ),
    ]


# Dashboard expressions that return nothing for this estate, and why.  Every other one
# must return a number; one listed here that starts returning data fails the test too,
# so the list stays true.
EXPECTED_EMPTY: dict[tuple[str, str, str], str] = {
    ("oncall", "Sources and scopes down", "A"): "every source is readable (the daemons run as root)",
    ("oncall", "Sources and scopes down", "B"): "every Kubernetes scope of the ingress probe is listed and watched",
    ("debug", "Source errors by reason", "A"): (
        "no file of the estate is unreadable or malformed (sources are per instance: one would fire"
        " CertscopeSourceErrors on each)"
    ),
    ("debug", "certscope itself: render errors, trace spans", "B"): "tracing is off",
}


# --------------------------------------------------------------------------- the estate


def same_key_leaf(common_name: str, key: ec.EllipticCurvePrivateKey, issuer: Issued) -> Issued:
    """A leaf for ``key``, which another certificate of another subject also carries."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 90 * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert, key)


def spki_sha256(issued: Issued) -> str:
    der = issued.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()


def write_files(pki: Pki, directory: Path) -> tuple[dict[str, Path], str]:
    """The ``disk`` and ``policy`` directories; returns name -> path and the shared key's SPKI digest."""
    disk, policy = directory / "disk", directory / "policy"
    disk.mkdir(parents=True)
    policy.mkdir()
    keyed = issue("keyed.test", pki.intermediate, sans=("keyed.test",))
    shared = ec.generate_private_key(ec.SECP256R1())
    reused_a = same_key_leaf("reused-a.test", shared, pki.intermediate)
    reused_b = same_key_leaf("reused-b.test", shared, pki.intermediate)
    contents: dict[Path, bytes] = {
        disk / "valid.pem": pki.valid.pem,
        disk / "expired.pem": pki.expired.pem,
        disk / "future.pem": pki.not_yet_valid.pem,
        disk / "soon.pem": issue(
            "soon.test", pki.intermediate, not_before=NOW - DAY, not_after=NOW + 3 * DAY, sans=("soon.test",)
        ).pem,
        disk / "overdue.pem": issue(
            "overdue.test",
            pki.intermediate,
            not_before=NOW - 70 * DAY,
            not_after=NOW + 20 * DAY,
            sans=("overdue.test",),
        ).pem,
        disk / "old-root.pem": issue("certscope old root", ca=True, not_after=NOW + 20 * DAY).pem,
        disk / "keyed.pem": keyed.pem + keyed.key_pem,
        disk / "reused-a.pem": reused_a.pem,
        disk / "reused-b.pem": reused_b.pem,
        # The wrong-host endpoint's certificate, renewed on disk but not deployed.
        disk / "renewed-wrong-host.pem": issue(
            "wrong.example", pki.intermediate, sans=("wrong.example",), not_before=NOW - dt.timedelta(hours=1)
        ).pem,
        disk / "rotating.pem": issue("rotating.test", pki.intermediate, sans=("rotating.test",)).pem,
        policy / "policy.pem": issue(
            "policy.test", pki.intermediate, not_after=NOW + 20 * DAY, sans=("policy.test",)
        ).pem,
    }
    for path, data in contents.items():
        path.write_bytes(data)
    (disk / "keyed.pem").chmod(0o644)  # an unencrypted key readable by group and others
    return {path.name: path for path in contents}, spki_sha256(reused_a)


def certscope_config(estate: Estate, *, resolve_all: bool) -> str:
    f, e, rev = estate.files, estate.endpoints, estate.revocation
    tls_root, client = str(estate.tls_files.root_ca), estate.tls_files
    resolve = {"resolve": "all", "ip_version": "ipv4"} if resolve_all else {}

    def tls(name: str, targets: list[str], team: str, **more: Any) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "tls",
            "timeout": "2s",
            "targets": targets,
            "labels": {"team": team},
            "trust": {"system": False, "ca_files": [tls_root]},
            **resolve,
            **more,
        }

    ca = str(rev.pki.ca.cert_path)
    pki_team = {"team": "pki", "owner": "pki-oncall"}
    config = {
        "global": {"interval": f"{SCRAPE}s", "egress": {"allow_networks": ["127.0.0.0/8"]}},
        "probes": [
            {
                "name": "disk",
                "kind": "files",
                "paths": [str(f["valid.pem"].parent)],
                "labels": {"team": "platform", "owner": "alice"},
            },
            {
                "name": "policy",
                "kind": "files",
                "paths": [str(f["policy.pem"].parent)],
                "thresholds": {"warning": "60d", "critical": "30d"},
                "labels": {"team": "payments"},
            },
            tls("web", [e["healthy"], e["expired"], e["wrong-host"], e["incomplete"]], "web"),
            tls(
                "mtls",
                [e["mtls"]],
                "partner",
                http={"path": "/"},
                client_cert={"cert_file": str(estate.expiring_client[0]), "key_file": str(estate.expiring_client[1])},
            ),
            tls(
                "mtls-rejected",
                [e["mtls-rejected"]],
                "partner",
                client_cert={
                    "cert_file": str(client.wrong_ca_client.cert),
                    "key_file": str(client.wrong_ca_client.key),
                },
            ),
            {
                **tls("tls-revoked", [e["revoked"]], "pki"),
                "labels": pki_team,
                "server_name": "revoked.test",
                "trust": {"system": False, "ca_files": [ca]},
                "revocation": {"ocsp": True, "crl": True},
            },
            {
                "name": "ocsp",
                "kind": "ocsp",
                "certificates": [str(rev.pki.revoked.cert_path), str(rev.pki.good.cert_path)],
                "issuer_file": ca,
                "labels": pki_team,
            },
            {
                "name": "ocsp-stale",
                "kind": "ocsp",
                "certificates": [str(rev.pki.good.cert_path)],
                "issuer_file": ca,
                "url": rev.ocsp_variant_url("stale"),
                "labels": pki_team,
            },
            {
                "name": "ocsp-down",
                "kind": "ocsp",
                "certificates": [str(rev.pki.good.cert_path)],
                "issuer_file": ca,
                "url": estate.down_responder,
                "labels": pki_team,
            },
            {
                "name": "crl",
                "kind": "crl",
                "urls": [rev.http.url(HTTP_PATHS["crl"])],
                "issuer_file": ca,
                "certificates": [str(rev.pki.revoked.cert_path)],
                "labels": pki_team,
            },
            {
                "name": "crl-stale",
                "kind": "crl",
                "urls": [rev.http.url(HTTP_PATHS["crl_stale"])],
                "issuer_file": ca,
                "labels": pki_team,
            },
            {
                "name": "ca",
                "kind": "ca",
                "flavor": "cfssl",
                "url": estate.cfssl.url,
                "interval": "2s",
                "issuance": {"enabled": True, "profile": "probe"},
                "labels": pki_team,
            },
            {
                "name": "ca-down",
                "kind": "ca",
                "flavor": "cfssl",
                "url": estate.down_ca,
                "interval": "2s",
                "labels": pki_team,
            },
            {
                **tls("ingress", [], "shop"),
                "kubernetes": {
                    "kubeconfig": str(estate.kubeconfig),
                    "ingresses": {"address": estate.controller},
                },
            },
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def fast_rules(text: str) -> str:
    """The shipped rules with every ``for:`` at 0s and the recording group evaluated at
    the scrape interval; nothing else changes (``test_the_rule_file_is_the_shipped_one``)."""
    text = re.sub(r"(?m)^(\s+for:) .*$", r"\1 0s", text)
    return re.sub(r"(?m)^(\s+interval:) 1m$", rf"\1 {SCRAPE}s", text)


@dataclass
class Estate:
    directory: Path
    pki: Pki
    files: dict[str, Path] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)  # name -> host:port as configured
    tls_files: servers.TlsFiles = field(init=False)
    revocation: RevocationStack = field(init=False)
    cfssl: CfsslServer = field(init=False)
    expiring_client: tuple[Path, Path] = field(init=False)
    reused_spki: str = ""
    down_responder: str = ""
    down_ca: str = ""
    kubeconfig: Path = field(init=False)
    controller: str = ""  # the ingress controller stand-in's host:port
    daemons: dict[str, DaemonProcess] = field(default_factory=dict)  # instance -> daemon
    prometheus: PrometheusServer = field(init=False)
    started: float = 0.0  # when Prometheus started: dashboards' range begins here
    stoppers: list[Any] = field(default_factory=list)

    def diagnostics(self) -> str:
        logs = "".join(f"\n--- daemon {i}:\n{d.log()[-3000:]}" for i, d in self.daemons.items())
        return f"\n--- Prometheus:\n{self.prometheus.log()[-3000:]}{logs}"

    def firing(self) -> list[dict[str, Any]]:
        return [a for a in self.prometheus.api("alerts")["alerts"] if a["state"] == "firing"]


def launch_prometheus(directory: Path, targets: list[str]) -> PrometheusServer:
    binary = require_binary("prometheus")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rules.yml").write_text(fast_rules(RULES.read_text()))
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE}s",
            "scrape_timeout": f"{SCRAPE}s",
            "evaluation_interval": f"{SCRAPE}s",
        },
        "rule_files": [str(directory / "rules.yml")],
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [
                    {"targets": [t], "labels": {"pod": pod}} for t, pod in zip(targets, PODS, strict=True)
                ],
            }
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    return launch_ready_prometheus(binary, directory, directory / "prometheus.yml")


def start_cluster(tls_pki: servers.TlsPki, directory: Path, estate: Estate) -> None:
    """The API server fixture with an Ingress and its Secrets, and nginx as its controller:
    stale.shop.test is served the certificate before its Secret's renewal, default.shop.test
    (no server block) the controller's default certificate."""
    directory.mkdir(parents=True)
    issuer = tls_pki.intermediate
    old = issue(
        "stale.shop.test", issuer, sans=("stale.shop.test",), not_before=NOW - 60 * DAY, not_after=NOW + 60 * DAY
    )
    renewed = issue("stale.shop.test", issuer, sans=("stale.shop.test",), not_before=NOW - DAY)
    fake = issue("Kubernetes Ingress Controller Fake Certificate", sans=("ingress.local",))
    stored = issue("default.shop.test", issuer, sans=("default.shop.test",))
    for name, issued, chain in (("old", old, issuer.pem), ("fake", fake, b"")):
        (directory / f"{name}.crt").write_bytes(issued.pem + chain)
        (directory / f"{name}.key").write_bytes(issued.key_pem)
    controller = servers.nginx_sni_server(
        (directory / "fake.crt", directory / "fake.key"),
        {"stale.shop.test": (directory / "old.crt", directory / "old.key")},
        workdir=directory,
    )
    estate.stoppers.append(controller)
    estate.controller = f"127.0.0.1:{controller.port}"
    api = FakeApiServer().start()
    estate.stoppers.append(api)
    api.allow(token=TOKEN)
    api.put("secrets", kube_objects.tls_secret("shop", "stale-tls", renewed, issuer))
    api.put("secrets", kube_objects.tls_secret("shop", "default-tls", stored, issuer))
    api.put(
        "ingresses",
        kube_objects.ingress(
            "shop", "web", [(["stale.shop.test"], "stale-tls"), (["default.shop.test"], "default-tls")]
        ),
    )
    estate.kubeconfig = write_kubeconfig(directory / "kubeconfig", api.url, {"token": TOKEN})


def start_estate(pki: Pki, directory: Path, estate: Estate) -> None:
    tls_pki = servers.build_tls_pki(pki)
    estate.tls_files = tls = servers.write_tls_files(tls_pki, directory / "tls")
    client = servers.issue_client("expiring-client.localhost", tls_pki.client_ca, not_after=NOW + 3 * DAY)
    estate.expiring_client = (directory / "tls" / "expiring-client.crt", directory / "tls" / "expiring-client.key")
    estate.expiring_client[0].write_bytes(client.pem)
    estate.expiring_client[1].write_bytes(client.key_pem)
    estate.expiring_client[1].chmod(0o600)
    estate.files, estate.reused_spki = write_files(pki, directory / "files")

    estate.revocation = revocation_stack(directory / "revocation", big_entries=None)
    estate.stoppers.append(estate.revocation)
    estate.revocation.http["/ocsp-down/"] = error_reply(500)
    estate.down_responder = estate.revocation.http.url("/ocsp-down/")
    estate.cfssl = cfssl_server(directory / "cfssl")
    estate.down_ca = f"http://127.0.0.1:{servers.refused_port()}"
    estate.stoppers.append(estate.cfssl)

    rev = estate.revocation.pki
    started = {
        "healthy": servers.openssl_s_server(tls.localhost.cert, tls.localhost.key, tls.localhost.chain),
        "expired": servers.openssl_s_server(tls.expired.cert, tls.expired.key, tls.expired.chain),
        "wrong-host": servers.openssl_s_server(tls.wrong_host.cert, tls.wrong_host.key, tls.wrong_host.chain),
        "incomplete": servers.openssl_s_server(tls.localhost.cert, tls.localhost.key, None),
        "mtls": servers.openssl_s_server(
            tls.localhost.cert, tls.localhost.key, tls.localhost.chain, verify_client="require", client_ca=tls.client_ca
        ),
        "mtls-rejected": servers.openssl_s_server(
            tls.localhost.cert, tls.localhost.key, tls.localhost.chain, verify_client="require", client_ca=tls.client_ca
        ),
        "revoked": servers.openssl_s_server(rev.revoked.cert_path, rev.revoked.key_path, None),
    }
    estate.stoppers.extend(started.values())
    estate.endpoints = {name: f"localhost:{server.port}" for name, server in started.items()}
    start_cluster(tls_pki, directory / "cluster", estate)

    for index, resolve_all in enumerate((False, True)):
        config = directory / f"certscope-{index}.yaml"
        config.write_text(certscope_config(estate, resolve_all=resolve_all))
        daemon = DaemonProcess(config, directory / f"daemon-{index}.log")
        estate.stoppers.append(daemon)
        estate.daemons[daemon.base_url.removeprefix("http://")] = daemon
    for daemon in estate.daemons.values():
        daemon.wait_ready()
    estate.started = time.time()
    estate.prometheus = launch_prometheus(directory / "prometheus", list(estate.daemons))
    estate.stoppers.append(estate.prometheus)


@pytest.fixture(scope="module")
def estate(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    directory = tmp_path_factory.mktemp("estate")
    estate = Estate(directory, pki)
    try:
        start_estate(pki, directory, estate)
        yield estate
    finally:
        for thing in reversed(estate.stoppers):
            thing.stop()


def alert_key(alert: dict[str, Any]) -> str:
    labels = dict(sorted(alert["labels"].items()))
    return f"{labels.pop('alertname')} {labels}"


def matches(alert: dict[str, Any], expected: Expected) -> bool:
    name, labels = expected
    return alert["labels"]["alertname"] == name and all(alert["labels"].get(k) == v for k, v in labels.items())


def unmatched(estate: Estate) -> tuple[list[Expected], list[str], list[str]]:
    """(expected alerts not firing, firing alerts not expected, expected alerts firing more than once)."""
    firing = estate.firing()
    expected = expected_alerts(estate)
    missing = [e for e in expected if not any(matches(a, e) for a in firing)]
    extra = [alert_key(a) for a in firing if not any(matches(a, e) for e in expected)]
    twice = [f"{e}: {[alert_key(a) for a in firing if matches(a, e)]}" for e in expected]
    twice = [t for t, e in zip(twice, expected, strict=True) if sum(matches(a, e) for a in firing) > 1]
    return missing, extra, twice


@pytest.fixture(scope="module")
def settled(estate: Estate) -> float:
    """Wait until the expected alerts fire (a file is rotated meanwhile); returns the time."""
    rotating = estate.files["rotating.pem"]
    before = f'certscope_cert_rotations_total{{target="{rotating}"}} == 0'
    wait_for(lambda: len(estate.prometheus.query(before)) == 2, 30, "both instances' first certificate, scraped")
    partial = rotating.parent.parent / "rotating.partial"  # renamed in: never half a file
    partial.write_bytes(issue("rotating.test", estate.pki.intermediate, sans=("rotating.test",)).pem)
    partial.replace(rotating)
    try:
        wait_for(lambda: unmatched(estate) == ([], [], []), 60, "exactly the expected alerts")
    except AssertionError as exc:
        missing, extra, twice = unmatched(estate)
        raise AssertionError(
            f"{exc}\nmissing: {missing}\nnot expected: {extra}\nmore than once: {twice}{estate.diagnostics()}"
        ) from None
    # Range queries step from the range's start: let a step or two pass, as a refreshing dashboard would.
    time.sleep(2.5 * SCRAPE)
    return time.time()


# --------------------------------------------------------------------------- alerts


def test_the_rule_file_is_the_shipped_one_with_for_and_interval_shortened() -> None:
    def without_timing(text: str) -> Any:
        groups = yaml.safe_load(text)["groups"]
        for group in groups:
            group.pop("interval", None)
            for rule in group["rules"]:
                rule.pop("for", None)
        return groups

    shipped, fast = RULES.read_text(), fast_rules(RULES.read_text())
    assert without_timing(fast) == without_timing(shipped)
    assert "for: 0s" in fast and not re.search(r"for: (?!0s)", fast)


def test_every_rule_evaluates_without_error(estate: Estate, settled: float) -> None:
    """No many-to-many matching, no duplicate series: every rule of every group is healthy."""
    groups = estate.prometheus.api("rules")["groups"]
    rules = [(g["name"], r) for g in groups for r in g["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
    broken = [
        f"{group}/{r.get('alert') or r.get('name')}: {r['lastError']}" for group, r in rules if r["health"] != "ok"
    ]
    assert not broken, "\n".join(broken)


def test_exactly_the_expected_alerts_fire_once(estate: Estate, settled: float) -> None:
    time.sleep(3 * SCRAPE)  # a few more evaluations: what has not fired by now does not belong here
    missing, extra, twice = unmatched(estate)
    assert (missing, extra, twice) == ([], [], []), estate.diagnostics()
    firing = sorted(f"{a['labels']['alertname']} {a['labels'].get('probe', '')} {a['labels'].get('target', '')}".strip()
                    for a in estate.firing())  # fmt: skip
    print(f"\n{len(firing)} alerts firing, as expected:\n  " + "\n  ".join(firing))
    pending = [alert_key(a) for a in estate.prometheus.api("alerts")["alerts"] if a["state"] != "firing"]
    assert not pending, pending  # every `for:` is 0s: an alert is firing or nothing


def test_alerts_name_what_and_where(estate: Estate, settled: float) -> None:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for alert in estate.firing():
        by_name.setdefault(alert["labels"]["alertname"], []).append(alert)
    both = ", ".join(sorted(estate.daemons))

    # Seen by both instances, the one with resolve: all included: one alert naming both.
    (client,) = [a for a in by_name["CertscopeCertificateExpiringSoon"] if a["labels"].get("role") == "client"]
    assert client["annotations"]["instances"] == both
    assert "address" not in client["labels"] and "instance" not in client["labels"]
    assert 2 * 86400 < float(client["value"]) <= 3 * 86400

    (revoked,) = by_name["CertscopeCertificateRevoked"]
    rev, e = estate.revocation, estate.endpoints
    assert revoked["labels"]["subject_cn"] == "revoked.test"
    assert float(revoked["value"]) == 4
    assert revoked["annotations"]["evidence"] == "; ".join(
        [
            f"crl by probe crl at {rev.http.url(HTTP_PATHS['crl'])}",
            f"ocsp by probe ocsp at {rev.pki.revoked.cert_path}",
            f"crl by probe tls-revoked at {e['revoked']}",
            f"ocsp by probe tls-revoked at {e['revoked']}",
        ]
    )
    (exposed,) = by_name["CertscopePrivateKeyExposed"]
    assert exposed["annotations"]["causes"] == "group_readable, other_readable"
    (reused,) = by_name["CertscopeKeyReused"]
    assert reused["annotations"]["subjects"] == "reused-a.test, reused-b.test"
    (policy,) = [a for a in by_name["CertscopeCertificateExpiringSoon"] if a["labels"]["probe"] == "policy"]
    assert 19 * 86400 < float(policy["value"]) <= 20 * 86400  # inside its own 30-day critical threshold


def test_every_alert_about_a_probe_routes_to_its_owner(estate: Estate, settled: float) -> None:
    """Owner labels on every alert (KeyReused spans owners by nature), and the example
    Alertmanager config routes each one to its team's receiver."""
    amtool = shutil.which("amtool")
    assert amtool, "amtool is missing: apt-get install prometheus-alertmanager"
    for alert in estate.firing():
        labels = alert["labels"]
        if labels["alertname"] == "CertscopeKeyReused":
            continue
        assert labels.get("team"), f"no team: {alert_key(alert)}"
        routing = [f"{k}={labels[k]}" for k in ("alertname", "severity", "team", "owner", "probe") if k in labels]
        done = subprocess.run(
            [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_EXAMPLE}", *routing],
            capture_output=True,
            text=True,
            timeout=30,
        )
        receiver = "team-pager" if labels["severity"] == "critical" else "team-tickets"
        assert done.stdout.strip() == receiver, f"{alert_key(alert)}: {done.stdout}{done.stderr}"


def test_a_cached_ocsp_answer_keeps_the_responder_visible(estate: Estate, settled: float) -> None:
    """The openssl responder is asked once per certificate and instance (its answers are
    cached for a day), and its last answer is on every scrape since, with its age."""
    responder = estate.revocation.ocsp.url
    selector = f'{{responder="{responder}"}}'
    up = estate.prometheus.query(f"certscope_ocsp_responder_up{selector}")
    # ocsp (revoked, good) and tls-revoked, on both instances
    assert {(s["metric"]["instance"], s["metric"]["probe"], s["value"][1]) for s in up} == {
        (instance, probe, "1") for instance in estate.daemons for probe in ("ocsp", "tls-revoked")
    }
    window = f"{math.floor(settled - estate.started) - 2}s"

    def samples(promql: str) -> list[dict[str, Any]]:
        """Every sample of ``promql`` in the window, as scraped."""
        data = estate.prometheus.api("query", query=f"{promql}[{window}]")
        assert data["resultType"] == "matrix", data
        return list(data["result"])

    scraped = {s["metric"]["instance"]: [float(t) for t, _ in s["values"]] for s in samples(f"up{{job='{JOB}'}}")}
    # Every scrape of an instance since the series first appeared there carries it
    # (a daemon's first rounds may end after its first scrapes: not counted).
    for series in samples(f"certscope_ocsp_responder_up{selector}"):
        first = float(series["values"][0][0])
        since = [t for t in scraped[series["metric"]["instance"]] if t >= first]
        assert len(series["values"]) == len(since) >= 3, (series["metric"], len(series["values"]), since)
    asked = estate.prometheus.query(f"changes(certscope_ocsp_last_request_timestamp_seconds{selector}[{window}])")
    assert asked and all(s["value"][1] == "0" for s in asked), asked
    age = estate.prometheus.query(f"time() - certscope_ocsp_last_request_timestamp_seconds{selector}")
    assert all(float(s["value"][1]) > 2 * SCRAPE for s in age), age


# --------------------------------------------------------------------------- dashboards


def grafana_variables(query: Query, estate: Estate, end: float) -> dict[str, str]:
    """What Grafana substitutes, "All" selected, for a dashboard over [started, end]."""
    interval = max(SCRAPE, duration_seconds(query.min_interval) if query.min_interval else 0)
    elapsed = math.ceil(end - estate.started)
    return {
        "__interval": f"{interval}s",
        "__interval_ms": str(interval * 1000),
        "__rate_interval": f"{max(interval + SCRAPE, 4 * SCRAPE)}s",
        "__range": f"{elapsed}s",
        "__range_s": str(elapsed),
        "__range_ms": str(elapsed * 1000),
        "job": ".*",
        "instance": ".*",
        "probe": ".*",
        "kind": ".*",
        "target": ".*",
        "slo": "0.999",
    }


def duration_seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", text))


def evaluate(query: Query, estate: Estate, end: float) -> list[dict[str, Any]]:
    """Prometheus's answer to the query as Grafana sends it; asserts success without warnings."""
    variables = grafana_variables(query, estate, end)
    expr = substitute(query.expr, variables)
    if query.instant:
        endpoint, params = "query", {"query": expr, "time": f"{end:.3f}"}
    else:
        step = int(variables["__interval"].rstrip("s"))
        start = end - max(1, math.ceil((end - estate.started) / step)) * step  # the last step is `end`
        endpoint, params = (
            "query_range",
            {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}s"},
        )
    response = requests.get(f"{estate.prometheus.base_url}/api/v1/{endpoint}", params=params, timeout=30)
    body = response.json()
    assert response.status_code == 200 and body.get("status") == "success", f"{query}\n{expr}\n{body}"
    assert not body.get("warnings"), f"{query}\n{body['warnings']}"
    return list(body["data"]["result"])


def has_a_number(result: list[dict[str, Any]]) -> bool:
    values = [s["value"] for s in result if "value" in s] + [v for s in result for v in s.get("values", [])]
    return any(not math.isnan(float(value)) for _, value in values)


def test_every_dashboard_expression_evaluates_and_has_data(estate: Estate, settled: float) -> None:
    errors, empty, unexpected = [], [], []
    all_queries = [q for name in DASHBOARDS for q in queries(name)]
    for query in all_queries:
        key = (query.dashboard, query.where, query.ref_id)
        try:
            result = evaluate(query, estate, settled)
        except AssertionError as exc:
            errors.append(str(exc))
            continue
        if key in EXPECTED_EMPTY and has_a_number(result):
            unexpected.append(f"{query}  (listed as empty: {EXPECTED_EMPTY[key]})")
        elif key not in EXPECTED_EMPTY and not has_a_number(result):
            empty.append(str(query))
    print(
        f"\n{len(all_queries)} dashboard expressions: {len(all_queries) - len(EXPECTED_EMPTY)} with data, "
        f"{len(EXPECTED_EMPTY)} empty as expected"
    )
    assert not errors, "\n\n".join(errors)
    assert not empty, "no data:\n" + "\n".join(empty)
    assert not unexpected, "data where none was expected:\n" + "\n".join(unexpected)
    listed = {(q.dashboard, q.where, q.ref_id) for q in all_queries}
    assert set(EXPECTED_EMPTY) <= listed, set(EXPECTED_EMPTY) - listed


def test_every_dashboard_variable_lists_the_estate(estate: Estate, settled: float) -> None:
    wanted = {
        "job": {JOB},
        "instance": set(estate.daemons),
        "probe": {
            "disk",
            "policy",
            "web",
            "mtls",
            "mtls-rejected",
            "tls-revoked",
            "ocsp",
            "ocsp-stale",
            "ocsp-down",
            "crl",
            "crl-stale",
            "ca",
            "ca-down",
            "ingress",
        },
        "kind": {"files", "tls", "ocsp", "crl", "ca"},
    }
    variables = {"job": ".*", "instance": ".*", "probe": ".*", "kind": ".*", "target": ".*"}
    for name in DASHBOARDS:
        for variable, query in variable_queries(name):
            values = variable_values(estate.prometheus, query, variables)
            assert values, f"{name} variable {variable}: {query}"
            if variable in wanted:
                assert set(values) == wanted[variable], f"{name} variable {variable}: {values}"
