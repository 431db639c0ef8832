"""The YAML config -> frozen, typed dataclasses, with every error reported at once.

The loader is driven by the dataclasses' type hints, so a probe kind only declares a
settings dataclass (see ``probes.kinds.KINDS``) and gets strict validation for free:
unknown keys, wrong types, bad durations and sizes, missing files (fields made with
``path_field``) each become one ``probes[1].paths[0]: ...`` message.  A dataclass may
add cross-field checks with ``validate() -> list[(field, message)]``.

``load_config(path)`` raises ``ConfigError`` carrying all messages, and nothing
else, whatever the file holds; ``default_config()`` is the embedded config used
when no file is given.

Hostile or broken files are bounded (docs/reliability.md): the path must be a
regular file (a FIFO would block the reader, ``/dev/zero`` never ends) of at most
``MAX_CONFIG_BYTES``, in UTF-8; YAML nesting stops at ``MAX_YAML_DEPTH`` levels and
alias expansion at ``MAX_YAML_NODES`` nodes (a "billion laughs" document is a few
hundred bytes); durations are finite, at most 100 years, and intervals at least
``MIN_INTERVAL``; integers fit in 64 bits.  Messages show values through
``_show``, which never prints more than about 80 characters of one, and a
``ConfigError`` lists at most ``MAX_MESSAGES`` messages of at most
``MAX_MESSAGE_LENGTH`` characters.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from probes.files import read_regular_file
from probes.kinds import KINDS
from probes.settings import ByteSize, ProbeDefaults, Seconds, TrustSettings, parse_duration, path_field

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:9754"
EMBEDDED_DEFAULT = "<embedded default>"
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_PROBE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Labels certscope sets itself; an owner label may not shadow them.
RESERVED_LABELS = frozenset(
    {"probe", "kind", "target", "index", "role", "reason", "severity", "le", "quantile", "instance", "job"}
)


MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 1_000_000
# Rounds closer together than this are a typo (1ms), not a schedule.  The suite's
# in-process scheduler tests run 100 ms rounds; nothing real needs less.
MIN_INTERVAL = 0.1
MAX_DURATION = 100 * 365 * 86400.0
MAX_MESSAGES = 100
MAX_MESSAGE_LENGTH = 400


class ConfigError(Exception):
    def __init__(self, source: str, messages: list[str]) -> None:
        self.source = source
        bounded = [m if len(m) <= MAX_MESSAGE_LENGTH else m[: MAX_MESSAGE_LENGTH - 3] + "..." for m in messages]
        if len(bounded) > MAX_MESSAGES:
            bounded = [*bounded[:MAX_MESSAGES], f"... and {len(bounded) - MAX_MESSAGES} more errors"]
        self.messages = bounded
        super().__init__(f"{source}: " + "; ".join(bounded))


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 60, 60, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def _show(value: Any) -> str:
    """A value for a message: ``repr`` cut to about 80 characters, without ever
    building the whole repr (a YAML alias can stand for gigabytes of it)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Thresholds:
    warning: Seconds = Seconds(28 * 86400)
    critical: Seconds = Seconds(7 * 86400)

    def validate(self) -> list[tuple[str, str]]:
        if self.critical > self.warning:
            return [("critical", "must not be longer than warning")]
        return []


@dataclass(frozen=True)
class Egress:
    allow_networks: tuple[str, ...] = ()

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        for index, network in enumerate(self.allow_networks):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                problems.append((f"allow_networks[{index}]", f"not a network: {_show(network)}"))
        return problems


@dataclass(frozen=True)
class GlobalSettings:
    interval: Seconds = Seconds(300)
    timeout: Seconds = Seconds(10)
    concurrency: int = 16
    trust: TrustSettings = TrustSettings()
    thresholds: Thresholds = Thresholds()
    egress: Egress = Egress()

    def validate(self) -> list[tuple[str, str]]:
        problems = _interval_problems(self.interval)
        if not 1 <= self.concurrency <= 1024:
            problems.append(("concurrency", "must be between 1 and 1024"))
        return problems


def _interval_problems(interval: float | None) -> list[tuple[str, str]]:
    if interval is not None and interval < MIN_INTERVAL:
        return [("interval", f"must be at least {MIN_INTERVAL * 1000:g}ms, got {interval * 1000:g}ms")]
    return []


