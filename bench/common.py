"""What the benchmarks share: the command line, child processes, nginx and
blackbox_exporter, the scratch PKI (built with the tests' ``tests.fixtures.pki.issue``), CPU and
memory accounting, timing, py-spy, and the result file with its machine, code and noise
figures.

Contract:

- The benchmarks run from the repository root as modules (``python -m bench.tls_probe``);
  every child they start (workers, measured processes, the daemon) is started the same
  way, from the repository root (:data:`REPO_ROOT`), so all of them import the working
  tree's ``exporter``, ``probes``, ``tests`` and ``bench``.
- Every process started through :class:`Managed` runs in its own session under ``setpriv
  --pdeathsig KILL`` (so it dies with the benchmark, even on SIGKILL), optionally in its
  own PID namespace (so that nginx's workers die with the master); ``stop()`` is
  idempotent and kills the whole process group.  :func:`sigterm_exits` turns SIGTERM into
  ``SystemExit``, so that ``finally`` blocks stop everything on SIGTERM as on Ctrl-C.
- Every benchmark writes ``<out>/<name>.json`` through :class:`Results`: its own figures
  after one header, the same for all (``benchmark``, ``generated``, ``command``,
  ``machine``, ``code``, ``noise`` at start and end, ``elapsed_s``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import gc
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cryptography
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.fixtures.pki import DAY, NOW, PrivateKey, issue
from tests.fixtures.servers import localhost_sans

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PEER_TOOLS = ("nginx", "prometheus-blackbox-exporter", "wrk")  # the TLS benchmarks' peers and load generator


# --------------------------------------------------------------------------- command line


def argument_parser(doc: str | None, quick: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark has: ``--out`` and ``--quick`` (whose
    help says what the smoke-test size is)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where results (and cached inputs) go (default bench/out)"
    )
    parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def int_list(minimum: int = 1) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: distinct integers >= ``minimum``, comma-separated, sorted."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError("expected integers, comma-separated") from None
        if not values or any(v < minimum for v in values) or len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"expected distinct integers >= {minimum}, comma-separated")
        return tuple(sorted(values))

    return parse


def rotated(cells: Sequence[Any], repeats: int) -> Iterator[tuple[int, Any]]:
    """(repetition, cell): every cell once per repetition, the order rotated by one
    each time, so that the machine's drift spreads over all cells."""
    for repeat in range(repeats):
        shift = repeat % len(cells)
        for cell in [*cells[shift:], *cells[:shift]]:
            yield repeat, cell


