"""The ``kubernetes`` probe: certificates in Secrets and ConfigMaps, and in the
cluster-scoped objects of ``probes/kubeobjects.py`` (webhook, APIService and CRD
``caBundle``s, issued CertificateSigningRequests), kept current by list+watch.

The watching is ``probes/kubewatch.py``'s: one stream per scope — (resource,
namespace or all namespaces, Secret type) — with the Secret type pushed to the server
as a field selector (``type=kubernetes.io/tls``) so that Helm release Secrets never
cross the wire.  This module says what to watch (:meth:`KubernetesProbe._scopes`) and
what to keep of each object (:meth:`KubernetesProbe.parse_object`).

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
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from probes.certparse import parse_container
from probes.context import ProbeContext
from probes.expect import EXPECT_REASONS, Expect
from probes.files import container_result
from probes.kubeobjects import CA_BUNDLE_RESOURCES, CSR_RESOURCE, RESOURCES, stored_certificates
from probes.kubeobjects import INFO_LABELS as OBJECT_INFO_LABELS
from probes.kubeobjects import LOCATION_LABELS as OBJECT_LABELS
from probes.kubewatch import ANNOTATION_PREFIX, Informers, KubeWatchSettings, Scope, ignored
from probes.reasons import Reason
from probes.result import Discovery, ProbeResult, SourceError, failed
from probes.settings import NO_SHARD, ProbeDefaults, parse_duration

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


@dataclass(frozen=True)
class KubernetesSettings(KubeWatchSettings):
    # Where the cluster is, which namespaces, and the list+watch knobs: KubeWatchSettings.
    secrets: bool = True  # false: only the other sources below
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
    expect: Expect | None = None

    def validate(self) -> list[tuple[str, str]]:
        problems = super().validate()
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
        self._informers: Informers[_Stored] = Informers(settings, self._scopes(), self)
        self._round: dict[str, ProbeResult] = {}
        self._secret_keys = _globs(settings.keys)
        self._configmap_keys = _globs(settings.configmap_keys)

    def _scopes(self) -> list[Scope]:
        """What to watch: Secrets by namespace and type, ConfigMaps by namespace, and
        the cluster-scoped resources asked for."""
        settings = self.settings
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
        return scopes

    def close(self) -> None:
        """Stop the streams (on reload or shutdown); their threads end on their own."""
        self._informers.close()

    # -- a round -----------------------------------------------------------------

    def targets(self) -> Discovery:
        look = self._informers.look()
        if look.closed:
            return Discovery((), up=False)
        if look.setup_error is not None:
            return Discovery((), (look.setup_error,), up=False)
        results: dict[str, ProbeResult] = {}
        errors: list[SourceError] = []
        for stream in look.streams:
            if (problem := stream.problem()) is not None:
                errors.append(problem)
            for stored in stream.view():
                errors.extend(stored.errors)
                results.update(stored.results)
        self._round = results
        return Discovery(tuple(results), tuple(errors), up=look.up, scopes=look.scopes, watch_restarts=look.restarts)

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        result = self._round.get(target)
        if result is None:  # gone between discovery and run
            return failed(Reason.NOT_FOUND, time.monotonic(), f"{target}: no longer present")
        return result

    # -- parsing -----------------------------------------------------------------

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