@dataclass(frozen=True)
class WebSettings:
    listen_address: str = DEFAULT_LISTEN_ADDRESS
    # /probe?module=<tls probe name>&target=host:port (the multi-target pattern).
    # Off by default; when on, only the module's targets and allow_targets are probed.
    probe_endpoint: bool = False
    # TLS, client certificates and basic auth: the exporter-toolkit web config format.
    config_file: str | None = path_field()

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        try:
            split_listen_address(self.listen_address)
        except ValueError as exc:
            problems.append(("listen_address", str(exc)))
        if self.config_file:
            from exporter.webconfig import WebConfigError, load_web_config

            try:
                load_web_config(self.config_file)
            except WebConfigError as exc:
                problems.extend(("config_file", message) for message in exc.messages)
        return problems


TRACE_PROTOCOLS = ("http/protobuf", "grpc")


@dataclass(frozen=True)
class TracingSettings:
    """The ``tracing:`` section (docs/tracing.md).  Present means on, unless
    ``enabled: false``; a field left out falls back to the standard ``OTEL_*``
    variable, then to the SDK default.  Export headers (tokens) come only from
    ``OTEL_EXPORTER_OTLP_HEADERS``, never from this file."""

    enabled: bool = True
    # Base URL, as OTEL_EXPORTER_OTLP_ENDPOINT: /v1/traces is added for http/protobuf.
    endpoint: str | None = None
    protocol: str | None = None  # http/protobuf (default) | grpc
    service_name: str | None = None
    resource_attributes: dict[str, str] = field(default_factory=dict)
    sample_ratio: float | None = None  # None: OTEL_TRACES_SAMPLER, else every run
    max_queue_size: int = 2048  # spans waiting for export; beyond it, new spans drop the oldest
    export_timeout: Seconds | None = None  # one export, retries included (OTEL_EXPORTER_OTLP_TIMEOUT)
    shutdown_timeout: Seconds = Seconds(5)  # flushing at exit waits no longer

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if self.protocol is not None and self.protocol not in TRACE_PROTOCOLS:
            problems.append(("protocol", f"must be one of {', '.join(TRACE_PROTOCOLS)}, got {_show(self.protocol)}"))
        if self.endpoint is not None and not re.match(r"^https?://[^/\s]+", self.endpoint):
            problems.append(("endpoint", f"must be an http:// or https:// URL, got {_show(self.endpoint)}"))
        if self.sample_ratio is not None and not 0.0 <= self.sample_ratio <= 1.0:
            problems.append(("sample_ratio", "must be between 0 and 1"))
        if not 1 <= self.max_queue_size <= 1_000_000:
            problems.append(("max_queue_size", "must be between 1 and 1000000"))
        return problems


@dataclass(frozen=True)
class ProbeConfig:
    name: str
    kind: str
    interval: Seconds
    timeout: Seconds
    thresholds: Thresholds
    # Owner labels added to every certificate's info series (team, service, ...).
    labels: Mapping[str, str]
    settings: Any  # the kind's settings dataclass
    defaults: ProbeDefaults  # what the probe inherits from global


@dataclass(frozen=True)
class Config:
    global_settings: GlobalSettings
    web: WebSettings
    probes: tuple[ProbeConfig, ...]
    source: str  # the file it came from, or EMBEDDED_DEFAULT
    tracing: TracingSettings | None = None  # None: no tracing section (OTEL_* variables decide)


# Keys every probe entry may have besides its kind's own settings.
@dataclass(frozen=True)
class _CommonProbeFields:
    name: str
    kind: str
    interval: Seconds | None = None
    timeout: Seconds | None = None
    thresholds: Thresholds | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def validate(self) -> list[tuple[str, str]]:
        return _interval_problems(self.interval)


