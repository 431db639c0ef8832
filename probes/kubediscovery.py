"""TLS endpoints discovered in Kubernetes, and the Secrets that should back them.

A ``tls`` probe with a ``kubernetes:`` block probes what the cluster says is served,
kept current by the same list+watch streams as the ``kubernetes`` kind
(``probes/kubewatch.py``):

========================== ======================================= ==========================
object                     one endpoint per                        target
========================== ======================================= ==========================
Ingress                    ``spec.tls[].hosts[]`` (SNI = the host)  ``ingress/<ns>/<name>/<host>``
(``networking.k8s.io/v1``)
Gateway                    HTTPS and TLS listener with a            ``gateway/<ns>/<name>/<listener>``
(``gateway.networking.     ``hostname`` (SNI = it)
k8s.io/v1``)
Service annotated          the annotated (or the ``https``, or      ``service/<ns>/<name>:<port>``
``certscope.io/probe:      443, or the first) port; SNI =
"true"``                   ``certscope.io/server-name`` or
                           ``<name>.<ns>.svc``
========================== ======================================= ==========================

Each endpoint is connected to at the address its source says (``address``): the
host's own DNS name, the load balancer address in the object's ``status``, a Service's
cluster IP or DNS name, or a fixed ``host:port`` the operator configures (the ingress
controller's Service).  A fixed address is configuration and trusted; every other one
comes from an object anyone allowed to create Ingresses, Gateways or Services can
write, so it is resolved and checked against the egress policy before connecting
(``probes.fetch.resolve_checked``), and the connection goes to the address that was
checked.  A wildcard or missing host names no server to ask for and makes no
endpoint; neither does a ``status`` without an address yet (a pending load balancer).

Annotations on the object: ``certscope.io/probe: "false"`` (or ``certscope.io/ignore``)
leaves it out, ``"true"`` opts it in where the source asks for it
(``annotated_only``, and always for Services); ``certscope.io/port`` replaces the
port; ``certscope.io/server-name`` (Services) the SNI; ``certscope.io/module`` names
the probe that takes it (the ``module`` setting; objects without it go to every
discovering probe); ``certscope.io/secret`` (Services) the Secret in the same
namespace that backs it; ``certscope.io/owner`` and ``/team`` label the served
certificates' ``certscope_cert_info``.

Served vs stored: the Secret that should back an endpoint is known (an Ingress's
``secretName``, a listener's ``certificateRefs``, a Service's annotation).  With
``secrets: true`` the source also watches the ``kubernetes.io/tls`` Secrets of its
namespaces, keeping only each one's leaf facts, and ``compare`` tells the served leaf
from it: ``match``, ``stale`` (the Secret holds a newer certificate for names the
served one has too: renewed, not reloaded), ``other`` (anything else: the
controller's default certificate, another Secret's) or ``secret_missing`` (the Secret
does not exist, or holds no certificate).  When the Secret's namespace is not
watched or its watch is down, nothing is said.

Targets are capped at ``max_targets`` (the first by name, so the set is stable); the
rest are counted as dropped.  A watch event that adds, changes or removes an endpoint
calls the source's ``on_change``, which wakes the probe's round.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from probes.certparse import parse_container
from probes.kubewatch import ANNOTATION_PREFIX, Informers, KubeWatchSettings, Scope, ignored
from probes.reasons import Reason
from probes.result import CertFacts, SourceError

log = logging.getLogger(__name__)

TLS_SECRET_TYPE = "kubernetes.io/tls"
ENDPOINT_RESOURCES = ("ingresses", "gateways", "services")
OBJECT_KINDS = {"ingresses": "Ingress", "gateways": "Gateway", "services": "Service"}
# Labels on every series of a discovered endpoint: where it comes from.
LOCATION_LABELS = ("object_kind", "object_namespace", "object_name")
SECRET_LABELS = ("secret_namespace", "secret_name")
STATES = ("match", "stale", "other", "secret_missing")
_DNS_NAME = re.compile(r"(?i)^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")
_ADDRESS_MODES = ("host", "status")


def _fixed_address(text: str) -> tuple[str, int] | None:
    """``host:port`` (or ``[v6]:port``) of a fixed address, None for a mode name."""
    from probes.tls import split_target  # probes.tls imports this module

    if text in _ADDRESS_MODES or text in ("cluster_ip", "dns"):
        return None
    return split_target(text)


def _address_problems(address: str, modes: tuple[str, ...]) -> list[tuple[str, str]]:
    if address in modes:
        return []
    try:
        _fixed_address(address)
    except ValueError:
        return [("address", f"must be {', '.join(modes)} or a fixed host:port, got {address!r}")]
    return []


@dataclass(frozen=True)
class IngressDiscovery:
    # host: the host's DNS name; status: status.loadBalancer.ingress[0]; or a fixed
    # host:port (the ingress controller's Service, e.g. ingress-nginx-controller.ingress-nginx.svc:443).
    address: str = "host"
    port: int = 443  # with host and status
    classes: tuple[str, ...] = ()  # spec.ingressClassName (or kubernetes.io/ingress.class) to take; empty: all
    annotated_only: bool = False  # only Ingresses annotated certscope.io/probe: "true"

    def validate(self) -> list[tuple[str, str]]:
        problems = _address_problems(self.address, _ADDRESS_MODES)
        if not 0 < self.port < 65536:
            problems.append(("port", "must be between 1 and 65535"))
        return problems


@dataclass(frozen=True)
class GatewayDiscovery:
    # status: status.addresses[0]; host: the listener's hostname; or a fixed host:port.
    # The port is the listener's, unless fixed.
    address: str = "status"
    classes: tuple[str, ...] = ()  # spec.gatewayClassName to take; empty: all
    annotated_only: bool = False

    def validate(self) -> list[tuple[str, str]]:
        return _address_problems(self.address, _ADDRESS_MODES)


@dataclass(frozen=True)
class ServiceDiscovery:
    # cluster_ip: spec.clusterIP; dns: <name>.<namespace>.svc; status: the load balancer's.
    # Only Services annotated certscope.io/probe: "true" are taken.
    address: str = "cluster_ip"

    def validate(self) -> list[tuple[str, str]]:
        if self.address not in ("cluster_ip", "dns", "status"):
            return [("address", f"must be cluster_ip, dns or status, got {self.address!r}")]
        return []


@dataclass(frozen=True)
class KubeDiscoverySettings(KubeWatchSettings):
    # Where the cluster is (null kubeconfig: the in-cluster service account), which
    # namespaces (empty: all) and the list+watch knobs: KubeWatchSettings, as for kind kubernetes.
    label_selector: str = ""  # on the Ingresses, Gateways and Services (not on Secrets)
    ingresses: IngressDiscovery | None = None
    gateways: GatewayDiscovery | None = None
    services: ServiceDiscovery | None = None
    secrets: bool = True  # read the backing Secrets, to compare served with stored
    module: str = ""  # objects annotated certscope.io/module take only the probe whose module it is
    max_targets: int = 1000

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if self.ingresses is None and self.gateways is None and self.services is None:
            problems.append(("ingresses", "nothing to discover: set ingresses, gateways or services"))
        if not 1 <= self.max_targets <= 100_000:
            problems.append(("max_targets", "must be between 1 and 100000"))
        return problems + super().validate()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One discovered TLS endpoint."""

    target: str
    host: str  # where to connect: a name or an address
    port: int
    server_name: str  # SNI and the name verified
    trusted: bool  # host is configuration (a fixed address), not taken from an object
    secrets: tuple[tuple[str, str], ...]  # (namespace, name) of the Secrets that should back it
    labels: tuple[tuple[str, str], ...]  # object_kind, object_namespace, object_name
    info_labels: tuple[tuple[str, str], ...] = ()  # owner, team from the object's annotations


