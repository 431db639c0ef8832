"""Cluster-scoped Kubernetes objects that hold certificates, shaped as the v1 APIs
serve them (every field the official client's models require is set, so
``tests/test_kube_apiserver.py`` can read them back through those models).

``[]byte`` fields (``caBundle``, ``status.certificate``, ``spec.request``) are
base64 in JSON, as the API server encodes them.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from probes.kubernetes import KubernetesProbe
from tests.kube_apiserver import FakeApiServer
from tests.pki import Issued


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bundle(*cas: Issued) -> str:
    return b64(b"".join(ca.pem for ca in cas))


def webhook_configuration(
    kind: str, name: str, webhooks: list[tuple[str, str | None, dict[str, Any] | None]], **metadata: Any
) -> dict[str, Any]:
    """``kind`` Validating or Mutating; ``webhooks`` (name, caBundle or None, Service
    reference or None for a URL)."""
    entries = []
    for webhook_name, ca_bundle, service in webhooks:
        client_config: dict[str, Any] = {"service": service} if service else {"url": f"https://{webhook_name}/hook"}
        if ca_bundle is not None:
            client_config["caBundle"] = ca_bundle
        entry: dict[str, Any] = {
            "name": webhook_name,
            "clientConfig": client_config,
            "rules": [
                {
                    "operations": ["CREATE", "UPDATE"],
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["pods"],
                    "scope": "*",
                }
            ],
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "namespaceSelector": {},
            "objectSelector": {},
            "sideEffects": "None",
            "timeoutSeconds": 10,
            "admissionReviewVersions": ["v1"],
        }
        if kind == "Mutating":
            entry["reinvocationPolicy"] = "Never"
        entries.append(entry)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": f"{kind}WebhookConfiguration",
        "metadata": {"name": name, **metadata},
        "webhooks": entries,
    }


def service_ref(namespace: str, name: str, port: int | None = 443, path: str | None = "/validate") -> dict[str, Any]:
    reference: dict[str, Any] = {"namespace": namespace, "name": name}
    if port is not None:
        reference["port"] = port
    if path is not None:
        reference["path"] = path
    return reference


def api_service(group: str, version: str, ca_bundle: str, service: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": f"{version}.{group}"},
        "spec": {
            "group": group,
            "version": version,
            "service": {key: value for key, value in service.items() if key != "path"},
            "caBundle": ca_bundle,
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
        "status": {
            "conditions": [
                {
                    "type": "Available",
                    "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "reason": "Passed",
                    "message": "all checks passed",
                }
            ]
        },
    }


def crd(plural: str, group: str, ca_bundle: str | None, service: dict[str, Any] | None) -> dict[str, Any]:
    """A CRD with two served versions; with ``ca_bundle``, a conversion webhook."""
    kind = plural.rstrip("s").capitalize()
    conversion: dict[str, Any] = {"strategy": "None"}
    if ca_bundle is not None:
        conversion = {
            "strategy": "Webhook",
            "webhook": {
                "clientConfig": {"service": service, "caBundle": ca_bundle},
                "conversionReviewVersions": ["v1"],
            },
        }
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"plural": plural, "singular": plural.rstrip("s"), "kind": kind, "listKind": f"{kind}List"},
            "scope": "Namespaced",
            "versions": [
                {"name": "v1", "served": True, "storage": True, "schema": schema},
                {"name": "v1beta1", "served": True, "storage": False, "schema": schema},
            ],
            "conversion": conversion,
        },
        "status": {
            "acceptedNames": {"plural": plural, "kind": kind},
            "storedVersions": ["v1"],
            "conditions": [],
        },
    }


def csr(name: str, signer: str, username: str, issued: Issued | None, *, common_name: str = "") -> dict[str, Any]:
    """A CertificateSigningRequest; with ``issued``, approved and issued."""
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or username)]))
        .sign(key, hashes.SHA256())
    )
    obj: dict[str, Any] = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": b64(request.public_bytes(serialization.Encoding.PEM)),
            "signerName": signer,
            "usages": ["digital signature", "client auth"],
            "username": username,
            "groups": ["system:nodes", "system:authenticated"],
            "expirationSeconds": 86400,
        },
        "status": {},
    }
    if issued is not None:
        obj["status"] = {
            "conditions": [
                {
                    "type": "Approved",
                    "status": "True",
                    "reason": "AutoApproved",
                    "message": "Auto approving kubelet client certificate after SubjectAccessReview.",
                    "lastUpdateTime": "2026-01-01T00:00:00Z",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
            "certificate": b64(issued.pem),
        }
    return obj


# --------------------------------------------------------------------------- endpoints


def tls_secret(
    namespace: str, name: str, leaf: Issued, *chain: Issued, ca_crt: str | None = None, **metadata: Any
) -> dict[str, Any]:
    """A ``kubernetes.io/tls`` Secret holding ``leaf`` (then ``chain``) and its key, and
    ``ca.crt`` (already base64) when ``ca_crt`` is given."""
    data = {"tls.crt": b64(leaf.pem + b"".join(c.pem for c in chain)), "tls.key": b64(leaf.key_pem)}
    if ca_crt is not None:
        data["ca.crt"] = ca_crt
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"namespace": namespace, "name": name, **metadata},
        "data": data,
    }


def ingress(
    namespace: str,
    name: str,
    tls: list[tuple[list[str], str | None]],
    *,
    ingress_class: str | None = "nginx",
    load_balancer: str | None = None,
    **metadata: Any,
) -> dict[str, Any]:
    """A ``networking.k8s.io/v1`` Ingress: ``tls`` (hosts, secretName or None), a rule per
    host to a backend Service, and ``status.loadBalancer`` when ``load_balancer`` (an IP)."""
    hosts = [host for hosts, _ in tls for host in hosts]
    spec: dict[str, Any] = {
        "tls": [{"hosts": hosts_, **({"secretName": secret} if secret else {})} for hosts_, secret in tls],
        "rules": [
            {
                "host": host,
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": "web", "port": {"number": 8080}}},
                        }
                    ]
                },
            }
            for host in hosts
        ],
    }
    if ingress_class is not None:
        spec["ingressClassName"] = ingress_class
    status: dict[str, Any] = {"loadBalancer": {}}
    if load_balancer is not None:
        status["loadBalancer"] = {"ingress": [{"ip": load_balancer}]}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"namespace": namespace, "name": name, **metadata},
        "spec": spec,
        "status": status,
    }


def gateway(
    namespace: str,
    name: str,
    listeners: list[dict[str, Any]],
    *,
    gateway_class: str = "envoy",
    address: str | None = None,
    **metadata: Any,
) -> dict[str, Any]:
    """A ``gateway.networking.k8s.io/v1`` Gateway with ``listeners`` (see ``listener``) and,
    with ``address``, the ``status.addresses`` and conditions its controller writes."""
    status: dict[str, Any] = {}
    if address is not None:
        status = {
            "addresses": [{"type": "IPAddress", "value": address}],
            "conditions": [
                {
                    "type": "Programmed",
                    "status": "True",
                    "reason": "Programmed",
                    "message": "",
                    "observedGeneration": 1,
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"namespace": namespace, "name": name, **metadata},
        "spec": {"gatewayClassName": gateway_class, "listeners": listeners},
        "status": status,
    }


def listener(
    name: str,
    port: int,
    *,
    hostname: str | None,
    protocol: str = "HTTPS",
    secrets: tuple[str | tuple[str, str], ...] = (),
    mode: str = "Terminate",
) -> dict[str, Any]:
    """One Gateway listener; ``secrets`` are certificateRefs (a name, or (namespace, name))."""
    entry: dict[str, Any] = {"name": name, "port": port, "protocol": protocol}
    if hostname is not None:
        entry["hostname"] = hostname
    if protocol in ("HTTPS", "TLS"):
        refs = []
        for secret in secrets:
            ref: dict[str, Any] = {"group": "", "kind": "Secret"}
            if isinstance(secret, tuple):
                ref.update(namespace=secret[0], name=secret[1])
            else:
                ref["name"] = secret
            refs.append(ref)
        entry["tls"] = {"mode": mode, **({"certificateRefs": refs} if refs else {})}
    entry["allowedRoutes"] = {"namespaces": {"from": "Same"}}
    return entry


def service(
    namespace: str,
    name: str,
    ports: list[tuple[str, int]],
    *,
    cluster_ip: str = "10.96.0.10",
    **metadata: Any,
) -> dict[str, Any]:
    """A ``v1`` Service of type ClusterIP with ``ports`` (name, port)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": namespace, "name": name, **metadata},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "selector": {"app": name},
            "ports": [
                {"name": port_name, "port": port, "targetPort": port, "protocol": "TCP"} for port_name, port in ports
            ],
        },
        "status": {"loadBalancer": {}},
    }


