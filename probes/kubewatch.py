"""Watched collections of Kubernetes objects: list+watch, as an informer does.

Whoever keeps a set of objects current — the ``kubernetes`` kind (certificates in
Secrets, ConfigMaps and cluster-scoped objects, ``probes/kubernetes.py``) and the
endpoint discovery of the ``tls`` kind (Ingresses, Gateways, Services and their
Secrets, ``probes/kubediscovery.py``) — holds one :class:`Informers`: the cluster
connection and one :class:`Stream` per :class:`Scope` (resource, namespace or all
namespaces, Secret type), each in its own daemon thread:

1. LIST in pages (``limit``/``continue``), with the Secret type pushed to the server
   as a field selector (``type=kubernetes.io/tls``) so that Helm release Secrets
   (up to 1 MB each) never cross the wire; each page is dropped once read.  A total
   deadline (``list_timeout``) bounds the whole list; a ``continue`` token that
   expired mid-list (410) starts the list over.
2. WATCH from the list's ``resourceVersion`` with bookmarks.  ``410 Gone`` (as an HTTP
   status or as a watch ``ERROR`` event) means the version is too old: relist.  A
   dropped stream reconnects from the last version seen, after a jittered backoff
   (0.5 s doubling to 30 s).
3. Every ``resync_interval`` relist, replacing the cache wholesale: objects deleted
   while the watch was away disappear.

What a stream keeps of an object is its owner's business (an :class:`ObjectParser`):
the stream only tells an unchanged object (same uid and resourceVersion: the kept
value is reused, nothing is parsed again) and keeps an object of the wrong shape as
that object's own error, never the scope's.  The streams start on the owner's first
:meth:`Informers.look`, not when the owner is built, so that building a probe never
touches the network; that first look waits for every stream's first list so that the
first round reports a whole inventory.  A look itself makes no API call.

Nothing here reads a Secret's value: the owners decide what they decode.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import requests

from probes.kubeclient import SERVICE_ACCOUNT_DIR, Cluster, KubeError, from_kubeconfig, in_cluster
from probes.kubeobjects import RESOURCES
from probes.reasons import Reason
from probes.result import SourceError
from probes.settings import Seconds, path_field

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
READ_MARGIN = 30.0  # seconds a watch may stay silent beyond its timeoutSeconds
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
# Larger than any object etcd stores (1.5 MiB by default): a line this long without
# an end is not a watch event, and buffering it further would grow without bound.
MAX_EVENT_BYTES = 16 * 1024 * 1024
# The reasons a stream counts its restarts under (certscope_source_watch_restarts_total).
RESTART_REASONS = ("expired", "dropped", "error", "timeout")

# certscope's own annotations on watched objects (``certscope.io/ignore``, ``/owner``, ...).
ANNOTATION_PREFIX = "certscope.io/"


def ignored(metadata: Mapping[str, Any]) -> bool:
    """``certscope.io/ignore: "true"`` on the object."""
    annotations = metadata.get("annotations") or {}
    return str(annotations.get(ANNOTATION_PREFIX + "ignore", "")).lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class KubeWatchSettings:
    """Where the cluster is and how its objects are listed and watched: the settings
    every owner of streams has (kind ``kubernetes``, a ``tls`` probe's ``kubernetes:``
    block), declared once here and extended by each."""

    # null: in-cluster service account (KUBERNETES_SERVICE_HOST, token, ca.crt)
    kubeconfig: str | None = path_field()
    context: str | None = None  # kubeconfig context; default: current-context
    namespaces: tuple[str, ...] = ()  # empty: all namespaces (needs cluster-wide list)
    page_size: int = 500
    list_timeout: Seconds = Seconds(120)
    watch_timeout: Seconds = Seconds(300)  # server-side timeoutSeconds (randomised up to 2x)
    resync_interval: Seconds = Seconds(3600)
    service_account_dir: str = SERVICE_ACCOUNT_DIR

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if not 1 <= self.page_size <= 10_000:
            problems.append(("page_size", "must be between 1 and 10000"))
        if self.watch_timeout < 1:
            problems.append(("watch_timeout", "must be at least 1s"))
        if self.context and not self.kubeconfig:
            problems.append(("context", "needs kubeconfig"))
        return problems


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
    """The list+watch knobs a stream reads (a :class:`KubeWatchSettings`)."""

    @property
    def page_size(self) -> int: ...

    @property
    def list_timeout(self) -> float: ...

    @property
    def watch_timeout(self) -> float: ...

    @property
    def resync_interval(self) -> float: ...


class ObjectParser(Protocol[StoredT_co]):
    """What an owner keeps of its objects: the ``kubernetes`` probe (certificates in
    objects) or a discovery source (probes/kubediscovery.py: endpoints in objects)."""

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

    def __init__(
        self,
        scope: Scope,
        cluster: Cluster,
        settings: WatchSettings,
        parser: ObjectParser[StoredT],
        count_restart: Callable[[str], None],
    ) -> None:
        self.scope = scope
        self._cluster = cluster
        self._settings = settings
        self._parser = parser
        self._count_restart = count_restart
        self._lock = threading.Lock()
        self.items: dict[tuple[str, str], StoredT] = {}
        self.on_change: Callable[[], None] | None = None
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

    def problem(self) -> SourceError | None:
        """What keeps this scope from being complete this round: its error, or a first
        list still in progress (after :func:`wait_first_lists` gave up on it)."""
        if self.error is not None:
            return self.error
        if not self.synced.is_set():
            name = self.scope.name
            return SourceError(Reason.DEADLINE_EXCEEDED, name, f"{name}: first list still in progress")
        return None

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
                    self._count_restart("expired")
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
                    self._count_restart("expired")
                    return
                if exc.reason in (Reason.API_UNAUTHORIZED, Reason.API_FORBIDDEN):
                    raise
                self._count_restart("error")
                self._set_down(exc.reason, exc.message)
                self._stop.wait(backoff.next())
                continue
            self._set_up()  # connected again after a transient failure
            try:
                for event in read_events(response):
                    version = self._apply(event, version)
                    if self._stop.is_set():
                        return
                self._count_restart("timeout")  # the server ended the watch: normal
                backoff.reset()
            except _Expired:
                self._count_restart("expired")
                return
            except (requests.exceptions.RequestException, OSError, ValueError) as exc:
                self._count_restart("dropped")
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
            return self._parser.malformed(error)

    def _build_checked(self, obj: Mapping[str, Any], previous: StoredT | None) -> StoredT | None:
        metadata = obj.get("metadata") or {}
        uid = str(metadata.get("uid") or "")
        version = str(metadata.get("resourceVersion") or "")
        if previous is not None and previous.uid == uid and previous.resource_version == version and version:
            return previous
        return self._parser.parse_object(self.scope.resource, obj, uid, version)


@dataclass(frozen=True)
class Look(Generic[StoredT]):
    """One look at an owner's streams: what a round reads."""

    streams: tuple[Stream[StoredT], ...] = ()
    scopes: tuple[tuple[str, bool], ...] = ()  # (scope name, up), as of the look
    restarts: tuple[tuple[str, int], ...] = ()  # restarts by reason, since the owner was built
    setup_error: SourceError | None = None  # the cluster could not be opened (retried on the next look)
    closed: bool = False

    @property
    def up(self) -> bool:
        return all(up for _, up in self.scopes)


