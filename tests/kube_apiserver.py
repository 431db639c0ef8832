"""An in-process fake kube-apiserver that speaks the Kubernetes REST protocol (JSON) over HTTP(S).

Pure stdlib (``http.server``, ``ssl``, ``threading``, ``json``) so the Kubernetes probe can be
tested on machines where no real API server can run.  The shapes and the semantics follow the
"Kubernetes API Concepts" documentation and the apiserver's own behaviour where the docs are
silent; ``tests/test_kube_apiserver.py`` checks them, including against the official
``kubernetes`` Python client.

Modelled
--------
* Resources ``secrets``, ``configmaps`` and ``services`` (core ``v1``), the namespaced
  ``ingresses`` (``networking.k8s.io/v1``) and ``gateways`` (``gateway.networking.k8s.io/v1``,
  a CRD in a real cluster) at ``/apis/{group}/{version}[/namespaces/{ns}]/{res}[/{name}]``,
  and the cluster-scoped
  ``validatingwebhookconfigurations``, ``mutatingwebhookconfigurations``
  (``admissionregistration.k8s.io/v1``), ``apiservices`` (``apiregistration.k8s.io/v1``),
  ``customresourcedefinitions`` (``apiextensions.k8s.io/v1``) and ``certificatesigningrequests``
  (``certificates.k8s.io/v1``, field selector ``spec.signerName``) at
  ``/apis/{group}/{version}/{res}[/{name}]``, with ``/apis`` (APIGroupList) and
  ``/apis/{group}/{version}`` discovery; all in a store with one global, etcd-like
  revision counter.  Paths: ``/api/v1/{res}``, ``/api/v1/namespaces/{ns}/{res}``,
  ``/api/v1/namespaces/{ns}/{res}/{name}`` (get, or a watch of that one object), discovery
  ``/api``, ``/apis``, ``/api/v1`` (APIResourceList with the verbs served here: get, list, watch),
  ``/version``, ``/healthz``, ``/livez``, ``/readyz``.  Anything else: 404 Status; another HTTP
  method on a resource path: 405 Status.
* Objects are stored as given (``data`` is never validated, so invalid base64 is served back
  verbatim); ``put`` fills ``metadata.uid`` (kept across updates), ``resourceVersion``,
  ``creationTimestamp`` (kept across updates) and, for Secrets, ``type: Opaque`` when absent.
* LIST: items sorted by the etcd key ``namespace/name`` (byte order, as etcd returns them), without
  kind/apiVersion (the list carries ``kind: SecretList``, ``apiVersion: v1``); ``limit`` and
  ``continue`` (token shaped like the real one: base64url JSON ``{"v","rv","start"}``) serving a
  consistent snapshot at the first page's resourceVersion from per-object history;
  ``metadata.remainingItemCount`` when no selector is used; ``resourceVersion`` "" / "0" /
  ``NotOlderThan`` (served at the latest revision) and ``resourceVersionMatch=Exact`` (served at
  that revision); a continue token older than the last ``compact()`` -> 410 Expired whose Status
  ``metadata.continue`` holds an "inconsistent" token (rv -1) that continues at the latest
  revision, exactly like the etcd3 storage layer; an Exact list below the compaction -> 410.
* ``fieldSelector`` (``metadata.name``, ``metadata.namespace``, and ``type`` for Secrets; ``=``,
  ``==``, ``!=``; comma = AND; another field -> 400 ``field label not supported: X``) and
  ``labelSelector`` (``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x,y)``,
  ``a>1``, ``a<1``; comma = AND).
* WATCH (``watch=1|true``): HTTP 200, chunked, one JSON event per line, objects with
  kind/apiVersion; from ``resourceVersion=R`` every event after R in order; R unset or "0":
  synthetic ADDED events for the current state first; selectors applied the way the watch cache
  does it (an object that stops matching is sent as DELETED carrying its previous state at the new
  resourceVersion, one that starts matching as ADDED); R older than the last ``compact()`` -> 410
  ("too old resource version: R (C)", reason Expired) as an ERROR event or an HTTP 410 Status
  (``watch_expiry``); ``allowWatchBookmarks`` -> a BOOKMARK every ``bookmark_interval`` seconds
  whose resourceVersion is the revision up to which this watcher has seen every event;
  ``sendInitialEvents=true`` -> the initial ADDED events then a BOOKMARK annotated
  ``k8s.io/initial-events-end: "true"``; ``timeoutSeconds`` ends the stream cleanly.
* Authentication: ``Authorization: Bearer`` tokens and verified client certificates (the user is
  the subject CN); failures -> 401 Status.  Authorisation per user: cluster-wide or a set of
  namespaces; denial -> 403 Status with the RBAC message shape.
* Fault injection: ``compact``, ``expire_watches``, ``drop_connections`` (cut mid-chunk),
  ``fail_next`` (any status, Status body, ``Retry-After: 1`` on 429), and ``stop`` ending watches.
* HTTP/1.1 keep-alive, a thread per connection (daemon threads), TLS handshakes in that thread.

NOT modelled
------------
* protobuf, CBOR, YAML and Table output (responses are always JSON whatever ``Accept`` says);
  gzip response compression (real servers gzip large responses when asked); ``?pretty``.
* Writes over HTTP (create/update/patch/delete are test-side calls: ``put``/``delete``), dry-run,
  managedFields, finalizers, deletionTimestamp/grace periods, generation, ownerReferences, garbage
  collection, admission, validation of names and of Secret contents, immutable Secrets.
* What controllers write: a Service's ``clusterIP`` allocation, an Ingress's or Gateway's ``status``
  (tests put objects with the status a controller would have written).
* Namespaces as objects (a list in a namespace that does not exist is simply empty), other
  resources, API groups and versions, the deprecated ``/api/v1/watch/...`` paths, websockets, subresources.
* RBAC beyond "cluster-wide or these namespaces, every resource or these" (no verbs, groups,
  impersonation); anonymous
  access except to ``/healthz``, ``/livez``, ``/readyz`` and ``/version`` (a real server with
  anonymous auth enabled answers 403 for ``system:anonymous`` where this one answers 401);
  client-certificate groups (O=); token review, exec/OIDC, front-proxy headers.
* API priority and fairness (429 only through ``fail_next``; real APF replies are plain text),
  request timeouts (``timeoutSeconds`` on a LIST is ignored), the random 30-60 min watch timeout
  (a watch without ``timeoutSeconds`` lasts until ``stop``), ``limit`` being ignored for
  ``resourceVersion=0`` lists by older watch caches (limit is always honoured here), waiting for
  a too-large resourceVersion (answered at once with 504 "Too large resource version" for lists;
  a watch from the future just waits for events after it).
* Automatic compaction: history is kept until ``compact()`` is called.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import datetime as dt
import hashlib
import http
import json
import re
import select
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["FakeApiServer", "RequestRecord", "ServerTls"]

HOST = "127.0.0.1"
KINDS = {
    "secrets": "Secret",
    "configmaps": "ConfigMap",
    "services": "Service",
    "ingresses": "Ingress",
    "gateways": "Gateway",
    "validatingwebhookconfigurations": "ValidatingWebhookConfiguration",
    "mutatingwebhookconfigurations": "MutatingWebhookConfiguration",
    "apiservices": "APIService",
    "customresourcedefinitions": "CustomResourceDefinition",
    "certificatesigningrequests": "CertificateSigningRequest",
}
SINGULAR = {resource: kind.lower() for resource, kind in KINDS.items()}
# The API group and version each resource is served at ("" is the core group, /api/v1).
GROUP_VERSIONS = {
    "secrets": ("", "v1"),
    "configmaps": ("", "v1"),
    "services": ("", "v1"),
    "ingresses": ("networking.k8s.io", "v1"),
    # A CRD in a real cluster (the Gateway API's standard channel); served like a built-in here.
    "gateways": ("gateway.networking.k8s.io", "v1"),
    "validatingwebhookconfigurations": ("admissionregistration.k8s.io", "v1"),
    "mutatingwebhookconfigurations": ("admissionregistration.k8s.io", "v1"),
    "apiservices": ("apiregistration.k8s.io", "v1"),
    "customresourcedefinitions": ("apiextensions.k8s.io", "v1"),
    "certificatesigningrequests": ("certificates.k8s.io", "v1"),
}
NAMESPACED = frozenset({"secrets", "configmaps", "services", "ingresses", "gateways"})  # the others: cluster-scoped
SHORT_NAMES = {
    "configmaps": ["cm"],
    "services": ["svc"],
    "ingresses": ["ing"],
    "gateways": ["gtw"],
    "customresourcedefinitions": ["crd", "crds"],
    "certificatesigningrequests": ["csr"],
}
FIELD_LABELS = {
    "secrets": frozenset({"metadata.name", "metadata.namespace", "type"}),
    "configmaps": frozenset({"metadata.name", "metadata.namespace"}),
    "services": frozenset({"metadata.name", "metadata.namespace"}),
    "ingresses": frozenset({"metadata.name", "metadata.namespace"}),
    "gateways": frozenset({"metadata.name", "metadata.namespace"}),
    # The apiserver's CSR field selectors include spec.signerName (kept in Fields.type).
    "certificatesigningrequests": frozenset({"metadata.name", "spec.signerName"}),
}


def api_version(resource: str) -> str:
    group, version = GROUP_VERSIONS[resource]
    return f"{group}/{version}" if group else version


def resource_prefix(resource: str) -> str:
    group, version = GROUP_VERSIONS[resource]
    return f"/apis/{group}/{version}" if group else f"/api/{version}"


SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T07:28:49Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}
# The messages of k8s.io/apiserver/pkg/storage/etcd3 (store.go), verbatim.
CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter."
)
INCONSISTENT_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter, or use the continue token in this response to "
    "retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list "
    "- objects that were created, modified, or deleted between the time the first chunk was returned and now "
    "may show up in the list."
)
LIST_EXPIRED = "The resourceVersion for the provided list is too old."
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
# How often an idle watch handler wakes to look at its socket, deadlines and bookmarks.
WATCH_POLL = 0.1
# Reasons of the Status objects fail_next() produces, with the apiserver's usual messages.
FAILURES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "the server rejected our request for an unknown reason"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", "forbidden"),
    404: ("NotFound", "the server could not find the requested resource"),
    405: ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
    409: ("Conflict", "the server reported a conflict"),
    410: ("Gone", "the resource is gone"),
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: injected failure"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: (
        "Timeout",
        "the server was unable to return a response in the time allotted, but may still be processing the request",
    ),
}


@dataclass(frozen=True)
class ServerTls:
    """Serve HTTPS with this certificate chain and key.  With ``client_ca_file`` the server requests a
    client certificate (optional, as the apiserver does) and verifies it against that CA; the
    identity of a verified certificate is its subject CN."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server answered it (watches are recorded when their 200 is sent)."""

    method: str
    path: str
    query: dict[str, str]
    identity: str | None
    status: int


