"""Endpoints discovered in Kubernetes, probed and tied to their Secrets.

The API server is ``tests/kube_apiserver.py`` over real HTTP; the ingress controller is
a real nginx on 127.0.0.1 routing by SNI, as ingress-nginx does: ``current.shop.test``
serves the certificate its Secret holds, ``stale.shop.test`` the one before its
Secret's renewal, and any other name nginx's default server with a self-signed "fake"
certificate.  A ``tls`` probe with a ``kubernetes:`` block discovers the endpoints from
Ingresses, Gateways and annotated Services, connects to the controller, and compares
what is served with the Secret: ``match``, ``stale``, ``other``, ``secret_missing``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.collector import SnapshotCollector, render
from exporter.config import ConfigError, parse_config
from exporter.scheduler import Scheduler, probe_info
from exporter.store import ResultStore
from probes.context import ProbeContext
from probes.kubediscovery import (
    GatewayDiscovery,
    IngressDiscovery,
    KubeDiscoverySettings,
    ServiceDiscovery,
)
from probes.reasons import Reason
from probes.result import ProbeResult
from probes.settings import ProbeDefaults, TrustSettings
from probes.tls import TlsProbe, TlsSettings
from tests import kube_objects
from tests.helpers import find, parse_metrics, value, wait_for
from tests.kube_apiserver import FakeApiServer
from tests.kube_objects import tls_secret
from tests.pki import DAY, NOW, Issued, Pki, issue
from tests.servers import CountingListener, ServerProcess, nginx_sni_server
from tests.test_kubernetes import TOKEN

api, kubeconfig = kube_objects.api_fixtures(TOKEN)
LOOPBACK = ("127.0.0.0/8",)


@dataclass
class Controller:
    """The ingress controller stand-in and the certificates around it."""

    server: ServerProcess
    root: Path
    current: Issued  # served for current.shop.test, and in its Secret
    old: Issued  # served for stale.shop.test
    renewed: Issued  # in stale.shop.test's Secret: newer, not served
    fake: Issued  # nginx's default certificate
    elsewhere: Issued  # in default.shop.test's Secret; nginx has no server for that name

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture(scope="module")
def controller(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    directory = tmp_path_factory.mktemp("controller")
    current = issue("current.shop.test", pki.intermediate, sans=("current.shop.test",))
    old = issue(
        "stale.shop.test",
        pki.intermediate,
        sans=("stale.shop.test",),
        not_before=NOW - 60 * DAY,
        not_after=NOW + 20 * DAY,
    )
    renewed = issue("stale.shop.test", pki.intermediate, sans=("stale.shop.test",), not_before=NOW - DAY)
    fake = issue("Kubernetes Ingress Controller Fake Certificate", sans=("ingress.local",))
    elsewhere = issue("default.shop.test", pki.intermediate, sans=("default.shop.test",))

    def files(name: str, issued: Issued, chain: bytes) -> tuple[Path, Path]:
        (directory / f"{name}.crt").write_bytes(issued.pem + chain)
        (directory / f"{name}.key").write_bytes(issued.key_pem)
        return directory / f"{name}.crt", directory / f"{name}.key"

    root = directory / "root.crt"
    root.write_bytes(pki.root.pem)
    chain = pki.intermediate.pem
    server = nginx_sni_server(
        files("fake", fake, b""),
        {"current.shop.test": files("current", current, chain), "stale.shop.test": files("old", old, chain)},
        workdir=directory,
    )
    try:
        yield Controller(server, root, current, old, renewed, fake, elsewhere)
    finally:
        server.stop()


@pytest.fixture
def made() -> Iterator[list[TlsProbe]]:
    probes: list[TlsProbe] = []
    yield probes
    for probe in probes:
        probe.close()


def put_shop(api: FakeApiServer, controller: Controller, pki: Pki) -> None:
    """Three Secrets and one Ingress naming them, plus a host whose Secret is missing."""
    api.put("secrets", tls_secret("shop", "current-tls", controller.current, pki.intermediate))
    api.put("secrets", tls_secret("shop", "stale-tls", controller.renewed, pki.intermediate))
    api.put("secrets", tls_secret("shop", "default-tls", controller.elsewhere, pki.intermediate))
    api.put(
        "ingresses",
        kube_objects.ingress(
            "shop",
            "web",
            [
                (["current.shop.test"], "current-tls"),
                (["stale.shop.test"], "stale-tls"),
                (["default.shop.test"], "default-tls"),
                (["missing.shop.test"], "missing-tls"),
                (["*.wild.shop.test"], "wild-tls"),
            ],
            annotations={"certscope.io/team": "shop"},
        ),
    )


def probe_for(
    made: list[TlsProbe],
    controller: Controller,
    kubeconfig: Path,
    *,
    allow_networks: tuple[str, ...] = LOOPBACK,
    **discovery: Any,
) -> TlsProbe:
    settings = TlsSettings(
        kubernetes=KubeDiscoverySettings(kubeconfig=str(kubeconfig), **discovery),
        trust=TrustSettings(system=False, ca_files=(str(controller.root),)),
    )
    assert settings.validate() == []
    probe = TlsProbe(settings, ProbeDefaults(allow_networks=allow_networks))
    made.append(probe)
    return probe


def run_all(probe: TlsProbe) -> dict[str, ProbeResult]:
    discovery = probe.targets()
    return {t: probe.run(t, ProbeContext(deadline=time.monotonic() + 10)) for t in discovery.targets}


def state(result: ProbeResult) -> str | None:
    return result.stored.state if result.stored is not None else None


# --------------------------------------------------------------------------- served vs stored


def test_ingress_hosts_probed_through_the_controller_with_their_secrets(
    api: FakeApiServer, kubeconfig: Path, controller: Controller, pki: Pki, made: list[TlsProbe]
) -> None:
    put_shop(api, controller, pki)
    probe = probe_for(made, controller, kubeconfig, ingresses=IngressDiscovery(address=controller.address))
    discovery = probe.targets()
    assert discovery.up and set(discovery.targets) == {
        "ingress/shop/web/current.shop.test",
        "ingress/shop/web/stale.shop.test",
        "ingress/shop/web/default.shop.test",
        "ingress/shop/web/missing.shop.test",
    }  # the wildcard names no server to ask for
    assert dict(discovery.scopes) == {"ingresses/*": True, "secrets/*/kubernetes.io/tls": True}
    results = run_all(probe)
    current = results["ingress/shop/web/current.shop.test"]
    stale = results["ingress/shop/web/stale.shop.test"]
    default = results["ingress/shop/web/default.shop.test"]
    missing = results["ingress/shop/web/missing.shop.test"]

    # Served as a client sees it: SNI = the host, through the controller's address.
    assert current.success and current.facts is not None and current.facts.server_name == "current.shop.test"
    assert current.certificates[0].cert.fingerprint_sha256 == controller.current.fingerprint
    assert state(current) == "match"
    assert dict(current.stored.labels) == {"secret_namespace": "shop", "secret_name": "current-tls"}  # type: ignore[union-attr]
    assert dict(current.target_labels) == {"object_kind": "Ingress", "object_namespace": "shop", "object_name": "web"}
    assert dict(current.info_labels) == {"team": "shop"}

    # Renewed in the Secret, the controller still serves the old one: valid, so the
    # TLS check passes, and only the comparison tells.
    assert stale.success and stale.certificates[0].cert.fingerprint_sha256 == controller.old.fingerprint
    assert state(stale) == "stale"

    # A name the controller has no certificate for: its default (fake) certificate.
    assert not default.success and default.reason in (Reason.SELF_SIGNED, Reason.HOSTNAME_MISMATCH)
    assert default.certificates[0].cert.fingerprint_sha256 == controller.fake.fingerprint
    assert state(default) == "other"
    assert state(missing) == "secret_missing"

    # The Secret is renewed again, and the controller reloaded (here: the Secret now
    # holds what is served): the endpoint matches.
    api.put("secrets", tls_secret("shop", "stale-tls", controller.old, pki.intermediate))
    wait_for(lambda: state(run_all(probe)["ingress/shop/web/stale.shop.test"]) == "match", 10, "the Secret's change")


def test_series_of_the_three_outcomes(
    api: FakeApiServer, kubeconfig: Path, controller: Controller, pki: Pki, made: list[TlsProbe]
) -> None:
    """What Prometheus sees: certscope_endpoint_secret_status with the Secret's labels."""
    put_shop(api, controller, pki)
    probe = probe_for(made, controller, kubeconfig, ingresses=IngressDiscovery(address=controller.address))
    store = ResultStore()
    config = parse_config(
        f"probes: [{{name: shop, kind: tls, kubernetes: {{kubeconfig: {kubeconfig}, ingresses: {{}}}}}}]", "test"
    )
    info = probe_info(config.probes[0], probe)
    store.configure([info], "test")
    discovery = probe.targets()
    results = {t: (probe.run(t, ProbeContext(deadline=time.monotonic() + 10)), time.time()) for t in discovery.targets}
    store.publish_round(info, discovery, results, 0.1)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(store))
    samples = parse_metrics(generate_latest(registry).decode())
    status = {
        labels["target"]: (labels["state"], labels["secret_name"], labels["object_kind"])
        for labels, v in find(samples, "certscope_endpoint_secret_status")
        if v == 1
    }
    assert status == {
        "ingress/shop/web/current.shop.test": ("match", "current-tls", "Ingress"),
        "ingress/shop/web/stale.shop.test": ("stale", "stale-tls", "Ingress"),
        "ingress/shop/web/default.shop.test": ("other", "default-tls", "Ingress"),
        "ingress/shop/web/missing.shop.test": ("secret_missing", "missing-tls", "Ingress"),
    }
    assert value(samples, "certscope_source_targets_dropped", probe="shop") == 0
    assert value(samples, "certscope_source_scope_up", probe="shop", scope="ingresses/*") == 1
    info_team = {lbl["target"]: lbl.get("team") for lbl, _ in find(samples, "certscope_cert_info", role="leaf")}
    assert info_team["ingress/shop/web/current.shop.test"] == "shop"


