"""The verification profiles held against a reference client, through real servers.

Each rule of ``probes.profiles`` gets a chain that exercises it, served by
``openssl s_server`` on 127.0.0.1 and judged twice: by the ``tls`` probe under each
profile, and by ``openssl s_client -verify_return_error`` (OpenSSL 3, security level
2: what Python's ``ssl`` concludes too).  Under ``rfc5280`` certscope's verdict must
equal s_client's on every rule; under ``webpki`` it must equal it except for the
CA/Browser Forum rules, which s_client does not apply and which are asserted to
differ.  Then the profile defaults, the configuration's refusals, and the HTTP
identity check: nginx terminating mTLS and passing ``$ssl_client_s_dn`` to a
backend, against a second nginx that drops it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exporter.config import ConfigError, parse_config
from probes.context import ProbeContext
from probes.profiles import RFC5280, WEBPKI
from probes.settings import ProbeDefaults, TrustSettings
from probes.tls import TlsProbe, TlsSettings
from probes.verify import TrustStore, VerifySettings, verify_served_chain
from tests.fixtures import servers
from tests.fixtures.pki import DAY, NOW, Issued, PrivateKey

NAME = "a.test"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _usage(*, cert_sign: bool = False, signature: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(signature, False, False, False, False, cert_sign, crl_sign, False, False)


CA_USAGE = _usage(cert_sign=True, crl_sign=True)
LEAF_USAGE = _usage(signature=True)


def make(
    common_name: str,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    key: PrivateKey | None = None,
    sans: tuple[str, ...] | None = None,
    aki: bool = True,
    usage: x509.KeyUsage | str | None = "default",
    eku: tuple[x509.ObjectIdentifier, ...] | str | None = "default",
    path_length: int | None = None,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    serial: int | None = None,
    subject: x509.Name | None = None,
    sha1: bool = False,
    aki_of: PrivateKey | None = None,
) -> Issued:
    """A certificate as the rules need it; ``sha1=True`` has OpenSSL sign it with
    SHA-1 (cryptography will not)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    signer = issuer.key if issuer else key
    subject = subject or _name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if sha1 or serial == 0 or issuer is None else issuer.cert.subject)
        .public_key(key.public_key())
        # cryptography refuses serial number 0: OpenSSL sets it in _openssl_sign.
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    )
    if ca:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    # OpenSSL adds the authorityKeyIdentifier itself when it signs (sha1, serial 0).
    if aki and (issuer is not None or aki_of is not None) and not sha1 and serial != 0:
        authority = aki_of or signer
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    if usage == "default":
        usage = CA_USAGE if ca else LEAF_USAGE
    if isinstance(usage, x509.KeyUsage):
        builder = builder.add_extension(usage, critical=True)
    if eku == "default":
        eku = None if ca else (ExtendedKeyUsageOID.SERVER_AUTH,)
    if isinstance(eku, tuple):
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if sans is None and not ca:
        sans = (NAME,)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    if not sha1 and serial != 0:
        return Issued(builder.sign(signer, hashes.SHA256()), key)
    digest = "sha1" if sha1 else "sha256"
    serial = 4242 if serial is None else serial
    return Issued(_openssl_sign(builder.sign(key, hashes.SHA256()), key, issuer, digest, serial), key)


