"""Benchmark: the TLS scale curve, a certscope probe round at 100, 1,000 and 5,000 targets
against blackbox_exporter probing the same targets.

Setup, once per run:

PKI
    An ECDSA P-256 CA and one ECDSA P-256 leaf per endpoint, each with its own key
    (SANs ``DNS:t<i>.tls-scale.test`` and ``IP:127.0.0.1``), issued with the tests'
    ``tests.pki.issue``; every endpoint serves leaf + CA.
    A fleet of N endpoints is N distinct certificates, so certscope's per-chain caches
    (``probes.verify.ChainMemo``: facts by DER, verdicts by (chain, name)) start empty for
    every target of a first round.  ``--shared-cert`` serves one certificate from every
    endpoint instead, which isolates the handshake from the certificate work.
nginx
    One nginx (2 workers, full handshakes only: no session cache, no tickets; TLS 1.2 and
    1.3) listening on ``max(--sizes)`` ports of 127.0.0.1, one ``server`` per port with its
    own certificate.  Targets are ``127.0.0.1:<port>``: distinct endpoints for certscope and
    blackbox alike, with nothing to resolve.  Distinct SNI names on one port would need N
    names resolving to 127.0.0.1 (an /etc/hosts edit or a DNS server on a shared machine),
    and both certscope's ``server_name`` and blackbox's ``tls_config.server_name`` are per
    probe/module, not per target.  nginx handles thousands of listening sockets well: each
    is one entry in each worker's epoll set (``worker_connections`` is sized for them).
    The ports are OS-chosen and race-free: this script binds and listens on them, then
    hands the sockets to nginx through its ``NGINX`` inherited-sockets variable (the
    mechanism of its binary upgrade), so no other process can take a port in between.
blackbox_exporter
    Debian's ``prometheus-blackbox-exporter``, one ``tcp`` module with ``tls: true`` and the
    CA file (it verifies the chain and the IP SAN, as certscope does).

Measured, for each size N and repetition, interleaved (the two sides back to back, their
order alternating per repetition, sizes swept inside each repetition so that the machine's
changing load spreads over all sizes), medians reported:

``certscope``
    A fresh child process.  It loads a config with one ``tls`` probe of N targets with the
    real loader (``exporter.config.load_config``; ``global.concurrency`` = ``--concurrency``,
    default 64, the concurrency the "1,000 endpoints" goal is stated at; the daemon's
    built-in default is 16), builds ``ResultStore`` + ``Scheduler`` + ``WebApp`` as
    ``exporter.daemon`` does and calls ``Scheduler.apply(config)``: the APScheduler job runs
    the daemon's round (``Scheduler._round``: discovery, fan-out of ``run_target`` over the
    target pool, ``publish_round``).  Then the second round of the same probe objects is
    triggered (the job's next run time set to now).  Per round: wall seconds (the
    scheduler's own round timer plus ``publish_round``), process CPU (user + sys, all
    threads) per target, cyclic-GC seconds, and the share of round-2 certificates served
    from the memo.  After each round, one ``GET /metrics`` through the WSGI app (text
    format, then gzip, each the first render of that snapshot).  Memory: peak RSS
    (``VmHWM``, reset after imports) growth per target.
``blackbox``
    ``wrk`` (one thread, ``--concurrency`` keep-alive connections) requesting
    ``/probe?module=tls_scale&target=127.0.0.1:<port>`` once per target; a Lua hook
    counts a probe only if blackbox answered 200 with ``probe_success 1`` and timestamps
    the first request and the last answer (CLOCK_MONOTONIC through LuaJIT's FFI), which
    give the wall seconds.  CPU per probe is blackbox's own (``/proc/<pid>/stat``, all
    threads).

nginx's CPU per probe is recorded for both sides (it should match).  Linearity: the cost
per target at each size over the cost per target at the smallest size.

Profile (full runs, unless ``--no-profile``): one more certscope child at the largest size,
``py-spy record --nonblocking`` attached for both rounds.

Usage::

    python -m bench.tls_scale [--sizes 100,1000,5000] [--repeats 3] [--concurrency 64]
                              [--shared-cert] [--no-profile] [--out bench/out] [--quick]

``--quick`` (the smoke test, under 10 s): sizes 20 and 60, one repetition, no profile.
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
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from bench import common
from tests.pki import DAY, NOW, issue

THIS_MODULE = "bench.tls_scale"

DEFAULT_SIZES = (100, 1000, 5000)
QUICK_SIZES = (20, 60)
DEFAULT_CONCURRENCY = 64
PROBE_NAME = "tls_scale"
MODULE = "tls_scale"
PROBE_TIMEOUT = "10s"
# Long enough that APScheduler never starts a round of its own after the first one:
# the second round is triggered by this script.
PROBE_INTERVAL = "24h"
PYSPY_RATE = 250
# Goals (the performance issue): 1,000 loopback endpoints in one round of at most
# 0.8 s, and a cost per target at 5,000 targets within 1.2x of the cost at 100.
GOAL_ENDPOINTS = 1000
GOAL_ROUND_SECONDS = 0.8
GOAL_LINEARITY = 1.2

WRK_SCRIPT = (
    common.WRK_COUNT_PROBE
    + r"""