class ApiError(Exception):
    """Answer the request with this Status."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status_object(code, reason, message, details)
        self.code = code
        self.headers: dict[str, str] = {}


def status_object(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A failure ``Status`` in the apiserver's field order."""
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": metadata or {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        status["details"] = details
    status["code"] = code
    return status


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- store


@dataclass(frozen=True)
class Fields:
    """What selectors look at, kept apart from the serialised body so filtering never parses JSON."""

    namespace: str
    name: str
    type: str | None
    labels: Mapping[str, str]

    def field(self, label: str) -> str:
        if label == "metadata.name":
            return self.name
        if label == "metadata.namespace":
            return self.namespace
        return self.type or ""


@dataclass(frozen=True)
class Version:
    """One state of one object; ``body`` is the JSON of the object without kind/apiVersion (the
    form list items take), serialised once at ``put`` so pages are a join, not a json.dumps."""

    rv: int
    body: bytes
    fields: Fields
    deleted: bool = False


@dataclass(frozen=True)
class Event:
    rv: int
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    key: str
    new: Version  # for DELETED: the final state, at the deletion's resourceVersion
    prev: Version | None


@dataclass
class Collection:
    """One resource type.  ``keys`` is every ``namespace/name`` that exists now or has a tombstone
    since the last compaction, sorted (bisect keeps inserts cheap and pages O(log n + page))."""

    history: dict[str, list[Version]] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    tombstones: set[str] = field(default_factory=set)
    log: list[Event] = field(default_factory=list)
    log_rvs: list[int] = field(default_factory=list)

    def at(self, key: str, rv: int) -> Version | None:
        """The live state of ``key`` at revision ``rv`` (None: absent then)."""
        versions = self.history.get(key)
        if not versions:
            return None
        for version in reversed(versions):
            if version.rv <= rv:
                return None if version.deleted else version
        return None

    def events_after(self, rv: int) -> list[Event]:
        return self.log[bisect.bisect_right(self.log_rvs, rv) :]