def _openssl_sign(
    self_signed: x509.Certificate, key: PrivateKey, issuer: Issued | None, digest: str, serial: int
) -> x509.Certificate:
    """Re-sign a self-signed certificate by ``openssl x509`` (for what cryptography
    will not write: SHA-1 signatures, serial number 0): by its own key, or as
    ``issuer`` (extensions kept; OpenSSL adds the key identifiers)."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        (path / "in.pem").write_bytes(self_signed.public_bytes(serialization.Encoding.PEM))
        (path / "key.pem").write_bytes(Issued(self_signed, key).key_pem)
        args = ["openssl", "x509", "-in", str(path / "in.pem"), f"-{digest}", "-days", "30"]
        args += ["-set_serial", str(serial), "-out", str(path / "out.pem")]
        if issuer is None:
            args += ["-signkey", str(path / "key.pem")]
        else:
            (path / "ca.pem").write_bytes(issuer.pem)
            (path / "ca.key").write_bytes(issuer.key_pem)
            args += ["-CA", str(path / "ca.pem"), "-CAkey", str(path / "ca.key")]
        subprocess.run(args, check=True, capture_output=True, timeout=30)
        return x509.load_pem_x509_certificate((path / "out.pem").read_bytes())


@dataclass(frozen=True)
class Chain:
    leaf: Issued
    intermediates: tuple[Issued, ...]
    trusted: tuple[Issued, ...]
    name: str = NAME


def _rsa(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _root(**kwargs: Any) -> Issued:
    return make("certscope profiles root", ca=True, **kwargs)


def _leaf_under_root(**kwargs: Any) -> Chain:
    root = _root()
    return Chain(make(NAME, root, **kwargs), (), (root,))


def _under_intermediate(**kwargs: Any) -> Chain:
    root = _root()
    intermediate = make("certscope profiles intermediate", root, ca=True, **kwargs)
    return Chain(make(NAME, intermediate), (intermediate,), (root,))


def _leaf_under(root: Issued) -> Chain:
    return Chain(make(NAME, root), (), (root,))


def _sha1_root() -> Chain:
    return _leaf_under(_root(sha1=True))


def _root_not_identifying_itself() -> Chain:
    other = ec.generate_private_key(ec.SECP256R1())
    root = _root(aki_of=other)  # self-issued, but its AKI names another key
    return Chain(make(NAME, root), (), (root,))


def _intermediate_as_anchor_without_aki() -> Chain:
    root = _root()
    intermediate = make("certscope profiles intermediate", root, ca=True, aki=False)
    return Chain(make(NAME, intermediate), (), (intermediate,))


def _key_rollover() -> Chain:
    """root -> CA (pathlen 1) -> CA rolled over to a new key (self-issued,
    pathlen 1) -> issuing CA (pathlen 0) -> leaf: valid, since self-issued
    certificates do not count against pathLenConstraint (RFC 5280 4.2.1.9)."""
    root = _root()
    old = make("certscope rollover CA", root, ca=True, path_length=1)
    new_key = ec.generate_private_key(ec.SECP256R1())
    rolled = make("certscope rollover CA", old, ca=True, key=new_key, path_length=1)
    issuing = make("certscope issuing CA", rolled, ca=True, path_length=0)
    return Chain(make(NAME, issuing), (issuing, rolled, old), (root,))


def _directory_name_constraint(permitted: bool) -> Chain:
    subtree = [x509.DirectoryName(_name(NAME))]
    constraint = x509.NameConstraints(subtree, None) if permitted else x509.NameConstraints(None, subtree)
    root = _root(extra=((constraint, True),))
    return Chain(make(NAME, root), (), (root,))


def _critical_unknown_extension() -> Chain:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    return _leaf_under_root(extra=((unknown, True),))


def _wildcard_on_public_suffix() -> Chain:
    root = _root()
    return Chain(make("*.co.uk", root, sans=("*.co.uk",)), (), (root,), name="example.co.uk")


ANY_EKU = x509.ObjectIdentifier("2.5.29.37.0")


@dataclass(frozen=True)
class Rule:
    build: Callable[[], Chain]
    rfc5280: str  # certscope's reason under rfc5280 (s_client agrees: ok <=> verifies)
    webpki: str  # and under webpki
    cabf: bool = False  # a CA/B rule: webpki refuses what s_client accepts


RULES: dict[str, Rule] = {
    "leaf without authorityKeyIdentifier": Rule(lambda: _leaf_under_root(aki=False), "ok", "chain_invalid", cabf=True),
    "RSA-1024 leaf": Rule(lambda: _leaf_under_root(key=_rsa(1024)), "weak_key", "weak_key"),
    "RSA-2040 leaf (112 bits by OpenSSL's estimate)": Rule(lambda: _leaf_under_root(key=_rsa(2040)), "ok", "ok"),
    "RSA-1962 leaf (104 bits by OpenSSL's estimate)": Rule(
        lambda: _leaf_under_root(key=_rsa(1962)), "weak_key", "weak_key"
    ),
    "RSA-1963 leaf (112 bits by OpenSSL's estimate)": Rule(
        lambda: _leaf_under_root(key=_rsa(1963)), "ok", "weak_key", cabf=True
    ),
    "RSA-1024 intermediate": Rule(lambda: _under_intermediate(key=_rsa(1024)), "weak_key", "weak_key"),
    "SHA-1 signature on the leaf": Rule(lambda: _leaf_under_root(sha1=True), "weak_signature", "weak_signature"),
    "SHA-1 signature on the intermediate": Rule(
        lambda: _under_intermediate(sha1=True), "weak_signature", "weak_signature"
    ),
    "SHA-1 self-signature on the trust anchor": Rule(_sha1_root, "ok", "ok"),
    "leaf EKU clientAuth only": Rule(
        lambda: _leaf_under_root(eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)), "chain_invalid", "chain_invalid"
    ),
    "leaf keyUsage keyCertSign only": Rule(
        lambda: _leaf_under_root(usage=_usage(cert_sign=True)), "chain_invalid", "chain_invalid"
    ),
    "CA without keyUsage": Rule(lambda: _under_intermediate(usage=None), "ok", "ok"),
    "CA keyUsage without keyCertSign": Rule(
        lambda: _under_intermediate(usage=_usage(crl_sign=True)), "chain_invalid", "chain_invalid"
    ),
    "intermediate EKU clientAuth only": Rule(
        lambda: _under_intermediate(eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)), "chain_invalid", "chain_invalid"
    ),
    "unknown critical extension in the leaf": Rule(_critical_unknown_extension, "chain_invalid", "chain_invalid"),
    "trust anchor whose AKI names another key": Rule(_root_not_identifying_itself, "chain_invalid", "chain_invalid"),
    "intermediate trusted without AKI": Rule(_intermediate_as_anchor_without_aki, "chain_invalid", "chain_invalid"),
    "key rollover under pathLenConstraint": Rule(_key_rollover, "ok", "ok"),
    "directoryName constraint permits the leaf": Rule(lambda: _directory_name_constraint(True), "ok", "ok"),
    "directoryName constraint excludes the leaf": Rule(
        lambda: _directory_name_constraint(False), "chain_invalid", "chain_invalid"
    ),
    # CA/Browser Forum rules: webpki only.
    "leaf without extendedKeyUsage": Rule(lambda: _leaf_under_root(eku=None), "ok", "chain_invalid", cabf=True),
    "leaf with anyExtendedKeyUsage": Rule(
        lambda: _leaf_under_root(eku=(ExtendedKeyUsageOID.SERVER_AUTH, ANY_EKU)), "ok", "chain_invalid", cabf=True
    ),
    "leaf CN not among its SANs": Rule(
        lambda: _leaf_under_root(subject=_name("other.test")), "ok", "chain_invalid", cabf=True
    ),
    "leaf serial number zero": Rule(lambda: _leaf_under_root(serial=0), "ok", "chain_invalid", cabf=True),
    "RSA-2052 leaf, not a multiple of 8 bits": Rule(
        lambda: _leaf_under_root(key=_rsa(2052)), "ok", "weak_key", cabf=True
    ),
    "intermediate without AKI": Rule(lambda: _under_intermediate(aki=False), "ok", "chain_invalid", cabf=True),
    "root with extendedKeyUsage": Rule(
        lambda: _leaf_under(_root(eku=(ExtendedKeyUsageOID.SERVER_AUTH,))),
        "ok",
        "chain_invalid",
        cabf=True,
    ),
    "wildcard directly on a public suffix": Rule(_wildcard_on_public_suffix, "ok", "hostname_mismatch", cabf=True),
}


@pytest.fixture
def serve_chain(tmp_path: Path) -> Iterator[Callable[[Chain], tuple[servers.ServerProcess, Path]]]:
    started: list[servers.ServerProcess] = []

    def start(chain: Chain) -> tuple[servers.ServerProcess, Path]:
        (tmp_path / "leaf.pem").write_bytes(chain.leaf.pem)
        (tmp_path / "leaf.key").write_bytes(chain.leaf.key_pem)
        (tmp_path / "leaf.key").chmod(0o600)
        intermediates = None
        if chain.intermediates:
            intermediates = tmp_path / "chain.pem"
            intermediates.write_bytes(b"".join(m.pem for m in chain.intermediates))
        trusted = tmp_path / "trusted.pem"
        trusted.write_bytes(b"".join(m.pem for m in chain.trusted))
        # Security level 0 on the server: it must present weak keys and signatures
        # for the clients to judge them.
        server = servers.openssl_s_server(
            tmp_path / "leaf.pem",
            tmp_path / "leaf.key",
            intermediates,
            extra_args=["-cipher", "DEFAULT@SECLEVEL=0"],
            workdir=tmp_path / "s_server",
        )
        started.append(server)
        return server, trusted

    yield start
    for server in started:
        server.stop()


def s_client_verifies(port: int, name: str, trusted: Path) -> bool:
    """``openssl s_client -verify_return_error``: does OpenSSL (security level 2)
    complete the handshake, chain and name verified?"""
    done = subprocess.run(
        [
            *("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name, "-verify_return_error"),
            *("-verify_hostname", name, "-CAfile", str(trusted), "-no-CApath", "-no-CAstore"),
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode == 0 and "Verify return code: 0 (ok)" in done.stdout


def probe_reason(port: int, name: str, trusted: Path, profile: str) -> tuple[str, str]:
    target = f"{name}:{port}@127.0.0.1"
    settings = TlsSettings(
        targets=(target,),
        trust=TrustSettings(system=False, ca_files=(str(trusted),)),
        verify=VerifySettings(profile=profile),
    )
    result = TlsProbe(settings).run(target, ProbeContext(deadline=time.monotonic() + 10))
    return result.reason.value, result.message


@pytest.mark.filterwarnings("ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("rule", list(RULES))
def test_profile_verdicts_equal_openssl_s_client(rule: str, serve_chain: Any) -> None:
    spec = RULES[rule]
    chain = spec.build()
    server, trusted = serve_chain(chain)
    openssl_ok = s_client_verifies(server.port, chain.name, trusted)
    rfc5280, rfc5280_message = probe_reason(server.port, chain.name, trusted, RFC5280)
    webpki, webpki_message = probe_reason(server.port, chain.name, trusted, WEBPKI)
    assert (rfc5280, webpki) == (spec.rfc5280, spec.webpki), (rfc5280_message, webpki_message)
    assert (rfc5280 == "ok") == openssl_ok, f"rfc5280 says {rfc5280}, s_client {'accepts' if openssl_ok else 'refuses'}"
    assert ((webpki == "ok") == openssl_ok) != spec.cabf, "webpki differs from s_client only on CA/B rules"
    for reason, message in ((rfc5280, rfc5280_message), (webpki, webpki_message)):
        if reason in ("weak_key", "weak_signature"):
            # The message names the certificate and the rule.
            assert re.search(r"the leaf|intermediate 1|the trust anchor", message), message
            assert "security level 2" in message or "CA/B" in message, message


@pytest.mark.filterwarnings("ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning")
def test_the_default_profile_follows_the_trust_store() -> None:
    system = TlsProbe(TlsSettings(targets=("a.test:443",)), ProbeDefaults(trust=TrustSettings(system=True)))
    private = TlsProbe(TlsSettings(targets=("a.test:443",), trust=TrustSettings(system=False)))
    chosen = TlsProbe(
        TlsSettings(targets=("a.test:443",), trust=TrustSettings(system=False), verify=VerifySettings(WEBPKI))
    )
    assert (system.profile, private.profile, chosen.profile) == (WEBPKI, RFC5280, WEBPKI)


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"verify": {"profile": "browser"}}, "verify.profile: must be one of webpki, rfc5280, got 'browser'"),
        (
            {"http": {"fail_if_body_not_matches_regexp": ["(unclosed"]}},
            "http.fail_if_body_not_matches_regexp[0]: not a regular expression",
        ),
        (
            {"http": {"fail_if_header_not_matches": [{"header": "X-Client-DN", "regexp": "[a-"}]}},
            "http.fail_if_header_not_matches[0].regexp: not a regular expression",
        ),
        (
            {"http": {"fail_if_header_matches": [{"header": "Bad Name:", "regexp": "x"}]}},
            "http.fail_if_header_matches[0].header: not a header name",
        ),
        (
            {"http": {"method": "HEAD", "fail_if_body_matches_regexp": ["x"]}},
            "http.method: a HEAD answer has no body for the body regexps",
        ),
    ],
)
def test_bad_settings_are_refused_by_name(settings: dict[str, Any], complaint: str) -> None:
    entry = {"name": "web", "kind": "tls", "targets": ["a.test:443"], **settings}
    with pytest.raises(ConfigError) as refused:
        parse_config(yaml.safe_dump({"probes": [entry]}), "test.yaml")
    assert f"probes[0].{complaint}" in str(refused.value)


# -- the client certificate's identity reaches the application ------------------------


def _identity_nginx(files: servers.TlsFiles, directory: Path) -> tuple[servers.ServerProcess, int, int]:
    """One nginx, three servers: a plain-HTTP backend on port B that echoes the
    X-Client-DN it receives (in the body and as X-Seen-Client-DN), and two mTLS
    front ends proxying to it: port P passes ``$ssl_client_s_dn``, port S drops it
    (an ingress misconfigured).  Returns (server, P, S)."""
    directory.mkdir(parents=True, exist_ok=True)
    leaf = files.localhost
    fullchain = directory / "fullchain.pem"
    fullchain.write_bytes(leaf.cert.read_bytes() + (leaf.chain.read_bytes() if leaf.chain else b""))
    backend, passing, stripping = (servers.free_port() for _ in range(3))

    def front(port: int, dn: str) -> str:
        return f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {fullchain};
        ssl_certificate_key {leaf.key};
        ssl_client_certificate {files.client_ca};
        ssl_verify_client on;
        location / {{
            proxy_set_header X-Client-DN {dn};
            proxy_pass http://127.0.0.1:{backend};
        }}
    }}"""

    config = servers.write_nginx_conf(
        directory,
        f"""
    server {{
        listen 127.0.0.1:{backend};
        location / {{
            add_header X-Seen-Client-DN "$http_x_client_dn" always;
            return 200 "client-dn=$http_x_client_dn\\n";
        }}
    }}
    {front(passing, "$ssl_client_s_dn")}
    {front(stripping, '""')}""",
    )
    server = servers.nginx_process(directory, config, passing)
    server.wait_ready(
        lambda: all(servers.listening(server.pid, p) for p in (backend, passing, stripping)),
        failed=re.compile(r"\[emerg\]"),
    )
    return server, passing, stripping