class Informers(Generic[StoredT]):
    """One owner's streams over one cluster: started on the first :meth:`look`, stopped
    by :meth:`close` (on reload or shutdown), their watch restarts counted together."""

    def __init__(
        self,
        settings: KubeWatchSettings,
        scopes: Sequence[Scope],
        parser: ObjectParser[StoredT],
        on_change: Callable[[Scope], None] | None = None,
    ) -> None:
        self.settings = settings
        self._scopes = tuple(scopes)
        self._parser = parser
        self._on_change = on_change
        self._lock = threading.Lock()
        # Replaced whole, once: read without the lock (a look may hold it while the
        # cluster is opened, e.g. an exec credential plugin runs).
        self._streams: tuple[Stream[StoredT], ...] = ()
        self._cluster: Cluster | None = None
        self._setup_error: SourceError | None = None
        self._restarts_lock = threading.Lock()  # streams count while _start waits under _lock
        self._restarts: dict[str, int] = dict.fromkeys(RESTART_REASONS, 0)
        self._closed = False

    def _start(self) -> None:
        """Open the cluster and start the streams.  Called under ``_lock``."""
        settings = self.settings
        opened = open_cluster(settings.kubeconfig, settings.context, settings.service_account_dir)
        if isinstance(opened, SourceError):
            self._setup_error = opened
            return
        self._cluster = opened
        streams = tuple(Stream(scope, opened, settings, self._parser, self.count_restart) for scope in self._scopes)
        if self._on_change is not None:
            for stream in streams:
                stream.on_change = functools.partial(self._on_change, stream.scope)
        self._streams = streams
        for stream in streams:
            stream.start()

    def count_restart(self, reason: str) -> None:
        with self._restarts_lock:
            self._restarts[reason] = self._restarts.get(reason, 0) + 1

    def look(self) -> Look[StoredT]:
        """The streams now; the first look starts them and waits for their first lists."""
        with self._lock:
            if self._closed:
                return Look(closed=True)
            if self._cluster is None and self._setup_error is None:
                self._start()
            streams = self._streams
        wait_first_lists(streams, self.settings.list_timeout)
        with self._restarts_lock:
            restarts = tuple(sorted(self._restarts.items()))
        if self._setup_error is not None:
            error = self._setup_error
            self._setup_error = None  # retried on the next look
            return Look(restarts=restarts, setup_error=error)
        return Look(streams, tuple((stream.scope.name, stream.up) for stream in streams), restarts)

    def stream(self, resource: str, namespace: str) -> Stream[StoredT] | None:
        """The stream over ``resource`` in ``namespace``, else over all namespaces; None
        when neither is watched (or the streams have not started)."""
        streams = [stream for stream in self._streams if stream.scope.resource == resource]
        return next((s for s in streams if s.scope.namespace == namespace), None) or next(
            (s for s in streams if s.scope.namespace is None), None
        )

    def close(self) -> None:
        """Stop the streams (their threads end on their own) and close the connections."""
        with self._lock:
            self._closed = True
            for stream in self._streams:
                stream.stop()
            if self._cluster is not None:
                self._cluster.close()


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


def read_events(response: requests.Response) -> Iterator[Mapping[str, Any]]:
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