def _key_range(keys: list[str], namespace: str | None) -> tuple[int, int]:
    if namespace is None:
        return 0, len(keys)
    # "ns/" .. "ns0": '0' is the byte after '/', so this is exactly the keys under "ns/".
    return bisect.bisect_left(keys, namespace + "/"), bisect.bisect_left(keys, namespace + "0")


# --------------------------------------------------------------------------- selectors

Predicate = Callable[[Fields], bool]
_LABEL_KEY = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_SET_REQUIREMENT = re.compile(r"(?P<key>[^\s!=<>(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)")


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_field_selector(text: str, resource: str) -> list[Predicate]:
    predicates: list[Predicate] = []
    for raw in _split_unescaped(text, ","):
        requirement = raw.strip()
        if not requirement:
            continue
        match = re.match(r"((?:[^\\!=]|\\.)*)(!=|==|=)(.*)", requirement)
        if match is None:
            raise _bad_request(f"invalid selector: '{text}'; can't understand '{requirement}'")
        label, op, value = match.group(1).strip(), match.group(2), _unescape(match.group(3).strip())
        if label not in FIELD_LABELS.get(resource, frozenset({"metadata.name"})):
            raise _bad_request(f"field label not supported: {label}")
        if op == "!=":
            predicates.append(lambda f, label=label, value=value: f.field(label) != value)
        else:
            predicates.append(lambda f, label=label, value=value: f.field(label) == value)
    return predicates


def _split_label_requirements(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(text: str) -> list[Predicate]:
    predicates: list[Predicate] = []

    def bad(requirement: str, why: str) -> ApiError:
        return _bad_request(f"unable to parse requirement: {why}: {requirement!r}")

    def key_ok(key: str, requirement: str) -> str:
        if not _LABEL_KEY.fullmatch(key):
            raise bad(requirement, f"invalid label key {key!r}")
        return key

    def value_ok(value: str, requirement: str) -> str:
        if not _LABEL_VALUE.fullmatch(value):
            raise bad(requirement, f"invalid label value: {value!r}")
        return value

    for requirement in _split_label_requirements(text):
        set_match = _SET_REQUIREMENT.fullmatch(requirement)
        if set_match:
            key = key_ok(set_match["key"], requirement)
            values = frozenset(value_ok(v.strip(), requirement) for v in set_match["values"].split(","))
            if set_match["op"] == "in":
                predicates.append(lambda f, k=key, vs=values: k in f.labels and f.labels[k] in vs)
            else:
                predicates.append(lambda f, k=key, vs=values: k not in f.labels or f.labels[k] not in vs)
            continue
        match = re.fullmatch(r"([^\s!=<>]+)\s*(!=|==|=|<|>)\s*(\S*)", requirement)
        if match:
            key, op, value = key_ok(match[1], requirement), match[2], match[3]
            if op in "<>":
                try:
                    bound = int(value)
                except ValueError:
                    raise bad(
                        requirement, f"for 'Gt', 'Lt' operators, the value must be an integer: {value!r}"
                    ) from None

                def compare(f: Fields, k: str = key, b: int = bound, greater: bool = op == ">") -> bool:
                    try:
                        number = int(f.labels[k])
                    except (KeyError, ValueError):
                        return False
                    return number > b if greater else number < b

                predicates.append(compare)
            elif op == "!=":
                value = value_ok(value, requirement)
                predicates.append(lambda f, k=key, v=value: f.labels.get(k) != v)
            else:
                value = value_ok(value, requirement)
                predicates.append(lambda f, k=key, v=value: k in f.labels and f.labels[k] == v)
            continue
        if requirement.startswith("!"):
            key = key_ok(requirement[1:].strip(), requirement)
            predicates.append(lambda f, k=key: k not in f.labels)
            continue
        key = key_ok(requirement, requirement)
        predicates.append(lambda f, k=key: k in f.labels)
    return predicates


# --------------------------------------------------------------------------- continue tokens


def encode_continue(rv: int, start: str) -> str:
    """Like k8s.io/apiserver/pkg/storage.EncodeContinue: base64url (no padding) of a small JSON."""
    raw = _dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        document = json.loads(raw)
        if document.get("v") != "meta.k8s.io/v1":
            raise _bad_request(
                "continue key is not valid: continue key is not valid: server does not recognize this encoded version"
            )
        rv, start = document["rv"], document["start"]
        if not isinstance(rv, int) or not isinstance(start, str) or rv == 0:
            raise ValueError("bad token")
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError):
        raise _bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        ) from None
    return rv, start