@pytest.fixture(scope="module")
def identity_nginx(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[servers.TlsFiles, int, int]]:
    directory = tmp_path_factory.mktemp("identity")
    files = servers.write_tls_files(servers.build_tls_pki(pki), directory / "pki")
    server, passing, stripping = _identity_nginx(files, directory / "nginx")
    yield files, passing, stripping
    server.stop()


def _identity_probe(files: servers.TlsFiles, port: int, http: dict[str, Any]) -> tuple[str, str, int | None]:
    entry = {
        "name": "identity",
        "kind": "tls",
        "targets": [f"localhost:{port}"],
        "trust": {"system": False, "ca_files": [str(files.root_ca)]},
        "client_cert": {"cert_file": str(files.client.cert), "key_file": str(files.client.key)},
        "http": {"path": "/", **http},
    }
    config = parse_config(yaml.safe_dump({"probes": [entry]}), "identity.yaml").probes[0]
    result = TlsProbe(config.settings, config.defaults).run(
        f"localhost:{port}", ProbeContext(deadline=time.monotonic() + 10)
    )
    return result.reason.value, result.message, result.facts.http_status if result.facts else None


DN = r"CN=client\.localhost"


def test_the_client_identity_reaches_the_backend(identity_nginx: tuple[servers.TlsFiles, int, int]) -> None:
    files, passing, stripping = identity_nginx
    body = {"fail_if_body_not_matches_regexp": [f"client-dn={DN}"]}
    header = {"fail_if_header_not_matches": [{"header": "X-Seen-Client-DN", "regexp": DN}]}
    assert _identity_probe(files, passing, body)[0] == "ok"
    assert _identity_probe(files, passing, header)[0] == "ok"
    reason, message, status = _identity_probe(files, stripping, body)
    assert (reason, status) == ("http_unexpected_body", 200), message
    assert "client-dn=" in message and "does not match" in message
    reason, message, _ = _identity_probe(files, stripping, header)
    assert reason == "http_unexpected_header", message
    assert "X-Seen-Client-DN" in message and "CN=client.localhost" not in message.replace("\\", ""), message
    # The opposite rules: what must not be there.
    assert _identity_probe(files, stripping, {"fail_if_body_matches_regexp": ["client-dn=\\n"]})[0] == (
        "http_unexpected_body"
    )
    rule = {"fail_if_header_matches": [{"header": "X-Seen-Client-DN", "regexp": "CN=", "allow_missing": True}]}
    assert _identity_probe(files, passing, rule)[0] == "http_unexpected_header"
    missing = {"fail_if_header_not_matches": [{"header": "X-Absent", "regexp": "."}]}
    assert _identity_probe(files, passing, missing)[0] == "http_unexpected_header"
    allowed = {"fail_if_header_not_matches": [{"header": "X-Absent", "regexp": ".", "allow_missing": True}]}
    assert _identity_probe(files, passing, allowed)[0] == "ok"