def medians(runs: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Per cell, the median of each figure over its runs."""
    return {
        cell: {key: statistics.median(run[key] for run in cell_runs) for key in cell_runs[0]}
        for cell, cell_runs in runs.items()
    }


def module_command(module: str, *args: str) -> list[str]:
    """``python -m module args``: how a benchmark starts a child of its own (run it with
    ``cwd=REPO_ROOT``, as :class:`Managed` and :func:`run_json_child` do)."""
    return [sys.executable, "-m", module, *args]


def run_json_child(module: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    """Run ``python -m module args`` to completion; its last stdout line is its JSON answer."""
    done = subprocess.run(
        module_command(module, *args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


# --------------------------------------------------------------------------- processes


@functools.cache
def _pid_namespace_works() -> bool:
    """Whether ``unshare --pid`` may be used (root, or user namespaces allowed)."""
    if not shutil.which("unshare"):
        return False
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--kill-child", "--", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class Managed:
    """A child process in its own session, killed with its parent (setpriv --pdeathsig).

    ``pipes``: stdin and stdout are text pipes (a JSON-lines worker); otherwise stdout goes
    to ``log`` (or nowhere).  stderr goes to ``log`` when there is one, else to ours.
    ``pass_fds`` and ``env`` are handed over as they are; the working directory is
    :data:`REPO_ROOT`.
    ``pid_namespace``: also run it in a PID namespace whose init is the command, when the
    machine allows one (``isolated`` says whether it did): if the benchmark dies by SIGKILL,
    pdeathsig kills unshare, ``--kill-child`` kills the command, and the kernel kills every
    process left in the namespace (nginx's workers, which pdeathsig alone would orphan).
    ``stop()`` is idempotent and kills the whole process group."""

    def __init__(
        self,
        name: str,
        args: list[str],
        *,
        log: Path | None = None,
        pipes: bool = False,
        pass_fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        pid_namespace: bool = False,
    ) -> None:
        self.name = name
        prefix = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
        self.isolated = pid_namespace and _pid_namespace_works()
        if self.isolated:
            prefix += ["unshare", "--pid", "--fork", "--kill-child", "--"]
        self._log = open(log, "ab") if log else None  # closed by stop()
        self.process = subprocess.Popen(
            [*prefix, *args],
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else (self._log or subprocess.DEVNULL),
            stderr=self._log if self._log else None,
            pass_fds=tuple(pass_fds),
            env=dict(env) if env is not None else None,
            cwd=REPO_ROOT,
            start_new_session=True,
            text=pipes,
        )
        self.pid = self.process.pid
        self._stopped = False

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # anything left in the group (workers still closing)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self._log:
            self._log.close()


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports of 127.0.0.1 free right now (bound together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def handshake_ok(port: int, ca_file: Path) -> bool:
    """A verified TLS handshake with 127.0.0.1:``port`` succeeds."""
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (
            socket.create_connection((HOST, port), timeout=2) as sock,
            context.wrap_socket(sock, server_hostname=HOST) as tls,
        ):
            return bool(tls.getpeercert(binary_form=True))
    except (OSError, ValueError):
        return False


def wait_until(
    check: Callable[[], bool], what: str, process: Managed, logs: Sequence[Path], timeout: float = 15.0
) -> None:
    """Poll ``check`` until it is true; if ``process`` exits or time runs out, stop it and
    raise with the tail of its ``logs``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.running():
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    status = process.process.poll()
    process.stop()
    tail = "".join(log.read_text(errors="replace")[-2000:] for log in logs if log.exists())
    raise RuntimeError(f"{what} did not start (exit status {status}):\n{tail}")


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM raises ``SystemExit`` meanwhile, so that ``finally`` blocks stop the servers."""

    def raise_exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def require_tools(*tools: str) -> bool:
    """Whether every tool is on the PATH; if not, say what to install (the Debian packages
    are named as the tools)."""
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        print(
            f"missing: {', '.join(missing)} (apt-get install -y --no-install-recommends {' '.join(missing)})",
            file=sys.stderr,
        )
    return not missing


# --------------------------------------------------------------------------- nginx and blackbox_exporter


def nginx_server(ports: Iterable[int], cert: Path, key: Path, extra: str = "") -> str:
    """One nginx ``server`` block: TLS on 127.0.0.1:``ports`` with ``cert`` (a chain file)
    and ``key``, ``extra`` directives, and a 200 "ok" to any request."""
    listens = " ".join(f"listen {HOST}:{port} ssl;" for port in ports)
    return f'  server {{ {listens} ssl_certificate {cert}; ssl_certificate_key {key}; {extra}return 200 "ok\\n"; }}'


def nginx_conf(workdir: Path, servers: Iterable[str], connections: int = 4096) -> str:
    """The benchmarks' nginx.conf around ``servers``: 2 workers, full handshakes only (no
    session cache, no tickets; TLS 1.2 and 1.3), no keep-alive, no access log."""
    blocks = "\n".join(servers)
    return f"""daemon off;
worker_processes 2;
worker_rlimit_nofile {connections + 64};
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/client_body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache off;
  ssl_session_tickets off;
  keepalive_timeout 0;
{blocks}
}}
"""


def start_nginx(
    workdir: Path,
    servers: Iterable[str],
    ready: Callable[[], bool],
    *,
    connections: int = 4096,
    sockets: Sequence[socket.socket] = (),
    timeout: float = 15.0,
) -> Managed:
    """nginx in the foreground with :func:`nginx_conf` in ``workdir``, in its own PID
    namespace when allowed; returns once ``ready()``.  ``sockets`` are listening sockets
    nginx adopts instead of binding (its ``NGINX`` inherited-sockets variable, the
    mechanism of its binary upgrade): ports chosen by the OS that nobody can take between
    choosing and listening."""
    config = workdir / "nginx.conf"
    config.write_text(nginx_conf(workdir, servers, connections))
    fds = [s.fileno() for s in sockets]
    env = {**os.environ, "NGINX": "".join(f"{fd};" for fd in fds)} if fds else None
    log = workdir / "nginx.out"
    nginx = Managed(
        "nginx",
        ["nginx", "-p", str(workdir), "-c", str(config), "-e", str(workdir / "error.log")],
        log=log,
        pass_fds=fds,
        env=env,
        pid_namespace=True,
    )
    wait_until(ready, "nginx", nginx, [log, workdir / "error.log"], timeout)
    return nginx


def blackbox_module(
    name: str, ca_file: Path, *, timeout: str = "30s", cert_file: Path | None = None, key_file: Path | None = None
) -> str:
    """A blackbox_exporter ``tcp`` module with ``tls: true`` verifying against ``ca_file``
    (and presenting ``cert_file``/``key_file`` when given)."""
    tls = f"ca_file: {ca_file}"
    if cert_file is not None and key_file is not None:
        tls += f", cert_file: {cert_file}, key_file: {key_file}"
    return f"  {name}:\n    prober: tcp\n    timeout: {timeout}\n    tcp: {{tls: true, tls_config: {{{tls}}}}}"


# Lua for wrk loading blackbox_exporter: ``count_probe(status, body)`` counts an answer as
# a probe if it is a 200 carrying ``probe_success 1``, else as a failure, and keeps the
# first failure in ``sample``.  Every wrk thread has its own Lua state, hence its own
# ``ok``, ``bad`` and ``sample`` (read them with ``thread:get``).
WRK_COUNT_PROBE = r"""
ok, bad, sample = 0, 0, ""
function count_probe(status, body)
  if status == 200 and body ~= nil and string.find(body, "\nprobe_success 1\n", 1, true) then
    ok = ok + 1
  else
    bad = bad + 1
    if sample == "" then sample = tostring(status) .. " " .. string.sub(body or "", 1, 300) end
  end