def load_config(path: str) -> Config:
    try:
        data = read_regular_file(path, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError(path, [f"cannot read config file: {exc.strerror or exc}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            path, [f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line})"]
        ) from None
    return parse_config(text, path)


def default_config() -> Config:
    text = resources.files("exporter").joinpath("default_config.yaml").read_text(encoding="utf-8")
    return parse_config(text, EMBEDDED_DEFAULT)


def parse_config(text: str, source: str) -> Config:
    try:
        document = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"invalid YAML: {where}{problem}"]) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        # PyYAML builds ints with int(): over 4,300 digits it raises ValueError.
        raise ConfigError(source, [f"invalid YAML: {type(exc).__name__}: {str(exc)[:200]}"]) from None
    if document is None:
        document = {}
    errors: list[str] = []
    if not isinstance(document, dict):
        raise ConfigError(source, [f"top level must be a mapping, got {_type_name(document)}"])
    _reject_unknown(document, {"global", "web", "probes", "tracing"}, "", errors)
    global_settings = _load(GlobalSettings, document.get("global", {}), "global", errors)
    web = _load(WebSettings, document.get("web", {}), "web", errors)
    probes = _load_probes(document.get("probes", []), global_settings, errors)
    tracing = _load(TracingSettings, document["tracing"] or {}, "tracing", errors) if "tracing" in document else None
    if errors:
        raise ConfigError(source, errors)
    return Config(global_settings, web, tuple(probes), source, tracing)


