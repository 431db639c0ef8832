"""Benchmark: the ``tls`` probe against blackbox_exporter and a bare Python client.

One run builds a throw-away PKI (``bench.common.write_tls_pki``: RSA-2048 and ECDSA
P-256, a CA, a server leaf with SANs DNS:localhost and IP:127.0.0.1, and a clientAuth
leaf each, issued with the tests' ``tests.fixtures.pki.issue``), starts one nginx
(foreground, 2 workers, ``access_log off``, no session cache and no tickets, so every
probe is a full handshake; TLS 1.2 and 1.3) with four listeners on 127.0.0.1 (RSA,
EC, and the same two with ``ssl_verify_client on``; each serves leaf + CA) and
Debian's ``prometheus-blackbox-exporter`` with one ``tcp``/``tls: true`` module per
listener.  It then measures three clients, cell by cell, interleaved (for each
config and concurrency the three clients run back to back, in an order rotated per
repetition), and reports medians:

``certscope``
    ``probes.tls.TlsProbe`` built through the kind registry from ``TlsSettings``
    (``trust=TrustSettings(system=False, ca_files=(ca,))``, a ``ClientCert`` for
    mTLS), run through ``exporter.scheduler.run_target`` (the daemon's call: a fresh
    ``ProbeContext`` with the deadline, the exception guard) in the event loops a
    scheduler round fans out to (``probes.event_loop.Loops``, ``LOOPS`` loop threads,
    N runs in flight), one future per probe.  It runs in its own subprocess, whose ``getrusage(RUSAGE_SELF)`` gives
    the client CPU per probe.  A probe counts only if ``success`` is true (and, for
    mTLS, the client certificate was ``accepted``) and the 2-certificate chain was
    captured.
``blackbox``
    ``wrk`` with keep-alive connections to ``/probe?module=...&target=127.0.0.1:PORT``;
    each request is one new TCP + TLS handshake by the exporter.  A Lua hook counts a
    response only if it is a 200 carrying ``probe_success 1``.  CPU per probe is the
    exporter's own (``/proc/<pid>/stat``, all its threads).
``bare``
    The floor of a Python client: ``socket.create_connection`` + ``wrap_socket`` with a
    verifying context (CA file, hostname check; client cert for mTLS) +
    ``getpeercert(binary_form=True)``, on a ``ThreadPoolExecutor`` of N threads, in
    its own subprocess.

Each cell runs at concurrency 1, 16 and 64 for a fixed time (``--seconds``, default
2; ``wrk`` takes whole seconds, so blackbox runs ``max(1, round(seconds))``).  nginx's
CPU per probe and the machine's other load (busy cores not accounted to the client,
nginx or wrk) are recorded for every cell.  certscope alone is also run, at
concurrency 64, on two mTLS variants with an ``http`` check (``GET /``): without one,
every mTLS probe waits ``client_auth_wait`` (0.5 s) for a TLS 1.3 server to reject the
client certificate, and nginx, which accepted it, stays silent for that long.

"1,000 loopback endpoints": one scheduler round of 1,000 targets (all the same
listener), 64 in flight, wall time from the first submit to the last result;
RSA, EC and the two ``+http`` mTLS variants each repetition, plain mTLS-EC once.
Against it, in the same repetition and back to back (the order alternating), blackbox
probes the same 1,000 targets of the same listener at the same concurrency: ``wrk -t1
-c64`` requesting each of the 1,000 ``/probe`` URLs once (``bench.common.blackbox_round``:
a Lua hook times the first request to the last answer and counts only ``probe_success
1``).  The goal is a ratio: certscope's round no slower than blackbox's.  For the
``+http`` variants blackbox's round is that of its mTLS module on the same listener,
which sends no HTTP request: certscope does one more round trip per probe there.

The certscope client is profiled once (``py-spy record --nonblocking`` attached to its
subprocess, EC at concurrency 16; cProfile of a sequential run if py-spy is missing).

``--quick`` (a smoke test, about 25 s): concurrency 1 and 64 only, 0.5 s per run
(blackbox 1 s), one repetition, no ``+http`` variants, the 1,000-endpoint round for
EC only, no profile.

Usage::

    python -m bench.tls_probe [--quick] [--seconds N] [--repeats R] [--out bench/out]

Results are printed and written to ``<out>/tls_probe.json`` (the raw py-spy samples
to ``<out>/tls_probe.pyspy.txt``).  Every server and worker process runs in its own
session under ``setpriv --pdeathsig KILL`` and is stopped at the end, on error and
on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import json
import os
import pstats
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import common
from probes.event_loop import LOOPS, Loops
from tests.fixtures.servers import can_connect

THIS_MODULE = "bench.tls_probe"

CONCURRENCIES = (1, 16, 64)
QUICK_CONCURRENCIES = (1, 64)
SIDES = ("certscope", "blackbox", "bare")
ENDPOINT_ROUND = 1000
ROUND_CONCURRENCY = 64
PROFILE_CONCURRENCY = 16
PROBE_TIMEOUT = 10.0
# Goals (issue 21: TLS probing at least as cheap as blackbox_exporter, at every scale).
GOAL_CPU_RATIO = 1.0  # certscope client CPU per probe <= 1.0x blackbox's
GOAL_THROUGHPUT_RATIO = 1.0  # certscope probes/s at concurrency 64 >= 1.0x blackbox's
GOAL_ROUND_RATIO = 1.0  # a 1,000-endpoint round <= 1.0x blackbox's round over the same 1,000

WRK_SCRIPT = (
    common.WRK_COUNT_PROBE
    + r"""