@dataclass(frozen=True, slots=True)
class _Kept:
    """What a stream keeps of one object: its endpoints, or a Secret's leaf."""

    uid: str
    resource_version: str
    endpoints: tuple[Endpoint, ...] = ()
    leaf: CertFacts | None = None
    errors: tuple[SourceError, ...] = ()


@dataclass(frozen=True)
class Found:
    """One look at the source: the endpoints (capped), and how the source is."""

    endpoints: dict[str, Endpoint]
    errors: tuple[SourceError, ...]
    scopes: tuple[tuple[str, bool], ...]
    watch_restarts: tuple[tuple[str, int], ...]
    dropped: int = 0
    up: bool = True


class KubeEndpoints:
    """The discovery source: streams over the endpoint objects and the Secrets."""

    def __init__(self, settings: KubeDiscoverySettings) -> None:
        self.settings = settings
        self.on_change: Callable[[], None] | None = None
        self._informers: Informers[_Kept] = Informers(settings, self._scopes(), self, self._changed)

    def _scopes(self) -> list[Scope]:
        """The endpoint objects asked for, then (to compare) the TLS Secrets, by namespace."""
        settings = self.settings
        namespaces: tuple[str | None, ...] = settings.namespaces or (None,)
        resources = [
            resource
            for resource, wanted in zip(
                ENDPOINT_RESOURCES, (settings.ingresses, settings.gateways, settings.services), strict=True
            )
            if wanted is not None
        ]
        scopes = [
            Scope(resource, namespace, None, settings.label_selector)
            for resource in resources
            for namespace in namespaces
        ]
        if settings.secrets:
            scopes += [Scope("secrets", namespace, TLS_SECRET_TYPE, "") for namespace in namespaces]
        return scopes

    def _changed(self, scope: Scope) -> None:
        """A watch event changed the cache: a changed endpoint wakes the probe's round
        (a changed Secret is read when the endpoint is next probed)."""
        callback = self.on_change
        if callback is not None and scope.resource != "secrets":
            callback()

    def close(self) -> None:
        self._informers.close()

    # -- ObjectParser ------------------------------------------------------------

    def malformed(self, error: SourceError) -> _Kept:
        return _Kept("", "", errors=(error,))

    def parse_object(self, resource: str, obj: Mapping[str, Any], uid: str, version: str) -> _Kept | None:
        metadata = obj.get("metadata") or {}
        if resource == "secrets":
            return _Kept(uid, version, leaf=_secret_leaf(obj))
        annotations = metadata.get("annotations") or {}
        if ignored(metadata):
            return None
        opt_in = str(annotations.get(ANNOTATION_PREFIX + "probe", "")).lower()
        if opt_in in ("false", "0", "no"):
            return None
        module = str(annotations.get(ANNOTATION_PREFIX + "module", ""))
        if module and module != self.settings.module:
            return None  # another probe's
        errors: list[SourceError] = []
        if resource == "ingresses":
            assert self.settings.ingresses is not None
            endpoints = _ingress_endpoints(obj, self.settings.ingresses, opt_in == "true", errors)
        elif resource == "gateways":
            assert self.settings.gateways is not None
            endpoints = _gateway_endpoints(obj, self.settings.gateways, opt_in == "true", errors)
        else:
            assert self.settings.services is not None
            endpoints = _service_endpoints(obj, self.settings.services, opt_in == "true", errors)
        info = _info_labels(annotations)
        if info:
            endpoints = [
                Endpoint(e.target, e.host, e.port, e.server_name, e.trusted, e.secrets, e.labels, info)
                for e in endpoints
            ]
        return _Kept(uid, version, endpoints=tuple(endpoints), errors=tuple(errors))

    # -- reading -----------------------------------------------------------------

    def look(self) -> Found:
        """The endpoints now (the first call waits for the first list of every scope)."""
        look = self._informers.look()
        if look.closed:
            return Found({}, (), (), (), up=False)
        if look.setup_error is not None:
            return Found({}, (look.setup_error,), (), look.restarts, up=False)
        endpoints: dict[str, Endpoint] = {}
        errors: list[SourceError] = []
        for stream in look.streams:
            if (problem := stream.problem()) is not None:
                errors.append(problem)
            if stream.scope.resource == "secrets":
                continue
            for kept in stream.view():
                errors.extend(kept.errors)
                for endpoint in kept.endpoints:
                    endpoints.setdefault(endpoint.target, endpoint)
        dropped = 0
        limit = self.settings.max_targets
        if len(endpoints) > limit:
            names = sorted(endpoints)
            dropped = len(names) - limit
            endpoints = {name: endpoints[name] for name in names[:limit]}
            errors.append(
                SourceError(
                    Reason.TOO_MANY_TARGETS,
                    "max_targets",
                    f"{len(names)} endpoints discovered, max_targets={limit}: the last {dropped} by name left out",
                )
            )
        else:
            endpoints = dict(sorted(endpoints.items()))
        return Found(endpoints, tuple(errors), look.scopes, look.restarts, dropped, look.up)

    def stored_leaves(self, secrets: tuple[tuple[str, str], ...]) -> list[CertFacts | None] | None:
        """The leaf of each Secret (None: absent or no certificate); None when one of
        them cannot be known (its namespace is not watched, or its watch is down)."""
        leaves: list[CertFacts | None] = []
        for namespace, name in secrets:
            stream = self._informers.stream("secrets", namespace)
            if stream is None or not stream.up:
                return None
            kept = stream.get((namespace, name))
            leaves.append(kept.leaf if kept is not None else None)
        return leaves


