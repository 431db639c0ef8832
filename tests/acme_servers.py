"""A real ACME server on 127.0.0.1 for the ACME canary's tests: Debian's ``pebble``.

:func:`pebble_server` starts pebble (2.4, the Let's Encrypt team's test server) with a
JSON config made here:

* its HTTPS API on an OS-chosen port, with a TLS certificate from a throw-away root
  (``tls_root_file``, the trust for HTTPS to pebble), and its management API
  (``roots_url``: the root it issues from, generated fresh at each start);
* ``httpPort``: where pebble connects to validate http-01 (on the identifier's
  address: 127.0.0.1 for ``127.0.0.1`` and ``localhost``).  The test gives it the port
  certscope's challenge listener binds;
* environment: ``PEBBLE_VA_NOSLEEP=1`` (no random 0-15 s waits before validating) and
  ``PEBBLE_WFE_NONCEREJECT=0`` unless a test asks otherwise (pebble rejects 5 % of good
  nonces by default), plus whatever the test passes (``PEBBLE_VA_ALWAYS_VALID``,
  ``PEBBLE_AUTHZREUSE``);
* optionally External Account Binding keys (``externalAccountBindingRequired``) and a
  certificate lifetime (``certificateValidityPeriod``; pebble's default is 5 years).

A missing ``pebble`` is a loud error, never a skip: ``scripts/install-test-deps``
installs it.  Pebble keeps everything in memory: each start is a new CA.
"""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.ca_servers import MissingComponent
from tests.pki import Issued, issue
from tests.servers import HOST, ServerProcess, free_port, localhost_sans, with_free_port


@dataclass
class PebbleServer:
    process: ServerProcess
    directory_url: str  # https://127.0.0.1:<port>/dir
    roots_url: str  # the management API's /roots/0: the root pebble issues from
    tls_root_file: Path  # trust anchor for HTTPS to pebble's APIs
    http_port: int  # where pebble validates http-01

    def stop(self) -> None:
        self.process.stop()

    def management(self, path: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.tls_root_file))
        url = self.roots_url.rsplit("/roots/", 1)[0] + path
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            data: bytes = response.read()
            return data

    def log(self) -> str:
        """Everything pebble wrote (``ServerProcess.logs`` keeps only the tail)."""
        return self.process.output_log.read_text(errors="replace")


def pebble_server(
    workdir: Path,
    *,
    http_port: int | None = None,
    env: dict[str, str] | None = None,
    eab_keys: dict[str, str] | None = None,
    validity_seconds: int | None = None,
) -> PebbleServer:
    pebble = shutil.which("pebble")
    if pebble is None:
        raise MissingComponent("pebble is not installed: apt-get install pebble (scripts/test does it)")
    workdir.mkdir(parents=True, exist_ok=True)
    tls_root = issue("certscope pebble TLS root", ca=True)
    tls_leaf: Issued = issue("127.0.0.1", tls_root, extra_extensions=(localhost_sans(),))
    (workdir / "tls-root.pem").write_bytes(tls_root.pem)
    (workdir / "cert.pem").write_bytes(tls_leaf.pem)
    (workdir / "key.pem").write_bytes(tls_leaf.key_pem)
    validation_port = http_port or free_port()
    environment = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", **(env or {})}

    def start(port: int) -> ServerProcess:
        management_port = free_port()
        settings: dict[str, object] = {
            "listenAddress": f"{HOST}:{port}",
            "managementListenAddress": f"{HOST}:{management_port}",
            "certificate": str(workdir / "cert.pem"),
            "privateKey": str(workdir / "key.pem"),
            "httpPort": validation_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": bool(eab_keys),
        }
        if eab_keys:
            settings["externalAccountMACKeys"] = eab_keys
        if validity_seconds is not None:
            settings["certificateValidityPeriod"] = validity_seconds
        config = workdir / f"pebble-{port}.json"
        config.write_text(json.dumps({"pebble": settings}))
        process = ServerProcess(
            "pebble", [pebble, "-config", str(config), "-strict=false"], workdir=workdir, port=port, env=environment
        )
        process.wait_ready(process.accepting)
        process.management_port = management_port  # type: ignore[attr-defined]
        return process

    process = with_free_port(start)
    management_port = process.management_port  # type: ignore[attr-defined]
    return PebbleServer(
        process,
        f"https://{HOST}:{process.port}/dir",
        f"https://{HOST}:{management_port}/roots/0",
        workdir / "tls-root.pem",
        validation_port,
    )
