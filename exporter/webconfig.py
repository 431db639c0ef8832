"""``--web.config.file``: TLS, client certificates and basic auth on the web server.

The file is in the Prometheus exporter-toolkit format, so one file serves certscope
and the other exporters on a host::

    tls_server_config:
      cert_file: server.crt            # PEM; relative paths are taken from this file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
      client_ca_file: clients-ca.crt
      client_allowed_sans: [prometheus.monitoring.svc]
      min_version: TLS12               # TLS10 .. TLS13
      max_version: TLS13
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2y$10$...           # bcrypt hashes only, never a password

Contract:

- ``load_web_config(path)`` returns a :class:`WebConfig` or raises
  ``WebConfigError`` listing every problem, each naming its key
  (``tls_server_config.client_auth_typ: unknown key``).  Keys of the toolkit format
  that certscope cannot honour (``cipher_suites``, ``RequireAnyClientCert``, ...) are
  errors too, never silently ignored.
- :class:`WebConfigSource` holds the live config: ``current()`` notices (by stat, at
  most once a second, in a thread of its own so that no connection waits for it)
  when the web config file or the certificate, key or client CA file changed, and
  loads them again.  A rotated certificate therefore takes effect within a second
  or two, on the next connections, without a restart.  A change that does not load (a key
  that no longer matches its certificate half-way through a rotation, a typo, a
  value of the wrong type, a file that is not UTF-8 or not a regular file) keeps
  the previous config serving, logs the errors and sets
  ``certscope_web_config_last_reload_successful`` to 0 (:class:`WebConfigCollector`);
  nothing in the file can stop the HTTP server.  The file is read up to 1 MiB.
- Passwords are checked with bcrypt; an unknown user costs the same bcrypt work as
  a known one, and user names are compared in constant time.  A password longer
  than bcrypt's 72 bytes is refused (401), as Go's bcrypt and so the exporter
  toolkit refuse it, never truncated.  Neither a password nor a hash is ever
  logged or put in an error message.
- Basic auth covers every path except ``/-/healthy`` and ``/-/ready``, which say
  nothing but "up" and must stay reachable by a kubelet that has no credentials.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import hmac
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import bcrypt
import yaml
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from probes.files import read_regular_file

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# In the toolkit's format, but Python's ssl module cannot ask for a client
# certificate without verifying it.
UNSUPPORTED_CLIENT_AUTH_TYPES = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Response headers the toolkit lets a web config set.
ALLOWED_HEADERS = (
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
)
UNAUTHENTICATED_PATHS = frozenset({"/-/healthy", "/-/ready"})

_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "client_allowed_sans"}
_TLS_KEYS |= {"min_version", "max_version"}
_TLS_UNSUPPORTED = {
    "cert": "inline certificates are not supported; use cert_file",
    "key": "inline keys are not supported; use key_file",
    "cipher_suites": "not supported: certscope uses OpenSSL's default cipher suites",
    "curve_preferences": "not supported: certscope uses OpenSSL's default groups",
    "prefer_server_cipher_suites": "not supported",
}
_HTTP_KEYS = {"headers", "http2"}
# A real bcrypt hash that no password checked here matches: unknown users are
# checked against it so that they cost as much as known ones.
_DUMMY_HASH = b"$2b$10$U8XwFVN1ncY1RQGxk9Pt3.tzA5Hk0wplbhauLnvwwstTAnuVhCYC6"
_CHECK_INTERVAL = 1.0  # seconds between stats of the files behind the web config
MAX_WEB_CONFIG_BYTES = 1024 * 1024
# libyaml's safe loader when PyYAML has it: it refuses deep nesting in milliseconds
# where the pure-Python scanner takes seconds holding the GIL.
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
BCRYPT_MAX_PASSWORD_BYTES = 72
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


class WebConfigError(Exception):
    def __init__(self, source: str, messages: list[str]) -> None:
        self.source = source
        self.messages = messages
        super().__init__(f"{source}: " + "; ".join(messages))


@dataclass(frozen=True)
class TlsServerConfig:
    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"

    def files(self) -> tuple[str, ...]:
        return (self.cert_file, self.key_file) + ((self.client_ca_file,) if self.client_ca_file else ())

    def build_context(self) -> ssl.SSLContext:
        """A server context; raises ``ssl.SSLError`` or ``OSError`` when the files do not load."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = TLS_VERSIONS[self.min_version]
        context.maximum_version = TLS_VERSIONS[self.max_version]
        context.load_cert_chain(self.cert_file, self.key_file)
        context.verify_mode = CLIENT_AUTH_TYPES[self.client_auth_type]
        if self.client_ca_file:
            context.load_verify_locations(cafile=self.client_ca_file)
        return context