def test_gateway_listeners_and_annotated_services(
    api: FakeApiServer, kubeconfig: Path, controller: Controller, pki: Pki, made: list[TlsProbe]
) -> None:
    put_shop(api, controller, pki)
    port = controller.server.port
    api.put(
        "gateways",
        kube_objects.gateway(
            "edge",
            "public",
            [
                kube_objects.listener("https", port, hostname="current.shop.test", secrets=(("shop", "current-tls"),)),
                kube_objects.listener("stale", port, hostname="stale.shop.test", secrets=(("shop", "stale-tls"),)),
                kube_objects.listener("pass", port, hostname="default.shop.test", protocol="TLS", mode="Passthrough"),
                kube_objects.listener("any", port, hostname=None),  # no name to ask for
                kube_objects.listener("plain", 80, hostname="current.shop.test", protocol="HTTP"),
            ],
            address="127.0.0.1",
        ),
    )
    annotated = {"certscope.io/probe": "true", "certscope.io/port": str(port)}
    api.put(
        "services",
        kube_objects.service(
            "shop",
            "checkout",
            [("http", 8080)],
            cluster_ip="127.0.0.1",
            annotations={
                **annotated,
                "certscope.io/server-name": "stale.shop.test",
                "certscope.io/secret": "stale-tls",
            },
        ),
    )
    api.put("services", kube_objects.service("shop", "plain", [("https", 443)], cluster_ip="127.0.0.1"))
    api.put(
        "services",
        kube_objects.service(
            "shop",
            "theirs",
            [("https", 443)],
            cluster_ip="127.0.0.1",
            annotations={**annotated, "certscope.io/module": "other"},
        ),
    )
    probe = probe_for(
        made,
        controller,
        kubeconfig,
        gateways=GatewayDiscovery(),
        services=ServiceDiscovery(),
        module="edge",
    )
    results = run_all(probe)
    assert {t: state(r) for t, r in results.items()} == {
        "gateway/edge/public/https": "match",
        "gateway/edge/public/stale": "stale",
        "gateway/edge/public/pass": None,  # passthrough: the backend's certificate, no Secret here
        f"service/shop/checkout:{port}": "stale",
    }
    gateway = results["gateway/edge/public/https"]
    assert gateway.success and gateway.facts is not None and gateway.facts.address == "127.0.0.1"
    assert dict(gateway.target_labels)["object_kind"] == "Gateway"
    assert results["gateway/edge/public/pass"].certificates[0].cert.fingerprint_sha256 == controller.fake.fingerprint


