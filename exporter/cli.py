"""``certscope`` command line: ``run`` (the daemon), ``check-config`` and ``scan``.

Flags follow Prometheus habits (``--config.file``, ``--web.listen-address``,
``--log.level``, ``--log.format``); ``certscope --config.file=x`` without a command
means ``run``.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import warnings

from cryptography.utils import CryptographyDeprecationWarning

from exporter import __version__
from exporter.config import ConfigError, default_config, load_config
from exporter.logs import setup_logging
from probes.settings import Shard, parse_duration

ALLOW_HELP = "let revocation URLs reach this network (loopback and link-local are refused otherwise)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="certscope", description="Certificate observability for Prometheus.")
    parser.add_argument("--version", action="version", version=f"certscope {__version__}")
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("run", help="run the daemon (the default command)")
    run.add_argument("--config.file", dest="config_file", help="YAML config; the embedded default when absent")
    run.add_argument("--web.listen-address", dest="listen_address", help="host:port (default 127.0.0.1:9754)")
    run.add_argument(
        "--web.config.file",
        dest="web_config_file",
        help="TLS, client certificates and basic auth (exporter-toolkit format); wins over web.config_file",
    )
    run.add_argument(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="serve POST /-/reload (off by default: it needs no credentials without a web config); SIGHUP works anyway",
    )
    run.add_argument(
        "--shard.index",
        dest="shard_index",
        default="0",
        help="this replica's shard, 0..count-1, or 'hostname' for the ordinal ending a StatefulSet pod's name",
    )
    run.add_argument("--shard.count", dest="shard_count", type=int, default=1, help="replicas sharing the work")
    run.add_argument("--log.level", dest="log_level", default="info", choices=["debug", "info", "warn", "error"])
    run.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"])

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", nargs="?", help="the config file; the embedded default when absent")
    check.add_argument("--web.config.file", dest="web_config_file", help="also validate this web config file")

    scan = commands.add_parser("scan", help="list the certificates in files and what is wrong with them")
    scan.add_argument("paths", nargs="+", metavar="PATH", help="files, directories or globs (quote globs)")
    scan.add_argument("--warn", default="28d", help="exit 1 when a certificate expires within this (default 28d)")
    scan.add_argument("--output", choices=["table", "json"], default="table")
    scan.add_argument(
        "--pkcs12-password-env", metavar="VAR", help="environment variable holding the PKCS#12 (and JKS/JCEKS) password"
    )
    scan.add_argument(
        "--pkcs12-password-file", metavar="FILE", help="file holding the PKCS#12 (and JKS/JCEKS) password"
    )
    scan.add_argument("--ocsp", action="store_true", help="check OCSP for certificates whose issuer is scanned too")
    scan.add_argument("--crl", action="store_true", help="check the CRLs of certificates whose issuer is scanned too")
    scan.add_argument("--allow-network", action="append", default=[], metavar="CIDR", help=ALLOW_HELP)

    probe = commands.add_parser("probe", help="one TLS handshake to HOST:PORT, explained")
    probe.add_argument("target", metavar="HOST:PORT")
    probe.add_argument("--server-name", help="SNI and the name to verify (default: the host)")
    probe.add_argument("--starttls", choices=["smtp", "imap", "pop3", "ftp", "postgres", "ldap", "xmpp"])
    probe.add_argument("--client-cert", metavar="PEM", help="client certificate (mTLS)")
    probe.add_argument("--client-key", metavar="PEM", help="its private key")
    probe.add_argument("--client-pkcs12", metavar="FILE", help="client certificate and key as PKCS#12")
    probe.add_argument("--client-password-env", metavar="VAR", help="environment variable with the key password")
    probe.add_argument(
        "--ca-file", action="append", default=[], help="trust anchors (repeatable); turns the system store off"
    )
    probe.add_argument("--system-trust", action="store_true", default=None, help="also trust the system store")
    probe.add_argument(
        "--verify-profile",
        choices=["webpki", "rfc5280"],
        help="how the chain is judged (default: webpki with the system store, rfc5280 with --ca-file only)",
    )
    probe.add_argument("--alpn", action="append", default=[], help="ALPN protocol to offer (repeatable)")
    probe.add_argument("--http-path", help="send an HTTP request for this path after the handshake")
    probe.add_argument("--expect-status", type=int, action="append", help="accepted HTTP status (repeatable; 200)")
    probe.add_argument("--expect-name", action="append", default=[], help="a name the leaf must cover (repeatable)")
    probe.add_argument("--ocsp", action="store_true", help="check revocation with the OCSP responders in the chain")
    probe.add_argument("--crl", action="store_true", help="check revocation with the CRL distribution points")
    probe.add_argument("--allow-network", action="append", default=[], metavar="CIDR", help=ALLOW_HELP)
    probe.add_argument("--timeout", default="10s", help="deadline of the whole run (default 10s)")
    probe.add_argument("--output", choices=["table", "json"], default="table")

    commands.add_parser("version", help="print the version")
    return parser


def quiet_library_warnings() -> None:
    """Process-wide warning filters, set once at start-up (never by a module as it
    is imported): real trust stores hold certificates with non-positive serials, and
    cryptography warns on each load, which would flood the log of every scan and
    round.  The test suite sets the same filter in pyproject.toml."""
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)


def main(argv: list[str] | None = None) -> int:
    quiet_library_warnings()
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("--") and args_list[0] not in ("--help", "--version")):
        args_list.insert(0, "run")
    args = _parser().parse_args(args_list)

    if args.command == "version":
        print(f"certscope {__version__}")
        return 0
    if args.command == "check-config":
        return _check_config(args.file, args.web_config_file)
    if args.command == "scan":
        from exporter.scan import scan

        try:
            warn = parse_duration(args.warn)
        except ValueError as exc:
            print(f"certscope scan: --warn: {exc}", file=sys.stderr)
            return 2
        methods = tuple(m for m, wanted in (("ocsp", args.ocsp), ("crl", args.crl)) if wanted)
        return scan(
            args.paths,
            warn,
            args.output,
            args.pkcs12_password_env,
            args.pkcs12_password_file,
            revocation=methods,
            allow_networks=tuple(args.allow_network),
        )

    if args.command == "probe":
        return _probe(args)

    from exporter.daemon import Daemon

    level = "warning" if args.log_level == "warn" else args.log_level
    setup_logging(level, args.log_format)
    try:
        shard = parse_shard(args.shard_index, args.shard_count, socket.gethostname())
    except ValueError as exc:
        print(f"certscope: {exc}", file=sys.stderr)
        return 2
    return Daemon(args.config_file, args.listen_address, args.web_config_file, shard, args.enable_lifecycle).serve()


def parse_shard(index: str, count: int, hostname: str) -> Shard:
    """``--shard.index``/``--shard.count`` -> a Shard; 'hostname' takes the ordinal a
    StatefulSet gives its pods (``certscope-2`` -> 2)."""
    if count < 1:
        raise ValueError(f"--shard.count must be at least 1, got {count}")
    if index == "hostname":
        match = re.search(r"-(\d+)$", hostname)
        if match is None:
            raise ValueError(f"--shard.index=hostname: {hostname!r} does not end in -<ordinal>")
        number = int(match.group(1))
    else:
        try:
            number = int(index)
        except ValueError:
            raise ValueError(f"--shard.index must be a number or 'hostname', got {index!r}") from None
    if not 0 <= number < count:
        raise ValueError(f"--shard.index {number} is outside 0..{count - 1} (--shard.count {count})")
    return Shard(number, count)


def _probe(args: argparse.Namespace) -> int:
    from exporter.probe_report import build_settings, probe_once, report

    try:
        timeout = parse_duration(args.timeout)
        settings = build_settings(
            args.target,
            server_name=args.server_name,
            starttls=args.starttls,
            client_cert=args.client_cert,
            client_key=args.client_key,
            client_pkcs12=args.client_pkcs12,
            client_password_env=args.client_password_env,
            ca_files=tuple(args.ca_file),
            system_trust=args.system_trust,
            verify_profile=args.verify_profile,
            alpn=tuple(args.alpn),
            http_path=args.http_path,
            expect_status=tuple(args.expect_status or (200,)),
            expect_names=tuple(args.expect_name),
            ocsp=args.ocsp,
            crl=args.crl,
        )
        problems = settings.validate() + (settings.client_cert.validate() if settings.client_cert else [])
        if problems:
            raise ValueError("; ".join(f"{name}: {message}" for name, message in problems))
        result = probe_once(settings, timeout, allow_networks=tuple(args.allow_network))
    except (ValueError, OSError) as exc:
        print(f"certscope probe: {exc}", file=sys.stderr)
        return 2
    report(args.target, result, args.output)
    return 0 if result.success else 1


def _check_config(path: str | None, web_config_file: str | None = None) -> int:
    """Reject what the daemon would: the config is loaded and then built as the
    daemon builds it (every probe and its trigger), without starting anything."""
    from exporter.scheduler import build_plan
    from exporter.webconfig import WebConfigError, load_web_config

    try:
        config = load_config(path) if path else default_config()
        build_plan(config).close()
        if web_config_file:
            load_web_config(web_config_file)
    except (ConfigError, WebConfigError) as exc:
        for message in exc.messages:
            print(f"{exc.source}: {message}", file=sys.stderr)
        print(f"{exc.source}: {len(exc.messages)} error(s)", file=sys.stderr)
        return 1
    print(
        f"{config.source}: OK, {len(config.probes)} probe(s): "
        + ", ".join(f"{p.name} ({p.kind})" for p in config.probes)
    )
    return 0