-- Each target once: delay() holds back every request beyond the list, request() hands
-- out the next target, response() counts; the last answer stops the thread and prints
-- DONE (wrk itself would wait for its whole -d).
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } certscope_timespec;
int clock_gettime(int clock_id, certscope_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local spec = ffi.new("certscope_timespec")
local function now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, spec)
  return tonumber(spec.tv_sec) + tonumber(spec.tv_nsec) * 1e-9
end

local paths = {}
local issued, sent, first = 0, 0, 0

function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
end

function delay()
  if issued >= #paths then return 86400000 end
  issued = issued + 1
  return 0
end

function request()
  -- wrk asks once for a template before the first delay(): that one is never sent.
  if sent >= issued then return wrk.format("GET", "/-/healthy") end
  sent = sent + 1
  if sent == 1 then first = now() end
  return wrk.format("GET", paths[sent])
end

function response(status, headers, body)
  count_probe(status, body)
  if ok + bad == #paths then
    io.write(string.format("DONE ok=%d bad=%d first=%.6f last=%.6f\n", ok, bad, first, now()))
    if sample ~= "" then io.write("SAMPLE " .. (string.gsub(sample, "\n", " | ")) .. "\n") end
    io.flush()
    wrk.thread:stop()
  end
end
"""
)


# --------------------------------------------------------------------------- PKI


def write_pki(directory: Path, count: int) -> None:
    """``ca.pem``; ``leaf-<i>.pem`` (leaf + CA) and ``leaf-<i>.key`` for i < count, every
    leaf with its own key (a fleet does not share keys, and key reuse is a finding of its own)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = issue("tls-scale bench CA", ca=True, not_after=NOW + 3650 * DAY)
    (directory / "ca.pem").write_bytes(ca.pem)
    loopback = x509.IPAddress(ipaddress.ip_address(common.HOST))
    for index in range(count):
        name = f"t{index}.tls-scale.test"
        sans = x509.SubjectAlternativeName([x509.DNSName(name), loopback])
        leaf = issue(name, ca, not_after=NOW + (30 + index % 60) * DAY, extra_extensions=(sans,))
        (directory / f"leaf-{index}.pem").write_bytes(leaf.pem + ca.pem)
        (directory / f"leaf-{index}.key").write_bytes(leaf.key_pem)


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
    """nginx and this script hold one descriptor per listener, plus connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(needed, hard) if hard != resource.RLIM_INFINITY else needed, hard)
        )
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise SystemExit(f"need {needed} open files (one per listener, plus connections); the limit is {soft}")


def start_nginx_fleet(
    workdir: Path, pki: Path, sockets: list[socket.socket], shared_cert: bool, concurrency: int
) -> common.Managed:
    """nginx on the inherited ``sockets``, one certificate per listener (or one for all)."""
    ports = [s.getsockname()[1] for s in sockets]
    if shared_cert:
        servers = [common.nginx_server(ports, pki / "leaf-0.pem", pki / "leaf-0.key")]
    else:
        servers = [
            common.nginx_server([port], pki / f"leaf-{i}.pem", pki / f"leaf-{i}.key") for i, port in enumerate(ports)
        ]
    # Every listening socket takes a connection slot (and a descriptor) in each worker.
    connections = len(ports) + 4 * concurrency + 1024

    def ready() -> bool:
        # The sockets accept in the kernel before any worker runs: wait for real handshakes
        # on the first and the last listener (the workers are forked after every certificate
        # is loaded).
        return common.handshake_ok(ports[-1], pki / "ca.pem") and common.handshake_ok(ports[0], pki / "ca.pem")

    # Loading 5,000 certificates takes a few seconds.
    return common.start_nginx(workdir, servers, ready, connections=connections, sockets=sockets, timeout=120)


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


def child_main(config_path: str, expected_targets: int, hold: bool) -> None:
    """One certscope process: two scheduler rounds over the config's tls targets, a
    /metrics render after each; one JSON line of figures on stdout."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but the protocol lines on the pipe

    from exporter.config import load_config
    from exporter.scheduler import Scheduler
    from exporter.store import ResultStore
    from exporter.web import WebApp
    from probes.result import Discovery, ProbeResult, SourceError

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
            cpu_before = common.self_cpu_seconds()
            if number == 1:
                # The daemon's path: the probe is built from the config through the kind
                # registry, the target pool sized by global.concurrency, and the APScheduler
                # job's first run (spread over at most 2 s) is the first round.
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
        state = store.snapshot().probes[probe_config.name]
        results = [ts for _, ts in sorted(state.targets.items())]
        failures = [
            (target, ts.result.reason.value, ts.result.message)
            for target, ts in state.targets.items()
            if not ts.result.success
        ]
        chains = [len(ts.certificates) for ts in results]
        leaves = {ts.certificates[0].cert.fingerprint_sha256 for ts in results if ts.certificates}
        peak_kib = common.status_value("VmHWM")
        rss_kib = common.status_value("VmRSS")
        round_figures: dict[str, Any] = {
            "seconds": published.round_duration + published.publish_seconds,
            "scheduler_seconds": published.round_duration,
            "publish_seconds": published.publish_seconds,
            "cpu_seconds": cpu,
            "gc_seconds": gc_timer.seconds,
            "gc_collections": gc_timer.collections,
            "targets": published.targets,
            "failures": len(failures),
            "failure_samples": failures[:3],
            "chains_of_two": sum(1 for c in chains if c == 2),
            "distinct_leaves": len(leaves),
            "peak_rss_kib": peak_kib,
            "rss_kib": rss_kib,
        }
        if number == 2 and held is not None:
            # The memo hands back CertFacts objects built in round 1 (kept alive by ``held``,
            # so their ids are stable); a re-parse builds new ones.  By membership, not by
            # target: with --shared-cert, round-1 targets racing on the empty memo each built
            # their own copy, and round 2 hands all of them the one the memo kept.
            before = {id(ts.certificates[0].cert) for ts in held.targets.values() if ts.certificates}
            reused = sum(
                1 for ts in state.targets.values() if ts.certificates and id(ts.certificates[0].cert) in before
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


def write_config(path: Path, ports: Sequence[int], ca_file: Path, concurrency: int) -> None:
    config = {
        "global": {
            "concurrency": concurrency,
            "timeout": PROBE_TIMEOUT,
            "trust": {"system": False, "ca_files": [str(ca_file)]},
        },
        "probes": [
            {
                "name": PROBE_NAME,
                "kind": "tls",
                "interval": PROBE_INTERVAL,
                "targets": [f"{common.HOST}:{port}" for port in ports],
            }
        ],
    }
    path.write_text(json.dumps(config, indent=1) + "\n")  # JSON is YAML


# --------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.pki = workdir / "pki"
        self.sizes: tuple[int, ...] = args.sizes
        self.concurrency: int = args.concurrency
        self.ports: list[int] = []
        self.nginx: common.Managed | None = None
        self.blackbox: common.Managed | None = None
        self.blackbox_port = 0
        self.processes: list[common.Managed] = []
        self.runs: list[dict[str, Any]] = []
        self.setup: dict[str, Any] = {}

    def start(self) -> None:
        largest = max(self.sizes)
        raise_file_limit(largest + 4 * self.concurrency + 1024)
        started = time.perf_counter()
        write_pki(self.pki, 1 if self.args.shared_cert else largest)
        self.setup["pki_seconds"] = time.perf_counter() - started
        nginx_dir = self.workdir / "nginx"
        nginx_dir.mkdir()
        sockets = bind_listeners(largest)
        try:
            self.ports = [s.getsockname()[1] for s in sockets]
            started = time.perf_counter()
            self.nginx = start_nginx_fleet(nginx_dir, self.pki, sockets, self.args.shared_cert, self.concurrency)
            self.setup["nginx_start_seconds"] = time.perf_counter() - started
        finally:
            for sock in sockets:  # nginx holds its own copies
                sock.close()
        self.setup["nginx_pid_namespace"] = self.nginx.isolated
        self.setup["listeners"] = largest
        self.setup["distinct_certificates"] = 1 if self.args.shared_cert else largest
        (self.blackbox_port,) = common.free_ports(1)
        module = common.blackbox_module(MODULE, self.pki / "ca.pem", timeout=PROBE_TIMEOUT)
        self.blackbox = common.start_blackbox(self.workdir, [module], self.blackbox_port)
        self.processes.append(self.blackbox)
        for size in self.sizes:
            write_config(
                self.workdir / f"certscope-{size}.yaml", self.ports[:size], self.pki / "ca.pem", self.concurrency
            )
            (self.workdir / f"targets-{size}.txt").write_text(
                "".join(f"/probe?module={MODULE}&target={common.HOST}:{port}\n" for port in self.ports[:size])
            )
        (self.workdir / "count.lua").write_text(WRK_SCRIPT)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.nginx is not None:
            self.nginx.stop()

    # -- certscope -----------------------------------------------------------------

    def _child(self, size: int, label: str, hold: bool) -> common.Managed:
        config = str(self.workdir / f"certscope-{size}.yaml")
        args = common.module_command(
            THIS_MODULE, "--child", config, "--child-targets", str(size), *(["--hold"] if hold else [])
        )
        child = common.Managed(f"certscope-{label}", args, log=self.workdir / f"certscope-{label}.log", pipes=True)
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

    def certscope(self, size: int, repeat: int) -> dict[str, Any]:
        assert self.nginx is not None
        load = os.getloadavg()[0]
        nginx_before = common.tree_cpu_seconds(self.nginx.pid)
        child = self._child(size, f"{size}-r{repeat}", hold=False)
        try:
            figures = self._child_reply(child)["result"]
        finally:
            child.stop()
        nginx_cpu = common.tree_cpu_seconds(self.nginx.pid) - nginx_before
        check_certscope(figures, size, 1 if self.args.shared_cert else size)
        run = {
            "side": "certscope",
            "size": size,
            "repeat": repeat,
            "loadavg_1m": load,
            "nginx_cpu_ms_per_probe": nginx_cpu * 1e3 / (2 * size),
            **figures,
        }
        self.runs.append(run)
        first, second = figures["round1"], figures["round2"]
        print(
            f"  r{repeat} N={size:<5d} certscope  round1 {first['seconds']:7.3f} s "
            f"({first['cpu_seconds'] * 1e3 / size:6.3f} ms CPU/target)  round2 {second['seconds']:7.3f} s "
            f"({second['cpu_seconds'] * 1e3 / size:6.3f} ms CPU/target, "
            f"{second.get('facts_reused_share', 0):.0%} facts from the memo)  "
            f"render {first['render_text_seconds'] * 1e3:7.1f} ms  "
            f"peak +{(second['peak_rss_after_render_kib'] - figures['baseline_rss_kib']) / size:6.1f} KiB/target  "
            f"load {load:.2f}",
            flush=True,
        )
        return run

    # -- blackbox ------------------------------------------------------------------

    def blackbox_round(self, size: int, repeat: int) -> dict[str, Any]:
        assert self.nginx is not None and self.blackbox is not None
        load = os.getloadavg()[0]
        bound = int(60 + size / 20)  # wrk's -d: an upper bound only, the Lua hook ends the run
        command = ["wrk", "-t1", f"-c{min(self.concurrency, size)}", f"-d{bound}s", "--timeout", "30s"]
        command += ["-s", str(self.workdir / "count.lua"), f"http://{common.HOST}:{self.blackbox_port}/"]
        command += ["--", str(self.workdir / f"targets-{size}.txt")]
        nginx_before = common.tree_cpu_seconds(self.nginx.pid)
        blackbox_before = common.tree_cpu_seconds(self.blackbox.pid)
        started = time.monotonic()
        wrk = common.Managed(f"wrk-{size}-r{repeat}", command, pipes=True)
        self.processes.append(wrk)
        output: list[str] = []
        done: dict[str, float] = {}
        try:
            assert wrk.process.stdout is not None
            for line in wrk.process.stdout:
                output.append(line)
                if line.startswith("DONE "):
                    done = {k: float(v) for k, v in (item.split("=") for item in line.split()[1:])}
                    break
            blackbox_cpu = common.tree_cpu_seconds(self.blackbox.pid) - blackbox_before
            nginx_cpu = common.tree_cpu_seconds(self.nginx.pid) - nginx_before
            outside_wall = time.monotonic() - started
            with contextlib.suppress(ProcessLookupError):
                os.kill(wrk.pid, signal.SIGINT)  # wrk sleeps out its -d otherwise
            output += wrk.process.stdout.readlines()
        finally:
            wrk.stop()
        if not done:
            raise RuntimeError(f"wrk ended without probing every target:\n{''.join(output)[-2000:]}")
        failures = int(done["bad"])
        sample = next((line[7:].strip() for line in output if line.startswith("SAMPLE ")), "")
        if failures or int(done["ok"]) != size:
            raise RuntimeError(f"blackbox: {int(done['ok'])} of {size} probes succeeded; first failure: {sample}")
        seconds = done["last"] - done["first"]
        run = {
            "side": "blackbox",
            "size": size,
            "repeat": repeat,
            "loadavg_1m": load,
            "seconds": seconds,
            "seconds_incl_wrk_start": outside_wall,
            "cpu_seconds": blackbox_cpu,
            "probes": int(done["ok"]),
            "nginx_cpu_ms_per_probe": nginx_cpu * 1e3 / size,
        }
        self.runs.append(run)
        print(
            f"  r{repeat} N={size:<5d} blackbox   round  {seconds:7.3f} s "
            f"({blackbox_cpu * 1e3 / size:6.3f} ms CPU/probe)  load {load:.2f}",
            flush=True,
        )
        return run

    # -- profile -------------------------------------------------------------------

    def profile(self, size: int) -> dict[str, Any]:
        if common.pyspy_executable() is None:
            return {"skipped": "py-spy not found (pip install py-spy)"}
        child = self._child(size, f"{size}-profile", hold=True)
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


def check_certscope(figures: dict[str, Any], size: int, distinct: int) -> None:
    """Every target probed, successful, with its 2-certificate chain, in both rounds."""
    for number in (1, 2):
        round_ = figures[f"round{number}"]
        ok = (
            round_["targets"] == size
            and round_["failures"] == 0
            and round_["chains_of_two"] == size
            and round_["distinct_leaves"] == distinct
        )
        if not ok:
            raise RuntimeError(
                f"certscope round {number} at N={size}: {round_['targets']} targets, {round_['failures']} failures "
                f"(first: {round_['failure_samples'][:1]}), {round_['chains_of_two']} 2-certificate chains, "
                f"{round_['distinct_leaves']} distinct leaves (expected {distinct})"
            )


# --------------------------------------------------------------------------- summary


def summarize(runs: list[dict[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
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
            certscope[f"round{number}_ms_per_target"] = certscope[f"round{number}_seconds"] * 1e3 / size
            certscope[f"cpu_ms_per_target_round{number}"] = common.median(x["cpu_seconds"] * 1e3 / size for x in rounds)
            certscope[f"render_text_seconds_round{number}"] = common.median(x["render_text_seconds"] for x in rounds)
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
        blackbox = {
            "targets": size,
            "runs": len(bb),
            "seconds": common.median(r["seconds"] for r in bb),
            "seconds_range": [min(r["seconds"] for r in bb), max(r["seconds"] for r in bb)],
            "ms_per_target": common.median(r["seconds"] for r in bb) * 1e3 / size,
            "cpu_ms_per_probe": common.median(r["cpu_seconds"] * 1e3 / size for r in bb),
            "nginx_cpu_ms_per_probe": common.median(r["nginx_cpu_ms_per_probe"] for r in bb),
        }
        ratios = {
            "wall_round1_over_blackbox": certscope["round1_seconds"] / blackbox["seconds"],
            "wall_round2_over_blackbox": certscope["round2_seconds"] / blackbox["seconds"],
            "cpu_round1_over_blackbox": certscope["cpu_ms_per_target_round1"] / blackbox["cpu_ms_per_probe"],
            "cpu_round2_over_blackbox": certscope["cpu_ms_per_target_round2"] / blackbox["cpu_ms_per_probe"],
            "round2_over_round1": certscope["round2_seconds"] / certscope["round1_seconds"],
        }
        out[str(size)] = {"certscope": certscope, "blackbox": blackbox, "ratios": ratios}
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


def goals(summary: dict[str, Any], sizes: Sequence[int]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    at = summary.get(str(GOAL_ENDPOINTS))
    if at is not None:
        cs = at["certscope"]
        result["endpoints_1000"] = {
            "goal_seconds": GOAL_ROUND_SECONDS,
            "round1_seconds": cs["round1_seconds"],
            "round2_seconds": cs["round2_seconds"],
            "blackbox_seconds": at["blackbox"]["seconds"],
            "round1_met": bool(cs["round1_seconds"] <= GOAL_ROUND_SECONDS),
            "round2_met": bool(cs["round2_seconds"] <= GOAL_ROUND_SECONDS),
            "blackbox_met": bool(at["blackbox"]["seconds"] <= GOAL_ROUND_SECONDS),
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
    return result


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


def detail_table(summary: dict[str, Any]) -> str:
    """Where certscope's time and memory go, per size (medians)."""
    head = (
        "| targets | round-2 facts from memo | GC s (r1 / r2) | publish_round s (r1 / r2) "
        "| /metrics render ms: text / gzip / cached (series) | render µs/series "
        "| peak RSS KiB/target: round 1 / with renders | retained KiB/target | nginx CPU ms/probe (cs / bb) |"
    )
    lines = [head, "|" + "---|" * 9]
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
            f"| {cs['nginx_cpu_ms_per_probe']:.3f} / {bb['nginx_cpu_ms_per_probe']:.3f} |"
        )
    return "\n".join(lines)


def report(result: dict[str, Any]) -> None:
    print()
    print(table(result["sizes"]))
    print()
    print(detail_table(result["sizes"]))
    print()
    goal = result["goals"].get("endpoints_1000")
    if goal:
        verdict = {True: "met", False: "NOT met"}
        print(
            f"1,000 endpoints in <= {goal['goal_seconds']} s: round 1 {goal['round1_seconds']:.3f} s "
            f"({verdict[goal['round1_met']]}), round 2 {goal['round2_seconds']:.3f} s "
            f"({verdict[goal['round2_met']]}); blackbox {goal['blackbox_seconds']:.3f} s"
        )
    linear = result["goals"].get("linearity")
    if linear:
        print(
            f"per-target cost {linear['largest']:,} vs {linear['smallest']:,} (goal <= {linear['goal_ratio']}x, "
            f"{'met' if linear['met'] else 'NOT met'}): "
            f"certscope wall {linear['wall_round1_ratio']:.2f}x, CPU {linear['cpu_round1_ratio']:.2f}x (round 1); "
            f"wall {linear['wall_round2_ratio']:.2f}x, CPU {linear['cpu_round2_ratio']:.2f}x (round 2); "
            f"blackbox wall {linear['blackbox_wall_ratio']:.2f}x, CPU {linear['blackbox_cpu_ratio']:.2f}x"
        )
    profile = result["profile"]
    if profile.get("self"):
        print(f"Profile at {profile['size']:,} targets ({profile['tool']}, {profile['samples']} samples):")
        print("  by thread: " + ", ".join(f"{k} {v:.0%}" for k, v in profile["by_thread"].items()))
        common.print_profile(profile)
    print(common.elapsed_and_noise(result))


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes: tuple[int, ...] = args.sizes
    print(
        f"TLS scale curve: sizes {', '.join(f'{s:,}' for s in sizes)}; {args.repeats} repetition(s); "
        f"concurrency {args.concurrency}; "
        f"{'one shared' if args.shared_cert else 'a distinct'} certificate per endpoint",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="certscope-tls-scale-"))
    bench = Bench(args, workdir)
    profile: dict[str, Any] = {"skipped": "--quick" if args.quick else "--no-profile"}
    try:
        bench.start()
        print(
            f"PKI {bench.setup['pki_seconds']:.1f} s; nginx pid {bench.nginx.pid if bench.nginx else '?'} "
            f"on {len(bench.ports):,} ports (ready in {bench.setup['nginx_start_seconds']:.1f} s, "
            f"PID namespace: {bench.setup['nginx_pid_namespace']}); blackbox :{bench.blackbox_port}",
            flush=True,
        )
        for repeat in range(args.repeats):
            print(f"repetition {repeat + 1}/{args.repeats}", flush=True)
            for size in sizes:
                # A B, then B A: neither side always runs first.
                if repeat % 2 == 0:
                    bench.certscope(size, repeat)
                    bench.blackbox_round(size, repeat)
                else:
                    bench.blackbox_round(size, repeat)
                    bench.certscope(size, repeat)
        if args.profile and not args.quick:
            print(f"profile: certscope, {max(sizes):,} targets, both rounds", flush=True)
            profile = bench.profile(max(sizes))
    finally:
        bench.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarize(bench.runs, sizes)
    return {
        "settings": {
            "sizes": list(sizes),
            "repeats": args.repeats,
            "concurrency": args.concurrency,
            "shared_cert": args.shared_cert,
            "quick": args.quick,
            "probe_timeout": PROBE_TIMEOUT,
            "key": "ECDSA P-256 leaf and CA; TLS 1.2 and 1.3 offered; no session resumption",
        },
        "setup": bench.setup,
        "sizes": summary,
        "goals": goals(summary, sizes),
        "profile": profile,
        "runs": bench.runs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.argument_parser(__doc__, "smoke test: sizes 20,60, one repetition, no profile")
    parser.add_argument(
        "--sizes", type=common.int_list(), default=None, help="targets per round (default 100,1000,5000)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 3, quick 1)")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="global.concurrency (default 64)")
    parser.add_argument("--shared-cert", action="store_true", help="every endpoint serves the same certificate")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the py-spy profile")
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
