"""Real certificate authorities on 127.0.0.1 for the ``ca`` kind's tests.

* :func:`cfssl_server`: Debian's ``cfssl serve`` (golang-cfssl 1.2.0) with a CA made by
  ``cfssl gencert -initca`` (cfssl's own), or a given test-PKI CA.  Profiles: ``probe``
  (10 minutes, no auth), ``authed`` (10 minutes, HMAC auth key ``auth_key``, for
  ``authsign``).  cfssl backdates notBefore by 5 minutes, so a shorter profile gives a
  certificate that is already expired, or nearly so, when it arrives.
* :func:`step_ca_server`: step-ca 0.19 built offline from Debian's Go sources by
  ``scripts/build-step-ca`` (cached under ``~/.cache/certscope``; about 40 s the first
  time).  The JWK provisioners are made by ``step-jwk``, a few lines over smallstep's
  own ``GenerateDefaultKeyPair`` (what ``step ca init`` calls), so the encrypted key is
  the real step format, not ours.  Provisioners: ``probe`` (key and encrypted key
  match), ``stale`` (the encrypted key is not the one the CA knows: a token made with it
  is refused by the CA) and an ACME provisioner ``acme``.
* A missing ``cfssl``, ``go`` or smallstep source package is a loud error, never a skip:
  ``scripts/test`` installs them.

Ports come from the OS (bind port 0, then start the server there; retried if taken).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tests.pki import DAY, NOW, Issued, issue
from tests.servers import HOST, ServerProcess, with_free_port

REPO = Path(__file__).resolve().parent.parent
BUILD_STEP_CA = REPO / "scripts" / "build-step-ca"


class MissingComponent(RuntimeError):
    pass


def _require(command: str, package: str) -> str:
    path = shutil.which(command)
    if path is None:
        raise MissingComponent(f"{command} is not installed: apt-get install {package} (scripts/test does it)")
    return path


def _key_pem(issued: Issued) -> bytes:
    return issued.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


# -- cfssl ---------------------------------------------------------------------------


@dataclass
class CfsslServer:
    process: ServerProcess
    url: str
    ca_pem: bytes  # the certificate cfssl signs with and publishes through info
    auth_key: str  # hex, for the "authed" profile

    def stop(self) -> None:
        self.process.stop()


CFSSL_AUTH_KEY = "00112233445566778899aabbccddeeff"


def cfssl_server(workdir: Path, ca: Issued | None = None) -> CfsslServer:
    cfssl = _require("cfssl", "golang-cfssl")
    workdir.mkdir(parents=True, exist_ok=True)
    if ca is None:
        csr = workdir / "ca-csr.json"
        csr.write_text(json.dumps({"CN": "certscope cfssl test CA", "key": {"algo": "ecdsa", "size": 256}}))
        made = subprocess.run([cfssl, "gencert", "-initca", str(csr)], capture_output=True, check=True, timeout=30)
        document = json.loads(made.stdout)
        (workdir / "ca.pem").write_text(document["cert"])
        (workdir / "ca-key.pem").write_text(document["key"])
    else:
        (workdir / "ca.pem").write_bytes(ca.pem)
        (workdir / "ca-key.pem").write_bytes(_key_pem(ca))
    usages = ["digital signature", "key encipherment", "server auth"]
    config = {
        "signing": {
            "default": {"expiry": "720h", "usages": usages},
            "profiles": {
                "probe": {"expiry": "10m", "usages": usages},
                "authed": {"expiry": "10m", "usages": usages, "auth_key": "probe"},
            },
        },
        "auth_keys": {"probe": {"type": "standard", "key": CFSSL_AUTH_KEY}},
    }
    (workdir / "config.json").write_text(json.dumps(config))

    def start(port: int) -> ServerProcess:
        process = ServerProcess(
            "cfssl",
            [
                cfssl,
                "serve",
                "-address",
                HOST,
                "-port",
                str(port),
                "-ca",
                str(workdir / "ca.pem"),
                "-ca-key",
                str(workdir / "ca-key.pem"),
                "-config",
                str(workdir / "config.json"),
            ],
            workdir=workdir,
            port=port,
            scheme="http",
        )
        process.wait_ready(process.accepting)
        return process

    process = with_free_port(start)
    return CfsslServer(process, f"http://{HOST}:{process.port}", (workdir / "ca.pem").read_bytes(), CFSSL_AUTH_KEY)


# -- step-ca -------------------------------------------------------------------------


def step_binaries() -> Path:
    """The directory holding ``step-ca`` and ``step-jwk``, built on first use."""
    _require("go", "golang-go")
    done = subprocess.run([str(BUILD_STEP_CA)], capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise MissingComponent(f"scripts/build-step-ca failed:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


@dataclass
class StepCaServer:
    process: ServerProcess
    url: str
    root: Issued
    intermediate: Issued
    root_file: Path  # trust for HTTPS to the CA
    password_file: Path  # the provisioners' password

    def stop(self) -> None:
        self.process.stop()

    def get(self, path: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.root_file))
        with urllib.request.urlopen(self.url + path, context=context, timeout=5) as response:
            data: bytes = response.read()
            return data


def step_ca_server(
    workdir: Path,
    password: str,
    *,
    root_not_after: dt.datetime | None = None,
) -> StepCaServer:
    binaries = step_binaries()
    workdir.mkdir(parents=True, exist_ok=True)
    root = issue("certscope step root", ca=True, not_after=root_not_after or NOW + 3650 * DAY)
    intermediate = issue(
        "certscope step intermediate",
        root,
        ca=True,
        not_after=min(root.cert.not_valid_after_utc, NOW + 1825 * DAY),
    )
    root_file = workdir / "root_ca.crt"
    crt_file = workdir / "intermediate_ca.crt"
    key_file = workdir / "intermediate.key"
    root_file.write_bytes(root.pem)
    crt_file.write_bytes(intermediate.pem)
    key_file.write_bytes(_key_pem(intermediate))
    password_file = workdir / "password"
    password_file.write_text(password + "\n")
    jwk = binaries / "step-jwk"
    good = json.loads(subprocess.run([str(jwk), str(password_file)], capture_output=True, check=True).stdout)
    other = json.loads(subprocess.run([str(jwk), str(password_file)], capture_output=True, check=True).stdout)
    provisioners = [
        {"type": "JWK", "name": "probe", "key": good["key"], "encryptedKey": good["encryptedKey"]},
        # The CA knows one key, clients get another: every token is refused.
        {"type": "JWK", "name": "stale", "key": other["key"], "encryptedKey": good["encryptedKey"]},
        {"type": "ACME", "name": "acme"},
    ]

    def start(port: int) -> ServerProcess:
        config = {
            "root": str(root_file),
            "crt": str(crt_file),
            "key": str(key_file),
            "address": f"{HOST}:{port}",
            "dnsNames": [HOST, "localhost"],
            "logger": {"format": "text"},
            "db": {"type": "badgerv2", "dataSource": str(workdir / f"db-{port}")},
            "authority": {"provisioners": provisioners},
            "tls": {"minVersion": 1.2, "maxVersion": 1.3},
        }
        config_file = workdir / "ca.json"
        config_file.write_text(json.dumps(config))
        process = ServerProcess(
            "step-ca", [str(binaries / "step-ca"), str(config_file)], workdir=workdir, port=port, env=os.environ
        )
        process.wait_ready(process.accepting)
        return process

    process = with_free_port(start)
    server = StepCaServer(process, f"https://{HOST}:{process.port}", root, intermediate, root_file, password_file)
    return server