def test_certscope_probe_takes_the_profile(serve_chain: Any) -> None:
    """``certscope probe --verify-profile``: a leaf without authorityKeyIdentifier
    under a private CA is fine by default (rfc5280 with --ca-file), not under webpki."""
    chain = _leaf_under_root(aki=False)
    server, trusted = serve_chain(chain)

    def probe(*extra: str) -> dict[str, Any]:
        command = [sys.executable, "-m", "exporter", "probe", f"127.0.0.1:{server.port}", "--server-name", NAME]
        done = subprocess.run(
            [*command, "--ca-file", str(trusted), "--output", "json", *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        document: dict[str, Any] = json.loads(done.stdout)
        return document

    assert probe()["reason"] == "ok"
    webpki = probe("--verify-profile", "webpki")
    assert webpki["reason"] == "chain_invalid" and "authorityKeyIdentifier" in webpki["message"], webpki


def test_the_cause_to_fix_first_is_reported() -> None:
    """Several problems at once: a bad signature before a weak key, a weak key
    before a missing extension; each message names the certificate."""
    root = _root()
    impostor = _root()  # same name, another key
    trust = TrustStore([root.cert])
    cases = {
        "bad signature, weak key, no AKI, no EKU": (
            make(NAME, impostor, key=_rsa(1024), aki=False, eku=None),
            "chain_invalid",
            "the signature of the leaf (CN=a.test) does not verify with the key of the trust anchor",
        ),
        "weak key, no AKI, no EKU": (
            make(NAME, root, key=_rsa(1024), aki=False, eku=None),
            "weak_key",
            "the leaf (CN=a.test) has an RSA-1024 key",
        ),
        "no AKI": (make(NAME, root, aki=False), "chain_invalid", "CN=a.test: lacks the authorityKeyIdentifier"),
    }
    for what, (leaf, reason, message) in cases.items():
        verdict = verify_served_chain([leaf.cert], trust, NAME, dt.datetime.now(dt.UTC), profile=WEBPKI)
        assert (verdict.reason.value, message in verdict.message) == (reason, True), (what, verdict.message)


@pytest.mark.parametrize("common_name", [NAME + "\x00.evil.test", "10.0.0.1\x00.evil.test"])
def test_a_null_prefix_common_name_is_refused_not_an_internal_error(common_name: str, serve_chain: Any) -> None:
    """A leaf whose CN hides a NUL ("a.test\\0.evil.test", the null-prefix attack) made
    the CA/B CN rule raise (inet_aton refuses a NUL with ValueError), so the target
    showed internal_error.  webpki refuses it as a CN that copies no SAN; rfc5280 and
    OpenSSL, which match names against the SANs only, accept it."""
    root = _root()
    chain = Chain(make(NAME, root, subject=_name(common_name)), (), (root,))
    server, trusted = serve_chain(chain)
    webpki, message = probe_reason(server.port, NAME, trusted, WEBPKI)
    assert webpki == "chain_invalid", message
    assert "not a character-for-character copy" in message and "\\x00" in message, message
    assert probe_reason(server.port, NAME, trusted, RFC5280)[0] == "ok"
    assert s_client_verifies(server.port, NAME, trusted)