-- Count a response only if blackbox says the probe succeeded.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body) count_probe(status, body) end
function done(summary, latency, requests)
  local ok_total, bad_total, first = 0, 0, ""
  for _, t in ipairs(threads) do
    ok_total = ok_total + t:get("ok")
    bad_total = bad_total + t:get("bad")
    local s = t:get("sample")
    if first == "" and s ~= nil and s ~= "" then first = s end
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%.0f duration_us=%.0f ok=%.0f bad=%.0f connect=%.0f read=%.0f write=%.0f status=%.0f "
    .. "timeout=%.0f p50_us=%.0f p99_us=%.0f\n",
    summary.requests, summary.duration, ok_total, bad_total, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
  if first ~= "" then io.write("SAMPLE " .. (string.gsub(first, "\n", " | ")) .. "\n") end
end
"""
)


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class Variant:
    """One thing probed: a listener, and how certscope is configured for it."""

    name: str  # rsa | ec | mtls-rsa | mtls-ec | mtls-rsa+http | mtls-ec+http
    key_kind: str  # rsa | ec
    mtls: bool
    http: bool = False  # certscope only: an HTTP GET / after the handshake

    @property
    def listener(self) -> str:
        return ("mtls-" if self.mtls else "") + self.key_kind

    @property
    def module(self) -> str:
        return f"{'mtls' if self.mtls else 'tls'}_{self.key_kind}"


MAIN_VARIANTS = (
    Variant("rsa", "rsa", False),
    Variant("ec", "ec", False),
    Variant("mtls-rsa", "rsa", True),
    Variant("mtls-ec", "ec", True),
)
HTTP_VARIANTS = (Variant("mtls-rsa+http", "rsa", True, True), Variant("mtls-ec+http", "ec", True, True))
VARIANTS = {v.name: v for v in (*MAIN_VARIANTS, *HTTP_VARIANTS)}


# --------------------------------------------------------------------------- peers


def start_nginx_listeners(workdir: Path, pki: Path, ports: dict[str, int]) -> common.Managed:
    """One listener per key kind, with and without ``ssl_verify_client on``."""
    servers = []
    for listener, port in ports.items():
        kind = listener.removeprefix("mtls-")
        verify = (
            f"ssl_verify_client on; ssl_client_certificate {pki}/{kind}-ca.pem; " if listener.startswith("mtls") else ""
        )
        servers.append(common.nginx_server([port], pki / f"{kind}-chain.pem", pki / f"{kind}-leaf.key", verify))
    return common.start_nginx(workdir, servers, lambda: all(can_connect(common.HOST, p) for p in ports.values()))


def start_blackbox_modules(workdir: Path, pki: Path, port: int) -> common.Managed:
    """One blackbox module per main variant (mTLS ones present the client certificate)."""
    modules = []
    for variant in MAIN_VARIANTS:
        kind, ca_file = variant.key_kind, pki / f"{variant.key_kind}-ca.pem"
        if variant.mtls:
            cert_file, key_file = pki / f"{kind}-client.pem", pki / f"{kind}-client.key"
            modules.append(common.blackbox_module(variant.module, ca_file, cert_file=cert_file, key_file=key_file))
        else:
            modules.append(common.blackbox_module(variant.module, ca_file))
    return common.start_blackbox(workdir, modules, port)


class Worker(common.Managed):
    """A client subprocess (``--worker certscope|bare``) driven over JSON lines."""

    def __init__(self, side: str, init: dict[str, Any]) -> None:
        super().__init__(f"worker-{side}", common.module_command(THIS_MODULE, "--worker", side), pipes=True)
        self.side = side
        self._send(init)  # the reply is read by wait_ready(), so that workers start in parallel

    def wait_ready(self) -> None:
        reply = self._receive()
        if not reply.get("ready"):
            raise RuntimeError(f"{self.name} did not start: {reply}")

    def _send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        self._send(command)
        return self._receive()

    def _receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited (status {self.process.poll()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply


# --------------------------------------------------------------------------- worker side


class ClientWorker:
    """Runs inside the worker subprocess: builds the clients, then runs commands."""

    def __init__(self, side: str, init: dict[str, Any]) -> None:
        self.side = side
        pki = Path(init["pki"])
        ports: dict[str, int] = init["ports"]
        self.pools: dict[int, ThreadPoolExecutor | Loops] = {}
        self.tasks: dict[str, Callable[[], tuple[bool, str]]] = {}
        for variant in VARIANTS.values():
            if side == "bare" and variant.http:
                continue
            port = ports[variant.listener]
            builder = self._certscope_task if side == "certscope" else self._bare_task
            self.tasks[variant.name] = builder(variant, pki, port)
        for concurrency in {*CONCURRENCIES, ROUND_CONCURRENCY, PROFILE_CONCURRENCY}:
            self._pool(concurrency)

    def _pool(self, concurrency: int) -> ThreadPoolExecutor | Loops:
        """A shared pool per concurrency, its threads started beforehand (the daemon's
        lives as long as the config): certscope's event loops, the bare client's
        threads."""
        pool = self.pools.get(concurrency)
        if pool is None and self.side == "certscope":
            pool = self.pools[concurrency] = Loops(LOOPS, concurrency)
        elif pool is None:
            pool = self.pools[concurrency] = ThreadPoolExecutor(concurrency, thread_name_prefix="target")
            barrier = threading.Barrier(concurrency)
            for future in [pool.submit(barrier.wait) for _ in range(concurrency)]:
                future.result()
        return pool

    @staticmethod
    def _certscope_task(variant: Variant, pki: Path, port: int) -> Callable[[], tuple[bool, str]]:
        from exporter.config import ProbeConfig, Thresholds
        from exporter.scheduler import run_target
        from probes.kinds import KINDS
        from probes.settings import ProbeDefaults, Seconds, TrustSettings
        from probes.tls import ClientCert, HttpCheck, TlsSettings

        client = None
        if variant.mtls:
            client = ClientCert(
                cert_file=str(pki / f"{variant.key_kind}-client.pem"),
                key_file=str(pki / f"{variant.key_kind}-client.key"),
            )
        target = f"{common.HOST}:{port}"
        settings = TlsSettings(
            targets=(target,),
            trust=TrustSettings(system=False, ca_files=(str(pki / f"{variant.key_kind}-ca.pem"),)),
            client_cert=client,
            http=HttpCheck() if variant.http else None,
        )
        defaults = ProbeDefaults()
        config = ProbeConfig(
            name=f"bench-{variant.name}",
            kind="tls",
            interval=Seconds(60),
            timeout=Seconds(PROBE_TIMEOUT),
            thresholds=Thresholds(),
            labels={},
            settings=settings,
            defaults=defaults,
        )
        probe = KINDS["tls"].build(settings, defaults)

        def task() -> tuple[bool, str]:
            result, _ = run_target(probe, target, config)
            served = sum(1 for c in result.certificates if c.role != "client")
            tls = result.facts
            ok = result.success and served == 2 and tls is not None
            if ok and variant.mtls:
                ok = tls is not None and tls.client_auth == "accepted"
            detail = f"{tls.version} {tls.cipher} client_auth={tls.client_auth}" if tls else ""
            return ok, detail if ok else f"{result.reason.value}: {result.message} served={served} {detail}"

        return task

    @staticmethod
    def _bare_task(variant: Variant, pki: Path, port: int) -> Callable[[], tuple[bool, str]]:
        context = ssl.create_default_context(cafile=str(pki / f"{variant.key_kind}-ca.pem"))
        if variant.mtls:
            context.load_cert_chain(
                str(pki / f"{variant.key_kind}-client.pem"), str(pki / f"{variant.key_kind}-client.key")
            )

        def task() -> tuple[bool, str]:
            try:
                with (
                    socket.create_connection((common.HOST, port), timeout=PROBE_TIMEOUT) as sock,
                    context.wrap_socket(sock, server_hostname=common.HOST) as tls,
                ):
                    der = tls.getpeercert(binary_form=True)
                    negotiated = f"{tls.version()} {(tls.cipher() or ('',))[0]}"
            except (OSError, ssl.SSLError) as exc:
                return False, repr(exc)
            return bool(der), negotiated

        return task

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command["op"]
        if op == "once":
            ok, detail = self.tasks[command["variant"]]()
            return {"ok": ok, "detail": detail}
        if op == "cprofile":
            return self._cprofile(command["variant"], float(command["seconds"]))
        task = self.tasks[command["variant"]]
        pool = self._pool(int(command["concurrency"]))
        latencies: list[float] = []
        failures: Counter[str] = Counter()
        lock = threading.Lock()

        def timed() -> None:
            started = time.perf_counter()
            try:
                ok, detail = task()
            except Exception as exc:  # noqa: BLE001 - counted as a failure
                ok, detail = False, repr(exc)
            elapsed = time.perf_counter() - started
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    failures[detail[:200]] += 1

        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        if op == "round":
            # One scheduler round: every target submitted at once, then every result awaited.
            futures = [pool.submit(timed) for _ in range(int(command["count"]))]
            for future in futures:
                future.result()
        else:
            # Fixed duration, one future per probe; N + N/4 in flight or queued, so the
            # pool never starves and the tail after the deadline stays short.
            concurrency = int(command["concurrency"])
            slots = threading.BoundedSemaphore(concurrency + max(1, concurrency // 4))
            end = started + float(command["seconds"])
            futures = []
            while time.perf_counter() < end:
                slots.acquire()
                future = pool.submit(timed)
                future.add_done_callback(lambda _: slots.release())
                futures.append(future)
            for future in futures:
                future.result()
        wall = time.perf_counter() - started
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
        latencies.sort()
        return {
            "probes": len(latencies),
            "failures": sum(failures.values()),
            "failure_samples": dict(failures.most_common(3)),
            "wall_s": wall,
            "cpu_s": cpu,
            "p50_ms": common.percentile(latencies, 0.50) * 1e3,
            "p99_ms": common.percentile(latencies, 0.99) * 1e3,
        }

    def _cprofile(self, variant: str, seconds: float) -> dict[str, Any]:
        """Fallback profile without py-spy: sequential probes in this thread."""
        task = self.tasks[variant]
        profiler = cProfile.Profile()
        end = time.perf_counter() + seconds
        count = 0
        profiler.enable()
        while time.perf_counter() < end:
            task()
            count += 1
        profiler.disable()
        stats = pstats.Stats(profiler)
        total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
        rows = []
        for (filename, line, function), (_, _, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
            rows.append((f"{function} ({common.short_path(filename)}:{line})", tottime, cumtime))
        self_top = sorted(rows, key=lambda r: -r[1])[:15]
        incl_top = sorted(rows, key=lambda r: -r[2])[:25]
        return {
            "tool": "cProfile (sequential, main thread)",
            "probes": count,
            "self": [(name, tot / total) for name, tot, _ in self_top],
            "inclusive": [(name, cum / total) for name, _, cum in incl_top],
        }


def worker_main(side: str) -> None:
    """The worker subprocess: first line is the init command, then one command per line."""
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the pipe
    worker: ClientWorker | None = None
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command.get("op") == "init":
                worker = ClientWorker(side, command)
                reply: dict[str, Any] = {"ready": True, "pid": os.getpid()}
            elif command.get("op") == "quit":
                break
            else:
                assert worker is not None
                reply = worker.run(command)
        except Exception as exc:  # noqa: BLE001 - reported to the driver
            reply = {"error": repr(exc)}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    os._exit(0)  # do not wait for pool threads


# --------------------------------------------------------------------------- measurements


@dataclass
class Cell:
    """One measured run of one client on one variant at one concurrency."""

    side: str
    variant: str
    concurrency: int
    repeat: int
    probes: int
    failures: int
    wall_s: float
    client_cpu_s: float
    nginx_cpu_s: float
    other_cores: float  # busy cores not accounted to the client, nginx or wrk
    p50_ms: float
    p99_ms: float
    loadgen_cpu_s: float = 0.0
    failure_samples: str = ""

    @property
    def valid(self) -> bool:
        return self.failures == 0 and self.probes > 0

    @property
    def rate(self) -> float:
        return self.probes / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_ms(self) -> float:
        return self.client_cpu_s * 1e3 / self.probes if self.probes else float("nan")

    @property
    def nginx_ms(self) -> float:
        return self.nginx_cpu_s * 1e3 / self.probes if self.probes else float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.pki = workdir / "pki"
        self.cells: list[Cell] = []
        self.rounds: list[dict[str, Any]] = []
        self.processes: list[common.Managed] = []
        self.workers: dict[str, Worker] = {}
        self.nginx: common.Managed | None = None
        self.blackbox: common.Managed | None = None
        self.blackbox_port = 0
        self.negotiated: dict[str, dict[str, str]] = {}
        self.wrk_script = workdir / "check.lua"
        self.round_script = workdir / "round.lua"
        self.blackbox_rounds: list[dict[str, Any]] = []

    # -- setup ---------------------------------------------------------------------

    def start(self) -> None:
        common.write_tls_pki(self.pki)
        *listener_ports, self.blackbox_port = common.free_ports(5)
        self.ports = dict(zip((v.listener for v in MAIN_VARIANTS), listener_ports, strict=True))
        self.nginx = start_nginx_listeners(self._dir("nginx"), self.pki, self.ports)
        self.processes.append(self.nginx)
        self.blackbox = start_blackbox_modules(self._dir("blackbox"), self.pki, self.blackbox_port)
        self.processes.append(self.blackbox)
        self.wrk_script.write_text(WRK_SCRIPT)
        self.round_script.write_text(common.WRK_ROUND_SCRIPT)
        for variant in MAIN_VARIANTS:  # blackbox's 1,000-endpoint rounds, one URL per probe
            path = self._probe_url(variant).split(f":{self.blackbox_port}", 1)[1]
            self._round_targets(variant.listener).write_text(f"{path}\n" * ENDPOINT_ROUND)
        init = {"op": "init", "pki": str(self.pki), "ports": self.ports}
        for side in ("certscope", "bare"):
            worker = Worker(side, init)
            self.processes.append(worker)
            self.workers[side] = worker
        for worker in self.workers.values():
            worker.wait_ready()

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir()
        return path

    def stop(self) -> None:
        for process in reversed(self.processes):
            if isinstance(process, Worker) and process.running():
                with contextlib.suppress(OSError, ValueError):
                    assert process.process.stdin is not None
                    process.process.stdin.write('{"op": "quit"}\n')
                    process.process.stdin.flush()
            process.stop(signal.SIGQUIT if process is self.nginx else signal.SIGTERM)

    def check(self) -> None:
        """One probe per variant and client must succeed before anything is timed."""
        for variant in VARIANTS.values():
            found: dict[str, str] = {}
            for side, worker in self.workers.items():
                if side == "bare" and variant.http:
                    continue
                reply = worker.call({"op": "once", "variant": variant.name})
                if not reply["ok"]:
                    raise RuntimeError(f"{side} {variant.name}: {reply['detail']}")
                found[side] = reply["detail"]
            if not variant.http:
                body = self._blackbox_once(variant)
                if "\nprobe_success 1\n" not in body:
                    raise RuntimeError(f"blackbox {variant.name}: probe failed:\n{body[-1500:]}")
                found["blackbox"] = next(
                    (line for line in body.splitlines() if line.startswith("probe_tls_version_info")), "?"
                )
            self.negotiated[variant.name] = found

    def _blackbox_once(self, variant: Variant) -> str:
        url = f"{self._probe_url(variant)}&debug=true"
        with urllib.request.urlopen(url, timeout=30) as response:
            return str(response.read().decode())

    def _round_targets(self, listener: str) -> Path:
        return self.workdir / f"round-{listener}.txt"

    def _probe_url(self, variant: Variant) -> str:
        port = self.ports[variant.listener]
        return f"http://{common.HOST}:{self.blackbox_port}/probe?module={variant.module}&target={common.HOST}:{port}"

    # -- one cell ------------------------------------------------------------------

    def measure(self, side: str, variant: Variant, concurrency: int, seconds: float, repeat: int) -> Cell:
        assert self.nginx is not None and self.blackbox is not None
        nginx0 = common.tree_cpu_seconds(self.nginx.pid)
        busy0, _ = common.system_ticks()
        if side == "blackbox":
            cell = self._measure_blackbox(variant, concurrency, seconds, repeat)
        else:
            reply = self.workers[side].call(
                {"op": "run", "variant": variant.name, "concurrency": concurrency, "seconds": seconds}
            )
            cell = self._cell(side, variant.name, concurrency, repeat, reply)
        busy1, _ = common.system_ticks()
        cell.nginx_cpu_s = common.tree_cpu_seconds(self.nginx.pid) - nginx0
        ours = cell.client_cpu_s + cell.nginx_cpu_s + cell.loadgen_cpu_s
        cell.other_cores = max(0.0, ((busy1 - busy0) / common.CLK_TCK - ours) / cell.wall_s) if cell.wall_s else 0.0
        self.cells.append(cell)
        mark = "" if cell.valid else f"  INVALID: {cell.failures} failures {cell.failure_samples}"
        print(
            f"  r{repeat} {variant.name:14s} c={concurrency:<3d} {side:9s} {cell.rate:8.0f}/s "
            f"client {cell.cpu_ms:6.3f} ms/probe  nginx {cell.nginx_ms:6.3f} ms  "
            f"p50 {cell.p50_ms:6.1f} ms  p99 {cell.p99_ms:6.1f} ms  other load {cell.other_cores:4.2f} cores{mark}",
            flush=True,
        )
        return cell

    @staticmethod
    def _cell(side: str, variant: str, concurrency: int, repeat: int, reply: dict[str, Any]) -> Cell:
        return Cell(
            side=side,
            variant=variant,
            concurrency=concurrency,
            repeat=repeat,
            probes=int(reply["probes"]),
            failures=int(reply["failures"]),
            wall_s=float(reply["wall_s"]),
            client_cpu_s=float(reply["cpu_s"]),
            nginx_cpu_s=0.0,
            other_cores=0.0,
            p50_ms=float(reply["p50_ms"]),
            p99_ms=float(reply["p99_ms"]),
            failure_samples=json.dumps(reply.get("failure_samples", {}))[:300],
        )

    def _measure_blackbox(self, variant: Variant, concurrency: int, seconds: float, repeat: int) -> Cell:
        assert self.blackbox is not None
        duration = max(1, round(seconds))  # wrk takes whole seconds
        command = [
            "wrk",
            f"-t{min(2, concurrency)}",
            f"-c{concurrency}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "-s",
            str(self.wrk_script),
            self._probe_url(variant),
        ]
        loadgen0 = common.children_cpu_seconds()
        blackbox0 = common.tree_cpu_seconds(self.blackbox.pid)
        output = subprocess.run(command, capture_output=True, text=True, check=False, timeout=duration + 60).stdout
        blackbox1 = common.tree_cpu_seconds(self.blackbox.pid)
        loadgen = common.children_cpu_seconds() - loadgen0
        result = next((line for line in output.splitlines() if line.startswith("RESULT ")), None)
        if result is None:
            raise RuntimeError(f"wrk gave no result:\n{output}")
        values = {k: float(v) for k, v in (item.split("=") for item in result.split()[1:])}
        errors = sum(values[k] for k in ("connect", "read", "write", "timeout"))
        sample = next((line[7:] for line in output.splitlines() if line.startswith("SAMPLE ")), "")
        return Cell(
            side="blackbox",
            variant=variant.name,
            concurrency=concurrency,
            repeat=repeat,
            probes=int(values["ok"]),
            failures=int(values["bad"] + errors),
            wall_s=values["duration_us"] / 1e6,
            client_cpu_s=blackbox1 - blackbox0,
            nginx_cpu_s=0.0,
            other_cores=0.0,
            p50_ms=values["p50_us"] / 1e3,
            p99_ms=values["p99_us"] / 1e3,
            loadgen_cpu_s=loadgen,
            failure_samples=sample[:300],
        )

    def endpoint_round(self, variant: Variant, repeat: int) -> dict[str, Any]:
        assert self.nginx is not None
        nginx0 = common.tree_cpu_seconds(self.nginx.pid)
        reply = self.workers["certscope"].call(
            {"op": "round", "variant": variant.name, "concurrency": ROUND_CONCURRENCY, "count": ENDPOINT_ROUND}
        )
        nginx_cpu = common.tree_cpu_seconds(self.nginx.pid) - nginx0
        row = {
            "variant": variant.name,
            "repeat": repeat,
            "targets": ENDPOINT_ROUND,
            "concurrency": ROUND_CONCURRENCY,
            "probes_ok": reply["probes"],
            "failures": reply["failures"],
            "failure_samples": reply["failure_samples"],
            "seconds": reply["wall_s"],
            "client_cpu_ms_per_probe": reply["cpu_s"] * 1e3 / max(1, reply["probes"]),
            "nginx_cpu_ms_per_probe": nginx_cpu * 1e3 / max(1, reply["probes"]),
        }
        self.rounds.append(row)
        print(
            f"  r{repeat} 1,000 endpoints {variant.name:14s} {row['seconds']:.3f} s "
            f"({row['client_cpu_ms_per_probe']:.3f} ms CPU/probe, failures {row['failures']})",
            flush=True,
        )
        return row

    def blackbox_endpoint_round(self, listener: str, repeat: int) -> dict[str, Any]:
        """blackbox probing 1,000 targets of ``listener`` at concurrency 64, once each."""
        assert self.nginx is not None and self.blackbox is not None
        measured = common.blackbox_round(
            self.round_script,
            self._round_targets(listener),
            ENDPOINT_ROUND,
            ROUND_CONCURRENCY,
            self.blackbox,
            self.blackbox_port,
            self.nginx,
        )
        row = {
            "listener": listener,
            "repeat": repeat,
            "targets": ENDPOINT_ROUND,
            "concurrency": ROUND_CONCURRENCY,
            "seconds": measured.seconds,
            "seconds_incl_wrk_start": measured.seconds_incl_wrk_start,
            "cpu_ms_per_probe": measured.blackbox_cpu_seconds * 1e3 / ENDPOINT_ROUND,
            "nginx_cpu_ms_per_probe": measured.nginx_cpu_seconds * 1e3 / ENDPOINT_ROUND,
        }
        self.blackbox_rounds.append(row)
        print(
            f"  r{repeat} 1,000 endpoints {listener:14s} {row['seconds']:.3f} s blackbox "
            f"({row['cpu_ms_per_probe']:.3f} ms CPU/probe)",
            flush=True,
        )
        return row

    # -- profile -------------------------------------------------------------------

    def profile(self, seconds: float) -> dict[str, Any]:
        worker = self.workers["certscope"]
        command = {"op": "run", "variant": "ec", "concurrency": PROFILE_CONCURRENCY, "seconds": seconds}
        if common.pyspy_executable() is None:
            print("  py-spy not found: cProfile of a sequential run instead", flush=True)
            return worker.call({"op": "cprofile", "variant": "ec", "seconds": seconds})
        raw, log = self.args.out / "tls_probe.pyspy.txt", self.workdir / "py-spy.log"
        with common.pyspy_recording(worker.pid, raw, log):
            reply = worker.call(command)
        summary = common.read_pyspy(raw, log, PLUMBING)
        summary.update(
            {
                "tool": "py-spy record --rate 250 --nonblocking (attached; idle threads excluded)",
                "variant": "ec",
                "concurrency": PROFILE_CONCURRENCY,
                "probes": reply["probes"],
                "rate_under_profiler": reply["probes"] / reply["wall_s"],
                "cpu_ms_per_probe_under_profiler": reply["cpu_s"] * 1e3 / max(1, reply["probes"]),
                "raw": str(raw),
            }
        )
        return summary


# The worker's own frames every sample of a probe passes through.
PLUMBING = (
    "ClientWorker.run.<locals>.timed",
    "ClientWorker._certscope_task.<locals>.task",
    "ClientWorker.run",
    "worker_main",
)


# --------------------------------------------------------------------------- report


def median_of(cells: list[Cell], attribute: str) -> float:
    return common.median(getattr(c, attribute) for c in cells if c.valid)


def summarize(cells: list[Cell]) -> list[dict[str, Any]]:
    rows = []
    for variant in (*MAIN_VARIANTS, *HTTP_VARIANTS):
        for concurrency in CONCURRENCIES:
            row: dict[str, Any] = {"variant": variant.name, "concurrency": concurrency}
            present = False
            for side in SIDES:
                group = [c for c in cells if (c.side, c.variant, c.concurrency) == (side, variant.name, concurrency)]
                if not group:
                    continue
                present = True
                rates = [c.rate for c in group if c.valid]
                row[side] = {
                    "probes_per_s": median_of(group, "rate"),
                    "probes_per_s_range": [min(rates), max(rates)] if rates else None,
                    "cpu_ms_per_probe": median_of(group, "cpu_ms"),
                    "nginx_cpu_ms_per_probe": median_of(group, "nginx_ms"),
                    "p50_ms": median_of(group, "p50_ms"),
                    "p99_ms": median_of(group, "p99_ms"),
                    "other_load_cores": median_of(group, "other_cores"),
                    "runs": len(group),
                    "invalid_runs": sum(1 for c in group if not c.valid),
                }
            if not present:
                continue
            cs, bb = row.get("certscope"), row.get("blackbox")
            if cs and bb:
                row["throughput_ratio"] = cs["probes_per_s"] / bb["probes_per_s"]
                row["cpu_ratio"] = cs["cpu_ms_per_probe"] / bb["cpu_ms_per_probe"]
            rows.append(row)
    return rows


def _span(values: list[float] | None, digits: int = 2) -> str:
    """`` [low-high]``, or nothing."""
    return f" [{values[0]:.{digits}f}-{values[1]:.{digits}f}]" if values else ""


def _fmt(value: float | None, spec: str) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| config | conc | certscope /s | blackbox /s | bare /s | certscope CPU ms/probe | blackbox CPU ms/probe "
        "| bare CPU ms/probe | nginx CPU ms/probe (cs / bb) | throughput cs/bb | CPU cs/bb |"
    )
    lines = [head, "|" + "---|" * 11]
    for row in rows:
        cs, bb, bare = row.get("certscope", {}), row.get("blackbox", {}), row.get("bare", {})
        lines.append(
            f"| {row['variant']} | {row['concurrency']} | {_fmt(cs.get('probes_per_s'), ',.0f')} "
            f"| {_fmt(bb.get('probes_per_s'), ',.0f')} | {_fmt(bare.get('probes_per_s'), ',.0f')} "
            f"| {_fmt(cs.get('cpu_ms_per_probe'), '.3f')} | {_fmt(bb.get('cpu_ms_per_probe'), '.3f')} "
            f"| {_fmt(bare.get('cpu_ms_per_probe'), '.3f')} "
            f"| {_fmt(cs.get('nginx_cpu_ms_per_probe'), '.2f')} / {_fmt(bb.get('nginx_cpu_ms_per_probe'), '.2f')} "
            f"| {_fmt(row.get('throughput_ratio'), '.2f')} | {_fmt(row.get('cpu_ratio'), '.2f')} |"
        )
    return "\n".join(lines)


def round_summary(
    rounds: list[dict[str, Any]], blackbox_rounds: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per variant: certscope's 1,000-endpoint round against blackbox's round over the
    same 1,000 targets of the same listener (medians; paired ratios per repetition)."""
    out = []
    for name in dict.fromkeys(r["variant"] for r in rounds):
        group = [r for r in rounds if r["variant"] == name]
        valid = [r for r in group if r["failures"] == 0]
        seconds = [r["seconds"] for r in valid]
        listener = VARIANTS[name].listener
        theirs = [r for r in blackbox_rounds if r["listener"] == listener]
        at_rate = next(
            (r.get("blackbox") for r in rows if r["variant"] == listener and r["concurrency"] == ROUND_CONCURRENCY),
            None,
        )
        median_s = common.median(seconds)
        blackbox_s = common.median(r["seconds"] for r in theirs)
        paired = [
            mine["seconds"] / other["seconds"]
            for mine in valid
            for other in theirs
            if other["repeat"] == mine["repeat"] and other["seconds"] > 0
        ]
        ratio = median_s / blackbox_s if seconds and theirs else None
        out.append(
            {
                "variant": name,
                "median_s": median_s,
                "range_s": [min(seconds), max(seconds)] if seconds else None,
                "client_cpu_ms_per_probe": common.median(r["client_cpu_ms_per_probe"] for r in valid),
                "runs": len(group),
                "invalid_runs": len(group) - len(valid),
                "blackbox_s": blackbox_s if theirs else None,
                "blackbox_range_s": [min(r["seconds"] for r in theirs), max(r["seconds"] for r in theirs)]
                if theirs
                else None,
                "blackbox_cpu_ms_per_probe": common.median(r["cpu_ms_per_probe"] for r in theirs) if theirs else None,
                "blackbox_http": False,  # blackbox's tcp module sends no HTTP request
                "certscope_http": VARIANTS[name].http,
                "ratio": ratio,
                "ratio_range_paired": [min(paired), max(paired)] if len(paired) > 1 else None,
                "goal_ratio": GOAL_ROUND_RATIO,
                "goal_met": bool(ratio <= GOAL_ROUND_RATIO) if ratio is not None else None,
                # Reported only: 1,000 probes at blackbox's concurrency-64 rate on one target.
                "blackbox_equivalent_s": ENDPOINT_ROUND / at_rate["probes_per_s"] if at_rate else None,
            }
        )
    return out