# --------------------------------------------------------------------------- watches


@dataclass
class Watch:
    """One open watch: the server pushes raw events into ``queue`` under the server lock; the
    handler thread filters and writes them.  ``signal`` asks the handler to end the stream."""

    resource: str
    namespace: str | None
    predicates: list[Predicate]
    progress: int
    queue: list[Event | None] = field(default_factory=list)  # None: "initial events end" marker
    signal: Literal["", "expire", "drop", "stop"] = ""

    def matches(self, version: Version | None) -> bool:
        if version is None:
            return False
        if self.namespace is not None and version.fields.namespace != self.namespace:
            return False
        return all(p(version.fields) for p in self.predicates)

    def translate(self, event: Event) -> tuple[str, Version] | None:
        """The watch cache's rule: what a watcher with selectors sees of one change."""
        new_passes = event.type != "DELETED" and self.matches(event.new)
        old_passes = self.matches(event.prev) if event.type != "ADDED" else False
        if event.type == "DELETED":
            return ("DELETED", event.new) if self.matches(event.new) else None
        if new_passes and old_passes:
            return "MODIFIED", event.new
        if new_passes:
            return "ADDED", event.new
        if old_passes and event.prev is not None:
            # The previous state, stamped with this event's resourceVersion (cacher.go does the same).
            return "DELETED", _restamp(event.prev, event.rv)
        return None


def _restamp(version: Version, rv: int) -> Version:
    document = json.loads(version.body)
    document["metadata"]["resourceVersion"] = str(rv)
    return Version(rv, _dumps(document), version.fields, deleted=version.deleted)