end
"""


# Lua for wrk running one round through blackbox_exporter: every path of the file given
# after ``--`` (one ``/probe?...`` per line) requested once, over the connections wrk keeps
# open (its ``-c``), as a scheduler round fans out over its pool.  delay() holds back every
# request beyond the list, request() hands out the next path, response() counts; the last
# answer prints ``DONE ok= bad= first= last=`` (CLOCK_MONOTONIC through LuaJIT's FFI: the
# first request sent and the last answer received) and stops the thread (wrk itself would
# wait for its whole -d).
WRK_ROUND_SCRIPT = (
    WRK_COUNT_PROBE
    + r"""
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


@dataclass(frozen=True)
class BlackboxRound:
    """One round of probes through blackbox_exporter, driven by :data:`WRK_ROUND_SCRIPT`."""

    seconds: float  # first request sent to last answer received (the Lua hook's clock)
    seconds_incl_wrk_start: float  # as seen from here, wrk's start included
    blackbox_cpu_seconds: float  # the exporter's own, all threads (TreeCpu: nanoseconds)
    nginx_cpu_seconds: float
    probes: int


def blackbox_round(
    script: Path, paths_file: Path, count: int, concurrency: int, blackbox: Managed, port: int, nginx: Managed
) -> BlackboxRound:
    """Request each of the ``count`` paths of ``paths_file`` once from blackbox on
    ``port`` with ``wrk -t1 -c<concurrency>`` and ``script`` (:data:`WRK_ROUND_SCRIPT`);
    raises unless every probe answered 200 with ``probe_success 1``."""
    bound = int(60 + count / 20)  # wrk's -d: an upper bound only, the Lua hook ends the run
    command = ["wrk", "-t1", f"-c{min(concurrency, count)}", f"-d{bound}s", "--timeout", "30s"]
    command += ["-s", str(script), f"http://{HOST}:{port}/", "--", str(paths_file)]
    nginx_before = tree_cpu_seconds(nginx.pid)
    # At 100 probes of about 1 ms, 10 ms ticks would be +-8 % per round.
    blackbox_before = TreeCpu.read(blackbox.pid)
    started = time.monotonic()
    wrk = Managed("wrk", command, pipes=True)
    output: list[str] = []
    done: dict[str, float] = {}
    try:
        assert wrk.process.stdout is not None
        for line in wrk.process.stdout:
            output.append(line)
            if line.startswith("DONE "):
                done = {k: float(v) for k, v in (item.split("=") for item in line.split()[1:])}
                break
        blackbox_cpu = TreeCpu.read(blackbox.pid).seconds_since(blackbox_before)
        nginx_cpu = tree_cpu_seconds(nginx.pid) - nginx_before
        outside = time.monotonic() - started
        with contextlib.suppress(ProcessLookupError):
            os.kill(wrk.pid, signal.SIGINT)  # wrk sleeps out its -d otherwise
        output += wrk.process.stdout.readlines()
    finally:
        wrk.stop()
    if not done:
        raise RuntimeError(f"wrk ended without probing every target:\n{''.join(output)[-2000:]}")
    sample = next((line[7:].strip() for line in output if line.startswith("SAMPLE ")), "")
    if int(done["bad"]) or int(done["ok"]) != count:
        raise RuntimeError(f"blackbox: {int(done['ok'])} of {count} probes succeeded; first failure: {sample}")
    return BlackboxRound(done["last"] - done["first"], outside, blackbox_cpu, nginx_cpu, int(done["ok"]))


