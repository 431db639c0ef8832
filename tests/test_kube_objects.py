"""The ``kubernetes`` probe on cluster-scoped objects: the caBundles of two admission
webhook configurations, an APIService and a CRD conversion webhook, and the
certificate of an issued CertificateSigningRequest, served by the API server
fixture (tests/kube_apiserver.py) over real HTTP and watched as they change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exporter.config import ConfigError, parse_config
from probes.context import ProbeContext
from probes.kubeobjects import CA_BUNDLE_RESOURCES
from probes.kubernetes import KubernetesProbe, KubernetesSettings
from probes.result import ProbeResult
from tests import kube_objects
from tests.helpers import find, value, wait_for
from tests.kube_apiserver import FakeApiServer
from tests.pki import DAY, NOW, Issued, Pki, issue

TOKEN = "objects-t0ken-" + "c4fe" * 5
KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
api, kubeconfig = kube_objects.api_fixtures(TOKEN)
probes = kube_objects.probes_fixture()


def write_kubeconfig(path: Path, server: str, token: str = TOKEN) -> Path:
    return kube_objects.write_kubeconfig(path, server, {"token": token})


def round_results(probe: KubernetesProbe) -> dict[str, ProbeResult]:
    discovery = probe.targets()
    ctx = ProbeContext(deadline=float("inf"))
    return {target: probe.run(target, ctx) for target in discovery.targets}


class Cluster:
    """Two webhook configurations, an APIService, two CRDs (one converting) and three
    CSRs (issued, pending, issued by another signer), each CA with its own expiry."""

    def __init__(self, api: FakeApiServer) -> None:
        self.api = api
        self.policy_ca = issue("policy webhook ca", ca=True, not_after=NOW + 200 * DAY)
        self.mesh_ca = issue("mesh injector ca", ca=True, not_after=NOW + 20 * DAY)
        self.metrics_ca = issue("metrics-server ca", ca=True, not_after=NOW + 365 * DAY)
        self.widgets_ca = issue("widgets converter ca", ca=True, not_after=NOW + 90 * DAY)
        self.kubelet_ca = issue("kubernetes", ca=True, not_after=NOW + 3650 * DAY)
        self.kubelet_client = issue("system:node:worker-1", self.kubelet_ca, not_after=NOW + 365 * DAY)
        self.serving = issue("worker-2", self.kubelet_ca, not_after=NOW + 30 * DAY)
        self.put_validating(self.policy_ca)
        api.put(
            "mutatingwebhookconfigurations",
            kube_objects.webhook_configuration(
                "Mutating",
                "injector",
                [
                    (
                        "inject.mesh.example.com",
                        kube_objects.bundle(self.mesh_ca),
                        kube_objects.service_ref("mesh", "injector", 9443),
                    )
                ],
            ),
        )
        api.put(
            "apiservices",
            kube_objects.api_service(
                "metrics.k8s.io",
                "v1beta1",
                kube_objects.bundle(self.metrics_ca),
                kube_objects.service_ref("kube-system", "metrics-server"),
            ),
        )
        api.put(
            "customresourcedefinitions",
            kube_objects.crd(
                "widgets",
                "example.com",
                kube_objects.bundle(self.widgets_ca),
                kube_objects.service_ref("widgets", "converter", None),
            ),
        )
        api.put("customresourcedefinitions", kube_objects.crd("gadgets", "example.com", None, None))
        api.put(
            "certificatesigningrequests",
            kube_objects.csr("csr-k1", KUBELET_SIGNER, "system:node:worker-1", self.kubelet_client),
        )
        api.put(
            "certificatesigningrequests", kube_objects.csr("csr-pending", KUBELET_SIGNER, "system:node:worker-3", None)
        )
        api.put(
            "certificatesigningrequests",
            kube_objects.csr("csr-serving", "kubernetes.io/kubelet-serving", "system:node:worker-2", self.serving),
        )

    def put_validating(self, ca: Issued, **metadata: Any) -> None:
        self.api.put(
            "validatingwebhookconfigurations",
            kube_objects.webhook_configuration(
                "Validating",
                "policy",
                [
                    (
                        "validate.policy.example.com",
                        kube_objects.bundle(ca),
                        kube_objects.service_ref("policy", "webhook"),
                    ),
                    ("audit.policy.example.com", None, None),  # no caBundle: the API server's own roots
                ],
                **metadata,
            ),
        )


EXPECTED_TARGETS = {
    "validatingwebhookconfiguration/policy/validate.policy.example.com",
    "mutatingwebhookconfiguration/injector/inject.mesh.example.com",
    "apiservice/v1beta1.metrics.k8s.io",
    "customresourcedefinition/widgets.example.com",
    "certificatesigningrequest/csr-k1",
    "certificatesigningrequest/csr-serving",
}


def all_sources(kubeconfig: Path, **settings: Any) -> KubernetesProbe:
    return KubernetesProbe(
        KubernetesSettings(
            kubeconfig=str(kubeconfig),
            secrets=False,
            ca_bundles=CA_BUNDLE_RESOURCES,
            certificate_signing_requests=True,
            **settings,
        )
    )


def test_every_ca_bundle_and_issued_csr_is_inventoried_with_its_location(
    api: FakeApiServer, kubeconfig: Path, probes: list[KubernetesProbe]
) -> None:
    cluster = Cluster(api)
    probe = all_sources(kubeconfig)
    probes.append(probe)
    results = round_results(probe)
    assert set(results) == EXPECTED_TARGETS
    discovery = probe.targets()
    assert discovery.up and not discovery.errors
    assert dict(discovery.scopes) == {
        resource: True for resource in (*CA_BUNDLE_RESOURCES, "certificatesigningrequests")
    }
    assert not any("/api/v1/secrets" in r.path for r in api.requests), "secrets: false lists no Secret"

    def single(target: str) -> tuple[float, str, dict[str, str], dict[str, str]]:
        result = results[target]
        assert result.success, result.errors
        [observation] = result.certificates
        return observation.cert.not_after, observation.role, dict(result.target_labels), dict(result.info_labels)

    assert single("validatingwebhookconfiguration/policy/validate.policy.example.com") == (
        cluster.policy_ca.not_after,
        "root",
        {
            "object_kind": "ValidatingWebhookConfiguration",
            "object_name": "policy",
            "webhook_name": "validate.policy.example.com",
        },
        {"webhook_service": "policy/webhook:443"},
    )
    assert single("mutatingwebhookconfiguration/injector/inject.mesh.example.com")[0] == cluster.mesh_ca.not_after
    assert single("mutatingwebhookconfiguration/injector/inject.mesh.example.com")[3] == {
        "webhook_service": "mesh/injector:9443"
    }
    assert single("apiservice/v1beta1.metrics.k8s.io") == (
        cluster.metrics_ca.not_after,
        "root",
        {"object_kind": "APIService", "object_name": "v1beta1.metrics.k8s.io"},
        {"webhook_service": "kube-system/metrics-server:443"},
    )
    assert single("customresourcedefinition/widgets.example.com")[:3] == (
        cluster.widgets_ca.not_after,
        "root",
        {"object_kind": "CustomResourceDefinition", "object_name": "widgets.example.com"},
    )
    assert single("certificatesigningrequest/csr-k1") == (
        cluster.kubelet_client.not_after,
        "leaf",
        {"csr_name": "csr-k1", "csr_signer": KUBELET_SIGNER},
        {"csr_requestor": "system:node:worker-1"},
    )
    assert single("certificatesigningrequest/csr-serving")[2]["csr_signer"] == "kubernetes.io/kubelet-serving"


def test_bundle_rotation_policy_and_deletion_follow_the_watch(
    api: FakeApiServer, kubeconfig: Path, probes: list[KubernetesProbe]
) -> None:
    cluster = Cluster(api)
    probe = all_sources(kubeconfig)
    probes.append(probe)
    target = "validatingwebhookconfiguration/policy/validate.policy.example.com"
    assert round_results(probe)[target].certificates[0].cert.not_after == cluster.policy_ca.not_after
    # The webhook's CA is rotated (a new CA appended first, as cainjector does), and the
    # object's annotations set its policy.
    new_ca = issue("policy webhook ca 2", ca=True, not_after=NOW + 700 * DAY)
    api.put(
        "validatingwebhookconfigurations",
        kube_objects.webhook_configuration(
            "Validating",
            "policy",
            [("validate.policy.example.com", kube_objects.bundle(new_ca, cluster.policy_ca), None)],
            annotations={"certscope.io/warning": "60d", "certscope.io/owner": "policy-team"},
        ),
    )

    def rotated() -> bool:
        result = round_results(probe)[target]
        return [o.cert.not_after for o in result.certificates] == [new_ca.not_after, cluster.policy_ca.not_after]

    wait_for(rotated, 10, "the new caBundle")
    result = round_results(probe)[target]
    assert result.thresholds == (60 * 86400, -1.0)
    assert dict(result.info_labels) == {"owner": "policy-team"}  # no service: a URL webhook now
    api.delete("customresourcedefinitions", "", "widgets.example.com")
    api.put(
        "certificatesigningrequests",
        kube_objects.csr("csr-pending", KUBELET_SIGNER, "system:node:worker-3", cluster.serving),
    )
    wait_for(
        lambda: (
            set(round_results(probe))
            == EXPECTED_TARGETS - {"customresourcedefinition/widgets.example.com"}
            | {"certificatesigningrequest/csr-pending"}
        ),
        10,
        "the CRD to go and the pending CSR to be issued",
    )


def test_a_forbidden_resource_is_down_alone(
    api: FakeApiServer, tmp_path: Path, probes: list[KubernetesProbe], pki: Pki
) -> None:
    Cluster(api)
    api.put(
        "secrets",
        {
            "metadata": {"namespace": "web", "name": "tls"},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": kube_objects.b64(pki.valid.pem)},
        },
    )
    # RBAC that grants Secrets and webhook configurations, but not CSRs or CRDs.
    api.allow(
        token="partial",
        resources=["secrets", "validatingwebhookconfigurations", "mutatingwebhookconfigurations", "apiservices"],
    )
    kubeconfig = write_kubeconfig(tmp_path / "partial", api.url, "partial")
    probe = KubernetesProbe(
        KubernetesSettings(
            kubeconfig=str(kubeconfig), ca_bundles=CA_BUNDLE_RESOURCES, certificate_signing_requests=True
        )
    )
    probes.append(probe)
    results = round_results(probe)
    discovery = probe.targets()
    assert not discovery.up
    assert dict(discovery.scopes) == {
        "secrets/*/kubernetes.io/tls": True,
        "validatingwebhookconfigurations": True,
        "mutatingwebhookconfigurations": True,
        "apiservices": True,
        "customresourcedefinitions": False,
        "certificatesigningrequests": False,
    }
    forbidden = {e.item: e for e in discovery.errors}
    assert set(forbidden) == {"customresourcedefinitions", "certificatesigningrequests"}
    assert forbidden["certificatesigningrequests"].reason.value == "api_forbidden"
    assert 'in API group "certificates.k8s.io"' in forbidden["certificatesigningrequests"].message
    assert {"web/tls/tls.crt", "apiservice/v1beta1.metrics.k8s.io"} <= set(results)


def test_a_malformed_object_is_its_own_error(
    api: FakeApiServer, kubeconfig: Path, probes: list[KubernetesProbe]
) -> None:
    cluster = Cluster(api)
    api.put("validatingwebhookconfigurations", {"metadata": {"name": "broken"}, "webhooks": "not a list"})
    api.put(
        "apiservices",
        {
            "metadata": {"name": "v1.bad.example.com"},
            "spec": {
                "caBundle": "!!not base64!!",
                "group": "bad.example.com",
                "version": "v1",
                "groupPriorityMinimum": 1,
                "versionPriority": 1,
            },
        },
    )
    probe = all_sources(kubeconfig)
    probes.append(probe)
    results = round_results(probe)
    assert results["apiservice/v1.bad.example.com"].reason.value == "parse_error"
    errors = probe.targets().errors
    assert [e.item for e in errors] == ["validatingwebhookconfigurations/broken"], errors
    assert errors[0].reason.value == "parse_error"
    assert results["apiservice/v1beta1.metrics.k8s.io"].certificates[0].cert.not_after == cluster.metrics_ca.not_after


def test_config_validates_the_new_sources() -> None:
    with pytest.raises(ConfigError) as bad:
        parse_config(
            "probes:\n  - {name: k, kind: kubernetes, ca_bundles: [validatingwebhookconfigurations, pods]}\n", "t.yaml"
        )
    assert "ca_bundles[1]" in str(bad.value) and "'pods' is not one of" in str(bad.value)
    with pytest.raises(ConfigError) as nothing:
        parse_config("probes:\n  - {name: k, kind: kubernetes, secrets: false}\n", "t.yaml")
    assert "nothing to watch" in str(nothing.value)


def test_daemon_exports_webhook_and_csr_certificates(api: FakeApiServer, kubeconfig: Path, start_daemon: Any) -> None:
    cluster = Cluster(api)
    config = f"""
