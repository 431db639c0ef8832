"""Benchmark: the TLS scale curve, a certscope probe round at 100, 1,000 and 5,000 targets
against blackbox_exporter probing the same targets, for RSA, ECDSA and mTLS.

Variants (``--variants``, default ``rsa,ec,mtls-ec``; ``mtls-rsa`` is offered too):

``rsa``
    RSA-2048 leaves under an RSA-2048 CA.
``ec``
    ECDSA P-256 leaves under an ECDSA P-256 CA.
``mtls-ec``
    ECDSA P-256 as ``ec``, and nginx asks for and verifies a client certificate
    (``ssl_verify_client on`` with the client CA).  certscope's probe has a
    ``client_cert`` and an ``http: {path: /}`` check; blackbox's module has
    ``cert_file``/``key_file``.  Why the ``http`` check: over TLS 1.3 the server's verdict
    on a client certificate comes after the handshake, so a probe without an HTTP round
    trip waits up to ``client_auth_wait`` for a rejection that nginx, having accepted
    the certificate, never sends; with the check, nginx's 200 proves acceptance at once.
    This is an asymmetry, stated: blackbox's ``tcp`` module sends no HTTP request, so on
    this variant certscope does one HTTP/1.1 round trip per probe (and nginx answers it)
    that blackbox does not, and blackbox cannot tell an accepted client certificate from
    a rejected one (``bench/tls_probe.py`` has the variants without the check).

Setup, once per run:

PKI
    Per key kind, a CA (and, for mTLS, a clientAuth leaf under it); per variant, one leaf
    per endpoint, each with its own key (SANs ``DNS:t<i>.<variant>.tls-scale.test`` and
    ``IP:127.0.0.1``), issued with the tests' ``tests.fixtures.pki.issue``; every endpoint serves
    leaf + CA.  A fleet of N endpoints is N distinct certificates with N distinct keys,
    so certscope's per-chain caches (``probes.verify.ChainMemo``: facts by DER, verdicts by
    (chain, name)) start empty for every target of a first round.  Leaves are issued in a
    process pool (one process per core).  RSA-2048 key generation costs about 60 ms a key
    here (5 minutes of CPU for 5,000), so RSA leaf keys are kept between runs in
    ``<out>/tls-scale-keys/<variant>/key-<i>.pem`` (mode 0600; throw-away keys of this
    benchmark only) and only the missing ones are generated; the certificates are issued
    anew every run.  Within a run every leaf still has its own key; across runs the same
    keys come back.  ``--shared-cert`` serves one certificate from every endpoint of a
    variant instead, which isolates the handshake from the certificate work.
nginx
    One nginx (2 workers, full handshakes only: no session cache, no tickets; TLS 1.2 and
    1.3) listening on ``max(--sizes)`` ports of 127.0.0.1 per variant, one ``server`` per
    port with its own certificate.  Targets are ``127.0.0.1:<port>``: distinct endpoints for
    certscope and blackbox alike, with nothing to resolve.  Distinct SNI names on one port
    would need N names resolving to 127.0.0.1 (an /etc/hosts edit or a DNS server on a
    shared machine), and both certscope's ``server_name`` and blackbox's
    ``tls_config.server_name`` are per probe/module, not per target.  nginx handles
    thousands of listening sockets well: each is one entry in each worker's epoll set
    (``worker_connections`` is sized for them).  The ports are OS-chosen and race-free: this
    script binds and listens on them, then hands the sockets to nginx through its ``NGINX``
    inherited-sockets variable (the mechanism of its binary upgrade), so no other process
    can take a port in between.
blackbox_exporter
    Debian's ``prometheus-blackbox-exporter``, one ``tcp`` module with ``tls: true`` and the
    CA file per variant (it verifies the chain and the IP SAN, as certscope does).

Measured, for each repetition, size N and variant, interleaved (the two sides back to back,
their order alternating per repetition; sizes swept inside each repetition and the variants
rotated inside each size, so that the machine's changing load spreads over all of them),
medians reported:

``certscope``
    A fresh child process.  It loads a config with one ``tls`` probe of N targets with the
    real loader (``exporter.config.load_config``; ``global.concurrency`` = ``--concurrency``,
    default 64, the concurrency the "1,000 endpoints" goal is stated at; the daemon's
    built-in default is 16), builds ``ResultStore`` + ``Scheduler`` + ``WebApp`` as
    ``exporter.daemon`` does and calls ``Scheduler.apply(config)``: the APScheduler job runs
    the daemon's round (``Scheduler._round``: discovery, fan-out of ``run_target`` over the
    target pool, ``publish_round``).  That is the **first round**: a new process, caches
    cold.  Then the second round of the same probe objects is triggered (the job's next run
    time set to now): the **second round**, caches warm.  Per round: wall seconds (the
    scheduler's own round timer plus ``publish_round``), process CPU (user + sys, all
    threads) per target, cyclic-GC seconds, and the share of round-2 certificates served
    from the memo.  After each round, one ``GET /metrics`` through the WSGI app (text
    format, then gzip, each the first render of that snapshot).  Memory: peak RSS
    (``VmHWM``, reset after imports) and retained RSS (``VmRSS`` after the second round and
    its renders: results, memo, cached expositions) growth per target.
``blackbox``
    ``wrk`` (one thread, ``--concurrency`` keep-alive connections) requesting
    ``/probe?module=<variant's module>&target=127.0.0.1:<port>`` once per target
    (``bench.common.blackbox_round``); a Lua hook counts a probe only if blackbox answered
    200 with ``probe_success 1`` and timestamps the first request and the last answer
    (CLOCK_MONOTONIC through LuaJIT's FFI), which give the wall seconds.  CPU per probe is
    blackbox's own, all threads, in the scheduler's nanoseconds per thread
    (``bench.common.TreeCpu``; ``/proc/<pid>/stat`` counts 10 ms ticks, +-0.1 ms per probe
    at 100 probes).  blackbox keeps no state between probes: each of its rounds is like the
    first.

nginx's CPU per probe is recorded for both sides.  Linearity: the cost per target at each
size over the cost per target at the smallest size.

Goals, per variant (``goals`` in the JSON; ``bench/run.py`` prints one row per goal):

- CPU per probe, certscope over blackbox, <= 1.0 at every size, in the first round and in
  the second.
- A round over 1,000 endpoints no slower than blackbox probing the same 1,000 at the same
  concurrency, first and second round (wall cs/bb <= 1.0).
- Per-target cost at the largest size within 1.2x of the cost at the smallest.
- Memory per TLS target held (retained RSS growth per target after the second round and
  its renders) at 5,000 targets, and at 50,000 derived from a least-squares line
  ``growth(N) = a + b*N`` through the sizes measured (``a`` the fixed part, ``b`` the
  part per target; per target at 50,000 = a / 50,000 + b): at most the figure in
  docs/performance.md before this goal was set (:data:`MEMORY_BEFORE_KIB`).  Loopback
  cannot hold 50,000 servers here (nginx needs a descriptor per listener in each worker,
  and the hard limit is 20,000, which this process may not raise without CAP_SYS_RESOURCE);
  ``--variants ec --sizes 18000 --repeats 1 --no-profile`` measures 18,000, the most that
  fits under it, to check the line.

Profile (full runs, unless ``--no-profile``): one more certscope child at the largest size,
``py-spy record --nonblocking`` attached for both rounds (``--profile-variant``, default
``ec``).

Usage::

    python -m bench.tls_scale [--variants rsa,ec,mtls-ec] [--sizes 100,1000,5000] [--repeats 3]
                              [--concurrency 64] [--shared-cert] [--no-profile] [--profile-variant ec]
                              [--out bench/out] [--quick]

``--quick`` (the smoke test, about 15 s): sizes 20 and 60, one repetition, no profile.
Results are printed and written to ``<out>/tls_scale.json``.  nginx, blackbox, wrk,
py-spy and the certscope children run in their own sessions under ``setpriv --pdeathsig
KILL`` and are stopped at the end, on error, on Ctrl-C and on SIGTERM; nginx also runs in
its own PID namespace when ``unshare`` allows it, so that its workers die with it even if
this script is killed outright.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import ipaddress
import json
import os
import resource
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from bench import common
from probes.event_loop import Loops
from tests.fixtures.pki import DAY, NOW, Issued, PrivateKey, issue

THIS_MODULE = "bench.tls_scale"

DEFAULT_SIZES = (100, 1000, 5000)
QUICK_SIZES = (20, 60)
DEFAULT_CONCURRENCY = 64
PROBE_NAME = "tls_scale"
PROBE_TIMEOUT = "10s"
# Long enough that APScheduler never starts a round of its own after the first one:
# the second round is triggered by this script.
PROBE_INTERVAL = "24h"
PYSPY_RATE = 250
# Goals (issue 21: TLS probing at least as cheap as blackbox_exporter, at every scale).
GOAL_CPU_RATIO = 1.0  # certscope CPU per target <= 1.0x blackbox's CPU per probe
GOAL_ENDPOINTS = 1000  # a round over 1,000 endpoints ...
GOAL_WALL_RATIO = 1.0  # ... no slower than blackbox probing the same 1,000
GOAL_LINEARITY = 1.2  # per-target cost at the largest size within 1.2x of the smallest
MEMORY_SIZE = 5000  # memory per target held, measured here ...
MEMORY_DERIVED_SIZE = 50_000  # ... and derived here
# The "before" figure: docs/performance.md, "TLS scale curve", "Results (medians of 3)",
# 5,000 targets, ECDSA: "retained KiB/target" 45.6 (peak with renders 93.1).  The goal:
# certscope holds at most that per TLS target.
MEMORY_BEFORE_KIB = 45.6
MEMORY_BEFORE_SOURCE = "docs/performance.md before issue 21: 45.6 KiB retained per target at 5,000 (ECDSA)"
POOL_THRESHOLD = 400  # leaves: fewer are issued in this process (a pool costs more to start)


@dataclass(frozen=True)
class Variant:
    """One fleet: the key kind of its certificates, and whether nginx asks for a client
    certificate."""

    name: str
    key_kind: Literal["rsa", "ec"]
    mtls: bool
    description: str

    @property
    def module(self) -> str:
        """blackbox's module for it."""
        return "tls_scale_" + self.name.replace("-", "_")