def start_blackbox(workdir: Path, modules: Iterable[str], port: int) -> Managed:
    """Debian's prometheus-blackbox-exporter on 127.0.0.1:``port`` with ``modules``
    (:func:`blackbox_module`); returns once it answers ``/-/healthy``."""
    config = workdir / "blackbox.yml"
    config.write_text("modules:\n" + "\n".join(modules) + "\n")
    log = workdir / "blackbox.log"
    blackbox = Managed(
        "blackbox",
        [
            "prometheus-blackbox-exporter",
            f"--config.file={config}",
            f"--web.listen-address={HOST}:{port}",
            "--log.level=warn",
        ],
        log=log,
    )

    def healthy() -> bool:
        with urllib.request.urlopen(f"http://{HOST}:{port}/-/healthy", timeout=1) as response:
            return bool(response.status == 200)

    wait_until(healthy, "blackbox_exporter", blackbox, [log], timeout=30)
    return blackbox


# --------------------------------------------------------------------------- PKI


def private_key(kind: Literal["rsa", "ec"]) -> PrivateKey:
    """A new RSA-2048 or ECDSA P-256 key."""
    return rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())


def write_tls_pki(directory: Path, kinds: Sequence[Literal["rsa", "ec"]] = ("rsa", "ec")) -> None:
    """For each key kind, a CA and two leaves under it, all with keys of that kind:
    ``{kind}-ca.pem``; ``{kind}-chain.pem`` (server leaf for DNS:localhost and
    IP:127.0.0.1, then the CA) with ``{kind}-leaf.key``; ``{kind}-client.pem`` (EKU
    clientAuth) with ``{kind}-client.key``."""
    directory.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        ca = issue(f"bench {kind} CA", ca=True, key=private_key(kind), not_after=NOW + 3650 * DAY)
        leaf = issue("localhost", ca, key=private_key(kind), extra_extensions=(localhost_sans(),))
        client = issue("bench client", ca, key=private_key(kind), extended_key_usage=(ExtendedKeyUsageOID.CLIENT_AUTH,))
        files = {
            f"{kind}-ca.pem": ca.pem,
            f"{kind}-chain.pem": leaf.pem + ca.pem,
            f"{kind}-leaf.key": leaf.key_pem,
            f"{kind}-client.pem": client.pem,
            f"{kind}-client.key": client.key_pem,
        }
        for name, data in files.items():
            (directory / name).write_bytes(data)


_SHA256 = hashes.SHA256()


def bare_fields(cert: x509.Certificate) -> tuple[Any, ...]:
    """The fields certscope needs, read straight off a loaded certificate: the least any
    inventory costs (the floor of the files and kubernetes benchmarks)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    public_key = cert.public_key()
    return (
        cert.not_valid_after_utc,
        cert.subject.rfc4514_string(),
        cert.issuer.rfc4514_string(),
        dns_names,
        cert.serial_number,
        type(public_key).__name__,
        getattr(public_key, "key_size", 0),
        cert.signature_algorithm_oid,
        cert.fingerprint(_SHA256),
    )


# --------------------------------------------------------------------------- CPU and memory


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: field 3 (state) first, so field N
    is at N - 3.  Raises OSError when the process is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _stat_ticks(pid: int) -> tuple[int, list[int]]:
    """(utime + stime of ``pid``, all its threads; its direct children); (0, []) if gone."""
    try:
        fields = _stat_fields(pid)
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0, []
    children: list[int] = []
    for task in tasks:
        with contextlib.suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return int(fields[11]) + int(fields[12]), children


def waited_children_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the children ``pid`` has waited for (cutime +
    cstime: worker processes that have exited); 0 if gone."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[13]) + int(fields[14])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its descendants (nginx: unshare ->
    master -> workers), all threads, in 10 ms ticks."""
    return TreeCpu.read(pid).ticks / CLK_TCK