class _YamlTooBig(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the nesting depth bounded while composing (the
    composer recurses: 100,000 levels raised RecursionError out of the reload)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _YamlTooBig(f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _load_yaml(text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases make it larger than ``MAX_YAML_NODES`` nodes
    once expanded, or that contains itself.  Aliases are shared nodes in the
    composed graph; the expanded size of each node is counted once, iteratively."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    in_progress: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            in_progress.discard(key)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > MAX_YAML_NODES:
                raise _YamlTooBig(f"aliases expand the document to more than {MAX_YAML_NODES:,} nodes", node.start_mark)
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in in_progress:
            raise _YamlTooBig("an alias refers to a node that contains it", node.start_mark)
        in_progress.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _load_probes(entries: Any, defaults: GlobalSettings | None, errors: list[str]) -> list[ProbeConfig]:
    if not isinstance(entries, list):
        errors.append(f"probes: must be a list, got {_type_name(entries)}")
        return []
    defaults = defaults or GlobalSettings()
    probes: list[ProbeConfig] = []
    names: dict[str, int] = {}
    common_keys = {f.name for f in dataclasses.fields(_CommonProbeFields)}
    for position, entry in enumerate(entries):
        where = f"probes[{position}]"
        if not isinstance(entry, dict):
            errors.append(f"{where}: must be a mapping, got {_type_name(entry)}")
            continue
        kind_name = entry.get("kind")
        kind = KINDS.get(kind_name) if isinstance(kind_name, str) else None
        if kind is None:
            choices = ", ".join(sorted(KINDS))
            errors.append(f"{where}.kind: must be one of {choices}, got {_show(kind_name)}")
            continue
        kind_keys = {f.name for f in dataclasses.fields(kind.settings)}
        _reject_unknown(entry, common_keys | kind_keys, where, errors)
        known_entry = {k: v for k, v in entry.items() if k in common_keys | kind_keys}
        common = _load(_CommonProbeFields, {k: v for k, v in known_entry.items() if k in common_keys}, where, errors)
        settings = _load(kind.settings, {k: v for k, v in known_entry.items() if k in kind_keys}, where, errors)
        if common is None:
            continue
        if not _PROBE_NAME.match(common.name):
            errors.append(f"{where}.name: 1-63 letters, digits, '_', '.' or '-', got {_show(common.name)}")
        elif common.name in names:
            errors.append(f"{where}.name: {_show(common.name)} is already used by probes[{names[common.name]}]")
        names.setdefault(common.name, position)
        for label in common.labels:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                errors.append(f"{where}.labels.{label}: not a valid Prometheus label name")
            elif label in RESERVED_LABELS:
                errors.append(f"{where}.labels.{label}: reserved by certscope")
        if settings is None:
            continue
        probes.append(
            ProbeConfig(
                name=common.name,
                kind=common.kind,
                interval=common.interval or defaults.interval,
                timeout=common.timeout or defaults.timeout,
                thresholds=common.thresholds or defaults.thresholds,
                labels=dict(common.labels),
                settings=settings,
                defaults=ProbeDefaults(trust=defaults.trust, allow_networks=defaults.egress.allow_networks),
            )
        )
    return probes


# -- the generic, type-driven loader ------------------------------------------


def _load(cls: type[Any], data: Any, where: str, errors: list[str]) -> Any:
    """Build dataclass ``cls`` from ``data``; append messages to ``errors``.
    Returns None when anything in ``data`` was wrong."""
    if not isinstance(data, dict):
        errors.append(f"{where}: must be a mapping, got {_type_name(data)}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    _reject_unknown(data, set(fields), where, errors)
    before = len(errors)  # unknown keys are reported but do not stop the checks below
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        path = f"{where}.{name}" if where else name
        if name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                errors.append(f"{path}: required")
            continue
        values[name] = _convert(hints[name], data[name], path, errors, spec.metadata)
    if len(errors) > before:
        return None
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        for name, message in validate():
            errors.append(f"{where}.{name}: {message}" if where else f"{name}: {message}")
        if len(errors) > before:
            return None
    return instance


def _convert(hint: Any, value: Any, path: str, errors: list[str], metadata: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path, errors, metadata)
    if hint is Seconds:
        return _seconds(value, path, errors)
    if hint is ByteSize:
        return _byte_size(value, path, errors)
    if dataclasses.is_dataclass(hint):
        return _load(hint, value, path, errors)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list):
            errors.append(f"{path}: must be a list, got {_type_name(value)}")
            return ()
        return tuple(_convert(args[0], item, f"{path}[{i}]", errors, metadata) for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: must be a mapping, got {_type_name(value)}")
            return {}
        return {
            _convert(args[0], k, f"{path}.{_key(k)}", errors, {}): _convert(args[1], v, f"{path}.{_key(k)}", errors, {})
            for k, v in value.items()
        }
    if hint is bool:
        if not isinstance(value, bool):
            errors.append(f"{path}: must be true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: must be an integer, got {_show(value)}")
        elif not -(2**63) <= value < 2**63:
            errors.append(f"{path}: out of range, got {_show(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: must be a number, got {_show(value)}")
            return value
        number = float(value) if abs(value) < 2**1000 else math.inf
        if not math.isfinite(number):
            errors.append(f"{path}: must be a finite number, got {_show(value)}")
        return number
    if hint is str:
        if not isinstance(value, str):
            errors.append(f"{path}: must be a string, got {_type_name(value)}")
            return value
        if metadata.get("must_exist") and not os.path.exists(value):
            errors.append(f"{path}: file not found: {_key(value)}")
        return value
    raise TypeError(f"config loader cannot handle {hint!r} at {path}")  # a bug in a settings class


def _seconds(value: Any, path: str, errors: list[str]) -> Seconds:
    if isinstance(value, bool):
        errors.append(f"{path}: must be a duration like 30s or 5m, got {_show(value)}")
        return Seconds(0)
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an integer of hundreds of digits
            seconds = math.inf
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            errors.append(f"{path}: {exc}")
            return Seconds(0)
    else:
        errors.append(f"{path}: must be a duration like 30s or 5m, got {_type_name(value)}")
        return Seconds(0)
    if math.isnan(seconds) or seconds > MAX_DURATION:
        errors.append(f"{path}: must be a finite duration of at most 100y, got {_show(value)}")
        return Seconds(0)
    if seconds <= 0:
        errors.append(f"{path}: must be longer than zero")
    return Seconds(seconds)


_SIZE = re.compile(r"^(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 10**6, "MiB": 1024**2, "GB": 10**9, "GiB": 1024**3}


def _byte_size(value: Any, path: str, errors: list[str]) -> ByteSize:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
        return ByteSize(value)
    match = _SIZE.match(value.strip()) if isinstance(value, str) else None
    if match is None or int(match.group(1)) == 0:
        errors.append(f"{path}: must be a positive size like 16MiB or 512KiB, got {_show(value)}")
        return ByteSize(0)
    return ByteSize(int(match.group(1)) * _SIZE_UNITS[match.group(2)])


def _reject_unknown(data: dict[Any, Any], known: set[str], where: str, errors: list[str]) -> None:
    for key in data:
        if key not in known:
            path = f"{where}.{_key(key)}" if where else _key(key)
            hint = _closest(_key(key), known)
            errors.append(f"{path}: unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))


def _key(key: Any) -> str:
    """A mapping key or a path from the file, for a message: at most 80 characters."""
    text = key if isinstance(key, str) else _show(key)
    return text if len(text) <= 80 else text[:77] + "..."


def _closest(key: str, known: set[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return matches[0] if matches else None


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def split_listen_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:9754', '[::1]:9754', ':9754' -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port, got {_show(address)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)