VARIANTS = {
    v.name: v
    for v in (
        Variant("rsa", "rsa", False, "RSA-2048 leaf and CA"),
        Variant("ec", "ec", False, "ECDSA P-256 leaf and CA"),
        Variant(
            "mtls-ec",
            "ec",
            True,
            "ECDSA P-256, client certificate required (nginx ssl_verify_client on); "
            "certscope: client_cert + http GET / (nginx's 200 proves acceptance); "
            "blackbox: cert_file/key_file, no HTTP",
        ),
        Variant(
            "mtls-rsa",
            "rsa",
            True,
            "RSA-2048, client certificate required; certscope: client_cert + http GET /; blackbox: no HTTP",
        ),
    )
}
DEFAULT_VARIANTS = ("rsa", "ec", "mtls-ec")


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class LeafJob:
    """Leaves ``start`` to ``stop - 1`` of one variant (picklable: run in a pool process)."""

    pki: str  # the PKI directory: <kind>-ca.pem / .key; the leaves go to <pki>/<variant>/
    variant: str
    kind: Literal["rsa", "ec"]
    start: int
    stop: int
    key_cache: str | None  # where this variant's leaf keys are kept between runs


def _leaf_key(kind: Literal["rsa", "ec"], cache: Path | None, index: int) -> tuple[PrivateKey, bool]:
    """Leaf ``index``'s key, from the cache when it holds one; (key, newly generated)."""
    if cache is None:
        return common.private_key(kind), True
    path = cache / f"key-{index}.pem"
    if path.exists():
        # The cache is this benchmark's own output: the RSA consistency check (about
        # 1 ms a key) proves nothing here.
        key = serialization.load_pem_private_key(path.read_bytes(), None, unsafe_skip_rsa_key_validation=True)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise RuntimeError(f"{path}: not an RSA or EC private key (delete it to have it generated anew)")
        return key, False
    key = common.private_key(kind)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    partial.replace(path)  # whole or absent, even if this run is killed
    return key, True