# --------------------------------------------------------------------------- safety


def test_a_hostile_object_cannot_make_certscope_connect_where_the_policy_forbids(
    api: FakeApiServer, kubeconfig: Path, controller: Controller, made: list[TlsProbe]
) -> None:
    listener = CountingListener()
    try:
        # Ingress status, Service clusterIP, a host that resolves to loopback, the
        # metadata address: all taken from objects, none allowed by the default policy.
        api.put(
            "ingresses",
            kube_objects.ingress("evil", "lb", [(["lb.evil.test"], None)], load_balancer="127.0.0.1"),
        )
        api.put(
            "ingresses",
            kube_objects.ingress("evil", "meta", [(["meta.evil.test"], None)], load_balancer="169.254.169.254"),
        )
        api.put("ingresses", kube_objects.ingress("evil", "host", [(["localhost"], None)], ingress_class="host"))
        annotations = {"certscope.io/probe": "true", "certscope.io/port": str(listener.port)}
        api.put(
            "services",
            kube_objects.service("evil", "svc", [("https", 443)], cluster_ip="127.0.0.1", annotations=annotations),
        )
        api.put(
            "services",
            kube_objects.service(
                "evil", "mapped", [("https", 443)], cluster_ip="::ffff:169.254.169.254", annotations=annotations
            ),
        )
        status_probe = probe_for(
            made,
            controller,
            kubeconfig,
            allow_networks=(),
            ingresses=IngressDiscovery(address="status", port=listener.port, classes=("nginx",)),
            services=ServiceDiscovery(),
        )
        host_probe = probe_for(
            made,
            controller,
            kubeconfig,
            allow_networks=(),
            ingresses=IngressDiscovery(address="host", port=listener.port, classes=("host",)),
        )
        results = {**run_all(status_probe), **run_all(host_probe)}
        assert set(results) == {
            "ingress/evil/lb/lb.evil.test",
            "ingress/evil/meta/meta.evil.test",
            "ingress/evil/host/localhost",
            f"service/evil/svc:{listener.port}",
            f"service/evil/mapped:{listener.port}",
        }
        for target, result in results.items():
            assert result.reason is Reason.CONNECT_FAILED, (target, result)
            assert "egress policy" in result.message, result.message
            assert result.facts is None and result.certificates == ()
        assert listener.accepted == 0

        # The same objects with the network allowed: connected (and refused, not TLS).
        allowed = probe_for(
            made,
            controller,
            kubeconfig,
            ingresses=IngressDiscovery(address="status", port=listener.port, classes=("nginx",)),
        )
        assert run_all(allowed)["ingress/evil/lb/lb.evil.test"].reason is not Reason.CONNECT_FAILED
        assert listener.accepted >= 1
    finally:
        listener.stop()


