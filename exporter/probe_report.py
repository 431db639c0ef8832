"""``certscope probe HOST:PORT``: one handshake, explained for a person.

It runs the same ``tls`` probe the daemon runs and prints the chain as sent, the
verdict with its reason, TLS version and cipher, the client-auth outcome and the
phase timings; ``--output json`` prints the same as a document.  Exit status: 0
when the probe succeeds, 1 when it fails, 2 on bad arguments.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from probes.context import ProbeContext
from probes.expect import Expect
from probes.result import ProbeResult
from probes.revocation import RevocationSettings
from probes.settings import ProbeDefaults, TrustSettings
from probes.tls import ClientCert, HttpCheck, TlsProbe, TlsSettings
from probes.tls_facts import TlsFacts
from probes.verify import VerifySettings


def probe_once(settings: TlsSettings, timeout: float, allow_networks: tuple[str, ...] = ()) -> ProbeResult:
    probe = TlsProbe(settings, ProbeDefaults(allow_networks=allow_networks))
    target = probe.targets().targets[0]
    return probe.run(target, ProbeContext(deadline=time.monotonic() + timeout, probe_name="cli"))


def build_settings(
    target: str,
    *,
    server_name: str | None = None,
    starttls: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    client_pkcs12: str | None = None,
    client_password_env: str | None = None,
    ca_files: tuple[str, ...] = (),
    system_trust: bool | None = None,
    verify_profile: str | None = None,
    alpn: tuple[str, ...] = (),
    http_path: str | None = None,
    expect_status: tuple[int, ...] = (200,),
    expect_names: tuple[str, ...] = (),
    ocsp: bool = False,
    crl: bool = False,
) -> TlsSettings:
    client = None
    if client_cert or client_key or client_pkcs12:
        client = ClientCert(
            cert_file=client_cert, key_file=client_key, pkcs12_file=client_pkcs12, password_env=client_password_env
        )
    return TlsSettings(
        targets=(target,),
        server_name=server_name,
        starttls=starttls,
        client_cert=client,
        # With --ca-file the system store is off unless asked for, as with curl --cacert.
        trust=TrustSettings(system=not ca_files if system_trust is None else system_trust, ca_files=ca_files),
        alpn=alpn,
        http=HttpCheck(path=http_path, expect_status=expect_status) if http_path else None,
        expect=Expect(names=expect_names) if expect_names else None,
        verify=VerifySettings(profile=verify_profile) if verify_profile else None,
        revocation=RevocationSettings(ocsp=ocsp, crl=crl) if ocsp or crl else None,
    )


def report(target: str, result: ProbeResult, output: str, stream: TextIO = sys.stdout) -> None:
    document = _document(target, result)
    if output == "json":
        json.dump(document, stream, indent=2)
        stream.write("\n")
        return
    write = stream.write
    write(f"{target}: {'OK' if result.success else 'FAILED'} ({result.reason.value})\n")
    if result.message:
        write(f"  {result.message}\n")
    tls = document["tls"]
    if tls:
        write(f"  connected to {tls['address']}, SNI {tls['server_name'] or '(none)'}\n")
        write(f"  {tls['version']} {tls['cipher']}" + (f", ALPN {tls['alpn']}" if tls["alpn"] else "") + "\n")
        hostname = {True: "matches", False: "DOES NOT MATCH", None: "not checked"}[tls["hostname_match"]]
        write(
            f"  chain verified: {'yes' if tls['chain_verified'] else 'NO'}; complete: "
            f"{'yes' if tls['chain_complete'] else 'NO'}; hostname {hostname}\n"
        )
        write(f"  client auth: {tls['client_auth']}")
        write(f"; HTTP {tls['http_status']}\n" if tls["http_status"] is not None else "\n")
    write("  certificates:\n")
    for cert in document["certificates"]:
        write(f"    [{cert['index']}] {cert['role']}: {cert['subject'] or '(empty subject)'}\n")
        write(f"        issuer     {cert['issuer']}\n")
        write(f"        not after  {cert['not_after']} ({cert['days_left']:.1f} days left)\n")
        write(f"        key        {cert['key']}, {cert['signature_algorithm']}\n")
        if cert["sans"]:
            write(f"        sans       {', '.join(cert['sans'])}\n")
        write(f"        sha256     {cert['fingerprint_sha256']}\n")
    for check in document["revocation"]:
        line = f"  revocation [{check['index']}] {check['method']}: {check['state']}"
        if check["source"]:
            line += f" from {check['source']}"
        if check["message"]:
            line += f" ({check['message']})"
        write(line + "\n")
    timings = ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in document["phases"].items())
    write(f"  timings: {timings}; total {result.duration_seconds * 1000:.1f} ms\n")


def _document(target: str, result: ProbeResult) -> dict[str, Any]:
    now = time.time()
    tls = result.facts if isinstance(result.facts, TlsFacts) else None
    return {
        "target": target,
        "success": result.success,
        "reason": result.reason.value,
        "message": result.message,
        "duration_seconds": result.duration_seconds,
        "phases": dict(result.phases),
        "tls": None
        if tls is None
        else {
            "address": tls.address,
            "server_name": tls.server_name,
            "version": tls.version,
            "cipher": tls.cipher,
            "alpn": tls.alpn,
            "chain_verified": tls.chain_verified,
            "chain_complete": tls.chain_complete,
            "hostname_match": tls.hostname_match,
            "client_auth": tls.client_auth,
            "http_status": tls.http_status,
            "handshake_seconds": tls.handshake_seconds,
        },
        "revocation": [
            {
                "index": r.index,
                "role": r.role,
                "method": r.method,
                "state": r.state,
                "reason": r.reason.value,
                "source": r.source,
                "message": r.message,
                "stale": r.stale,
                "revocation_time": _iso(r.revocation_time) if r.revocation_time else None,
                "revocation_reason": r.revocation_reason,
                "next_update": _iso(r.next_update) if r.next_update else None,
            }
            for r in result.revocation
        ],
        "certificates": [
            {
                "index": o.index,
                "role": o.role,
                "subject": o.cert.subject,
                "issuer": o.cert.issuer,
                "sans": list(o.cert.sans),
                "not_before": _iso(o.cert.not_before),
                "not_after": _iso(o.cert.not_after),
                "days_left": round((o.cert.not_after - now) / 86400, 2),
                "key": f"{o.cert.key_type}-{o.cert.key_bits}",
                "signature_algorithm": o.cert.signature_algorithm,
                "fingerprint_sha256": o.cert.fingerprint_sha256,
            }
            for o in result.certificates
        ],
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