def _on_cpu_ns(task: Path) -> int:
    """A thread's on-CPU nanoseconds, ``task`` being ``/proc/<pid>/task/<tid>``."""
    return int((task / "schedstat").read_text().split()[0])


@dataclass(frozen=True)
class TreeCpu:
    """The CPU of a process and all its descendants (nginx: unshare -> master ->
    workers) at one moment, read two ways: the scheduler's nanoseconds per live thread
    (``/proc/<pid>/task/<tid>/schedstat``) and the 10 ms ticks of each process
    (``/proc/<pid>/stat``, which also keep the time of threads that have exited)."""

    thread_ns: dict[tuple[int, int], int]  # (pid, tid) -> on-CPU nanoseconds
    ticks: int

    @classmethod
    def read(cls, pid: int) -> TreeCpu:
        thread_ns: dict[tuple[int, int], int] = {}
        ticks = 0
        pending = [pid]
        while pending:
            process = pending.pop()
            own, children = _stat_ticks(process)
            ticks += own
            pending += children
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{process}/task").iterdir():
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        thread_ns[(process, int(task.name))] = _on_cpu_ns(task)
        return cls(thread_ns, ticks)

    def seconds_since(self, before: TreeCpu) -> float:
        """CPU seconds from ``before`` to this reading: the threads' nanoseconds when
        every thread of ``before`` is still there and they account for the ticks
        (a thread that exited in between takes its time with it), else the ticks."""
        precise = sum(ns - before.thread_ns.get(key, 0) for key, ns in self.thread_ns.items()) / 1e9
        coarse = (self.ticks - before.ticks) / CLK_TCK
        # Two readings of utime and stime, each floored to a tick.
        if before.thread_ns.keys() <= self.thread_ns.keys() and precise >= coarse - 4 / CLK_TCK:
            return precise
        return coarse


def processes_cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of exactly these processes (not their children); gone ones count 0."""
    return sum(_stat_ticks(pid)[0] for pid in pids) / CLK_TCK


def thread_cpu_ns() -> dict[int, tuple[str, int]]:
    """This process's live threads: native id -> (``threading`` name, on-CPU
    nanoseconds from ``/proc/self/task/<tid>/schedstat``)."""
    out: dict[int, tuple[str, int]] = {}
    for thread in threading.enumerate():
        if thread.native_id is None:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ns = _on_cpu_ns(Path(f"/proc/self/task/{thread.native_id}"))
            out[thread.native_id] = (thread.name, ns)
    return out


def thread_cpu_ms_since(before: dict[int, tuple[str, int]]) -> dict[str, float]:
    """CPU milliseconds per kind of thread since ``before`` (:func:`thread_cpu_ns`),
    threads named alike summed ("loop-0", "loop-1" -> "loop"; "ThreadPoolExecutor-0_3"
    -> "ThreadPoolExecutor"). A thread that ended in between is not counted."""
    totals: dict[str, float] = {}
    for native_id, (name, ns) in thread_cpu_ns().items():
        kind = re.sub(r"[-_][0-9_]+$", "", name) or name
        spent = (ns - before.get(native_id, (name, 0))[1]) / 1e6
        totals[kind] = totals.get(kind, 0.0) + spent
    return totals


def self_cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_unit_costs(work: Callable[[], Any], units: int) -> tuple[Any, dict[str, float]]:
    """``work()``'s result, and what it cost this process per unit of ``units``: CPU
    milliseconds (all threads), units per second of wall time, voluntary context
    switches."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result, {
        "cpu_ms": cpu * 1e3 / units,
        "per_second": units / seconds,
        "voluntary_switches": (after.ru_nvcsw - before.ru_nvcsw) / units,
    }


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def system_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def status_value(name: str, pid: int | str = "self") -> int:
    """A number of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM`` in KiB, ``Threads``); 0 if absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+), so that the peak is the measured work's."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5\n")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- timing and statistics


def median(values: Iterable[float]) -> float:
    """The median; NaN for no values (a cell with no valid run)."""
    listed = list(values)
    return statistics.median(listed) if listed else float("nan")


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """The value at ``share`` (0..1) of an ascending list; NaN for an empty one."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * share))]