def test_max_targets_caps_discovery_and_counts_the_rest(
    api: FakeApiServer, kubeconfig: Path, controller: Controller, made: list[TlsProbe]
) -> None:
    api.put(
        "ingresses",
        kube_objects.ingress("many", "hosts", [([f"h{i}.many.test" for i in range(5)], "many-tls")]),
    )
    probe = probe_for(
        made, controller, kubeconfig, ingresses=IngressDiscovery(address=controller.address), max_targets=3
    )
    discovery = probe.targets()
    assert discovery.targets == tuple(f"ingress/many/hosts/h{i}.many.test" for i in range(3))
    assert discovery.dropped == 2
    [error] = [e for e in discovery.errors if e.reason is Reason.TOO_MANY_TARGETS]
    assert "5 endpoints discovered, max_targets=3" in error.message


def test_annotations_opt_in_and_out_and_bad_values_are_errors_of_their_object(
    api: FakeApiServer, kubeconfig: Path, controller: Controller, made: list[TlsProbe]
) -> None:
    api.put("ingresses", kube_objects.ingress("a", "plain", [(["plain.a.test"], "x")]))
    api.put(
        "ingresses",
        kube_objects.ingress("a", "opted", [(["opted.a.test"], "x")], annotations={"certscope.io/probe": "true"}),
    )
    api.put(
        "ingresses",
        kube_objects.ingress("a", "out", [(["out.a.test"], "x")], annotations={"certscope.io/probe": "false"}),
    )
    api.put(
        "ingresses",
        kube_objects.ingress("a", "bad", [(["bad_name!"], "x")], annotations={"certscope.io/port": "http"}),
    )
    everything = probe_for(made, controller, kubeconfig, ingresses=IngressDiscovery(address=controller.address))
    discovery = everything.targets()
    assert set(discovery.targets) == {"ingress/a/plain/plain.a.test", "ingress/a/opted/opted.a.test"}
    messages = sorted(e.message for e in discovery.errors)
    assert messages == [
        "ingress/a/bad: 'bad_name!' is not a DNS name",
        "ingress/a/bad: annotation certscope.io/port: not a port",
    ]
    only_annotated = probe_for(
        made, controller, kubeconfig, ingresses=IngressDiscovery(address=controller.address, annotated_only=True)
    )
    assert only_annotated.targets().targets == ("ingress/a/opted/opted.a.test",)


