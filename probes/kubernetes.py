"""The ``kubernetes`` probe: certificates in Secrets and ConfigMaps, and in the
cluster-scoped objects of ``probes/kubeobjects.py`` (webhook, APIService and CRD
``caBundle``s, issued CertificateSigningRequests), kept current by list+watch.

One *stream* per scope — (resource, namespace or all namespaces, Secret type) — runs
in its own thread, as an informer does:

1. LIST in pages (``limit``/``continue``), with the Secret type pushed to the server
   as a field selector (``type=kubernetes.io/tls``) so that Helm release Secrets
   (up to 1 MB each) never cross the wire; each page is dropped once read.  A total
   deadline bounds the whole list.
2. WATCH from the list's ``resourceVersion`` with bookmarks.  ``410 Gone`` (as an HTTP
   status or as a watch ``ERROR`` event) means the version is too old: relist.  A
   dropped stream reconnects from the last version seen, after a jittered backoff.
3. Every ``resync_interval`` relist, replacing the cache wholesale: objects deleted
   while the watch was away disappear.

Only certificate bytes are read: values of keys matching ``keys`` are base64-decoded
and parsed once per change of the object (same uid and resourceVersion: nothing to
do), and only the parsed facts are kept.  Keys that name private keys (``tls.key``,
``*.key``) are never decoded, whatever the patterns say.

A round (``targets()``/``run()``) reads the streams' caches: it costs no API call.
Targets are ``<namespace>/<name>/<key>`` for Secrets and
``configmap/<namespace>/<name>/<key>`` for ConfigMaps, with ``secret_namespace``,
``secret_name``, ``secret_key`` (or ``configmap_*``) labels; the cluster-scoped
objects' targets and labels are in ``probes/kubeobjects.py``.  Cluster-scoped
objects belong to the shard that owns the namespace "" (one replica watches them).

Per-object policy comes from annotations (``certscope.io/ignore``, ``/warning``,
``/critical``, ``/owner``, ``/team``, and the user's ``annotation_labels``);
cert-manager's issuer and certificate annotations become info labels.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import logging
import random
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import requests

from probes.certparse import parse_container
from probes.context import ProbeContext
from probes.expect import EXPECT_REASONS, Expect
from probes.files import container_result
from probes.kubeclient import SERVICE_ACCOUNT_DIR, Cluster, KubeError, from_kubeconfig, in_cluster
from probes.kubeobjects import CA_BUNDLE_RESOURCES, CSR_RESOURCE, RESOURCES, stored_certificates
from probes.kubeobjects import INFO_LABELS as OBJECT_INFO_LABELS
from probes.kubeobjects import LOCATION_LABELS as OBJECT_LABELS
from probes.reasons import Reason
from probes.result import Discovery, ProbeResult, SourceError, failed
from probes.settings import NO_SHARD, ProbeDefaults, Seconds, parse_duration, path_field

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "certscope.io/"
# cert-manager annotations on the Secrets it writes -> info label names.
CERT_MANAGER_LABELS = {
    "cert-manager.io/issuer-name": "cert_manager_issuer",
    "cert-manager.io/issuer-kind": "cert_manager_issuer_kind",
    "cert-manager.io/certificate-name": "cert_manager_certificate",
}
# Labels certscope_cert_info already has.
RESERVED_INFO_LABELS = frozenset(
    {"probe", "kind", "target", "index", "role", "subject_cn", "issuer_cn", "serial", "fingerprint_sha256"}
    | {"key_type", "key_bits", "signature_algorithm", "sans", "instance", "job"}
    | {"secret_namespace", "secret_name", "secret_key", "configmap_namespace", "configmap_name", "configmap_key"}
    | set(OBJECT_LABELS)
    | set(OBJECT_INFO_LABELS)
    | {"keystore_alias", "kubeconfig_cluster", "kubeconfig_user"}
)
SECRET_LABELS = ("secret_namespace", "secret_name", "secret_key")
CONFIGMAP_LABELS = ("configmap_namespace", "configmap_name", "configmap_key")
PRIVATE_KEY_KEYS = ("tls.key", "*.key", "ssh-privatekey", "*-key.pem", "*.key.pem")
CONNECT_TIMEOUT = 10.0
READ_MARGIN = 30.0  # seconds a watch may stay silent beyond its timeoutSeconds
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


@dataclass(frozen=True)
class KubernetesSettings:
    # null: in-cluster service account (KUBERNETES_SERVICE_HOST, token, ca.crt)
    kubeconfig: str | None = path_field()
    context: str | None = None  # kubeconfig context; default: current-context
    secrets: bool = True  # false: only the other sources below
    namespaces: tuple[str, ...] = ()  # empty: all namespaces (needs cluster-wide list)
    label_selector: str = ""
    secret_types: tuple[str, ...] = ("kubernetes.io/tls",)  # empty: every type (not advised)
    keys: tuple[str, ...] = ("tls.crt", "ca.crt")  # glob patterns of Secret keys to read
    configmaps: bool = False
    configmap_keys: tuple[str, ...] = ("ca.crt", "ca-bundle.crt", "*.pem")
    configmap_label_selector: str = ""
    # Cluster-scoped sources (probes/kubeobjects.py): which caBundle holders to watch,
    # and whether to read the certificates issued through CertificateSigningRequests.
    ca_bundles: tuple[str, ...] = ()
    certificate_signing_requests: bool = False
    annotation_labels: dict[str, str] = field(default_factory=dict)  # info label -> annotation
    page_size: int = 500
    list_timeout: Seconds = Seconds(120)
    watch_timeout: Seconds = Seconds(300)  # server-side timeoutSeconds (randomised up to 2x)
    resync_interval: Seconds = Seconds(3600)
    service_account_dir: str = SERVICE_ACCOUNT_DIR
    expect: Expect | None = None

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if not 1 <= self.page_size <= 10_000:
            problems.append(("page_size", "must be between 1 and 10000"))
        if self.watch_timeout < 1:
            problems.append(("watch_timeout", "must be at least 1s"))
        if self.context and not self.kubeconfig:
            problems.append(("context", "needs kubeconfig"))
        for label in self.annotation_labels:
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", label) or label in RESERVED_INFO_LABELS:
                problems.append((f"annotation_labels.{label}", "not a usable label name"))
        for index, key in enumerate(self.keys):
            if _is_private_key_name(key):
                problems.append((f"keys[{index}]", f"{key!r} names a private key; certscope never reads keys"))
        for index, resource in enumerate(self.ca_bundles):
            if resource not in CA_BUNDLE_RESOURCES:
                problems.append(
                    (f"ca_bundles[{index}]", f"{resource!r} is not one of {', '.join(CA_BUNDLE_RESOURCES)}")
                )
        if not (self.secrets or self.configmaps or self.ca_bundles or self.certificate_signing_requests):
            problems.append(
                ("secrets", "nothing to watch: enable secrets, configmaps, ca_bundles or certificate_signing_requests")
            )
        return problems


@dataclass(frozen=True, slots=True)
class _Stored:
    """One object as kept: its version and the result of each certificate key."""

    uid: str
    resource_version: str
    results: tuple[tuple[str, ProbeResult], ...]  # (target, result)
    errors: tuple[SourceError, ...] = ()  # object-level problems (bad annotations)


# Namespaced resources outside the core group, by API path prefix (the discovery
# sources of probes/kubediscovery.py); core ones (secrets, configmaps, services) are
# under /api/v1.
NAMESPACED_GROUPS: dict[str, str] = {
    "ingresses": "/apis/networking.k8s.io/v1",
    "gateways": "/apis/gateway.networking.k8s.io/v1",
}


@dataclass(frozen=True)
class Scope:
    resource: str  # secrets | configmaps | services | ingresses | gateways | one of kubeobjects.RESOURCES
    namespace: str | None  # None: all namespaces (and always for cluster-scoped resources)
    secret_type: str | None
    label_selector: str

    @property
    def name(self) -> str:
        if self.resource in RESOURCES:
            return self.resource
        parts = [self.resource, self.namespace or "*"]
        if self.secret_type:
            parts.append(self.secret_type)
        return "/".join(parts)

    @property
    def path(self) -> str:
        if self.resource in RESOURCES:
            return f"{RESOURCES[self.resource][0]}/{self.resource}"
        prefix = NAMESPACED_GROUPS.get(self.resource, "/api/v1")
        if self.namespace is None:
            return f"{prefix}/{self.resource}"
        return f"{prefix}/namespaces/{self.namespace}/{self.resource}"

    def params(self) -> dict[str, str]:
        params = {}
        if self.secret_type:
            params["fieldSelector"] = f"type={self.secret_type}"
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        return params


class _Backoff:
    """Exponential backoff with full jitter, so many streams do not retry in step."""

    def __init__(self) -> None:
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2**self._attempt)
        self._attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0


class _Expired(Exception):
    """The resourceVersion watched from is too old (410): relist."""


class Versioned(Protocol):
    """What a stream keeps of one object: enough to tell an unchanged object."""

    @property
    def uid(self) -> str: ...

    @property
    def resource_version(self) -> str: ...


StoredT = TypeVar("StoredT", bound=Versioned)
StoredT_co = TypeVar("StoredT_co", bound=Versioned, covariant=True)


class WatchSettings(Protocol):
    """The list+watch knobs a stream reads from its owner's settings."""

    @property
    def page_size(self) -> int: ...

    @property
    def list_timeout(self) -> float: ...

    @property
    def watch_timeout(self) -> float: ...

    @property
    def resync_interval(self) -> float: ...


