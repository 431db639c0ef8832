"""A thin Kubernetes REST client on ``requests``: where the API server is, who we are,
and typed errors.  Listing and watching live in ``probes/kubewatch.py``.

Two ways to find the cluster:

* in-cluster: ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the service account's
  ``token`` and ``ca.crt``.  The token file is re-read whenever it changes on disk
  (the kubelet rotates bound service-account tokens about hourly), and after a 401.
* a kubeconfig: the current or a named context; a static token, a ``tokenFile``, a
  client certificate and key (as files or ``-data``), or an ``exec`` credential
  plugin (``client.authentication.k8s.io`` ExecCredential, re-run when its
  credential expires or the server answers 401).

Credentials are never put into a log line, an error message or a metric: errors name
the server URL, the path and the HTTP status, and an exec plugin's failure names the
command and its exit status, never its output.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
import yaml

from probes.reasons import Reason

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
EXEC_TIMEOUT = 30.0  # seconds an exec credential plugin may take
# An exec credential is renewed this long before it expires.
EXEC_RENEW_MARGIN = 60.0


class KubeError(Exception):
    """A failed API call or a configuration problem, with the reason it is reported as."""

    def __init__(self, reason: Reason, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


@dataclass(frozen=True)
class _Credential:
    token: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    expires: float | None = None  # Unix seconds; None: until the server says 401


class _TokenFile:
    """A bearer token in a file, re-read when the file changes."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._token = ""

    def get(self, refresh: bool = False) -> _Credential:
        try:
            info = os.stat(self._path)
            stamp = (info.st_mtime_ns, info.st_ino)
            if refresh or stamp != self._stamp:
                with open(self._path, encoding="utf-8") as handle:
                    self._token = handle.read().strip()
                self._stamp = stamp
        except OSError as exc:
            raise KubeError(Reason.READ_ERROR, f"cannot read token file {self._path}: {exc.strerror}") from None
        return _Credential(token=self._token)


