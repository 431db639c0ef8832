"""Certificates in cluster-scoped Kubernetes objects: the ``caBundle`` of admission
webhooks, aggregated APIs and CRD conversion webhooks, and the certificates issued
through CertificateSigningRequests.

The API server trusts a webhook's serving certificate only if it chains to the
``caBundle`` in the webhook's own configuration object; an expired or wrong bundle
breaks every request the webhook guards (for a ``failurePolicy: Fail`` admission
webhook, every create or update of what it matches).  Each bundle is one target:

====================================== ============================================
object                                 target, location labels
====================================== ============================================
ValidatingWebhookConfiguration,        ``validatingwebhookconfiguration/<object>/<webhook>``,
MutatingWebhookConfiguration           ``object_kind``, ``object_name``, ``webhook_name``
(``webhooks[].clientConfig.caBundle``)
APIService (``spec.caBundle``)         ``apiservice/<object>``, ``object_kind``, ``object_name``
CustomResourceDefinition               ``customresourcedefinition/<object>``,
(``spec.conversion.webhook``           ``object_kind``, ``object_name``
``.clientConfig.caBundle``)
CertificateSigningRequest              ``certificatesigningrequest/<object>``,
(``status.certificate``)               ``csr_name``, ``csr_signer``
====================================== ============================================

A webhook that points at an in-cluster Service has it as the info label
``webhook_service`` (``namespace/name:port``); a CSR's requestor
(``spec.username``) is the info label ``csr_requestor``.  A webhook without a
``caBundle`` (the API server then uses its own trust roots), a CRD without a
conversion webhook and a CSR not yet issued hold nothing to read and make no
target.  The shapes are those of the ``v1`` APIs, checked against the official
client's models in tests/probes/test_kube_apiserver.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# resource -> (API path prefix, kind)
RESOURCES: dict[str, tuple[str, str]] = {
    "validatingwebhookconfigurations": (
        "/apis/admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
    ),
    "mutatingwebhookconfigurations": ("/apis/admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"),
    "apiservices": ("/apis/apiregistration.k8s.io/v1", "APIService"),
    "customresourcedefinitions": ("/apis/apiextensions.k8s.io/v1", "CustomResourceDefinition"),
    "certificatesigningrequests": ("/apis/certificates.k8s.io/v1", "CertificateSigningRequest"),
}
CA_BUNDLE_RESOURCES = (
    "validatingwebhookconfigurations",
    "mutatingwebhookconfigurations",
    "apiservices",
    "customresourcedefinitions",
)
CSR_RESOURCE = "certificatesigningrequests"
LOCATION_LABELS = ("object_kind", "object_name", "webhook_name", "csr_name", "csr_signer")
INFO_LABELS = ("webhook_service", "csr_requestor")

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Stored:
    """One base64 value holding certificates, and where it is."""

    target: str
    value: str  # base64 of PEM, as the API serves []byte fields
    labels: Labels
    info_labels: Labels = ()


def stored_certificates(resource: str, obj: Mapping[str, Any]) -> Iterator[Stored]:
    """Every certificate-holding value of one object of ``resource``.  Raises
    AttributeError, TypeError or ValueError on an object of the wrong shape."""
    name = str((obj.get("metadata") or {}).get("name") or "")
    kind = RESOURCES[resource][1]
    object_labels: Labels = (("object_kind", kind), ("object_name", name))
    if resource in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        for webhook in obj.get("webhooks") or ():
            webhook_name = str(webhook.get("name") or "")
            client_config = webhook.get("clientConfig") or {}
            if client_config.get("caBundle"):
                yield Stored(
                    f"{kind.lower()}/{name}/{webhook_name}",
                    str(client_config["caBundle"]),
                    (*object_labels, ("webhook_name", webhook_name)),
                    _service(client_config.get("service")),
                )
    elif resource == "apiservices":
        spec = obj.get("spec") or {}
        if spec.get("caBundle"):
            yield Stored(f"apiservice/{name}", str(spec["caBundle"]), object_labels, _service(spec.get("service")))
    elif resource == "customresourcedefinitions":
        conversion = (obj.get("spec") or {}).get("conversion") or {}
        client_config = (conversion.get("webhook") or {}).get("clientConfig") or {}
        if conversion.get("strategy") == "Webhook" and client_config.get("caBundle"):
            yield Stored(
                f"customresourcedefinition/{name}",
                str(client_config["caBundle"]),
                object_labels,
                _service(client_config.get("service")),
            )
    elif resource == CSR_RESOURCE:
        spec = obj.get("spec") or {}
        certificate = (obj.get("status") or {}).get("certificate")
        if certificate:
            requestor = str(spec.get("username") or "")
            yield Stored(
                f"certificatesigningrequest/{name}",
                str(certificate),
                (("csr_name", name), ("csr_signer", str(spec.get("signerName") or ""))),
                (("csr_requestor", requestor),) if requestor else (),
            )


def _service(service: Any) -> Labels:
    """``namespace/name:port`` of a Service reference (port 443 when unset, as the API server defaults it)."""
    if not isinstance(service, dict) or not service.get("name"):
        return ()
    return (("webhook_service", f"{service.get('namespace', '')}/{service['name']}:{service.get('port') or 443}"),)