def goals(rows: list[dict[str, Any]], cells: list[Cell]) -> list[dict[str, Any]]:
    """The goals at concurrency 64, with the ratios' spread over the repetitions (each
    repetition's certscope cell over its blackbox cell: they ran back to back)."""
    out = []
    for row in rows:
        if row["concurrency"] != ROUND_CONCURRENCY or "throughput_ratio" not in row:
            continue
        paired_cpu: list[float] = []
        paired_rate: list[float] = []
        mine = [
            c for c in cells if (c.side, c.variant, c.concurrency) == ("certscope", row["variant"], ROUND_CONCURRENCY)
        ]
        for cell in mine:
            other = next(
                (
                    c
                    for c in cells
                    if (c.side, c.variant, c.concurrency, c.repeat)
                    == ("blackbox", cell.variant, cell.concurrency, cell.repeat)
                ),
                None,
            )
            if other is None or not (cell.valid and other.valid):
                continue
            paired_cpu.append(cell.cpu_ms / other.cpu_ms)
            paired_rate.append(cell.rate / other.rate)
        out.append(
            {
                "variant": row["variant"],
                "cpu_ratio": row["cpu_ratio"],
                "cpu_ratio_range_paired": [min(paired_cpu), max(paired_cpu)] if len(paired_cpu) > 1 else None,
                "cpu_goal": GOAL_CPU_RATIO,
                "cpu_goal_met": bool(row["cpu_ratio"] <= GOAL_CPU_RATIO),
                "throughput_ratio": row["throughput_ratio"],
                "throughput_ratio_range_paired": [min(paired_rate), max(paired_rate)] if len(paired_rate) > 1 else None,
                "throughput_goal": GOAL_THROUGHPUT_RATIO,
                "throughput_goal_met": bool(row["throughput_ratio"] >= GOAL_THROUGHPUT_RATIO),
            }
        )
    return out