class StreamOwner(Protocol[StoredT_co]):
    """Who a stream works for: the ``kubernetes`` probe (certificates in objects) or a
    discovery source (probes/kubediscovery.py: endpoints in objects)."""

    @property
    def watch_settings(self) -> WatchSettings: ...

    def count_restart(self, reason: str) -> None: ...

    def parse_object(self, resource: str, obj: Mapping[str, Any], uid: str, version: str) -> StoredT_co | None:
        """What to keep of one object; None: nothing (ignored, another replica's)."""
        ...

    def malformed(self, error: SourceError) -> StoredT_co:
        """What to keep of an object of the wrong shape: its error only."""
        ...


class Stream(Generic[StoredT]):
    """List+watch of one scope in a daemon thread; ``items`` is its cache.

    ``on_change`` (optional) is called from the stream's thread after a watch event
    changed the cache, so that an owner can react within one event (a discovery
    source wakes its probe's round)."""

    def __init__(self, scope: Scope, cluster: Cluster, owner: StreamOwner[StoredT]) -> None:
        self.scope = scope
        self._cluster = cluster
        self._owner = owner
        self._settings = owner.watch_settings
        self._lock = threading.Lock()
        self.items: dict[tuple[str, str], StoredT] = {}
        self.on_change: Any = None  # Callable[[], None] | None
        self.up = False
        self.synced = threading.Event()  # set after the first list, or its first failure
        self.error: SourceError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kube {scope.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.synced.set()  # nobody waits for a stream that is going away

    def view(self) -> list[StoredT]:
        with self._lock:
            return list(self.items.values())

    def get(self, key: tuple[str, str]) -> StoredT | None:
        """The object at (namespace, name), as kept."""
        with self._lock:
            return self.items.get(key)

    # -- the informer loop -----------------------------------------------------

    def _run(self) -> None:
        backoff = _Backoff()
        session = self._cluster.session()
        while not self._stop.is_set():
            try:
                version = self._list(session)
                self._set_up()
                backoff.reset()
                self._watch(session, version, backoff)
            except KubeError as exc:
                self._set_down(exc.reason, exc.message)
                self._stop.wait(backoff.next())
            except Exception as exc:  # a bug must not end the stream for good
                log.exception("kubernetes scope %s failed", self.scope.name)
                self._set_down(Reason.INTERNAL_ERROR, f"internal error: {type(exc).__name__}")
                self._stop.wait(backoff.next())
        session.close()

    def _set_up(self) -> None:
        if not self.up:
            log.info("kubernetes scope %s: listed %d objects", self.scope.name, len(self.items))
        self.up, self.error = True, None
        self.synced.set()

    def _set_down(self, reason: Reason, message: str) -> None:
        if self.up or self.error is None or self.error.message != message:
            log.warning("kubernetes scope %s down reason=%s %s", self.scope.name, reason.value, message)
        self.up = False
        self.error = SourceError(reason, self.scope.name, f"{self.scope.name}: {message}")
        self.synced.set()

    def _list(self, session: requests.Session) -> str:
        """Read the whole scope page by page; returns the list's resourceVersion."""
        deadline = time.monotonic() + self._settings.list_timeout
        fresh: dict[tuple[str, str], StoredT] = {}
        params = {**self.scope.params(), "limit": str(self._settings.page_size)}
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._list_deadline()
            try:
                response = self._cluster.get(
                    session, self.scope.path, params, timeout=(min(CONNECT_TIMEOUT, remaining), remaining)
                )
                page = response.json()
            except KubeError as exc:
                if time.monotonic() >= deadline:  # the request was cut by the list's deadline
                    raise self._list_deadline() from None
                if exc.status == 410 and "continue" in params:
                    # The continue token expired mid-list (compaction): start over.
                    self._owner.count_restart("expired")
                    params.pop("continue")
                    fresh.clear()
                    continue
                raise
            except ValueError:
                raise KubeError(Reason.API_ERROR, f"{self.scope.path}: list answer is not JSON") from None
            for item in page.get("items") or ():
                key = _object_key(item)
                stored = self._build(item, fresh.get(key) or self.items.get(key))
                if stored is not None:
                    fresh[key] = stored
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            del page, response  # the page's bytes go now, not after the next one arrives
            if not token:
                with self._lock:
                    self.items = fresh
                return str(metadata.get("resourceVersion") or "")
            params["continue"] = str(token)

    def _list_deadline(self) -> KubeError:
        timeout = self._settings.list_timeout
        return KubeError(Reason.DEADLINE_EXCEEDED, f"list not complete after list_timeout={timeout:g}s")

    def _watch(self, session: requests.Session, version: str, backoff: _Backoff) -> None:
        """Apply watch events until a relist is due (410, resync) or stop."""
        resync_at = time.monotonic() + self._settings.resync_interval
        while not self._stop.is_set():
            remaining = resync_at - time.monotonic()
            if remaining <= 1:
                return
            timeout_seconds = int(min(self._settings.watch_timeout * (1 + random.random()), remaining))
            params = {
                **self.scope.params(),
                "watch": "1",
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(max(1, timeout_seconds)),
            }
            if version:
                params["resourceVersion"] = version
            try:
                response = self._cluster.get(
                    session,
                    self.scope.path,
                    params,
                    timeout=(CONNECT_TIMEOUT, timeout_seconds + READ_MARGIN),
                    stream=True,
                )
            except KubeError as exc:
                if exc.status == 410:
                    self._owner.count_restart("expired")
                    return
                if exc.reason in (Reason.API_UNAUTHORIZED, Reason.API_FORBIDDEN):
                    raise
                self._owner.count_restart("error")
                self._set_down(exc.reason, exc.message)
                self._stop.wait(backoff.next())
                continue
            self._set_up()  # connected again after a transient failure
            try:
                for event in _events(response):
                    version = self._apply(event, version)
                    if self._stop.is_set():
                        return
                self._owner.count_restart("timeout")  # the server ended the watch: normal
                backoff.reset()
            except _Expired:
                self._owner.count_restart("expired")
                return
            except (requests.exceptions.RequestException, OSError, ValueError) as exc:
                self._owner.count_restart("dropped")
                log.info("kubernetes scope %s: watch dropped (%s); reconnecting", self.scope.name, type(exc).__name__)
                self._stop.wait(backoff.next())
            finally:
                response.close()

    def _apply(self, event: Mapping[str, Any], version: str) -> str:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Expired()
            raise KubeError(Reason.API_ERROR, f"watch error: {str(obj.get('message', ''))[:300]}", obj.get("code"))
        new_version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
        if kind == "BOOKMARK":
            return new_version
        key = _object_key(obj)
        changed = False
        if kind in ("ADDED", "MODIFIED"):
            with self._lock:
                previous = self.items.get(key)
            stored = self._build(obj, previous)
            with self._lock:
                if stored is None:
                    changed = self.items.pop(key, None) is not None
                else:
                    changed = stored is not previous
                    self.items[key] = stored
        elif kind == "DELETED":
            with self._lock:
                changed = self.items.pop(key, None) is not None
        if changed and self.on_change is not None:
            self.on_change()
        return new_version

    def _build(self, obj: Mapping[str, Any], previous: StoredT | None) -> StoredT | None:
        """Parse an object, or reuse ``previous`` if unchanged.  None: nothing to keep
        (ignored by annotation, another replica's).  An object of the wrong shape (a
        non-conforming API server or proxy) is one error of its own, never the scope's."""
        try:
            return self._build_checked(obj, previous)
        except (AttributeError, TypeError, ValueError) as exc:
            namespace, name = _object_key(obj) if isinstance(obj.get("metadata"), dict) else ("?", "?")
            item = f"{namespace}/{name}" if namespace else f"{self.scope.resource}/{name}"
            error = SourceError(Reason.PARSE_ERROR, item, f"{item}: malformed {self.scope.resource} object ({exc})")
            return self._owner.malformed(error)

    def _build_checked(self, obj: Mapping[str, Any], previous: StoredT | None) -> StoredT | None:
        metadata = obj.get("metadata") or {}
        uid = str(metadata.get("uid") or "")
        version = str(metadata.get("resourceVersion") or "")
        if previous is not None and previous.uid == uid and previous.resource_version == version and version:
            return previous
        return self._owner.parse_object(self.scope.resource, obj, uid, version)


# -- what the owners of streams share ------------------------------------------------


def open_cluster(kubeconfig: str | None, context: str | None, service_account_dir: str) -> Cluster | SourceError:
    """The cluster of ``kubeconfig`` (its ``context``) or, without one, of the in-cluster
    service account; a failure is the error the owner's round reports (and retries)."""
    try:
        if kubeconfig:
            return from_kubeconfig(kubeconfig, context)
        return in_cluster(service_account_dir)
    except KubeError as exc:
        return SourceError(exc.reason, kubeconfig or "in-cluster", exc.message)


def wait_first_lists(streams: Sequence[Stream[Any]], list_timeout: float) -> None:
    """Waits for the first complete list of every stream (or its failure), so that the
    first round reports a whole inventory; later rounds never wait.  A second more than
    the streams' own deadline, so that they report it themselves."""
    deadline = time.monotonic() + list_timeout + 1
    for stream in streams:
        stream.synced.wait(max(0.0, deadline - time.monotonic()))


def close_streams(streams: Sequence[Stream[Any]], cluster: Cluster | None) -> None:
    """Stops ``streams`` (their threads end on their own) and closes ``cluster``'s connections."""
    for stream in streams:
        stream.stop()
    if cluster is not None:
        cluster.close()


def stream_problem(stream: Stream[Any]) -> SourceError | None:
    """What keeps ``stream``'s scope from being complete this round: its error, or a first
    list still in progress (after :func:`wait_first_lists` gave up on it)."""
    if stream.error is not None:
        return stream.error
    if not stream.synced.is_set():
        name = stream.scope.name
        return SourceError(Reason.DEADLINE_EXCEEDED, name, f"{name}: first list still in progress")
    return None


def ignored(metadata: Mapping[str, Any]) -> bool:
    """``certscope.io/ignore: "true"`` on the object."""
    annotations = metadata.get("annotations") or {}
    return str(annotations.get(ANNOTATION_PREFIX + "ignore", "")).lower() in ("true", "1", "yes")


# Larger than any object etcd stores (1.5 MiB by default): a line this long without
# an end is not a watch event, and buffering it further would grow without bound.
MAX_EVENT_BYTES = 16 * 1024 * 1024


def _events(response: requests.Response) -> Iterator[Mapping[str, Any]]:
    """Watch events as they arrive (one JSON object per line).  ``iter_content(None)``
    yields each chunk as soon as it is read, so an event is never held back waiting
    for more bytes.  Anything that is not a JSON object per line raises ValueError."""
    pending = b""
    for chunk in response.iter_content(chunk_size=None):
        pending += chunk
        while (newline := pending.find(b"\n")) >= 0:
            line, pending = pending[:newline], pending[newline + 1 :]
            if line.strip():
                yield _event(line)
        if len(pending) > MAX_EVENT_BYTES:
            raise ValueError(f"watch event longer than {MAX_EVENT_BYTES} bytes")
    if pending.strip():
        yield _event(pending)


def _event(line: bytes) -> Mapping[str, Any]:
    try:
        event: object = json.loads(line)
    except RecursionError:  # nesting deeper than the interpreter's stack
        raise ValueError("watch event nested too deeply") from None
    if not isinstance(event, dict):
        raise ValueError("watch event is not a JSON object")
    obj = event.get("object") or {}
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata") or {}, dict):
        raise ValueError("watch event holds no object with metadata")
    return event


def _object_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _globs(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One compiled regex for a list of glob patterns (``fnmatch`` syntax)."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns) or "(?!)")


_PRIVATE_KEY_NAME = _globs(PRIVATE_KEY_KEYS)
_PRIVATE_KEY_PEM = re.compile(r"-----BEGIN (?!ENCRYPTED )[A-Z0-9 ]*PRIVATE KEY-----")


def _is_private_key_name(key: str) -> bool:
    return _PRIVATE_KEY_NAME.match(key) is not None


class KubernetesProbe:
    kind: ClassVar[str] = "kubernetes"
    source_reasons: ClassVar[tuple[Reason, ...]] = (
        Reason.API_UNAUTHORIZED,
        Reason.API_FORBIDDEN,
        Reason.API_ERROR,
        Reason.CONNECT_REFUSED,
        Reason.CONNECT_TIMEOUT,
        Reason.HANDSHAKE_FAILED,
        Reason.DEADLINE_EXCEEDED,
        Reason.NO_CERTIFICATE,
        Reason.PARSE_ERROR,
        Reason.MALFORMED_CERTIFICATE,
        Reason.DUPLICATE_CERTIFICATE,
        Reason.BAD_PASSWORD,  # a PKCS#12 value: Secrets carry no password for it
        Reason.KDF_TOO_EXPENSIVE,
        *EXPECT_REASONS,
        Reason.INTERNAL_ERROR,
    )
    target_reasons: ClassVar[tuple[Reason, ...]] = ()  # tens of thousands of targets
    concurrent_targets: ClassVar[bool] = False  # a run reads the cache: no I/O
    keeps_last_good: ClassVar[bool] = False
    # Sharded by namespace, before anything is parsed (see Shard).
    shards_itself: ClassVar[bool] = True
    # A run reads the watch's cache: a span per Secret key and round would say nothing.
    traced_runs: ClassVar[bool] = False

    def __init__(self, settings: KubernetesSettings, defaults: ProbeDefaults | None = None) -> None:
        self.settings = settings
        self.shard = defaults.shard if defaults is not None else NO_SHARD
        self._lock = threading.Lock()
        self._streams: list[Stream[_Stored]] = []
        self._cluster: Cluster | None = None
        self._setup_error: SourceError | None = None
        self._restarts_lock = threading.Lock()  # streams count while _start waits under _lock
        self._restarts: dict[str, int] = {"expired": 0, "dropped": 0, "error": 0, "timeout": 0}
        self._round: dict[str, ProbeResult] = {}
        self._closed = False
        self._secret_keys = _globs(settings.keys)
        self._configmap_keys = _globs(settings.configmap_keys)

    # -- lifecycle ---------------------------------------------------------------

    def _start(self) -> None:
        """Start the streams (on the first round, not at build time, so that
        building a probe never touches the network).  Called under ``_lock``."""
        settings = self.settings
        opened = open_cluster(settings.kubeconfig, settings.context, settings.service_account_dir)
        if isinstance(opened, SourceError):
            self._setup_error = opened
            return
        self._cluster = opened
        # Explicit namespaces: watch only this replica's; all namespaces: one watch,
        # and objects of other replicas' namespaces are dropped unparsed.
        namespaces: tuple[str | None, ...] = tuple(n for n in settings.namespaces if self.shard.owns(n)) or (
            () if settings.namespaces else (None,)
        )
        scopes = [
            Scope("secrets", namespace, secret_type, settings.label_selector)
            for namespace in (namespaces if settings.secrets else ())
            for secret_type in (settings.secret_types or (None,))
        ]
        if settings.configmaps:
            scopes += [
                Scope("configmaps", namespace, None, settings.configmap_label_selector) for namespace in namespaces
            ]
        cluster_resources = [*settings.ca_bundles, *((CSR_RESOURCE,) if settings.certificate_signing_requests else ())]
        if self.shard.owns(""):  # cluster-scoped objects are the shard of namespace "" alone
            scopes += [Scope(resource, None, None, "") for resource in cluster_resources]
        self._streams = [Stream(scope, self._cluster, self) for scope in scopes]
        for stream in self._streams:
            stream.start()

    def close(self) -> None:
        """Stop the streams (on reload or shutdown); their threads end on their own."""
        with self._lock:
            self._closed = True
            close_streams(self._streams, self._cluster)

    def count_restart(self, reason: str) -> None:
        with self._restarts_lock:
            self._restarts[reason] = self._restarts.get(reason, 0) + 1

    # -- a round -----------------------------------------------------------------

    def targets(self) -> Discovery:
        with self._lock:
            if self._closed:
                return Discovery((), up=False)
            if self._cluster is None and self._setup_error is None:
                self._start()
            streams = list(self._streams)
        wait_first_lists(streams, self.settings.list_timeout)
        with self._restarts_lock:
            restarts = tuple(sorted(self._restarts.items()))
        if self._setup_error is not None:
            error = self._setup_error
            self._setup_error = None  # retried on the next round
            return Discovery((), (error,), up=False)
        results: dict[str, ProbeResult] = {}
        errors: list[SourceError] = []
        scopes = [(stream.scope.name, stream.up) for stream in streams]
        for stream in streams:
            if (problem := stream_problem(stream)) is not None:
                errors.append(problem)
            for stored in stream.view():
                errors.extend(stored.errors)
                results.update(stored.results)
        self._round = results
        return Discovery(
            tuple(results),
            tuple(errors),
            up=all(up for _, up in scopes),
            scopes=tuple(scopes),
            watch_restarts=restarts,
        )

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        result = self._round.get(target)
        if result is None:  # gone between discovery and run
            return failed(Reason.NOT_FOUND, time.monotonic(), f"{target}: no longer present")
        return result

    # -- parsing -----------------------------------------------------------------

    @property
    def watch_settings(self) -> KubernetesSettings:
        return self.settings

    def malformed(self, error: SourceError) -> _Stored:
        return _Stored("", "", (), (error,))

    def parse_object(self, resource: str, obj: Mapping[str, Any], uid: str, version: str) -> _Stored | None:
        metadata = obj.get("metadata") or {}
        if ignored(metadata):
            return None
        if not self.shard.owns(str(metadata.get("namespace") or "")):
            return None  # another replica's namespace
        if resource in RESOURCES:
            return self._parse_cluster_object(resource, obj, uid, version)
        # Interned: a namespace is repeated on every object in it, a key name on most.
        namespace, name = sys.intern(str(metadata.get("namespace") or "")), str(metadata.get("name") or "")
        annotations = metadata.get("annotations") or {}
        object_item = f"{namespace}/{name}" if resource == "secrets" else f"configmap/{namespace}/{name}"
        errors: list[SourceError] = []
        thresholds = _thresholds(annotations, object_item, errors)
        info_labels = self._info_labels(annotations)
        if resource == "secrets":
            encoded = obj.get("data") or {}
            wanted, label_names = self._secret_keys, SECRET_LABELS
            values = {key: (value, True) for key, value in encoded.items()}
        else:
            wanted, label_names = self._configmap_keys, CONFIGMAP_LABELS
            values = {key: (value, False) for key, value in (obj.get("data") or {}).items()}
            values.update({key: (value, True) for key, value in (obj.get("binaryData") or {}).items()})
        results = []
        for key in sorted(values):
            value, is_base64 = values[key]
            # A ConfigMap is readable by anyone who may read the namespace's config: a
            # private key there is exposed.  Seen from the PEM header; never decoded.
            exposed = resource == "configmaps" and not is_base64 and _PRIVATE_KEY_PEM.search(str(value)) is not None
            wanted_key = wanted.match(key) and not _is_private_key_name(key) and value
            if not (wanted_key or exposed):
                continue  # never decoded
            target = f"{object_item}/{key}"
            labels = tuple(zip(label_names, (namespace, name, sys.intern(key)), strict=True))
            if wanted_key:
                result = self._parse_value(target, str(value), is_base64)
            else:
                result = ProbeResult(success=True, reason=Reason.OK, duration_seconds=0.0)
            if exposed:
                result = replace(result, key_exposure=("configmap",))
            results.append((target, _with_policy(result, labels, info_labels, thresholds)))
        return _Stored(uid, version, tuple(results), tuple(errors))

    def _parse_cluster_object(self, resource: str, obj: Mapping[str, Any], uid: str, version: str) -> _Stored:
        """A webhook configuration, APIService, CRD or CSR: one target per
        certificate-holding value, with its location and the object's policy."""
        metadata = obj.get("metadata") or {}
        annotations = metadata.get("annotations") or {}
        errors: list[SourceError] = []
        thresholds = _thresholds(annotations, f"{resource}/{metadata.get('name') or ''}", errors)
        info_labels = self._info_labels(annotations)
        results = []
        for stored in stored_certificates(resource, obj):
            result = self._parse_value(stored.target, stored.value, True)
            labels = tuple(sorted({*info_labels, *stored.info_labels}))
            results.append((stored.target, _with_policy(result, stored.labels, labels, thresholds)))
        return _Stored(uid, version, tuple(results), tuple(errors))

    def _parse_value(self, target: str, value: str, is_base64: bool) -> ProbeResult:
        started = time.monotonic()
        if is_base64:
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                message = f"{target}: value is not valid base64"
                return failed(
                    Reason.PARSE_ERROR, started, message, errors=[SourceError(Reason.PARSE_ERROR, target, message)]
                )
        else:
            data = value.encode("utf-8", "replace")
        parsed = parse_container(data, target)
        return container_result(parsed, target, started, self.settings.expect)

    def _info_labels(self, annotations: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        labels: dict[str, str] = {}
        for annotation, label in (
            (ANNOTATION_PREFIX + "owner", "owner"),
            (ANNOTATION_PREFIX + "team", "team"),
            *CERT_MANAGER_LABELS.items(),
            *((annotation, label) for label, annotation in self.settings.annotation_labels.items()),
        ):
            value = annotations.get(annotation)
            if value:
                labels[label] = str(value)[:200]
        return tuple(sorted(labels.items()))


def _thresholds(annotations: Mapping[str, Any], item: str, errors: list[SourceError]) -> tuple[float, float] | None:
    values: dict[str, float] = {}
    for severity in ("warning", "critical"):
        text = annotations.get(ANNOTATION_PREFIX + severity)
        if text is None:
            continue
        try:
            values[severity] = parse_duration(str(text))
        except ValueError as exc:
            errors.append(
                SourceError(Reason.PARSE_ERROR, item, f"{item}: annotation {ANNOTATION_PREFIX}{severity}: {exc}")
            )
    if not values:
        return None
    # A missing one falls back to -1, which the renderer replaces with the probe's own.
    return values.get("warning", -1.0), values.get("critical", -1.0)


def _with_policy(
    result: ProbeResult,
    labels: tuple[tuple[str, str], ...],
    info_labels: tuple[tuple[str, str], ...],
    thresholds: tuple[float, float] | None,
) -> ProbeResult:
    return replace(result, target_labels=labels, info_labels=info_labels, thresholds=thresholds)