class GcTimer:
    """Wall-clock seconds the cyclic garbage collector ran while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections += 1

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


@dataclass
class Sample:
    """One timed call: wall and process CPU seconds, and figures of its own."""

    wall: float
    cpu: float
    extra: dict[str, float] = field(default_factory=dict)


def timed(action: Callable[[], Any]) -> tuple[Sample, Any]:
    """Run ``action`` once after a full collection: wall, CPU and in-run GC seconds, and its value."""
    gc.collect()
    with GcTimer() as gc_timer:
        cpu_started = time.process_time()
        started = time.perf_counter()
        value = action()
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    return Sample(wall, cpu, {"gc_seconds": gc_timer.seconds}), value


# --------------------------------------------------------------------------- py-spy


def pyspy_executable() -> str | None:
    """py-spy on the PATH or beside this Python; None if there is none."""
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if os.access(found, os.X_OK) else None


@contextlib.contextmanager
def pyspy_recording(pid: int, raw: Path, log: Path, rate: int = 250) -> Iterator[None]:
    """``py-spy record`` attached to ``pid`` for the duration of the block, writing the raw
    collapsed stacks to ``raw`` (read them with :func:`read_pyspy`)."""
    pyspy = pyspy_executable()
    if pyspy is None:
        raise RuntimeError("py-spy not found (pip install py-spy)")
    command = [pyspy, "record", "--pid", str(pid), "--rate", str(rate)]
    # In blocking mode py-spy 0.4 counts idle pool threads as busy.
    command += ["--nonblocking", "--format", "raw", "--output", str(raw)]
    spy = Managed("py-spy", command, log=log)
    try:
        time.sleep(1.0)  # attach
        yield
        time.sleep(0.2)
    finally:
        spy.stop(signal.SIGINT, timeout=30)  # py-spy writes its output on SIGINT


def short_path(path: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    parts = Path(path).parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :])
    return Path(path).name


# Frames every sample of a pool thread passes through: left out of the printed
# inclusive list (kept in the JSON).
_PLUMBING = frozenset(
    {"Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run", "_worker", "_WorkItem.run", "main", "<module>"}
)


def pyspy_stacks(raw: str) -> Iterator[tuple[str, int]]:
    """(stack, samples) of each line of py-spy's collapsed stacks (``frame;frame;... count``)."""
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            yield stack, int(count_text)


def summarize_pyspy(raw: str, plumbing: Iterable[str] = ()) -> dict[str, Any]:
    """Self and inclusive shares per function from py-spy's collapsed stacks
    (``frame;frame;... count``, each frame ``function (file:line)``).  Shares are of all
    samples of busy threads, i.e. of the client's CPU time.  ``plumbing``: frames of the
    benchmark's own, left out of ``inclusive`` as the thread-pool frames are."""
    left_out = _PLUMBING | set(plumbing)
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for stack, count in pyspy_stacks(raw):
        total += count
        frames = []
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            filename = where.rsplit(":", 1)[0].rstrip(")")
            frames.append(f"{name} ({short_path(filename)})" if filename else name)
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return {"samples": 0, "self": [], "inclusive": [], "inclusive_all": []}
    ranked = inclusive.most_common()
    return {
        "samples": total,
        "self": [(name, n / total) for name, n in own.most_common(20)],
        "inclusive": [(name, n / total) for name, n in ranked if name.split(" (")[0] not in left_out][:40],
        "inclusive_all": [(name, n / total) for name, n in ranked[:60]],
    }