class _ExecPlugin:
    """An ``exec`` credential plugin (kubeconfig ``users[].user.exec``)."""

    def __init__(
        self, spec: Mapping[str, Any], base_dir: str, cluster: Mapping[str, Any], files: _PrivateFiles
    ) -> None:
        command = str(spec.get("command") or "")
        if not command:
            raise KubeError(Reason.READ_ERROR, "kubeconfig: exec.command is required")
        # As kubectl does: a relative path with a separator is relative to the kubeconfig.
        if os.sep in command and not os.path.isabs(command):
            command = os.path.join(base_dir, command)
        self._argv = [command, *(str(arg) for arg in spec.get("args") or ())]
        self._env = {str(item["name"]): str(item["value"]) for item in spec.get("env") or () if "name" in item}
        self._api_version = str(spec.get("apiVersion") or "client.authentication.k8s.io/v1")
        self._cluster = dict(cluster) if spec.get("provideClusterInfo") else None
        self._files = files
        self._cached: _Credential | None = None

    def get(self, refresh: bool = False) -> _Credential:
        cached = self._cached
        if cached is not None and not refresh:
            if cached.expires is None or cached.expires - EXEC_RENEW_MARGIN > dt.datetime.now(dt.UTC).timestamp():
                return cached
        self._cached = self._run()
        return self._cached

    def _run(self) -> _Credential:
        exec_spec: dict[str, Any] = {"interactive": False}
        if self._cluster is not None:
            exec_spec["cluster"] = self._cluster
        env = {
            **os.environ,
            **self._env,
            "KUBERNETES_EXEC_INFO": json.dumps(
                {"apiVersion": self._api_version, "kind": "ExecCredential", "spec": exec_spec}
            ),
        }
        name = os.path.basename(self._argv[0])
        try:
            done = subprocess.run(
                self._argv, env=env, capture_output=True, timeout=EXEC_TIMEOUT, stdin=subprocess.DEVNULL, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            what = "timed out" if isinstance(exc, subprocess.TimeoutExpired) else f"cannot run ({exc})"
            raise KubeError(Reason.API_UNAUTHORIZED, f"exec credential plugin {name}: {what}") from None
        if done.returncode != 0:
            # Its output is not quoted: a plugin may print credentials on failure.
            raise KubeError(Reason.API_UNAUTHORIZED, f"exec credential plugin {name} exited with {done.returncode}")
        try:
            status = json.loads(done.stdout)["status"]
        except (ValueError, KeyError, TypeError):
            raise KubeError(
                Reason.API_UNAUTHORIZED, f"exec credential plugin {name}: output is not an ExecCredential"
            ) from None
        expires = _parse_time(status.get("expirationTimestamp"))
        if status.get("token"):
            return _Credential(token=str(status["token"]), expires=expires)
        if status.get("clientCertificateData") and status.get("clientKeyData"):
            cert_file = self._files.write("exec-client.crt", str(status["clientCertificateData"]).encode())
            key_file = self._files.write("exec-client.key", str(status["clientKeyData"]).encode())
            return _Credential(cert_file=cert_file, key_file=key_file, expires=expires)
        raise KubeError(Reason.API_UNAUTHORIZED, f"exec credential plugin {name}: no token or client certificate")


class _PrivateFiles:
    """A 0700 directory for credential material ``requests`` can only take as files
    (kubeconfig ``-data`` fields, exec plugin certificates); removed on ``close``."""

    def __init__(self) -> None:
        self._dir: str | None = None

    def write(self, name: str, data: bytes) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="certscope-kube-")
        path = os.path.join(self._dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return path

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class Cluster:
    """Where the API server is and how to authenticate; hands out sessions.

    Thread-safe: each watch thread takes its own ``session()``; credentials are
    shared and refreshed under a lock."""

    def __init__(
        self,
        server: str,
        *,
        verify: str | bool,
        credential_source: _TokenFile | _ExecPlugin | None = None,
        static: _Credential = _Credential(),
        files: _PrivateFiles | None = None,
        description: str = "",
    ) -> None:
        self.server = server.rstrip("/")
        self.verify = verify
        self.description = description or self.server
        self._source = credential_source
        self._static = static
        self._files = files or _PrivateFiles()
        self._lock = threading.Lock()

    def credential(self, refresh: bool = False) -> _Credential:
        if self._source is None:
            return self._static
        with self._lock:
            dynamic = self._source.get(refresh)
        # A client certificate from the kubeconfig may sit beside a token from a plugin or file.
        return _Credential(
            token=dynamic.token or self._static.token,
            cert_file=dynamic.cert_file or self._static.cert_file,
            key_file=dynamic.key_file or self._static.key_file,
            expires=dynamic.expires,
        )

    def session(self) -> requests.Session:
        session = requests.Session()
        session.verify = self.verify
        session.headers["Accept"] = "application/json"
        session.headers["User-Agent"] = "certscope"
        session.trust_env = False  # no proxy variables or .netrc for the API server
        return session

    def get(
        self,
        session: requests.Session,
        path: str,
        params: Mapping[str, str],
        *,
        timeout: tuple[float, float],
        stream: bool = False,
    ) -> requests.Response:
        """GET ``path``; a 401 refreshes the credential and retries once.  Raises
        ``KubeError`` for transport failures and non-2xx answers (the body's
        ``Status.message`` is quoted: it names the resource, never a credential)."""
        url = self.server + path
        response = None
        for attempt in (0, 1):
            credential = self.credential(refresh=attempt == 1)
            headers = {"Authorization": f"Bearer {credential.token}"} if credential.token else {}
            cert = (credential.cert_file, credential.key_file) if credential.cert_file and credential.key_file else None
            try:
                response = session.get(url, params=params, headers=headers, cert=cert, timeout=timeout, stream=stream)
            except requests.exceptions.ConnectTimeout:
                raise KubeError(Reason.CONNECT_TIMEOUT, f"{self.server}: connect timed out") from None
            except requests.exceptions.SSLError as exc:
                raise KubeError(Reason.HANDSHAKE_FAILED, f"{self.server}: TLS failed ({_short(exc)})") from None
            except requests.exceptions.ConnectionError as exc:
                reason = Reason.CONNECT_REFUSED if "refused" in str(exc).lower() else Reason.API_ERROR
                raise KubeError(reason, f"{self.server}: cannot connect ({_short(exc)})") from None
            except requests.exceptions.RequestException as exc:
                raise KubeError(Reason.API_ERROR, f"{self.server}{path}: {_short(exc)}") from None
            if response.status_code != 401 or self._source is None:
                break
            response.close()
        assert response is not None
        if response.status_code >= 300:
            raise status_error(response, path)
        return response

    def close(self) -> None:
        self._files.close()


def status_error(response: requests.Response, path: str) -> KubeError:
    """A non-2xx answer as a ``KubeError`` quoting the API's ``Status`` message."""
    code = response.status_code
    try:
        message = str(response.json().get("message", ""))[:300]
    except ValueError:
        message = ""
    finally:
        response.close()
    reason = {401: Reason.API_UNAUTHORIZED, 403: Reason.API_FORBIDDEN}.get(code, Reason.API_ERROR)
    return KubeError(reason, f"{path}: HTTP {code}" + (f" ({message})" if message else ""), code)


def in_cluster(service_account_dir: str = SERVICE_ACCOUNT_DIR, environ: Mapping[str, str] = os.environ) -> Cluster:
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubeError(
            Reason.READ_ERROR, "not running in a cluster (KUBERNETES_SERVICE_HOST is unset); set kubeconfig"
        )
    if ":" in host:  # an IPv6 service address
        host = f"[{host}]"
    ca_file = os.path.join(service_account_dir, "ca.crt")
    return Cluster(
        f"https://{host}:{port}",
        verify=ca_file if os.path.exists(ca_file) else True,
        credential_source=_TokenFile(os.path.join(service_account_dir, "token")),
        description="in-cluster service account",
    )


def from_kubeconfig(path: str, context: str | None = None) -> Cluster:
    """The cluster and user of ``context`` (default: ``current-context``) in ``path``."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        raise KubeError(Reason.READ_ERROR, f"kubeconfig {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise KubeError(Reason.PARSE_ERROR, f"kubeconfig {path}: not YAML ({_short(exc)})") from None
    if not isinstance(document, dict):
        raise KubeError(Reason.PARSE_ERROR, f"kubeconfig {path}: not a kubeconfig")
    base_dir = os.path.dirname(os.path.abspath(path))
    context_name = context or document.get("current-context") or ""
    context_entry = _named(document, "contexts", context_name, path).get("context") or {}
    cluster_name = str(context_entry.get("cluster", ""))
    user_name = str(context_entry.get("user", ""))
    cluster = _named(document, "clusters", cluster_name, path).get("cluster") or {}
    user = _named(document, "users", user_name, path).get("user") or {} if user_name else {}
    server = str(cluster.get("server") or "")
    if not server:
        raise KubeError(Reason.PARSE_ERROR, f"kubeconfig {path}: cluster {cluster_name!r} has no server")
    files = _PrivateFiles()
    verify: str | bool = True
    if cluster.get("insecure-skip-tls-verify"):
        verify = False
    elif cluster.get("certificate-authority-data"):
        verify = files.write("ca.crt", _b64(cluster["certificate-authority-data"], path, "certificate-authority-data"))
    elif cluster.get("certificate-authority"):
        verify = _relative(str(cluster["certificate-authority"]), base_dir)
    for unsupported in ("auth-provider", "username", "password"):
        if user.get(unsupported):
            raise KubeError(
                Reason.PARSE_ERROR, f"kubeconfig {path}: user {user_name!r}: {unsupported} is not supported"
            )

    cert_file = key_file = None
    if user.get("client-certificate-data"):
        cert_file = files.write("client.crt", _b64(user["client-certificate-data"], path, "client-certificate-data"))
    elif user.get("client-certificate"):
        cert_file = _relative(str(user["client-certificate"]), base_dir)
    if user.get("client-key-data"):
        key_file = files.write("client.key", _b64(user["client-key-data"], path, "client-key-data"))
    elif user.get("client-key"):
        key_file = _relative(str(user["client-key"]), base_dir)
    static = _Credential(
        token=str(user["token"]) if user.get("token") else None, cert_file=cert_file, key_file=key_file
    )
    source: _TokenFile | _ExecPlugin | None = None
    if user.get("exec"):
        source = _ExecPlugin(user["exec"], base_dir, {"server": server}, files)
    elif user.get("tokenFile") and not static.token:
        source = _TokenFile(_relative(str(user["tokenFile"]), base_dir))
    return Cluster(
        server,
        verify=verify,
        credential_source=source,
        static=static,
        files=files,
        description=f"kubeconfig {path} context {context_name!r}",
    )


def _named(document: Mapping[str, Any], section: str, name: str, path: str) -> Mapping[str, Any]:
    for entry in document.get(section) or ():
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    what = section[:-1]
    raise KubeError(Reason.PARSE_ERROR, f"kubeconfig {path}: no {what} named {name!r}")


def _relative(path: str, base_dir: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base_dir, path)


def _b64(value: Any, path: str, field: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise KubeError(Reason.PARSE_ERROR, f"kubeconfig {path}: {field} is not valid base64") from None


def _parse_time(value: Any) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