@dataclass(frozen=True)
class WebConfig:
    source: str
    tls: TlsServerConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()
    users: Mapping[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash

    def files(self) -> tuple[str, ...]:
        return (self.source, *(self.tls.files() if self.tls else ()))


def load_web_config(path: str) -> WebConfig:
    """Parse and check the file, and load its TLS material once to prove it loads.
    Raises only ``WebConfigError``, whatever the file holds."""
    try:
        return _load_web_config(path)
    except WebConfigError:
        raise
    except (RecursionError, MemoryError, TypeError, ValueError, AttributeError) as exc:
        # A shape no check above foresaw: still an error about the file, never a crash.
        raise WebConfigError(path, [f"cannot be used as a web config ({type(exc).__name__})"]) from None


def _read_capped(path: str) -> str:
    try:
        data = read_regular_file(path, MAX_WEB_CONFIG_BYTES)
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise WebConfigError(path, [f"larger than {MAX_WEB_CONFIG_BYTES} bytes"]) from None
        raise WebConfigError(path, [f"cannot read web config file: {exc.strerror}"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebConfigError(path, [f"not UTF-8 (byte {exc.start})"]) from None


def _shown(value: Any) -> str:
    """A value for an error message: short strings quoted, anything else by its type,
    so a huge or deeply aliased value is never rendered."""
    if isinstance(value, str):
        return repr(value[:60] + ("..." if len(value) > 60 else ""))
    if isinstance(value, bool | float) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**12 else "a large integer"
    return f"a {type(value).__name__}"


def _load_web_config(path: str) -> WebConfig:
    text = _read_capped(path)
    try:
        document = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise WebConfigError(path, [f"invalid YAML: {where}{getattr(exc, 'problem', None) or exc}"]) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise WebConfigError(path, ["top level must be a mapping"])
    errors: list[str] = []
    _unknown(document, _TOP_KEYS, "", errors)
    base = os.path.dirname(os.path.abspath(path))
    tls = _tls(document.get("tls_server_config"), base, errors)
    headers = _headers(document.get("http_server_config"), errors)
    users = _users(document.get("basic_auth_users"), errors)
    if errors:
        raise WebConfigError(path, errors)
    if tls is not None:
        try:
            tls.build_context()
        except (ssl.SSLError, OSError) as exc:
            raise WebConfigError(path, [f"tls_server_config: cannot load the certificate, key or CA: {exc}"]) from None
    return WebConfig(source=path, tls=tls, headers=headers, users=users)


def _unknown(data: Mapping[Any, Any], known: set[str], where: str, errors: list[str]) -> None:
    for key in data:
        if key not in known:
            errors.append(f"{where}{_key(key)}: unknown key")


def _key(key: Any) -> str:
    return key[:60] if isinstance(key, str) else _shown(key)


def _tls(data: Any, base: str, errors: list[str]) -> TlsServerConfig | None:
    if data is None:
        return None
    where = "tls_server_config"
    if not isinstance(data, dict):
        errors.append(f"{where}: must be a mapping")
        return None
    before = len(errors)
    for key in data:
        if key in _TLS_UNSUPPORTED:
            errors.append(f"{where}.{key}: {_TLS_UNSUPPORTED[key]}")
    _unknown({k: v for k, v in data.items() if k not in _TLS_UNSUPPORTED}, _TLS_KEYS, f"{where}.", errors)

    def path(key: str, required: bool) -> str | None:
        value = data.get(key)
        if value in (None, ""):
            if required:
                errors.append(f"{where}.{key}: required")
            return None
        if not isinstance(value, str):
            errors.append(f"{where}.{key}: must be a string")
            return None
        full = os.path.join(base, value)
        if not os.path.isfile(full):
            errors.append(f"{where}.{key}: file not found: {full}")
        return full

    cert_file = path("cert_file", True)
    key_file = path("key_file", True)
    client_ca_file = path("client_ca_file", False)
    client_auth = data.get("client_auth_type", "NoClientCert")
    auth_types = ", ".join(CLIENT_AUTH_TYPES)
    if not isinstance(client_auth, str):
        errors.append(f"{where}.client_auth_type: must be one of {auth_types}, got {_shown(client_auth)}")
    elif client_auth in UNSUPPORTED_CLIENT_AUTH_TYPES:
        errors.append(
            f"{where}.client_auth_type: {client_auth} is not supported (a client certificate is always verified);"
            " use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
        )
    elif client_auth not in CLIENT_AUTH_TYPES:
        errors.append(f"{where}.client_auth_type: must be one of {auth_types}, got {_shown(client_auth)}")
    elif client_auth != "NoClientCert" and "client_ca_file" not in data:
        errors.append(f"{where}.client_ca_file: required when client_auth_type is {client_auth}")
    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        version = data.get(key, default)
        if not isinstance(version, str) or version not in TLS_VERSIONS:
            errors.append(f"{where}.{key}: must be one of {', '.join(TLS_VERSIONS)}, got {_shown(version)}")
        versions[key] = version
    if all(isinstance(v, str) and v in TLS_VERSIONS for v in versions.values()) and (
        TLS_VERSIONS[versions["min_version"]] > TLS_VERSIONS[versions["max_version"]]
    ):
        errors.append(f"{where}.min_version: must not be above max_version")
    sans = data.get("client_allowed_sans") or []
    if not isinstance(sans, list) or not all(isinstance(s, str) for s in sans):
        errors.append(f"{where}.client_allowed_sans: must be a list of strings")
        sans = []
    elif sans and client_auth not in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        errors.append(f"{where}.client_allowed_sans: needs a client_auth_type that verifies client certificates")
    if len(errors) > before or cert_file is None or key_file is None:
        return None
    return TlsServerConfig(
        cert_file=cert_file,
        key_file=key_file,
        client_auth_type=client_auth,
        client_ca_file=client_ca_file,
        client_allowed_sans=tuple(sans),
        min_version=versions["min_version"],
        max_version=versions["max_version"],
    )


def _headers(data: Any, errors: list[str]) -> tuple[tuple[str, str], ...]:
    if data is None:
        return ()
    where = "http_server_config"
    if not isinstance(data, dict):
        errors.append(f"{where}: must be a mapping")
        return ()
    _unknown(data, _HTTP_KEYS, f"{where}.", errors)
    if "http2" in data and not isinstance(data["http2"], bool):
        errors.append(f"{where}.http2: must be true or false")  # accepted; certscope speaks HTTP/1.1
    headers = data.get("headers") or {}
    if not isinstance(headers, dict):
        errors.append(f"{where}.headers: must be a mapping")
        return ()
    result = []
    allowed = {h.lower(): h for h in ALLOWED_HEADERS}
    for name, value in headers.items():
        if not isinstance(name, str) or name.lower() not in allowed:
            errors.append(f"{where}.headers.{_key(name)}: not one of {', '.join(ALLOWED_HEADERS)}")
        elif not isinstance(value, str) or "\n" in value or "\r" in value:
            errors.append(f"{where}.headers.{_key(name)}: must be a one-line string")
        else:
            result.append((allowed[name.lower()], value))
    return tuple(result)


def _users(data: Any, errors: list[str]) -> dict[str, bytes]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        errors.append("basic_auth_users: must be a mapping of user name to bcrypt hash")
        return {}
    users = {}
    for name, hashed in data.items():
        if not isinstance(name, str) or not name or ":" in name:
            errors.append(f"basic_auth_users.{_key(name)}: not a usable user name")
            continue
        # The message never repeats the value: it may be a password pasted by mistake.
        if not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):
            errors.append(f"basic_auth_users.{_key(name)}: must be a bcrypt hash ($2y$..., 60 characters)")
            continue
        users[name] = hashed.encode("ascii", "replace")
    return users


class WebConfigSource:
    """The live web config: reloaded when its file or its TLS files change."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.config = load_web_config(path)
        self._context = self.config.tls.build_context() if self.config.tls else None
        self._stamp = _stamp(self.config.files())
        self._checked = time.monotonic()
        self._checking = False
        self.last_reload_successful = True
        self.last_reload_success_time = time.time()

    def current(self) -> tuple[WebConfig, ssl.SSLContext | None]:
        """The config and TLS context in force, at once; never raises.

        At most once a second it starts a check of the files in a thread of its own,
        so loading a changed file (a hostile one can take seconds of YAML parsing)
        never delays a connection; the next connections get the result."""
        with self._lock:
            if not self._checking and time.monotonic() - self._checked >= _CHECK_INTERVAL:
                self._checking = True
                threading.Thread(target=self._check, name="web-config", daemon=True).start()
            return self.config, self._context

    def _check(self) -> None:
        try:
            stamp = _stamp(self.config.files())
            if stamp != self._stamp:
                self._reload(stamp)
        finally:
            with self._lock:
                self._checking = False
                self._checked = time.monotonic()

    def _reload(self, stamp: tuple[Any, ...]) -> None:
        try:
            config = load_web_config(self.path)
            context = config.tls.build_context() if config.tls else None
        except WebConfigError as exc:
            messages = exc.messages
        except (ssl.SSLError, OSError) as exc:
            messages = [str(exc)]
        except Exception as exc:  # noqa: BLE001 - whatever the file holds, the old config serves on
            messages = [f"unexpected {type(exc).__name__}"]
        else:
            with self._lock:
                self.config, self._context = config, context
            self._stamp = _stamp(config.files())
            self.last_reload_successful = True
            self.last_reload_success_time = time.time()
            log.info("web config reloaded from %s (tls=%s, users=%d)", self.path, bool(context), len(config.users))
            return
        for message in messages:
            log.error("web config not reloaded, the previous one stays: %s: %s", self.path, message)
        self._stamp = stamp  # do not retry until something changes again
        self.last_reload_successful = False


class WebConfigCollector(Collector):
    """The web config's reload state, rendered on every scrape."""

    def __init__(self, source: WebConfigSource) -> None:
        self._source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "certscope_web_config_last_reload_successful",
            "1 if the web config file loaded at its last change, 0 if that change was rejected "
            "(the previous TLS and auth settings keep serving)",
            value=1.0 if self._source.last_reload_successful else 0.0,
        )
        yield GaugeMetricFamily(
            "certscope_web_config_last_reload_success_timestamp_seconds",
            "when the web config file last loaded successfully",
            value=self._source.last_reload_success_time,
        )


def _stamp(paths: Iterable[str]) -> tuple[Any, ...]:
    stamps: list[Any] = []
    for path in paths:
        try:
            info = os.stat(path)  # follows symlinks: a Secret volume swaps its ..data link
        except OSError:
            stamps.append(None)
        else:
            stamps.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(stamps)


def peer_sans(peer: Mapping[str, Any] | None) -> set[str]:
    """DNS, IP, email and URI SANs of a verified peer certificate (``getpeercert()``)."""
    if not peer:
        return set()
    return {str(value) for _, value in peer.get("subjectAltName", ())}


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes, remembering successes.

    A bcrypt check costs tens of milliseconds by design; Prometheus sends the same
    credentials every scrape, so a success is remembered (by a SHA-256 over user,
    password and hash, never the password itself) and a changed hash forgets it.
    """

    def __init__(self) -> None:
        self._ok: dict[bytes, None] = {}
        self._lock = threading.Lock()

    def accepts(self, users: Mapping[str, bytes], header: str | None) -> bool:
        if not header or not header[:6].lower() == "basic ":
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep or len(password.encode()) > BCRYPT_MAX_PASSWORD_BYTES:
            return False  # bcrypt reads 72 bytes at most; a longer password is refused, not cut
        hashed = _DUMMY_HASH
        known = False
        for name, candidate in users.items():  # constant time in the name, whichever matches
            if hmac.compare_digest(name.encode(), user.encode()):
                hashed, known = candidate, True
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed))).digest()
        with self._lock:
            if known and key in self._ok:
                return True
        try:
            valid = bcrypt.checkpw(password.encode(), hashed) and known
        except ValueError:  # a hash bcrypt cannot use (the config check should have caught it)
            log.error("basic auth: the bcrypt hash of a configured user cannot be used")
            valid = False
        if valid:
            with self._lock:
                if len(self._ok) >= 1024:
                    self._ok.clear()
                self._ok[key] = None
        return valid


class AuthMiddleware:
    """WSGI: basic auth (when users are configured) and the configured response headers."""

    def __init__(self, app: WsgiApp, source: Callable[[], WebConfig]) -> None:
        self._app = app
        self._source = source
        self._auth = BasicAuth()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        config = self._source()
        headers = list(config.headers)

        def respond(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*response_headers, *headers], exc_info)

        path = environ.get("PATH_INFO", "/")
        if config.users and path not in UNAUTHENTICATED_PATHS:
            if not self._auth.accepts(config.users, environ.get("HTTP_AUTHORIZATION")):
                body = b"Unauthorized\n"
                respond(
                    "401 Unauthorized",
                    [
                        ("Content-Type", "text/plain; charset=utf-8"),
                        ("Content-Length", str(len(body))),
                        ("WWW-Authenticate", 'Basic realm="certscope", charset="UTF-8"'),
                    ],
                )
                return [body]
        return self._app(environ, respond)