def test_config_needs_targets_or_discovery_and_checks_addresses() -> None:
    parse_config("probes: [{name: d, kind: tls, kubernetes: {ingresses: {}, gateways: {address: status}}}]", "ok")
    with pytest.raises(ConfigError) as error:
        parse_config(
            "probes: [{name: t, kind: tls}, {name: d, kind: tls, kubernetes: {ingresses: {address: nowhere}}},"
            " {name: e, kind: tls, kubernetes: {max_targets: 0}}]",
            "bad.yaml",
        )
    assert error.value.messages == [
        "probes[0].targets: at least one target is required (or kubernetes discovery)",
        "probes[1].kubernetes.ingresses.address: must be host, status or a fixed host:port, got 'nowhere'",
        "probes[2].kubernetes.ingresses: nothing to discover: set ingresses, gateways or services",
        "probes[2].kubernetes.max_targets: must be between 1 and 100000",
    ]


# --------------------------------------------------------------------------- within one watch event


def until(condition: Any, what: str, timeout: float = 10.0) -> float:
    """Seconds until ``condition()`` holds, polled every 5 ms."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic() - started


def test_an_ingress_added_is_probed_within_one_watch_event_and_its_series_go_when_deleted(
    api: FakeApiServer, kubeconfig: Path, controller: Controller, pki: Pki, tmp_path: Path
) -> None:
    """The scheduler's interval is an hour: only the watch event can bring the round."""
    api.put("secrets", tls_secret("shop", "current-tls", controller.current, pki.intermediate))
    api.put("ingresses", kube_objects.ingress("shop", "first", [(["current.shop.test"], "current-tls")]))
    config = parse_config(
        f"""
global: {{interval: 1h, egress: {{allow_networks: [127.0.0.0/8]}}}}
probes:
  - name: ingress
    kind: tls
    trust: {{system: false, ca_files: [{controller.root}]}}
    kubernetes: {{kubeconfig: {kubeconfig}, ingresses: {{address: "{controller.address}"}}}}
""",
        "test",
    )
    store = ResultStore()
    scheduler = Scheduler(store)
    scheduler.apply(config)
    try:
        wait_for(scheduler.ready, 20, "the first round")

        def targets() -> dict[str, Any]:
            return dict(store.snapshot().probes["ingress"].targets)

        first = targets()
        assert list(first) == ["ingress/shop/first/current.shop.test"]
        runs_before = first["ingress/shop/first/current.shop.test"].runs_total

        api.put("ingresses", kube_objects.ingress("shop", "second", [(["stale.shop.test"], "stale-tls")]))
        seconds = until(lambda: "ingress/shop/second/stale.shop.test" in targets(), "the new Ingress's target")
        now = targets()
        second = now["ingress/shop/second/stale.shop.test"]
        assert second.runs_total == 1 and second.result.success
        # The early round ran the new target only; the other one was carried over.
        assert now["ingress/shop/first/current.shop.test"].runs_total == runs_before
        print(f"\nan added Ingress was probed {seconds * 1000:.0f} ms after its watch event (interval 1h)")
        assert seconds < 5

        text = "\n".join(str(m) for m in render(store.snapshot()))
        assert "ingress/shop/second/stale.shop.test" in text

        api.delete("ingresses", "shop", "second")
        gone = until(lambda: "ingress/shop/second/stale.shop.test" not in targets(), "the deleted Ingress's target")
        print(f"a deleted Ingress's series went {gone * 1000:.0f} ms after its watch event")
        families = render(store.snapshot())
        assert not any(
            s.labels.get("target") == "ingress/shop/second/stale.shop.test" for f in families for s in f.samples
        )
        assert list(targets()) == ["ingress/shop/first/current.shop.test"]
    finally:
        scheduler.stop()