def read_pyspy(raw: Path, log: Path, plumbing: Iterable[str] = ()) -> dict[str, Any]:
    """:func:`summarize_pyspy` of what py-spy wrote, or ``error``: the tail of its log."""
    if not raw.exists():
        error = log.read_text(errors="replace")[-1500:] if log.exists() else "no log"
        print(f"  py-spy wrote nothing:\n{error}", flush=True)
        return {"tool": "py-spy", "error": error}
    return summarize_pyspy(raw.read_text(), plumbing)


def print_profile(profile: dict[str, Any]) -> None:
    """The inclusive and self shares of a profile, as the benchmarks print them."""
    print("  inclusive (thread and pool plumbing left out):")
    for name, share in profile["inclusive"][:25]:
        print(f"    {share * 100:5.1f}%  {name}")
    print("  self:")
    for name, share in profile["self"][:15]:
        print(f"    {share * 100:5.1f}%  {name}")


# --------------------------------------------------------------------------- machine, code, noise, results


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else ""


# The versions a benchmark may record, by the key they get in ``machine``.
TOOL_VERSIONS: dict[str, Callable[[], list[str]]] = {
    "nginx": lambda: ["nginx", "-v"],
    "blackbox_exporter": lambda: ["prometheus-blackbox-exporter", "--version"],
    "wrk": lambda: ["wrk", "-v"],
    "py_spy": lambda: [pyspy_executable() or "py-spy", "-V"],
    "openssl_cli": lambda: ["openssl", "version"],
}


def machine(*tools: str) -> dict[str, Any]:
    """The machine and the libraries measured with, plus the versions of ``tools``
    (keys of :data:`TOOL_VERSIONS`)."""
    from cryptography.hazmat.backends.openssl.backend import backend

    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    debian = Path("/etc/debian_version")
    found: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "debian": debian.read_text().strip() if debian.exists() else "",
        "python": platform.python_version(),
        "python_ssl": ssl.OPENSSL_VERSION,
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
    }
    return found | {tool: _first_line(TOOL_VERSIONS[tool]()) for tool in tools}


def code_version() -> dict[str, Any]:
    """Which certscope code was measured: the commit, and the files of ``probes/`` and
    ``exporter/`` that differ from it."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        except OSError:
            return ""
        return done.stdout.strip()

    modified = git("status", "--porcelain", "--", "probes", "exporter")
    return {
        "commit": git("rev-parse", "HEAD"),
        "probes_or_exporter_modified": bool(modified),
        "modified": modified.splitlines(),
    }


def noise() -> dict[str, Any]:
    """The machine's other load right now: load averages and CPU pressure (PSI)."""
    try:
        pressure = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        pressure = "n/a"
    return {"loadavg": list(os.getloadavg()), "cpu_pressure": pressure}


class Results:
    """The result file of one benchmark run, ``<out>/<name>.json``.  Made when the run
    starts (the machine, the code and the noise at start are taken then); :meth:`write`
    puts the run's own figures after that header."""

    def __init__(self, name: str, out: Path, *, tools: Sequence[str] = ()) -> None:
        self.name = name
        self.path = out / f"{name}.json"
        self._started = time.monotonic()
        self._noise_start = noise()
        self.header: dict[str, Any] = {
            "benchmark": name,
            "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "machine": machine(*tools),
            "code": code_version(),
        }

    def describe(self) -> str:
        """One line on what is measured where, for the start of the output."""
        m, code = self.header["machine"], self.header["code"]
        changes = " + local changes in probes/ or exporter/" if code["probes_or_exporter_modified"] else ""
        return (
            f"machine: {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}, "
            f"cryptography {m['cryptography']} ({m['openssl']}); certscope at {code['commit'][:12]}{changes}"
        )

    def write(self, figures: Mapping[str, Any]) -> dict[str, Any]:
        """Write the header, the noise at start and now, the elapsed time and ``figures``;
        returns what was written."""
        document = {
            **self.header,
            "noise": {"start": self._noise_start, "end": noise()},
            "elapsed_s": time.monotonic() - self._started,
            **figures,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"wrote {self.path}")
        return document


def elapsed_and_noise(document: Mapping[str, Any]) -> str:
    """The closing line of a benchmark's output: how long it ran, and the noise around it."""
    noise_figures = document["noise"]
    return f"elapsed {document['elapsed_s']:.0f} s; noise start {noise_figures['start']}; end {noise_figures['end']}"