# --------------------------------------------------------------------------- the server


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 128

    def __init__(self, fake: FakeApiServer, context: ssl.SSLContext | None) -> None:
        self.fake = fake
        self.context = context
        super().__init__((HOST, 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        if self.context is not None:
            # The handshake happens in the connection's thread (see _Handler.setup), so one slow or
            # failing client never blocks the accept loop.
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Handshake failures and clients that hang up are expected here; tracebacks are noise.
        pass


class FakeApiServer:
    """See the module docstring.  All state methods are thread-safe and need no HTTP."""

    def __init__(
        self, *, tls: ServerTls | None = None, bookmark_interval: float = 1.0, watch_expiry: str = "event"
    ) -> None:
        if watch_expiry not in ("event", "status"):
            raise ValueError(f"watch_expiry must be 'event' or 'status', not {watch_expiry!r}")
        self.tls = tls
        self.bookmark_interval = bookmark_interval
        self.watch_expiry = watch_expiry
        self.requests: list[RequestRecord] = []
        self.url = ""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._rv = 1  # etcd starts at revision 1
        self._compacted = 1
        self._collections = {resource: Collection() for resource in KINDS}
        self._uids: dict[tuple[str, str], tuple[str, str]] = {}  # (resource, key) -> (uid, creationTimestamp)
        self._tokens: dict[str, str] = {}
        self._grants: dict[str, frozenset[str] | None] = {}
        self._resource_grants: dict[str, frozenset[str] | None] = {}
        self._watches: list[Watch] = []
        self._failures: list[int] = []
        self._connections: set[socket.socket] = set()
        self._stopping = False
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FakeApiServer:
        context = None
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
            if self.tls.client_ca_file:
                context.load_verify_locations(self.tls.client_ca_file)
                context.verify_mode = ssl.CERT_OPTIONAL
        self._server = _HttpServer(self, context)
        port = self._server.server_address[1]
        self.url = f"{'https' if context else 'http'}://{HOST}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-apiserver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """End every watch cleanly, stop accepting, and close every connection (keep-alive too)."""
        with self._lock:
            self._stopping = True
            for watch in self._watches:
                watch.signal = watch.signal or "stop"
            self._changed.notify_all()
        deadline = time.monotonic() + 3
        while self.open_watches() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeApiServer:
        return self.start() if self._server is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- identities

    def allow(
        self,
        *,
        token: str | None = None,
        user: str | None = None,
        namespaces: Iterable[str] | None = None,
        resources: Iterable[str] | None = None,
    ) -> None:
        """Grant list/watch/get: cluster-wide when ``namespaces`` is None, else only in those
        (cluster-scoped resources need the cluster-wide grant); every resource when
        ``resources`` is None, else only those.
        ``token`` authenticates as ``user`` (default: a service-account name derived from the token,
        so that two tokens are two users); ``user`` alone is a client-certificate CN.  A second
        call for the same user replaces its grant."""
        if token is None and user is None:
            raise ValueError("allow() needs a token or a user")
        if user is None:
            assert token is not None
            user = "system:serviceaccount:certscope:certscope-" + hashlib.sha256(token.encode()).hexdigest()[:8]
        with self._lock:
            if token is not None:
                self._tokens[token] = user
            self._grants[user] = None if namespaces is None else frozenset(namespaces)
            self._resource_grants[user] = None if resources is None else frozenset(resources)

    # ----------------------------------------------------------------- state

    def put(self, resource: str, obj: dict[str, Any]) -> str:
        """Create or replace ``obj`` (keyed by metadata.namespace/name) and emit ADDED or MODIFIED;
        returns the new resourceVersion."""
        collection = self._collections[resource]
        source = dict(obj)
        source.pop("kind", None)
        source.pop("apiVersion", None)
        meta = dict(source.pop("metadata", None) or {})
        namespace, name = meta.get("namespace"), meta.get("name")
        if resource in NAMESPACED and (not namespace or not name):
            raise ValueError("put() needs metadata.namespace and metadata.name")
        if resource not in NAMESPACED and (namespace or not name):
            raise ValueError(f"put() of cluster-scoped {resource} needs metadata.name and no namespace")
        labels = dict(meta.get("labels") or {})
        if resource == "secrets":
            source.setdefault("type", "Opaque")
        key = _store_key(resource, namespace or "", name)
        with self._lock:
            self._rv += 1
            rv = self._rv
            previous = collection.at(key, rv)
            if previous is None:
                identity = (str(uuid.uuid4()), _now())
                self._uids[(resource, key)] = identity
            else:
                identity = self._uids[(resource, key)]
            metadata = {
                "name": name,
                **({"namespace": namespace} if namespace else {}),
                "uid": identity[0],
                "resourceVersion": str(rv),
                "creationTimestamp": identity[1],
            }
            metadata.update(
                (k, v)
                for k, v in meta.items()
                if k not in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            )
            fields = Fields(namespace or "", name, _typed_field(resource, source), labels)
            version = Version(rv, _dumps({"metadata": metadata, **source}), fields)
            self._record(resource, collection, key, "MODIFIED" if previous else "ADDED", version, previous)
        return str(rv)

    def delete(self, resource: str, namespace: str, name: str) -> str:
        """Delete an object (KeyError if absent) and emit DELETED with its final state.
        ``namespace`` is "" for a cluster-scoped resource."""
        collection = self._collections[resource]
        key = _store_key(resource, namespace, name)
        with self._lock:
            previous = collection.at(key, self._rv)
            if previous is None:
                raise KeyError(f"{resource} {key} not found")
            self._rv += 1
            final = _restamp(previous, self._rv)
            tombstone = Version(self._rv, final.body, final.fields, deleted=True)
            self._record(resource, collection, key, "DELETED", tombstone, previous)
            return str(self._rv)

    def _record(
        self,
        resource: str,
        collection: Collection,
        key: str,
        kind: Literal["ADDED", "MODIFIED", "DELETED"],
        version: Version,
        previous: Version | None,
    ) -> None:
        # Called with the lock held.
        versions = collection.history.get(key)
        if versions is None:
            collection.history[key] = [version]
            bisect.insort(collection.keys, key)
        else:
            versions.append(version)
        if version.deleted:
            collection.tombstones.add(key)
        else:
            collection.tombstones.discard(key)
        event = Event(version.rv, kind, key, version, previous)
        collection.log.append(event)
        collection.log_rvs.append(version.rv)
        for watch in self._watches:
            if watch.resource == resource:
                watch.queue.append(event)
        self._changed.notify_all()

    def compact(self) -> None:
        """Forget history: watches and continue tokens older than now become 410 Expired."""
        with self._lock:
            self._compacted = self._rv
            for resource, collection in self._collections.items():
                for key in collection.tombstones:
                    del collection.history[key]
                    self._uids.pop((resource, key), None)
                if collection.tombstones:
                    collection.keys = [k for k in collection.keys if k not in collection.tombstones]
                collection.tombstones = set()
                for key, versions in collection.history.items():
                    if len(versions) > 1:
                        collection.history[key] = versions[-1:]
                collection.log = []
                collection.log_rvs = []

    def expire_watches(self) -> None:
        """Every open watch gets an ERROR event (Status 410 Expired) and ends."""
        self._signal("expire")

    def drop_connections(self) -> None:
        """Every open watch connection is cut mid-chunk (no terminating zero-length chunk)."""
        self._signal("drop")

    def _signal(self, signal: Literal["expire", "drop"]) -> None:
        with self._lock:
            for watch in self._watches:
                watch.signal = watch.signal or signal
            self._changed.notify_all()

    def fail_next(self, status: int, count: int = 1) -> None:
        """The next ``count`` requests, whatever their path, get ``status`` with a Status body."""
        with self._lock:
            self._failures.extend([status] * count)

    def open_watches(self) -> int:
        with self._lock:
            return len(self._watches)

    @property
    def resource_version(self) -> str:
        """The current revision of the store."""
        with self._lock:
            return str(self._rv)

    # ----------------------------------------------------------------- request handling (server side)

    def _take_failure(self) -> int | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _authenticate(self, token: str | None, cert_user: str | None) -> str | None:
        # Like the union authenticator: a verified client certificate wins, then the bearer token.
        if cert_user is not None:
            return cert_user
        if token is None:
            return None
        with self._lock:
            return self._tokens.get(token)

    def _authorize(self, user: str, verb: str, resource: str, namespace: str | None, name: str | None) -> None:
        with self._lock:
            granted = user in self._grants
            namespaces = self._grants.get(user)
            resources = self._resource_grants.get(user)
        if (
            granted
            and (resources is None or resource in resources)
            and (namespaces is None or (namespace and namespace in namespaces))
        ):
            return
        subject = f'{resource} "{name}"' if name else resource
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        group = GROUP_VERSIONS[resource][0]
        details: dict[str, Any] = {"name": name, "kind": resource} if name else {"kind": resource}
        if group:
            details["group"] = group
        raise ApiError(
            403,
            "Forbidden",
            f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API group "{group}" {scope}',
            details,
        )

    def _get(self, resource: str, namespace: str, name: str) -> bytes:
        collection = self._collections[resource]
        with self._lock:
            version = collection.at(_store_key(resource, namespace, name), self._rv)
        if version is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})
        return _with_kind(resource, version.body)

    def _list(self, resource: str, namespace: str | None, query: Mapping[str, str]) -> bytes:
        collection = self._collections[resource]
        predicates = self._predicates(resource, query)
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise _bad_request(f"invalid limit: {query.get('limit')!r}") from None
        token = query.get("continue") or ""
        rv_param = query.get("resourceVersion") or ""
        match = query.get("resourceVersionMatch") or ""
        if token and rv_param not in ("", "0"):
            raise _bad_request("specifying resource version is not allowed when using continue")
        if match and not rv_param:
            raise _bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided")
        if match not in ("", "Exact", "NotOlderThan"):
            raise _bad_request(f"resourceVersionMatch: Unsupported value: {match!r}")
        requested = _parse_rv(rv_param) if rv_param else 0
        with self._lock:
            current = self._rv
            start = ""
            if token:
                token_rv, start = decode_continue(token)
                if token_rv == -1:  # the "inconsistent" token of a 410: continue at the latest revision
                    snapshot = current
                elif token_rv < self._compacted:
                    raise _expired_continue(start)
                else:
                    snapshot = token_rv
            elif match == "Exact":
                if requested < self._compacted:
                    raise ApiError(410, "Expired", LIST_EXPIRED)
                snapshot = requested
            else:
                snapshot = current
            if requested > current:
                raise ApiError(
                    504,
                    "Timeout",
                    f"Too large resource version: {requested}, current: {current}",
                    {
                        "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                        "retryAfterSeconds": 1,
                    },
                )
            items, last_key, more = self._page(collection, namespace, predicates, snapshot, start, limit)
            remaining = None
            if more and not predicates:
                remaining = self._remaining(collection, namespace, snapshot, last_key, current)
        metadata: dict[str, Any] = {"resourceVersion": str(snapshot)}
        if more:
            metadata["continue"] = encode_continue(snapshot, last_key + "\x00")
            if remaining is not None:
                metadata["remainingItemCount"] = remaining
        head = _dumps({"kind": KINDS[resource] + "List", "apiVersion": api_version(resource), "metadata": metadata})
        # One join: a page of 1 MB Helm Secrets is tens of MB, every extra copy shows.
        return b"".join([head[:-1], b',"items":[', *_interleave(items), b"]}"])

    def _predicates(self, resource: str, query: Mapping[str, str]) -> list[Predicate]:
        predicates: list[Predicate] = []
        if query.get("fieldSelector"):
            predicates += parse_field_selector(query["fieldSelector"], resource)
        if query.get("labelSelector"):
            predicates += parse_label_selector(query["labelSelector"])
        return predicates

    @staticmethod
    def _page(
        collection: Collection,
        namespace: str | None,
        predicates: list[Predicate],
        snapshot: int,
        start: str,
        limit: int,
    ) -> tuple[list[bytes], str, bool]:
        """Items of one page at revision ``snapshot`` from key ``start`` on; (bodies, last key, more)."""
        keys = collection.keys
        low, high = _key_range(keys, namespace)
        position = max(low, bisect.bisect_left(keys, start)) if start else low
        items: list[bytes] = []
        last_key = ""
        while position < high:
            key = keys[position]
            position += 1
            version = collection.at(key, snapshot)
            if version is None:
                continue
            if limit and len(items) == limit:
                # Like etcd's "more": something exists after the last item returned (it may not match).
                return items, last_key, True
            if all(p(version.fields) for p in predicates):
                items.append(version.body)
                last_key = key
            elif limit:
                last_key = key  # the next page starts after what this one examined, as the etcd3 store does
        return items, last_key, False

    @staticmethod
    def _remaining(collection: Collection, namespace: str | None, snapshot: int, last_key: str, current: int) -> int:
        """Objects after ``last_key`` at ``snapshot``: those there now, corrected by what changed
        since — O(tombstones + events since snapshot), never a scan of the whole collection."""
        keys = collection.keys
        low, high = _key_range(keys, namespace)
        after = bisect.bisect_right(keys, last_key, low, high)

        def in_range(key: str) -> bool:
            return key > last_key and (namespace is None or key.startswith(namespace + "/"))

        count = (high - after) - sum(1 for key in collection.tombstones if in_range(key))
        if snapshot < current:
            for key in {event.key for event in collection.events_after(snapshot) if in_range(event.key)}:
                count += (collection.at(key, snapshot) is not None) - (key not in collection.tombstones)
        return count

    def _open_watch(self, resource: str, namespace: str | None, query: Mapping[str, str]) -> Watch | dict[str, Any]:
        """Register a watch; returns it, or the Status of a too-old resourceVersion."""
        predicates = self._predicates(resource, query)
        rv_param = query.get("resourceVersion") or ""
        start = _parse_rv(rv_param) if rv_param not in ("", "0") else None
        initial_end = query.get("sendInitialEvents") == "true" and start is None
        collection = self._collections[resource]
        with self._lock:
            if start is not None and start < self._compacted:
                return status_object(410, "Expired", f"too old resource version: {start} ({self._compacted})")
            watch = Watch(resource, namespace, predicates, max(start or 0, self._rv))
            if start is None:
                # Synthetic ADDED events for the state now, in key order, then the changes.
                low, high = _key_range(collection.keys, namespace)
                for key in collection.keys[low:high]:
                    version = collection.at(key, self._rv)
                    if version is not None:
                        watch.queue.append(Event(version.rv, "ADDED", key, version, None))
                if initial_end:
                    watch.queue.append(None)
            else:
                watch.queue.extend(collection.events_after(start))
            self._watches.append(watch)
            return watch

    def _close_watch(self, watch: Watch) -> None:
        with self._lock:
            with contextlib.suppress(ValueError):
                self._watches.remove(watch)

    def _next_batch(self, watch: Watch, timeout: float) -> tuple[list[Event | None], str, int]:
        """Wait up to ``timeout`` for events or a signal; (events, signal, progress revision)."""
        with self._lock:
            if not watch.queue and not watch.signal and not self._stopping:
                self._changed.wait(timeout)
            batch, watch.queue = watch.queue, []
            # Every event up to the current revision is in the batch now, so a bookmark may claim it.
            watch.progress = max(watch.progress, self._rv)
            signal = watch.signal or ("stop" if self._stopping else "")
            return batch, signal, watch.progress

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(sock)
            else:
                self._connections.discard(sock)


def _store_key(resource: str, namespace: str, name: str) -> str:
    """The etcd-like key: ``namespace/name``, or ``name`` for a cluster-scoped resource."""
    return f"{namespace}/{name}" if resource in NAMESPACED else name


def _typed_field(resource: str, source: Mapping[str, Any]) -> str | None:
    """The one selectable field beyond metadata: a Secret's type, a CSR's signerName."""
    if resource == "secrets":
        return source.get("type")
    if resource == "certificatesigningrequests":
        return (source.get("spec") or {}).get("signerName")
    return None


def _interleave(items: list[bytes]) -> list[bytes]:
    parts = [b","] * (2 * len(items) - 1) if items else []
    parts[::2] = items
    return parts


def _parse_rv(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _bad_request(f"invalid resource version: {text!r}") from None
    if value < 0:
        raise _bad_request(f"invalid resource version: {text!r}")
    return value


def _expired_continue(start: str) -> ApiError:
    error = ApiError(410, "Expired", INCONSISTENT_CONTINUE)
    error.status["metadata"] = {"continue": encode_continue(-1, start)}
    return error


def _with_kind(resource: str, body: bytes) -> bytes:
    """The stored body with kind/apiVersion first, as single objects and watch events carry them."""
    return (
        b'{"kind":"'
        + KINDS[resource].encode()
        + b'","apiVersion":"'
        + api_version(resource).encode()
        + b'",'
        + body[1:]
    )


def _discovery(group_version: str = "v1") -> dict[str, Any]:
    """The APIResourceList of one group version (``v1`` is the core group)."""
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {
                "name": resource,
                "singularName": SINGULAR[resource],
                "namespaced": resource in NAMESPACED,
                "kind": kind,
                "verbs": ["get", "list", "watch"],
                **({"shortNames": SHORT_NAMES[resource]} if resource in SHORT_NAMES else {}),
            }
            for resource, kind in sorted(KINDS.items())
            if api_version(resource) == group_version
        ],
    }


def _group_list() -> dict[str, Any]:
    """The APIGroupList of ``/apis``: every named group served, one version each."""
    groups = sorted({group for group, _ in GROUP_VERSIONS.values() if group})
    entries = []
    for group in groups:
        version = next(v for g, v in GROUP_VERSIONS.values() if g == group)
        member = {"groupVersion": f"{group}/{version}", "version": version}
        entries.append({"name": group, "versions": [member], "preferredVersion": member})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": entries}


_RESOURCE_PATH = re.compile(
    r"(?:/api/v1/(?:namespaces/(?P<ns>[^/]+)/)?(?P<res>secrets|configmaps|services)"
    r"|/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/(?:namespaces/(?P<gns>[^/]+)/)?(?P<cres>[a-z]+))"
    r"(?:/(?P<name>[^/]+))?"
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer
    timeout = 120  # an idle keep-alive connection is closed after this long

    # ----------------------------------------------------------------- connection

    def setup(self) -> None:
        super().setup()
        self.cert_user: str | None = None
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()  # raises on a bad client certificate: the connection is dropped
            peer = self.connection.getpeercert()
            if peer:
                for rdn in peer.get("subject", ()):
                    for attribute, value in rdn:
                        if attribute == "commonName":
                            self.cert_user = value
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        self.server.fake._track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, *args: Any) -> None:
        pass  # requests are recorded in FakeApiServer.requests instead

    # ----------------------------------------------------------------- dispatch

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        # Drain a request body so the keep-alive connection stays in step.
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        split = urlsplit(self.path)
        # The apiserver serves discovery paths with and without a trailing slash (the
        # official client asks for /apis/ and /apis/<group>/<version>/).
        path = split.path.rstrip("/") or "/"
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        authorization = self.headers.get("Authorization") or ""
        token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else None
        identity = fake._authenticate(token, self.cert_user)
        self._pending = (method, path, query, identity)
        try:
            failure = fake._take_failure()
            if failure is not None:
                reason, message = FAILURES.get(failure, ("", http.HTTPStatus(failure).phrase))
                error = ApiError(failure, reason, message)
                if failure == 429:
                    error.headers["Retry-After"] = "1"
                    error.status["details"] = {"retryAfterSeconds": 1}
                raise error
            if path in ("/healthz", "/livez", "/readyz"):
                self._send(200, b"ok", "text/plain; charset=utf-8")
                return
            if path == "/version":
                self._send_json(200, _dumps(SERVER_VERSION))
                return
            if identity is None:
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if path == "/api":
                host = self.server.server_address
                self._send_json(
                    200,
                    _dumps(
                        {
                            "kind": "APIVersions",
                            "versions": ["v1"],
                            "serverAddressByClientCIDRs": [
                                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{host[0]}:{host[1]}"}
                            ],
                        }
                    ),
                )
                return
            if path == "/apis":
                self._send_json(200, _dumps(_group_list()))
                return
            group_version = path.removeprefix("/apis/")
            if path.startswith("/apis/") and group_version in {api_version(r) for r in KINDS}:
                self._send_json(200, _dumps(_discovery(group_version)))
                return
            if path == "/api/v1":
                self._send_json(200, _dumps(_discovery()))
                return
            match = _RESOURCE_PATH.fullmatch(path)
            if match is None:
                raise ApiError(404, "NotFound", FAILURES[404][1], {})
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", FAILURES[405][1], {})
            resource = match["res"] or match["cres"]
            if match["cres"] and (
                resource not in KINDS or GROUP_VERSIONS[resource] != (match["group"], match["version"])
            ):
                raise ApiError(404, "NotFound", FAILURES[404][1], {})
            namespace_part = match["ns"] or match["gns"]
            namespace = unquote(namespace_part) if namespace_part else None
            name = unquote(match["name"]) if match["name"] else None
            watching = query.get("watch", "").lower() in ("1", "true")
            if (namespace is not None) != (resource in NAMESPACED) and (name is not None or namespace is not None):
                raise ApiError(404, "NotFound", FAILURES[404][1], {})  # a namespaced path of a cluster resource
            if name is not None:
                namespace = namespace or ""
                fake._authorize(identity, "watch" if watching else "get", resource, namespace, name)
                if watching:
                    selector = f"metadata.name={name}"
                    query = {**query, "fieldSelector": ",".join(filter(None, [query.get("fieldSelector"), selector]))}
                    self._watch(resource, namespace, query)
                else:
                    self._send_json(200, fake._get(resource, namespace, name))
                return
            fake._authorize(identity, "watch" if watching else "list", resource, namespace, None)
            if watching:
                self._watch(resource, namespace, query)
            else:
                self._send_json(200, fake._list(resource, namespace, query))
        except ApiError as error:
            self._send_json(error.code, _dumps(error.status), error.headers)

    # ----------------------------------------------------------------- responses

    def _log(self, status: int) -> None:
        method, path, query, identity = self._pending
        self.server.fake.requests.append(RequestRecord(method, path, query, identity, status))

    def _send(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        self._log(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, body, "application/json", headers)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _watch(self, resource: str, namespace: str | None, query: Mapping[str, str]) -> None:
        fake = self.server.fake
        opened = fake._open_watch(resource, namespace, query)
        if isinstance(opened, dict):
            if fake.watch_expiry == "status":
                self._send_json(410, _dumps(opened))
                return
            self._start_stream()
            self._chunk(_event("ERROR", _dumps(opened)))
            self._chunk(b"")
            return
        watch = opened
        try:
            self._stream(watch, query)
        except (OSError, ssl.SSLError):
            self.close_connection = True
        finally:
            fake._close_watch(watch)

    def _start_stream(self) -> None:
        self._log(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _stream(self, watch: Watch, query: Mapping[str, str]) -> None:
        fake = self.server.fake
        kind = (KINDS[watch.resource], api_version(watch.resource))
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("1", "true")
        try:
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        except ValueError:
            timeout = None
        started = time.monotonic()
        deadline = started + timeout if timeout else None
        next_bookmark = started + fake.bookmark_interval
        self._start_stream()
        while True:
            now = time.monotonic()
            wait = min(WATCH_POLL, max(0.0, next_bookmark - now) if bookmarks else WATCH_POLL)
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            batch, signal, progress = fake._next_batch(watch, wait)
            lines: list[bytes] = []
            for event in batch:
                if event is None:
                    if bookmarks:
                        lines.append(_event("BOOKMARK", _bookmark(kind, progress, initial_end=True)))
                    continue
                seen = watch.translate(event)
                if seen is not None:
                    lines.append(_event(seen[0], _with_kind(watch.resource, seen[1].body)))
            # One chunk per event line: a client never sees half an event unless the stream is cut.
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines)
            if signal == "drop":
                # Half of a chunk, then the socket is cut: the client sees a truncated chunked body.
                cut = _event("BOOKMARK", _bookmark(kind, progress))
                self.wfile.write(chunks + b"%x\r\n%s" % (len(cut), cut[: len(cut) // 2]))
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if chunks:
                self.wfile.write(chunks)
            if signal == "expire":
                status = status_object(410, "Expired", f"too old resource version: {progress} ({fake._rv})")
                self._chunk(_event("ERROR", _dumps(status)))
            if signal:
                self._chunk(b"")
                if signal == "stop":
                    self.close_connection = True
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self._chunk(b"")
                return
            if bookmarks and now >= next_bookmark:
                self._chunk(_event("BOOKMARK", _bookmark(kind, progress)))
                next_bookmark = now + fake.bookmark_interval
            if self._client_gone():
                self.close_connection = True
                return

    def _client_gone(self) -> bool:
        """Whether the watching client hung up (it sends nothing during a watch, so readable = EOF)."""
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        previous = sock.gettimeout()
        try:
            sock.settimeout(0)
            sock.recv(1)
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except (OSError, ssl.SSLError):
            return True
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(previous)
        # EOF, or bytes during a watch (no HTTP/1.1 client pipelines behind a watch): hang up either way.
        return True


def _event(kind: str, obj: bytes) -> bytes:
    return b'{"type":"' + kind.encode() + b'","object":' + obj + b"}\n"


def _bookmark(kind: tuple[str, str], rv: int, *, initial_end: bool = False) -> bytes:
    metadata: dict[str, Any] = {"resourceVersion": str(rv)}
    if initial_end:
        metadata["annotations"] = {INITIAL_EVENTS_END: "true"}
    return _dumps({"kind": kind[0], "apiVersion": kind[1], "metadata": metadata})