global: {{interval: 1s}}
probes:
  - name: cluster
    kind: kubernetes
    kubeconfig: {kubeconfig}
    secrets: false
    ca_bundles: [validatingwebhookconfigurations, mutatingwebhookconfigurations, apiservices, customresourcedefinitions]
    certificate_signing_requests: true
"""
    daemon = start_daemon(config)
    samples = daemon.wait_metrics(
        lambda s: len(find(s, "certscope_cert_not_after_timestamp_seconds", probe="cluster")) == len(EXPECTED_TARGETS)
    )
    hook = {
        "object_kind": "ValidatingWebhookConfiguration",
        "object_name": "policy",
        "webhook_name": "validate.policy.example.com",
    }
    assert value(samples, "certscope_cert_not_after_timestamp_seconds", **hook) == cluster.policy_ca.not_after
    assert value(
        samples, "certscope_cert_not_after_timestamp_seconds", csr_name="csr-k1", csr_signer=KUBELET_SIGNER
    ) == (cluster.kubelet_client.not_after)
    [(info, _)] = find(samples, "certscope_cert_info", csr_name="csr-k1")
    assert info["csr_requestor"] == "system:node:worker-1" and info["subject_cn"] == "system:node:worker-1"
    [(info, _)] = find(samples, "certscope_cert_info", object_kind="APIService")
    assert info["webhook_service"] == "kube-system/metrics-server:443"
    assert value(samples, "certscope_source_scope_up", probe="cluster", scope="certificatesigningrequests") == 1
    page = daemon.get("/").text
    assert "mutatingwebhookconfiguration/injector/inject.mesh.example.com" in page
    assert TOKEN not in daemon.get("/metrics").text + daemon.log()