# --------------------------------------------------------------------------- the API server and a kubeconfig for it


@contextlib.contextmanager
def api_server(token: str) -> Iterator[FakeApiServer]:
    """The API server fixture, accepting bearer ``token`` and sending a BOOKMARK every
    0.5 s (so watches show progress within a test's patience); stopped on exit."""
    server = FakeApiServer(bookmark_interval=0.5).start()
    server.allow(token=token)
    try:
        yield server
    finally:
        server.stop()


def write_kubeconfig(path: Path, server: str, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    """A kubeconfig at ``path`` whose one context points at ``server`` as ``user``
    (e.g. ``{"token": ...}``); ``cluster`` adds cluster fields (CA, TLS server name)."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "contexts": [{"name": "test", "context": {"cluster": "fixture", "user": "certscope"}}],
        "clusters": [{"name": "fixture", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "certscope", "user": user}],
    }
    path.write_text(yaml.safe_dump(document))
    return path


def api_fixtures(token: str) -> tuple[Any, Any]:
    """A test module's ``api`` (the API server accepting bearer ``token``) and
    ``kubeconfig`` (a kubeconfig for it with that token) fixtures:
    ``api, kubeconfig = kube_objects.api_fixtures(TOKEN)``."""

    @pytest.fixture
    def api() -> Iterator[FakeApiServer]:
        with api_server(token) as server:
            yield server

    @pytest.fixture
    def kubeconfig(api: FakeApiServer, tmp_path: Path) -> Path:
        return write_kubeconfig(tmp_path / "kubeconfig", api.url, {"token": token})

    return api, kubeconfig


def probes_fixture() -> Any:
    """A test module's ``probes`` fixture: the list a test adds its KubernetesProbes to,
    each closed after the test (their streams' threads end)."""

    @pytest.fixture
    def probes() -> Iterator[list[KubernetesProbe]]:
        made: list[KubernetesProbe] = []
        yield made
        for probe in made:
            probe.close()

    return probes