def compare(served: CertFacts, stored: list[CertFacts | None]) -> str:
    """``match``, ``stale``, ``other`` or ``secret_missing`` (see the module docstring)."""
    leaves = [leaf for leaf in stored if leaf is not None]
    if not leaves:
        return "secret_missing"
    if any(leaf.fingerprint_sha256 == served.fingerprint_sha256 for leaf in leaves):
        return "match"
    served_names = _names(served)
    if any(leaf.not_before > served.not_before and _names(leaf) & served_names for leaf in leaves):
        return "stale"
    return "other"


def _names(cert: CertFacts) -> set[str]:
    names = {name.lower().removeprefix("dns:") for name in cert.sans}
    if cert.subject_cn:
        names.add(cert.subject_cn.lower())
    return names


def _secret_leaf(obj: Mapping[str, Any]) -> CertFacts | None:
    """The first certificate of a Secret's ``tls.crt`` (the key is never read)."""
    value = (obj.get("data") or {}).get("tls.crt")
    if not value:
        return None
    try:
        data = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        return None
    parsed = parse_container(data, "tls.crt")
    return parsed.certificates[0] if parsed.certificates else None


def _info_labels(annotations: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    labels = []
    for label in ("owner", "team"):
        value = annotations.get(ANNOTATION_PREFIX + label)
        if value:
            labels.append((label, str(value)[:200]))
    return tuple(labels)


def _where(resource: str, metadata: Mapping[str, Any]) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
    labels = tuple(zip(LOCATION_LABELS, (OBJECT_KINDS[resource], namespace, name), strict=True))
    return namespace, name, labels


def _port_annotation(annotations: Mapping[str, Any], item: str, errors: list[SourceError]) -> int | None:
    text = annotations.get(ANNOTATION_PREFIX + "port")
    if text is None:
        return None
    if str(text).isdigit() and 0 < int(str(text)) < 65536:
        return int(str(text))
    errors.append(SourceError(Reason.PARSE_ERROR, item, f"{item}: annotation {ANNOTATION_PREFIX}port: not a port"))
    return None


def _concrete(host: Any) -> bool:
    """A name a client can ask for: no wildcard, a valid DNS name."""
    return isinstance(host, str) and _DNS_NAME.match(host) is not None


def _bad_host(item: str, host: Any, errors: list[SourceError]) -> None:
    if isinstance(host, str) and host.startswith("*."):
        return  # a wildcard names no server to ask for: not an error
    errors.append(SourceError(Reason.PARSE_ERROR, item, f"{item}: {str(host)[:80]!r} is not a DNS name"))


def _status_address(status: Mapping[str, Any] | None) -> str | None:
    """The first load balancer address (ip, else hostname) of a status."""
    for entry in ((status or {}).get("loadBalancer") or {}).get("ingress") or ():
        value = entry.get("ip") or entry.get("hostname")
        if value:
            return str(value)
    return None


def _endpoint(
    target: str,
    address: str,
    server_name: str,
    port: int,
    status_address: str | None,
    secrets: tuple[tuple[str, str], ...],
    labels: tuple[tuple[str, str], ...],
) -> Endpoint | None:
    """The endpoint at ``server_name``:``port`` reached as the address mode says (a
    fixed address, the status's, or the name itself); None: no address known yet."""
    fixed = _fixed_address(address)
    if fixed is not None:
        return Endpoint(target, fixed[0], fixed[1], server_name, True, secrets, labels)
    if address == "status":
        if not status_address:
            return None
        return Endpoint(target, status_address, port, server_name, False, secrets, labels)
    return Endpoint(target, server_name, port, server_name, False, secrets, labels)


def _ingress_endpoints(
    obj: Mapping[str, Any], source: IngressDiscovery, opted_in: bool, errors: list[SourceError]
) -> list[Endpoint]:
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    if source.annotated_only and not opted_in:
        return []
    spec = obj.get("spec") or {}
    if source.classes:
        ingress_class = spec.get("ingressClassName") or annotations.get("kubernetes.io/ingress.class")
        if ingress_class not in source.classes:
            return []
    namespace, name, labels = _where("ingresses", metadata)
    item = f"ingress/{namespace}/{name}"
    port = _port_annotation(annotations, item, errors) or source.port
    status_address = _status_address(obj.get("status"))
    endpoints: list[Endpoint] = []
    for entry in spec.get("tls") or ():
        secret = entry.get("secretName")
        secrets = ((namespace, str(secret)),) if secret else ()
        for host in entry.get("hosts") or ():
            if not _concrete(host):
                _bad_host(item, host, errors)
                continue
            host = host.lower()
            endpoint = _endpoint(f"{item}/{host}", source.address, host, port, status_address, secrets, labels)
            if endpoint is not None:  # None: no load balancer address yet
                endpoints.append(endpoint)
    return endpoints


def _gateway_endpoints(
    obj: Mapping[str, Any], source: GatewayDiscovery, opted_in: bool, errors: list[SourceError]
) -> list[Endpoint]:
    metadata = obj.get("metadata") or {}
    if source.annotated_only and not opted_in:
        return []
    spec = obj.get("spec") or {}
    if source.classes and spec.get("gatewayClassName") not in source.classes:
        return []
    namespace, name, labels = _where("gateways", metadata)
    item = f"gateway/{namespace}/{name}"
    status_address = next(
        (str(a["value"]) for a in (obj.get("status") or {}).get("addresses") or () if a.get("value")), None
    )
    endpoints: list[Endpoint] = []
    for listener in spec.get("listeners") or ():
        if listener.get("protocol") not in ("HTTPS", "TLS"):
            continue
        hostname = listener.get("hostname")
        if not _concrete(hostname):
            if hostname:
                _bad_host(item, hostname, errors)
            continue
        hostname = hostname.lower()
        tls = listener.get("tls") or {}
        secrets: tuple[tuple[str, str], ...] = ()
        if (tls.get("mode") or "Terminate") == "Terminate":
            secrets = tuple(
                (str(ref.get("namespace") or namespace), str(ref["name"]))
                for ref in tls.get("certificateRefs") or ()
                if (ref.get("kind") or "Secret") == "Secret" and not ref.get("group") and ref.get("name")
            )
        port = int(listener["port"])
        target = f"{item}/{listener.get('name') or hostname}"
        endpoint = _endpoint(target, source.address, hostname, port, status_address, secrets, labels)
        if endpoint is not None:
            endpoints.append(endpoint)
    return endpoints


def _service_endpoints(
    obj: Mapping[str, Any], source: ServiceDiscovery, opted_in: bool, errors: list[SourceError]
) -> list[Endpoint]:
    if not opted_in:
        return []  # Services are probed only when annotated
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    namespace, name, labels = _where("services", metadata)
    item = f"service/{namespace}/{name}"
    spec = obj.get("spec") or {}
    ports = [int(p["port"]) for p in spec.get("ports") or () if p.get("port")]
    named = [int(p["port"]) for p in spec.get("ports") or () if p.get("name") == "https" and p.get("port")]
    port = _port_annotation(annotations, item, errors) or next(
        iter(named or [p for p in ports if p == 443] or ports), None
    )
    if port is None:
        errors.append(SourceError(Reason.PARSE_ERROR, item, f"{item}: no port to probe"))
        return []
    server_name = str(annotations.get(ANNOTATION_PREFIX + "server-name") or f"{name}.{namespace}.svc")
    if not _concrete(server_name):
        _bad_host(item, server_name, errors)
        return []
    if source.address == "cluster_ip":
        cluster_ip = spec.get("clusterIP")
        if not cluster_ip or cluster_ip == "None":
            return []  # headless: nothing to connect to as one endpoint
        host = str(cluster_ip)
    elif source.address == "dns":
        host = f"{name}.{namespace}.svc"
    else:
        status_address = _status_address(obj.get("status"))
        if not status_address:
            return []
        host = status_address
    secret = annotations.get(ANNOTATION_PREFIX + "secret")
    secrets = ((namespace, str(secret)),) if secret else ()
    return [Endpoint(f"{item}:{port}", host, port, server_name.lower(), False, secrets, labels)]