def write_leaves(job: LeafJob) -> tuple[int, int]:
    """Issue and write one job's leaves (``leaf-<i>.pem``: leaf + CA; ``leaf-<i>.key``);
    returns (keys generated, keys taken from the cache)."""
    pki = Path(job.pki)
    ca_pem = (pki / f"{job.kind}-ca.pem").read_bytes()
    ca_key = serialization.load_pem_private_key((pki / f"{job.kind}-ca.key").read_bytes(), None)
    if not isinstance(ca_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise RuntimeError(f"{pki}/{job.kind}-ca.key: not an RSA or EC private key")
    ca = Issued(x509.load_pem_x509_certificate(ca_pem), ca_key)
    cache = Path(job.key_cache) if job.key_cache else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    loopback = x509.IPAddress(ipaddress.ip_address(common.HOST))
    directory = pki / job.variant
    generated = cached = 0
    for index in range(job.start, job.stop):
        key, new = _leaf_key(job.kind, cache, index)
        generated, cached = generated + new, cached + (not new)
        name = f"t{index}.{job.variant}.tls-scale.test"
        sans = x509.SubjectAlternativeName([x509.DNSName(name), loopback])
        leaf = issue(name, ca, key=key, not_after=NOW + (30 + index % 60) * DAY, extra_extensions=(sans,))
        (directory / f"leaf-{index}.pem").write_bytes(leaf.pem + ca_pem)
        (directory / f"leaf-{index}.key").write_bytes(leaf.key_pem)
    return generated, cached


def write_pki(directory: Path, variants: Sequence[Variant], count: int, key_cache: Path | None) -> dict[str, Any]:
    """Per key kind ``<kind>-ca.pem`` (+ ``.key``) and, if an mTLS variant uses it,
    ``<kind>-client.pem`` / ``.key`` (EKU clientAuth); per variant ``<variant>/leaf-<i>.pem``
    and ``.key`` for i < count, every leaf with its own key (a fleet does not share keys,
    and key reuse is a finding of its own).  RSA leaf keys come from ``key_cache`` when it
    holds them.  Returns how many keys were generated and taken from the cache."""
    directory.mkdir(parents=True, exist_ok=True)
    for kind in sorted({v.key_kind for v in variants}):
        ca = issue(f"tls-scale bench {kind} CA", ca=True, key=common.private_key(kind), not_after=NOW + 3650 * DAY)
        (directory / f"{kind}-ca.pem").write_bytes(ca.pem)
        (directory / f"{kind}-ca.key").write_bytes(ca.key_pem)
        if any(v.mtls and v.key_kind == kind for v in variants):
            client = issue(
                f"tls-scale bench {kind} client",
                ca,
                key=common.private_key(kind),
                extended_key_usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
            )
            (directory / f"{kind}-client.pem").write_bytes(client.pem)
            (directory / f"{kind}-client.key").write_bytes(client.key_pem)
    workers = os.cpu_count() or 1
    chunk = max(1, -(-count // (4 * workers)))  # a few jobs per worker, so that none idles at the end
    jobs: list[LeafJob] = []
    for variant in variants:
        (directory / variant.name).mkdir()
        cache = str(key_cache / variant.name) if key_cache is not None and variant.key_kind == "rsa" else None
        jobs += [
            LeafJob(str(directory), variant.name, variant.key_kind, start, min(count, start + chunk), cache)
            for start in range(0, count, chunk)
        ]
    if count * len(variants) < POOL_THRESHOLD or workers == 1:
        counts = [write_leaves(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            counts = list(pool.map(write_leaves, jobs))
    return {
        "leaves": count * len(variants),
        "keys_generated": sum(g for g, _ in counts),
        "keys_from_cache": sum(c for _, c in counts),
        "key_cache": str(key_cache) if key_cache is not None else None,
    }


# --------------------------------------------------------------------------- processes


def bind_listeners(count: int) -> list[socket.socket]:
    """``count`` listening sockets on OS-chosen ports of 127.0.0.1, for nginx to inherit."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((common.HOST, 0))
            sock.listen(511)  # nginx's default backlog
            # nginx sets O_NONBLOCK only on sockets it opens itself; on a blocking one, the
            # worker that loses the race for a connection blocks in accept() and stalls
            # every handshake it holds (both workers are woken: accept_mutex is off).
            sock.setblocking(False)
            sock.set_inheritable(True)
            sockets.append(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def raise_file_limit(needed: int) -> None:
    """nginx and this script hold one descriptor per listener, plus connections.  The hard
    limit is raised too when this process may (root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            soft, hard = needed, needed
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(needed, hard) if hard != resource.RLIM_INFINITY else needed, hard)
        )
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise SystemExit(f"need {needed} open files (one per listener, plus connections); the limit is {soft}")


def start_nginx_fleet(
    workdir: Path,
    pki: Path,
    sockets: Mapping[Variant, Sequence[socket.socket]],
    shared_cert: bool,
    concurrency: int,
) -> common.Managed:
    """nginx on the inherited ``sockets``, one certificate per listener (or one per variant)."""
    servers: list[str] = []
    ports: dict[Variant, list[int]] = {}
    for variant, listeners in sockets.items():
        ports[variant] = [s.getsockname()[1] for s in listeners]
        leaves = pki / variant.name
        verify = (
            f"ssl_verify_client on; ssl_client_certificate {pki}/{variant.key_kind}-ca.pem; " if variant.mtls else ""
        )
        if shared_cert:
            servers.append(common.nginx_server(ports[variant], leaves / "leaf-0.pem", leaves / "leaf-0.key", verify))
        else:
            servers += [
                common.nginx_server([port], leaves / f"leaf-{i}.pem", leaves / f"leaf-{i}.key", verify)
                for i, port in enumerate(ports[variant])
            ]
    # Every listening socket takes a connection slot (and a descriptor) in each worker.
    connections = sum(len(p) for p in ports.values()) + 4 * concurrency + 1024

    def ready() -> bool:
        # The sockets accept in the kernel before any worker runs: wait for real handshakes
        # on the first and the last listener of every fleet (the workers are forked after
        # every certificate is loaded; nginx checks a client certificate after the handshake).
        return all(
            common.handshake_ok(p[i], pki / f"{variant.key_kind}-ca.pem")
            for variant, p in ports.items()
            for i in (-1, 0)
        )

    # Loading 5,000 certificates takes a few seconds, RSA ones longer.
    return common.start_nginx(
        workdir,
        servers,
        ready,
        connections=connections,
        sockets=[s for listeners in sockets.values() for s in listeners],
        timeout=300,
    )


@dataclass(frozen=True)
class OneProcessRun:
    """What a one-process benchmark over an EC fleet was asked for (``fleet_options``)."""

    endpoints: int
    concurrency: int
    repeats: int


def fleet_options(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, OneProcessRun]:
    """``--endpoints``, ``--concurrency`` and ``--repeats`` for the benchmarks that run
    ``TlsProbe`` in their own process over an EC fleet (``bench.cpu_slots``,
    ``bench.first_sight``): 1,000 / 64 / 3 by default, 50 / 16 / 1 with ``--quick``."""
    parser.add_argument("--endpoints", type=int, default=None, help="distinct EC endpoints (default 1000)")
    parser.add_argument("--concurrency", type=int, default=None, help="runs in flight (default 64)")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions (default 3)")
    args = parser.parse_args(argv)
    return args, OneProcessRun(
        endpoints=args.endpoints or (50 if args.quick else 1000),
        concurrency=args.concurrency or (16 if args.quick else 64),
        repeats=args.repeats or (1 if args.quick else 3),
    )


@contextlib.contextmanager
def ec_fleet(endpoints: int, concurrency: int) -> Iterator[tuple[list[str], Path]]:
    """``endpoints`` nginx listeners on 127.0.0.1, each serving its own EC leaf (this
    module's PKI): yields their targets and the CA file to trust; nginx stops after."""
    variant = VARIANTS["ec"]
    with tempfile.TemporaryDirectory(prefix="ec-fleet-") as scratch:
        workdir = Path(scratch)
        write_pki(workdir / "pki", [variant], endpoints, None)
        raise_file_limit(endpoints + 4 * concurrency + 1024)
        sockets = bind_listeners(endpoints)
        nginx = start_nginx_fleet(workdir, workdir / "pki", {variant: sockets}, False, concurrency)
        try:
            yield [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets], workdir / "pki" / f"{variant.key_kind}-ca.pem"
        finally:
            nginx.stop()


def probe_round(probe: Any, targets: Sequence[str], pool: ThreadPoolExecutor | Loops) -> dict[str, float]:
    """``probe.run`` (a ``TlsProbe``) over every target on ``pool`` (threads, or the
    event loops a scheduler round fans out to); raises if any run failed.  The process's CPU per probe
    (``getrusage``), probes/s, voluntary context switches per probe, and the handshake
    durations the probe reported (p50, p99, max: what
    ``certscope_tls_handshake_seconds`` records)."""
    from probes.context import ProbeContext
    from probes.tls_facts import TlsFacts

    results, costs = common.per_unit_costs(
        lambda: [
            future.result()
            for future in [
                pool.submit(lambda t: probe.run(t, ProbeContext(deadline=time.monotonic() + 30)), target)
                for target in targets
            ]
        ],
        len(targets),
    )
    failed = [r.message for r in results if not r.success]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(targets)} runs failed, e.g. {failed[0]}")
    handshakes = sorted(r.facts.handshake_seconds for r in results if isinstance(r.facts, TlsFacts))
    count = len(targets)
    return {
        "cpu_ms_per_probe": costs["cpu_ms"],
        "probes_per_second": costs["per_second"],
        "voluntary_switches_per_probe": costs["voluntary_switches"],
        "handshake_ms_p50": 1e3 * handshakes[count // 2],
        "handshake_ms_p99": 1e3 * handshakes[int(count * 0.99)],
        "handshake_ms_max": 1e3 * handshakes[-1],
    }


# --------------------------------------------------------------------------- certscope child


@dataclass(frozen=True)
class Published:
    round_duration: float  # the scheduler's own timer: discovery to the last result
    publish_seconds: float  # ResultStore.publish_round
    finished: float  # time.monotonic() when publish_round returned
    targets: int


def _scrape(app: Any, gzip: bool) -> tuple[float, bytes]:
    """One GET /metrics through the daemon's WSGI app (no socket): seconds and body."""
    environ = {
        "PATH_INFO": "/metrics",
        "REQUEST_METHOD": "GET",
        "QUERY_STRING": "",
        "HTTP_ACCEPT": "text/plain;version=0.0.4",
        "HTTP_ACCEPT_ENCODING": "gzip" if gzip else "",
    }
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        statuses.append(status)

    started = time.perf_counter()
    body = b"".join(app(environ, start_response))
    seconds = time.perf_counter() - started
    if statuses != ["200 OK"]:
        raise RuntimeError(f"/metrics answered {statuses}")
    return seconds, body


def _served_leaf(state: Any) -> Any:
    """The first certificate the server sent (not the probe's own client certificate)."""
    return next((c for c in state.certificates if c.role != "client"), None)


def child_main(config_path: str, expected_targets: int, hold: bool) -> None:
    """One certscope process: two scheduler rounds over the config's tls targets, a
    /metrics render after each; one JSON line of figures on stdout."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but the protocol lines on the pipe

    from exporter.config import load_config
    from exporter.daemon import FirstRoundCollector
    from exporter.scheduler import Scheduler
    from exporter.store import ResultStore
    from exporter.web import WebApp
    from probes.result import Discovery, ProbeResult, SourceError
    from probes.tls_facts import TlsFacts

    class RoundStore(ResultStore):
        """The daemon's store, noting each published round: the scheduler's own round
        timer stops before ``publish_round``, which is part of a round's cost too."""

        def __init__(self) -> None:
            super().__init__()
            self.published: list[Published] = []
            self._changed = threading.Condition()

        def publish_round(
            self,
            info: Any,
            discovery: Discovery,
            results: Mapping[str, tuple[ProbeResult, float]],
            round_duration: float,
        ) -> tuple[list[Any], list[SourceError]]:
            started = time.monotonic()
            answer = super().publish_round(info, discovery, results, round_duration)
            finished = time.monotonic()
            with self._changed:
                self.published.append(Published(round_duration, finished - started, finished, len(results)))
                self._changed.notify_all()
            return answer

        def wait_rounds(self, count: int, timeout: float) -> Published:
            with self._changed:
                if not self._changed.wait_for(lambda: len(self.published) >= count, timeout):
                    raise RuntimeError(f"round {count} not published within {timeout:.0f} s")
                return self.published[count - 1]

    started = time.perf_counter()
    config = load_config(config_path)
    config_seconds = time.perf_counter() - started
    (probe_config,) = config.probes
    if len(probe_config.settings.targets) != expected_targets:
        raise RuntimeError(f"config has {len(probe_config.settings.targets)} targets, expected {expected_targets}")
    store = RoundStore()
    scheduler = Scheduler(store)
    # The daemon's collector setting for first rounds (exporter.daemon.Daemon._apply):
    # the gen-0 threshold raised from apply until ready, then CPython's own again.
    collector = FirstRoundCollector()
    scheduler.on_ready = collector.end
    app = WebApp(store, scheduler.ready, lambda: None)
    round_timeout = 120.0 + expected_targets * 0.2
    gc.collect()
    hwm_reset = common.reset_peak_rss()
    baseline_kib = common.status_value("VmRSS")
    if hold:  # a profiler attaches now
        out.write(json.dumps({"ready": os.getpid()}) + "\n")
        out.flush()
        sys.stdin.readline()

    figures: dict[str, Any] = {
        "targets": expected_targets,
        "concurrency": config.global_settings.concurrency,
        "config_load_seconds": config_seconds,
        "baseline_rss_kib": baseline_kib,
        "peak_reset": hwm_reset,
    }
    held: Any = None
    for number in (1, 2):
        with common.GcTimer() as gc_timer:
            threads_before = common.thread_cpu_ns()
            cpu_before = common.self_cpu_seconds()
            if number == 1:
                # The daemon's path: the probe is built from the config through the kind
                # registry, the target pool sized by global.concurrency, and the APScheduler
                # job's first run, at once, is the first round.
                collector.begin()
                scheduler.apply(config)
            else:
                # Run the same job again now: the second round of the same probe objects
                # (and their per-chain caches), as the next interval would.
                aps = getattr(scheduler, "_aps", None)
                if aps is None:
                    raise RuntimeError("exporter.scheduler.Scheduler has no _aps: update bench/tls_scale.py")
                aps.modify_job(probe_config.name, next_run_time=dt.datetime.now(dt.UTC))
            published = store.wait_rounds(number, round_timeout)
            cpu = common.self_cpu_seconds() - cpu_before
            thread_cpu_ms = common.thread_cpu_ms_since(threads_before)
        state = store.snapshot().probes[probe_config.name]
        results = [ts for _, ts in sorted(state.targets.items())]
        failures = [
            (target, ts.result.reason.value, ts.result.message)
            for target, ts in state.targets.items()
            if not ts.result.success
        ]
        # The chain the server sent: an mTLS target also exports its own client certificate.
        served = [[c for c in ts.certificates if c.role != "client"] for ts in results]
        chains = [len(chain) for chain in served]
        leaves = {chain[0].cert.fingerprint_sha256 for chain in served if chain}
        facts = [ts.result.facts if isinstance(ts.result.facts, TlsFacts) else None for ts in results]
        # What certscope_tls_handshake_seconds records: on loopback a handshake is about
        # 1 ms of work, so anything well above is time spent queueing in this process.
        handshakes = sorted(tls.handshake_seconds for tls in facts if tls is not None)
        peak_kib = common.status_value("VmHWM")
        rss_kib = common.status_value("VmRSS")
        round_figures: dict[str, Any] = {
            "seconds": published.round_duration + published.publish_seconds,
            "scheduler_seconds": published.round_duration,
            "publish_seconds": published.publish_seconds,
            "cpu_seconds": cpu,
            "gc_seconds": gc_timer.seconds,
            # Which threads the round's CPU went to: the event loop, the round's own
            # thread (ThreadPoolExecutor: APScheduler's), the main thread (apply).
            "thread_cpu_ms": thread_cpu_ms,
            "gc_collections": gc_timer.collections,
            "targets": published.targets,
            "failures": len(failures),
            "failure_samples": failures[:3],
            "chains_of_two": sum(1 for c in chains if c == 2),
            "distinct_leaves": len(leaves),
            "client_auth_accepted": sum(1 for tls in facts if tls is not None and tls.client_auth == "accepted"),
            "http_200": sum(1 for tls in facts if tls is not None and tls.http_status == 200),
            "peak_rss_kib": peak_kib,
            "rss_kib": rss_kib,
            "handshake_ms": {
                "p50": 1e3 * handshakes[len(handshakes) // 2] if handshakes else None,
                "p99": 1e3 * handshakes[int(len(handshakes) * 0.99)] if handshakes else None,
                "max": 1e3 * handshakes[-1] if handshakes else None,
            },
        }
        if number == 2 and held is not None:
            # The memo hands back CertFacts objects built in round 1 (kept alive by ``held``,
            # so their ids are stable); a re-parse builds new ones.  By membership, not by
            # target: with --shared-cert, round-1 targets racing on the empty memo each built
            # their own copy, and round 2 hands all of them the one the memo kept.
            before = {id(leaf.cert) for ts in held.targets.values() if (leaf := _served_leaf(ts)) is not None}
            reused = sum(
                1 for ts in state.targets.values() if (leaf := _served_leaf(ts)) is not None and id(leaf.cert) in before
            )
            round_figures["facts_reused_share"] = reused / max(1, len(state.targets))
        held = state if number == 1 else None
        render_text, body = _scrape(app, gzip=False)
        cached_text, again = _scrape(app, gzip=False)
        render_gzip, zipped = _scrape(app, gzip=True)
        round_figures.update(
            {
                "render_text_seconds": render_text,
                "render_cached_seconds": cached_text,
                "render_gzip_seconds": render_gzip,
                "metrics_bytes": len(body),
                "metrics_gzip_bytes": len(zipped),
                "series": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
                "peak_rss_after_render_kib": common.status_value("VmHWM"),
            }
        )
        del body, again, zipped
        figures[f"round{number}"] = round_figures
    scheduler.stop(wait=False)
    out.write(json.dumps({"result": figures}) + "\n")
    out.flush()
    os._exit(0)  # do not wait for the pool's threads


def write_config(
    path: Path, ports: Sequence[int], ca_file: Path, concurrency: int, client: tuple[Path, Path] | None
) -> None:
    """certscope's config: one ``tls`` probe over ``ports``; with ``client`` (certificate,
    key) also an ``http: {path: /}`` check (see the module docstring: mTLS)."""
    probe: dict[str, Any] = {
        "name": PROBE_NAME,
        "kind": "tls",
        "interval": PROBE_INTERVAL,
        "targets": [f"{common.HOST}:{port}" for port in ports],
    }
    if client is not None:
        probe["client_cert"] = {"cert_file": str(client[0]), "key_file": str(client[1])}
        probe["http"] = {"path": "/"}
    config = {
        "global": {
            "concurrency": concurrency,
            "timeout": PROBE_TIMEOUT,
            "trust": {"system": False, "ca_files": [str(ca_file)]},
        },
        "probes": [probe],
    }
    path.write_text(json.dumps(config, indent=1) + "\n")  # JSON is YAML


# --------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.pki = workdir / "pki"
        self.sizes: tuple[int, ...] = args.sizes
        self.variants: tuple[Variant, ...] = args.variants
        self.concurrency: int = args.concurrency
        self.ports: dict[str, list[int]] = {}
        self.nginx: common.Managed | None = None
        self.blackbox: common.Managed | None = None
        self.blackbox_port = 0
        self.processes: list[common.Managed] = []
        self.runs: list[dict[str, Any]] = []
        self.setup: dict[str, Any] = {}
        self.round_script = workdir / "round.lua"

    def start(self) -> None:
        largest = max(self.sizes)
        listeners = largest * len(self.variants)
        raise_file_limit(listeners + 4 * self.concurrency + 1024)
        started = time.perf_counter()
        self.setup["pki"] = write_pki(
            self.pki, self.variants, 1 if self.args.shared_cert else largest, self.args.out / "tls-scale-keys"
        )
        self.setup["pki_seconds"] = time.perf_counter() - started
        nginx_dir = self.workdir / "nginx"
        nginx_dir.mkdir()
        sockets = bind_listeners(listeners)
        try:
            by_variant = {v: sockets[i * largest : (i + 1) * largest] for i, v in enumerate(self.variants)}
            self.ports = {v.name: [s.getsockname()[1] for s in socks] for v, socks in by_variant.items()}
            started = time.perf_counter()
            self.nginx = start_nginx_fleet(nginx_dir, self.pki, by_variant, self.args.shared_cert, self.concurrency)
            self.setup["nginx_start_seconds"] = time.perf_counter() - started
        finally:
            for sock in sockets:  # nginx holds its own copies
                sock.close()
        self.setup["nginx_pid_namespace"] = self.nginx.isolated
        self.setup["listeners"] = listeners
        self.setup["distinct_certificates_per_variant"] = 1 if self.args.shared_cert else largest
        (self.blackbox_port,) = common.free_ports(1)
        modules = []
        for variant in self.variants:
            ca_file = self.pki / f"{variant.key_kind}-ca.pem"
            cert, key = self._client(variant) or (None, None)
            modules.append(
                common.blackbox_module(variant.module, ca_file, timeout=PROBE_TIMEOUT, cert_file=cert, key_file=key)
            )
        self.blackbox = common.start_blackbox(self.workdir, modules, self.blackbox_port)
        self.processes.append(self.blackbox)
        for variant in self.variants:
            ports = self.ports[variant.name]
            for size in self.sizes:
                write_config(
                    self._config(variant, size),
                    ports[:size],
                    self.pki / f"{variant.key_kind}-ca.pem",
                    self.concurrency,
                    self._client(variant),
                )
                self._targets(variant, size).write_text(
                    "".join(f"/probe?module={variant.module}&target={common.HOST}:{port}\n" for port in ports[:size])
                )
        self.round_script.write_text(common.WRK_ROUND_SCRIPT)

    def _client(self, variant: Variant) -> tuple[Path, Path] | None:
        if not variant.mtls:
            return None
        return self.pki / f"{variant.key_kind}-client.pem", self.pki / f"{variant.key_kind}-client.key"

    def _config(self, variant: Variant, size: int) -> Path:
        return self.workdir / f"certscope-{variant.name}-{size}.yaml"

    def _targets(self, variant: Variant, size: int) -> Path:
        return self.workdir / f"targets-{variant.name}-{size}.txt"

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.nginx is not None:
            self.nginx.stop()

    # -- certscope -----------------------------------------------------------------

    def _child(self, variant: Variant, size: int, label: str, hold: bool) -> common.Managed:
        config = str(self._config(variant, size))
        args = common.module_command(
            THIS_MODULE, "--child", config, "--child-targets", str(size), *(["--hold"] if hold else [])
        )
        name = f"certscope-{variant.name}-{label}"
        child = common.Managed(name, args, log=self.workdir / f"{name}.log", pipes=True)
        self.processes.append(child)
        return child

    def _child_reply(self, child: common.Managed) -> dict[str, Any]:
        assert child.process.stdout is not None
        line = child.process.stdout.readline()
        if not line:
            child.process.wait(10)
            log = (self.workdir / f"{child.name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{child.name} exited (status {child.process.poll()}):\n{log}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def certscope(self, variant: Variant, size: int, repeat: int) -> dict[str, Any]:
        assert self.nginx is not None
        load = os.getloadavg()[0]
        nginx_before = common.tree_cpu_seconds(self.nginx.pid)
        child = self._child(variant, size, f"{size}-r{repeat}", hold=False)
        try:
            figures = self._child_reply(child)["result"]
        finally:
            child.stop()
        nginx_cpu = common.tree_cpu_seconds(self.nginx.pid) - nginx_before
        check_certscope(figures, size, 1 if self.args.shared_cert else size, variant.mtls)
        run = {
            "side": "certscope",
            "variant": variant.name,
            "size": size,
            "repeat": repeat,
            "loadavg_1m": load,
            "nginx_cpu_ms_per_probe": nginx_cpu * 1e3 / (2 * size),
            **figures,
        }
        self.runs.append(run)
        first, second = figures["round1"], figures["round2"]
        print(
            f"  r{repeat} {variant.name:8s} N={size:<5d} certscope  round1 {first['seconds']:7.3f} s "
            f"({first['cpu_seconds'] * 1e3 / size:6.3f} ms CPU/target)  round2 {second['seconds']:7.3f} s "
            f"({second['cpu_seconds'] * 1e3 / size:6.3f} ms CPU/target, "
            f"{second.get('facts_reused_share', 0):.0%} facts from the memo)  "
            f"handshake p99 {first['handshake_ms']['p99']:.1f} / {second['handshake_ms']['p99']:.1f} ms  "
            f"render {first['render_text_seconds'] * 1e3:7.1f} ms  "
            f"held +{(second['rss_kib'] - figures['baseline_rss_kib']) / size:6.1f} KiB/target  "
            f"load {load:.2f}",
            flush=True,
        )
        return run

    # -- blackbox ------------------------------------------------------------------

    def blackbox_round(self, variant: Variant, size: int, repeat: int) -> dict[str, Any]:
        assert self.nginx is not None and self.blackbox is not None
        load = os.getloadavg()[0]
        measured = common.blackbox_round(
            self.round_script,
            self._targets(variant, size),
            size,
            self.concurrency,
            self.blackbox,
            self.blackbox_port,
            self.nginx,
        )
        run = {
            "side": "blackbox",
            "variant": variant.name,
            "size": size,
            "repeat": repeat,
            "loadavg_1m": load,
            "seconds": measured.seconds,
            "seconds_incl_wrk_start": measured.seconds_incl_wrk_start,
            "cpu_seconds": measured.blackbox_cpu_seconds,
            "probes": measured.probes,
            "nginx_cpu_ms_per_probe": measured.nginx_cpu_seconds * 1e3 / size,
        }
        self.runs.append(run)
        print(
            f"  r{repeat} {variant.name:8s} N={size:<5d} blackbox   round  {measured.seconds:7.3f} s "
            f"({measured.blackbox_cpu_seconds * 1e3 / size:6.3f} ms CPU/probe)  load {load:.2f}",
            flush=True,
        )
        return run

    # -- profile -------------------------------------------------------------------

    def profile(self, variant: Variant, size: int) -> dict[str, Any]:
        if common.pyspy_executable() is None:
            return {"skipped": "py-spy not found (pip install py-spy)"}
        child = self._child(variant, size, f"{size}-profile", hold=True)
        raw, log = self.args.out / "tls_scale.pyspy.txt", self.workdir / "py-spy.log"
        try:
            ready = self._child_reply(child)
            with common.pyspy_recording(ready["ready"], raw, log, rate=PYSPY_RATE):
                assert child.process.stdin is not None
                child.process.stdin.write("go\n")
                child.process.stdin.flush()
                figures = self._child_reply(child)["result"]
        finally:
            child.stop()
        summary = common.read_pyspy(raw, log)
        if "error" in summary:
            return summary
        summary["by_thread"] = _thread_shares(raw.read_text())
        summary.update(
            {
                "tool": f"py-spy record --rate {PYSPY_RATE} --nonblocking (attached for both rounds)",
                "variant": variant.name,
                "size": size,
                "raw": str(raw),
                "round1_seconds_under_profiler": figures["round1"]["seconds"],
                "round2_seconds_under_profiler": figures["round2"]["seconds"],
            }
        )
        return summary


def _thread_shares(raw: str) -> dict[str, float]:
    """Share of busy samples by what the thread was doing: a target's run (the pool),
    the rest of the round in the scheduler's job thread (discovery, fan-out, waiting
    on futures, publishing), the /metrics renders in the main thread, anything else."""
    counts: dict[str, int] = {}
    total = 0
    for stack, count in common.pyspy_stacks(raw):
        if "run_target (" in stack:
            kind = "target runs (pool threads)"
        elif "_round (" in stack:
            kind = "rest of the round (job thread)"
        elif "_scrape (" in stack:
            kind = "/metrics renders (main thread)"
        else:
            kind = "other"
        counts[kind] = counts.get(kind, 0) + count
        total += count
    return {kind: n / total for kind, n in sorted(counts.items(), key=lambda item: -item[1])} if total else {}


def check_certscope(figures: dict[str, Any], size: int, distinct: int, mtls: bool) -> None:
    """Every target probed, successful, with its 2-certificate chain, in both rounds; with
    mTLS, the client certificate accepted (nginx answered the ``http`` check with 200)."""
    for number in (1, 2):
        round_ = figures[f"round{number}"]
        ok = (
            round_["targets"] == size
            and round_["failures"] == 0
            and round_["chains_of_two"] == size
            and round_["distinct_leaves"] == distinct
        )
        if mtls:
            ok = ok and round_["client_auth_accepted"] == size and round_["http_200"] == size
        if not ok:
            raise RuntimeError(
                f"certscope round {number} at N={size}: {round_['targets']} targets, {round_['failures']} failures "
                f"(first: {round_['failure_samples'][:1]}), {round_['chains_of_two']} 2-certificate chains, "
                f"{round_['distinct_leaves']} distinct leaves (expected {distinct}), client certificate accepted "
                f"{round_['client_auth_accepted']}, HTTP 200 {round_['http_200']}"
            )


# --------------------------------------------------------------------------- summary


def summarize(runs: list[dict[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    """Medians per size of one variant's runs."""
    out: dict[str, Any] = {}
    for size in sizes:
        cs = [r for r in runs if r["side"] == "certscope" and r["size"] == size]
        bb = [r for r in runs if r["side"] == "blackbox" and r["size"] == size]
        certscope: dict[str, Any] = {"targets": size, "runs": len(cs)}
        for number in (1, 2):
            key = f"round{number}"
            rounds = [r[key] for r in cs]
            certscope[f"round{number}_seconds"] = common.median(x["seconds"] for x in rounds)
            certscope[f"round{number}_seconds_range"] = [
                min(x["seconds"] for x in rounds),
                max(x["seconds"] for x in rounds),
            ]
            certscope[f"round{number}_publish_seconds"] = common.median(x["publish_seconds"] for x in rounds)
            certscope[f"round{number}_gc_seconds"] = common.median(x["gc_seconds"] for x in rounds)
            kinds = sorted({kind for x in rounds for kind in x.get("thread_cpu_ms", {})})
            certscope[f"round{number}_thread_cpu_ms"] = {
                kind: common.median(x.get("thread_cpu_ms", {}).get(kind, 0.0) for x in rounds) for kind in kinds
            }
            certscope[f"round{number}_ms_per_target"] = certscope[f"round{number}_seconds"] * 1e3 / size
            cpu = [x["cpu_seconds"] * 1e3 / size for x in rounds]
            certscope[f"cpu_ms_per_target_round{number}"] = common.median(cpu)
            certscope[f"cpu_ms_per_target_round{number}_range"] = [min(cpu), max(cpu)]
            certscope[f"render_text_seconds_round{number}"] = common.median(x["render_text_seconds"] for x in rounds)
            for quantile in ("p50", "p99"):
                certscope[f"handshake_ms_{quantile}_round{number}"] = common.median(
                    x["handshake_ms"][quantile] for x in rounds
                )
            certscope[f"render_gzip_seconds_round{number}"] = common.median(x["render_gzip_seconds"] for x in rounds)
            certscope[f"render_cached_seconds_round{number}"] = common.median(
                x["render_cached_seconds"] for x in rounds
            )
        certscope["facts_reused_share_round2"] = common.median(r["round2"].get("facts_reused_share", 0.0) for r in cs)
        certscope["series"] = common.median(r["round1"]["series"] for r in cs)
        certscope["metrics_bytes"] = common.median(r["round1"]["metrics_bytes"] for r in cs)
        certscope["render_us_per_series"] = certscope["render_text_seconds_round1"] * 1e6 / certscope["series"]
        certscope["peak_rss_kib_per_target_round1"] = common.median(
            (r["round1"]["peak_rss_kib"] - r["baseline_rss_kib"]) / size for r in cs
        )
        certscope["peak_rss_kib_per_target"] = common.median(
            (r["round2"]["peak_rss_after_render_kib"] - r["baseline_rss_kib"]) / size for r in cs
        )
        certscope["retained_rss_kib_per_target"] = common.median(
            (r["round2"]["rss_kib"] - r["baseline_rss_kib"]) / size for r in cs
        )
        certscope["nginx_cpu_ms_per_probe"] = common.median(r["nginx_cpu_ms_per_probe"] for r in cs)
        certscope["config_load_seconds"] = common.median(r["config_load_seconds"] for r in cs)
        bb_cpu = [r["cpu_seconds"] * 1e3 / size for r in bb]
        blackbox = {
            "targets": size,
            "runs": len(bb),
            "seconds": common.median(r["seconds"] for r in bb),
            "seconds_range": [min(r["seconds"] for r in bb), max(r["seconds"] for r in bb)],
            "ms_per_target": common.median(r["seconds"] for r in bb) * 1e3 / size,
            "cpu_ms_per_probe": common.median(bb_cpu),
            "cpu_ms_per_probe_range": [min(bb_cpu), max(bb_cpu)],
            "nginx_cpu_ms_per_probe": common.median(r["nginx_cpu_ms_per_probe"] for r in bb),
        }
        ratios = {
            "wall_round1_over_blackbox": certscope["round1_seconds"] / blackbox["seconds"],
            "wall_round2_over_blackbox": certscope["round2_seconds"] / blackbox["seconds"],
            "cpu_round1_over_blackbox": certscope["cpu_ms_per_target_round1"] / blackbox["cpu_ms_per_probe"],
            "cpu_round2_over_blackbox": certscope["cpu_ms_per_target_round2"] / blackbox["cpu_ms_per_probe"],
            "round2_over_round1": certscope["round2_seconds"] / certscope["round1_seconds"],
        }
        # The same ratios within each repetition (the two sides ran back to back): their
        # spread is the run's noise on the ratio itself.
        paired: dict[str, list[float]] = {key: [] for key in ratios if key != "round2_over_round1"}
        for run in cs:
            other = next((r for r in bb if r["repeat"] == run["repeat"]), None)
            if other is None:
                continue
            for number in (1, 2):
                paired[f"wall_round{number}_over_blackbox"].append(run[f"round{number}"]["seconds"] / other["seconds"])
                if other["cpu_seconds"] > 0:
                    paired[f"cpu_round{number}_over_blackbox"].append(
                        run[f"round{number}"]["cpu_seconds"] / other["cpu_seconds"]
                    )
        ratio_ranges = {key: [min(v), max(v)] for key, v in paired.items() if len(v) > 1}
        out[str(size)] = {"certscope": certscope, "blackbox": blackbox, "ratios": ratios, "ratio_ranges": ratio_ranges}
    # Linearity: cost per target at each size over the cost per target at the smallest.
    smallest = out[str(min(sizes))]
    per_target = {
        "certscope_wall_round1": ("certscope", "round1_ms_per_target"),
        "certscope_wall_round2": ("certscope", "round2_ms_per_target"),
        "certscope_cpu_round1": ("certscope", "cpu_ms_per_target_round1"),
        "certscope_cpu_round2": ("certscope", "cpu_ms_per_target_round2"),
        "certscope_render": ("certscope", "render_us_per_series"),
        "certscope_peak_rss": ("certscope", "peak_rss_kib_per_target"),
        "blackbox_wall": ("blackbox", "ms_per_target"),
        "blackbox_cpu": ("blackbox", "cpu_ms_per_probe"),
    }
    for figures in out.values():
        figures["linearity"] = {
            name: figures[side][key] / smallest[side][key] if smallest[side][key] else float("nan")
            for name, (side, key) in per_target.items()
        }
    return out


def line_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares ``y = a + b*x``: (a, b)."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    return mean_y - slope * mean_x, slope


def memory_goal(summary: dict[str, Any], sizes: Sequence[int]) -> dict[str, Any]:
    """Memory per TLS target held: measured at :data:`MEMORY_SIZE` (or the largest size
    measured), and at :data:`MEMORY_DERIVED_SIZE` from a line through every size."""
    measured_size = MEMORY_SIZE if MEMORY_SIZE in sizes else max(sizes)
    at = summary[str(measured_size)]["certscope"]
    result: dict[str, Any] = {
        "before_kib_per_target": MEMORY_BEFORE_KIB,
        "before_source": MEMORY_BEFORE_SOURCE,
        "measured_size": measured_size,
        "retained_kib_per_target": at["retained_rss_kib_per_target"],
        "peak_kib_per_target": at["peak_rss_kib_per_target"],
        "measured_met": bool(at["retained_rss_kib_per_target"] <= MEMORY_BEFORE_KIB),
    }
    if len(sizes) > 1:
        fits: dict[str, Any] = {}
        for name, key in (("retained", "retained_rss_kib_per_target"), ("peak", "peak_rss_kib_per_target")):
            totals = [summary[str(n)]["certscope"][key] * n for n in sizes]  # KiB of growth at each size
            fixed, per_target = line_fit([float(n) for n in sizes], totals)
            fits[name] = {
                "fixed_kib": fixed,
                "kib_per_target": per_target,
                "sizes": list(sizes),
                "growth_kib": totals,
                "derived_kib_per_target": fixed / MEMORY_DERIVED_SIZE + per_target,
                # How far the line misses the points, as a share of each point: a curve
                # that bends shows here.
                "worst_miss_share": max(
                    abs(fixed + per_target * n - total) / total for n, total in zip(sizes, totals, strict=True) if total
                ),
            }
        derived = fits["retained"]["derived_kib_per_target"]
        result.update(
            {
                "derived_size": MEMORY_DERIVED_SIZE,
                "derived_retained_kib_per_target": derived,
                "derived_peak_kib_per_target": fits["peak"]["derived_kib_per_target"],
                "derived_met": bool(derived <= MEMORY_BEFORE_KIB),
                "fit": fits,
            }
        )
    return result


def goals(summary: dict[str, Any], sizes: Sequence[int]) -> dict[str, Any]:
    """One variant's goals (see the module docstring)."""
    result: dict[str, Any] = {"cpu": []}
    for size in sizes:
        figures = summary[str(size)]
        for number in (1, 2):
            ratio = figures["ratios"][f"cpu_round{number}_over_blackbox"]
            result["cpu"].append(
                {
                    "size": size,
                    "round": number,
                    "certscope_ms": figures["certscope"][f"cpu_ms_per_target_round{number}"],
                    "blackbox_ms": figures["blackbox"]["cpu_ms_per_probe"],
                    "ratio": ratio,
                    "ratio_range": figures["ratio_ranges"].get(f"cpu_round{number}_over_blackbox"),
                    "goal_ratio": GOAL_CPU_RATIO,
                    "met": bool(ratio <= GOAL_CPU_RATIO),
                }
            )
    at = summary.get(str(GOAL_ENDPOINTS))
    if at is not None:
        cs, ratios, ranges = at["certscope"], at["ratios"], at["ratio_ranges"]
        result["endpoints_1000"] = {
            "goal_ratio": GOAL_WALL_RATIO,
            "round1_seconds": cs["round1_seconds"],
            "round2_seconds": cs["round2_seconds"],
            "blackbox_seconds": at["blackbox"]["seconds"],
            "round1_ratio": ratios["wall_round1_over_blackbox"],
            "round2_ratio": ratios["wall_round2_over_blackbox"],
            "round1_ratio_range": ranges.get("wall_round1_over_blackbox"),
            "round2_ratio_range": ranges.get("wall_round2_over_blackbox"),
            "round1_met": bool(ratios["wall_round1_over_blackbox"] <= GOAL_WALL_RATIO),
            "round2_met": bool(ratios["wall_round2_over_blackbox"] <= GOAL_WALL_RATIO),
        }
    if len(sizes) > 1:
        largest = summary[str(max(sizes))]["linearity"]
        result["linearity"] = {
            "smallest": min(sizes),
            "largest": max(sizes),
            "goal_ratio": GOAL_LINEARITY,
            "wall_round1_ratio": largest["certscope_wall_round1"],
            "cpu_round1_ratio": largest["certscope_cpu_round1"],
            "wall_round2_ratio": largest["certscope_wall_round2"],
            "cpu_round2_ratio": largest["certscope_cpu_round2"],
            "blackbox_wall_ratio": largest["blackbox_wall"],
            "blackbox_cpu_ratio": largest["blackbox_cpu"],
            "wall_round1_met": bool(largest["certscope_wall_round1"] <= GOAL_LINEARITY),
            "cpu_round1_met": bool(largest["certscope_cpu_round1"] <= GOAL_LINEARITY),
            "wall_round2_met": bool(largest["certscope_wall_round2"] <= GOAL_LINEARITY),
            "cpu_round2_met": bool(largest["certscope_cpu_round2"] <= GOAL_LINEARITY),
        }
        # The daemon runs the second round (and every one after it) for as long as it
        # lives: the curve is linear only if both rounds are.
        result["linearity"]["met"] = all(
            result["linearity"][f"{cost}_round{number}_met"] for cost in ("wall", "cpu") for number in (1, 2)
        )
    result["memory"] = memory_goal(summary, sizes)
    return result


def _range(values: Sequence[float] | None) -> str:
    return f" ({values[0]:.2f}-{values[1]:.2f})" if values else ""


def table(summary: dict[str, Any]) -> str:
    head = (
        "| targets | certscope round 1 s | round 2 s | blackbox s | wall cs/bb (r1 / r2) "
        "| certscope CPU ms/target (r1 / r2) | blackbox CPU ms/probe | CPU cs/bb (r1 / r2) "
        "| per-target wall vs smallest (cs r1 / r2 / bb) | per-target CPU vs smallest (cs r1 / r2 / bb) |"
    )
    lines = [head, "|" + "---|" * 10]
    for size, figures in summary.items():
        cs, bb, ratios, linear = figures["certscope"], figures["blackbox"], figures["ratios"], figures["linearity"]
        lines.append(
            f"| {int(size):,} | {cs['round1_seconds']:.3f} | {cs['round2_seconds']:.3f} | {bb['seconds']:.3f} "
            f"| {ratios['wall_round1_over_blackbox']:.2f} / {ratios['wall_round2_over_blackbox']:.2f} "
            f"| {cs['cpu_ms_per_target_round1']:.3f} / {cs['cpu_ms_per_target_round2']:.3f} "
            f"| {bb['cpu_ms_per_probe']:.3f} "
            f"| {ratios['cpu_round1_over_blackbox']:.2f} / {ratios['cpu_round2_over_blackbox']:.2f} "
            f"| {linear['certscope_wall_round1']:.2f} / {linear['certscope_wall_round2']:.2f} "
            f"/ {linear['blackbox_wall']:.2f} "
            f"| {linear['certscope_cpu_round1']:.2f} / {linear['certscope_cpu_round2']:.2f} "
            f"/ {linear['blackbox_cpu']:.2f} |"
        )
    return "\n".join(lines)


def noise_table(summary: dict[str, Any]) -> str:
    """Ranges over the repetitions: the run's own noise."""
    head = (
        "| targets | cs round 1 s | cs round 2 s | bb s | cs CPU ms/target r1 | cs CPU ms/target r2 "
        "| bb CPU ms/probe | CPU cs/bb r1 (paired) | CPU cs/bb r2 (paired) | wall cs/bb r1 (paired) "
        "| wall cs/bb r2 (paired) |"
    )
    lines = [head, "|" + "---|" * 11]

    def span(values: Sequence[float] | None, digits: int = 2) -> str:
        return f"{values[0]:.{digits}f}-{values[1]:.{digits}f}" if values else "—"

    for size, figures in summary.items():
        cs, bb, ranges = figures["certscope"], figures["blackbox"], figures["ratio_ranges"]
        lines.append(
            f"| {int(size):,} | {span(cs['round1_seconds_range'], 3)} | {span(cs['round2_seconds_range'], 3)} "
            f"| {span(bb['seconds_range'], 3)} | {span(cs['cpu_ms_per_target_round1_range'], 3)} "
            f"| {span(cs['cpu_ms_per_target_round2_range'], 3)} | {span(bb['cpu_ms_per_probe_range'], 3)} "
            f"| {span(ranges.get('cpu_round1_over_blackbox'))} | {span(ranges.get('cpu_round2_over_blackbox'))} "
            f"| {span(ranges.get('wall_round1_over_blackbox'))} | {span(ranges.get('wall_round2_over_blackbox'))} |"
        )
    return "\n".join(lines)


def detail_table(summary: dict[str, Any]) -> str:
    """Where certscope's time and memory go, per size (medians)."""
    head = (
        "| targets | round-2 facts from memo | GC s (r1 / r2) | publish_round s (r1 / r2) "
        "| /metrics render ms: text / gzip / cached (series) | render µs/series "
        "| peak RSS KiB/target: round 1 / with renders | retained KiB/target | nginx CPU ms/probe (cs / bb) "
        "| handshake ms reported, p50 / p99 (r1; r2) |"
    )
    lines = [head, "|" + "---|" * 10]
    for size, figures in summary.items():
        cs, bb = figures["certscope"], figures["blackbox"]
        lines.append(
            f"| {int(size):,} | {cs['facts_reused_share_round2']:.0%} "
            f"| {cs['round1_gc_seconds']:.3f} / {cs['round2_gc_seconds']:.3f} "
            f"| {cs['round1_publish_seconds']:.3f} / {cs['round2_publish_seconds']:.3f} "
            f"| {cs['render_text_seconds_round1'] * 1e3:.1f} / {cs['render_gzip_seconds_round1'] * 1e3:.1f} "
            f"/ {cs['render_cached_seconds_round1'] * 1e3:.1f} ({cs['series']:,.0f}) "
            f"| {cs['render_us_per_series']:.2f} "
            f"| {cs['peak_rss_kib_per_target_round1']:.1f} / {cs['peak_rss_kib_per_target']:.1f} "
            f"| {cs['retained_rss_kib_per_target']:.1f} "
            f"| {cs['nginx_cpu_ms_per_probe']:.3f} / {bb['nginx_cpu_ms_per_probe']:.3f} "
            f"| {cs['handshake_ms_p50_round1']:.1f} / {cs['handshake_ms_p99_round1']:.1f}; "
            f"{cs['handshake_ms_p50_round2']:.1f} / {cs['handshake_ms_p99_round2']:.1f} |"
        )
    return "\n".join(lines)


VERDICT = {True: "met", False: "NOT met"}


def goal_lines(name: str, goal: dict[str, Any]) -> list[str]:
    lines = []
    for row in goal["cpu"]:
        lines.append(
            f"{name}, {row['size']:,} targets, round {row['round']}: CPU per probe cs/bb {row['ratio']:.2f}"
            f"{_range(row['ratio_range'])} (goal <= {row['goal_ratio']}, {VERDICT[row['met']]}): "
            f"{row['certscope_ms']:.3f} vs {row['blackbox_ms']:.3f} ms"
        )
    endpoints = goal.get("endpoints_1000")
    if endpoints:
        for number in (1, 2):
            lines.append(
                f"{name}, 1,000 endpoints, round {number}: {endpoints[f'round{number}_seconds']:.3f} s vs blackbox "
                f"{endpoints['blackbox_seconds']:.3f} s = {endpoints[f'round{number}_ratio']:.2f}x"
                f"{_range(endpoints[f'round{number}_ratio_range'])} "
                f"(goal <= {endpoints['goal_ratio']}, {VERDICT[endpoints[f'round{number}_met']]})"
            )
    linear = goal.get("linearity")
    if linear:
        lines.append(
            f"{name}, per-target cost {linear['largest']:,} vs {linear['smallest']:,} "
            f"(goal <= {linear['goal_ratio']}x, {VERDICT[linear['met']]}): "
            f"certscope wall {linear['wall_round1_ratio']:.2f}x, "
            f"CPU {linear['cpu_round1_ratio']:.2f}x (round 1); wall {linear['wall_round2_ratio']:.2f}x, "
            f"CPU {linear['cpu_round2_ratio']:.2f}x (round 2); blackbox wall {linear['blackbox_wall_ratio']:.2f}x, "
            f"CPU {linear['blackbox_cpu_ratio']:.2f}x"
        )
    memory = goal["memory"]
    lines.append(
        f"{name}, memory per TLS target held at {memory['measured_size']:,}: {memory['retained_kib_per_target']:.1f} "
        f"KiB retained, {memory['peak_kib_per_target']:.1f} KiB peak with a render "
        f"(goal <= {memory['before_kib_per_target']} KiB retained, {VERDICT[memory['measured_met']]})"
    )
    if "fit" in memory:
        fit = memory["fit"]["retained"]
        lines.append(
            f"{name}, memory per TLS target held at {memory['derived_size']:,} (derived): "
            f"{memory['derived_retained_kib_per_target']:.1f} KiB retained, "
            f"{memory['derived_peak_kib_per_target']:.1f} KiB peak (line through {fit['sizes']}: "
            f"{fit['fixed_kib'] / 1024:.1f} MiB + {fit['kib_per_target']:.1f} KiB per target, worst miss "
            f"{fit['worst_miss_share']:.0%}; goal <= {memory['before_kib_per_target']} KiB, "
            f"{VERDICT[memory['derived_met']]})"
        )
    return lines


def report(result: dict[str, Any]) -> None:
    for name, figures in result["variants"].items():
        print()
        print(f"### {name}: {figures['description']}")
        print()
        print(table(figures["sizes"]))
        print()
        print("Ranges over the repetitions (paired: within each repetition, the two sides back to back):")
        print()
        print(noise_table(figures["sizes"]))
        print()
        print(detail_table(figures["sizes"]))
        print()
        for size, sized in figures["sizes"].items():
            cs = sized["certscope"]
            for number in (1, 2):
                threads = cs.get(f"round{number}_thread_cpu_ms", {})
                spent = ", ".join(f"{kind} {ms:.1f}" for kind, ms in sorted(threads.items(), key=lambda kv: -kv[1]))
                print(f"{name}, {int(size):,} targets, round {number}: CPU ms by thread (medians): {spent}")
        print()
        for line in goal_lines(name, figures["goals"]):
            print(line)
    profile = result["profile"]
    if profile.get("self"):
        print()
        print(
            f"Profile, {profile['variant']} at {profile['size']:,} targets ({profile['tool']}, "
            f"{profile['samples']} samples):"
        )
        print("  by thread: " + ", ".join(f"{k} {v:.0%}" for k, v in profile["by_thread"].items()))
        common.print_profile(profile)
    print(common.elapsed_and_noise(result))


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes: tuple[int, ...] = args.sizes
    variants: tuple[Variant, ...] = args.variants
    print(
        f"TLS scale curve: {', '.join(v.name for v in variants)}; sizes {', '.join(f'{s:,}' for s in sizes)}; "
        f"{args.repeats} repetition(s); concurrency {args.concurrency}; "
        f"{'one shared' if args.shared_cert else 'a distinct'} certificate per endpoint",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="certscope-tls-scale-"))
    bench = Bench(args, workdir)
    profile: dict[str, Any] = {"skipped": "--quick" if args.quick else "--no-profile"}
    try:
        bench.start()
        pki = bench.setup["pki"]
        print(
            f"PKI {bench.setup['pki_seconds']:.1f} s ({pki['leaves']:,} leaves; keys: {pki['keys_generated']:,} "
            f"generated, {pki['keys_from_cache']:,} from {pki['key_cache']}); nginx pid "
            f"{bench.nginx.pid if bench.nginx else '?'} on {len(bench.ports) * max(sizes):,} ports (ready in "
            f"{bench.setup['nginx_start_seconds']:.1f} s, PID namespace: {bench.setup['nginx_pid_namespace']}); "
            f"blackbox :{bench.blackbox_port}",
            flush=True,
        )
        for repeat in range(args.repeats):
            print(f"repetition {repeat + 1}/{args.repeats}", flush=True)
            for step, size in enumerate(sizes):
                shift = (repeat + step) % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    # A B, then B A: neither side always runs first.
                    if repeat % 2 == 0:
                        bench.certscope(variant, size, repeat)
                        bench.blackbox_round(variant, size, repeat)
                    else:
                        bench.blackbox_round(variant, size, repeat)
                        bench.certscope(variant, size, repeat)
        if args.profile and not args.quick:
            variant = VARIANTS[args.profile_variant] if args.profile_variant in bench.ports else variants[0]
            print(f"profile: certscope, {variant.name}, {max(sizes):,} targets, both rounds", flush=True)
            profile = bench.profile(variant, max(sizes))
    finally:
        bench.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    per_variant: dict[str, Any] = {}
    for variant in variants:
        summary = summarize([r for r in bench.runs if r["variant"] == variant.name], sizes)
        per_variant[variant.name] = {
            "description": variant.description,
            "sizes": summary,
            "goals": goals(summary, sizes),
        }
    return {
        "settings": {
            "variants": [v.name for v in variants],
            "sizes": list(sizes),
            "repeats": args.repeats,
            "concurrency": args.concurrency,
            "shared_cert": args.shared_cert,
            "quick": args.quick,
            "probe_timeout": PROBE_TIMEOUT,
            "tls": "TLS 1.2 and 1.3 offered; no session resumption",
        },
        "setup": bench.setup,
        "variants": per_variant,
        "profile": profile,
        "runs": bench.runs,
    }


def variant_list(text: str) -> tuple[Variant, ...]:
    """An argparse type: variant names, comma-separated, in the order given."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct names of {', '.join(VARIANTS)}, comma-separated")
    return tuple(VARIANTS[name] for name in names)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.argument_parser(__doc__, "smoke test: sizes 20,60, one repetition, no profile")
    parser.add_argument(
        "--variants",
        "--keys",
        type=variant_list,
        default=tuple(VARIANTS[name] for name in DEFAULT_VARIANTS),
        help=f"fleets to measure, of {', '.join(VARIANTS)} (default {','.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--sizes", type=common.int_list(), default=None, help="targets per round (default 100,1000,5000)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 3, quick 1)")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="global.concurrency (default 64)")
    parser.add_argument("--shared-cert", action="store_true", help="every endpoint of a variant serves one certificate")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the py-spy profile")
    parser.add_argument("--profile-variant", default="ec", choices=sorted(VARIANTS), help="(default ec)")
    parser.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--child-targets", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.child_targets, args.hold)
        return 0
    args.sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if args.repeats < 1 or not 1 <= args.concurrency <= 1024:
        parser.error("--repeats must be at least 1 and --concurrency between 1 and 1024")
    if not common.require_tools(*common.PEER_TOOLS):
        return 2
    results = common.Results("tls_scale", args.out, tools=("nginx", "blackbox_exporter", "wrk", "py_spy"))
    with common.sigterm_exits():
        result = results.write(run(args))
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