# --------------------------------------------------------------------------- main


def _interleaved(repeat: int) -> tuple[str, ...]:
    """The three clients in an order rotated per repetition (A B C, B C A, C A B)."""
    shift = repeat % len(SIDES)
    return SIDES[shift:] + SIDES[:shift]


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds: float = args.seconds
    repeats: int = args.repeats
    concurrencies = QUICK_CONCURRENCIES if args.quick else CONCURRENCIES
    print(f"TLS probe benchmark: {seconds} s per run, {repeats} repetitions, concurrency {concurrencies}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="certscope-tls-bench-"))
    bench = Bench(args, workdir)
    try:
        bench.start()
        print(
            f"nginx pid {bench.nginx.pid if bench.nginx else '?'} ports {bench.ports}; blackbox :{bench.blackbox_port}"
        )
        bench.check()
        for name, found in bench.negotiated.items():
            print(f"  {name}: {found}")
        for repeat in range(repeats):
            print(f"repetition {repeat + 1}/{repeats}", flush=True)
            for variant in MAIN_VARIANTS:
                for concurrency in concurrencies:
                    for side in _interleaved(repeat + concurrency):
                        bench.measure(side, variant, concurrency, seconds, repeat)
            if not args.quick:
                for variant in HTTP_VARIANTS:
                    bench.measure("certscope", variant, ROUND_CONCURRENCY, seconds, repeat)
        print("1,000 loopback endpoints (one round, 64 threads)", flush=True)
        round_variants = [VARIANTS["ec"]] if args.quick else [VARIANTS["rsa"], VARIANTS["ec"], *HTTP_VARIANTS]
        for repeat in range(max(1, repeats)):
            measured: set[str] = set()
            for variant in round_variants:
                steps: list[Callable[[], object]] = [functools.partial(bench.endpoint_round, variant, repeat)]
                if variant.listener not in measured:  # blackbox over the same 1,000, back to back
                    measured.add(variant.listener)
                    steps.append(functools.partial(bench.blackbox_endpoint_round, variant.listener, repeat))
                for step in steps if repeat % 2 == 0 else reversed(steps):
                    step()
        profile: dict[str, Any] = {"skipped": "--quick"}
        if not args.quick:
            # Without an http check, a TLS 1.3 mTLS probe waits for the server's verdict on
            # its certificate (client_auth_wait, sized to the handshake): once.
            bench.endpoint_round(VARIANTS["mtls-ec"], 0)
            print(f"profile: certscope, ec, concurrency {PROFILE_CONCURRENCY}", flush=True)
            profile = bench.profile(max(3.0, seconds))
    finally:
        bench.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rows = summarize(bench.cells)
    return {
        "settings": {
            "seconds": seconds,
            "blackbox_seconds": max(1, round(seconds)),
            "repeats": repeats,
            "concurrencies": concurrencies,
            "quick": args.quick,
        },
        "negotiated": bench.negotiated,
        "summary": rows,
        "goals_at_64": goals(rows, bench.cells),
        "endpoint_round": round_summary(bench.rounds, bench.blackbox_rounds, rows),
        "profile": profile,
        "cells": [asdict(c) | {"rate": c.rate, "cpu_ms": c.cpu_ms, "valid": c.valid} for c in bench.cells],
        "rounds": bench.rounds,
        "blackbox_rounds": bench.blackbox_rounds,
    }


def report(result: dict[str, Any]) -> None:
    print()
    print(table(result["summary"]))
    print()
    print(
        f"Goals at concurrency 64 (CPU cs/bb <= {GOAL_CPU_RATIO}, throughput cs/bb >= {GOAL_THROUGHPUT_RATIO}; "
        "in brackets the range of the ratio within each repetition):"
    )
    for goal in result["goals_at_64"]:
        print(
            f"  {goal['variant']:14s} CPU ratio {goal['cpu_ratio']:.2f}{_span(goal['cpu_ratio_range_paired'])} "
            f"({'met' if goal['cpu_goal_met'] else 'NOT met'}), throughput ratio {goal['throughput_ratio']:.2f}"
            f"{_span(goal['throughput_ratio_range_paired'])} ({'met' if goal['throughput_goal_met'] else 'NOT met'})"
        )
    print(f"1,000 loopback endpoints, concurrency 64 (medians; goal: certscope/blackbox <= {GOAL_ROUND_RATIO}):")
    for row in result["endpoint_round"]:
        verdict = "" if row["goal_met"] is None else ("met" if row["goal_met"] else "NOT met")
        http = " (certscope sends GET /, blackbox no HTTP)" if row["certscope_http"] else ""
        print(
            f"  {row['variant']:14s} {row['median_s']:.3f} s{_span(row['range_s'], 3)} vs blackbox "
            f"{_fmt(row['blackbox_s'], '.3f')} s{_span(row['blackbox_range_s'], 3)} = {_fmt(row['ratio'], '.2f')}x"
            f"{_span(row['ratio_range_paired'])} {verdict}{http}; "
            f"{row['client_cpu_ms_per_probe']:.3f} vs {_fmt(row['blackbox_cpu_ms_per_probe'], '.3f')} ms CPU/probe; "
            f"runs {row['runs']}, invalid {row['invalid_runs']}"
        )
    profile = result["profile"]
    if profile.get("self"):
        print(f"Profile ({profile['tool']}, {profile.get('samples', profile.get('probes'))} samples):")
        common.print_profile(profile)
    print(common.elapsed_and_noise(result))


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__, "a smoke test: concurrency 1 and 64, 0.5 s per run, 1 repetition")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per run (default 2, quick 0.5)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 3, quick 1)")
    parser.add_argument("--worker", choices=("certscope", "bare"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    args.seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 2.0)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if not common.require_tools(*common.PEER_TOOLS):
        return 2
    results = common.Results("tls_probe", args.out, tools=("nginx", "blackbox_exporter", "wrk", "py_spy"))
    with common.sigterm_exits():
        result = results.write(run(args))
    report(result)
    invalid = sum(1 for c in result["cells"] if not c["valid"])
    if invalid:
        print(f"{invalid} invalid runs (failures)")
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
