"""Soak: the daemon against 500 local TLS targets for N minutes, memory and file
descriptors sampled, their slope reported.  Not run in CI (``--quick``, half a minute
with 50 targets, is a smoke test).

Setup: a throw-away PKI (``bench.common.write_tls_pki``: EC P-256, leaf for
localhost + CA), one nginx (2 workers, no session cache or tickets: every probe is a
full handshake) listening on ``--targets`` ports of 127.0.0.1 (default 500), a
directory of 50 certificate files, and ``python -m exporter run`` with one ``tls``
probe over every port (``interval`` default 15 s, ``global.concurrency`` 32), one
``files`` probe, and one ``tls`` probe of 10 refused ports (failures every round).

Every ``--sample`` seconds (default 10) the daemon's RSS (``VmRSS``), open file
descriptors (``/proc/<pid>/fd``) and threads are read and ``/metrics`` is scraped (a
render per sample; the scrape must parse and show every good target successful).
The report gives first/last/max and the least-squares slope per minute of RSS and
fds over the samples after ``--warmup`` (default 60 s): flat memory means a slope
near 0 KiB/min.

Usage::

    python -m bench.soak [--minutes 30] [--targets 500] [--interval 15] [--out bench/out] [--quick]

Results go to ``<out>/soak.json``.  Every process runs in its own session under
``setpriv --pdeathsig KILL`` and is stopped at the end, on error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench import common
from tests.fixtures.pki import build_pki
from tests.fixtures.servers import can_connect


def start_nginx_listeners(workdir: Path, pki: Path, ports: list[int]) -> common.Managed:
    """One nginx ``server`` listening on every port, serving the EC localhost leaf."""
    server = common.nginx_server(ports, pki / "ec-chain.pem", pki / "ec-leaf.key")
    return common.start_nginx(workdir, [server], lambda: all(can_connect(common.HOST, p) for p in ports), timeout=30)


def refused_ports(count: int) -> tuple[list[int], list[socket.socket]]:
    """Ports bound without listening: connections are refused, nobody else gets them."""
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((common.HOST, 0))
        held.append(sock)
    return [s.getsockname()[1] for s in held], held


def proc_sample(pid: int) -> dict[str, float]:
    return {
        "rss_kib": common.status_value("VmRSS", pid),
        "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())),
        "threads": common.status_value("Threads", pid),
    }


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    variance = sum((t - mean_t) ** 2 for t, _ in points)
    if variance == 0:
        return None
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / variance


def scrape(url: str, good: int) -> dict[str, float]:
    started = time.monotonic()
    text = requests.get(url, timeout=30).text
    seconds = time.monotonic() - started
    success = 0.0
    rounds = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "certscope_probe_success" and sample.labels.get("probe") == "soak":
                success += sample.value
            if sample.name == "certscope_probe_runs_total" and sample.labels.get("probe") == "soak":
                rounds = max(rounds, sample.value)
    return {"scrape_seconds": seconds, "good_targets_ok": success, "good_targets": good, "rounds": rounds}


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="certscope-soak-"))
    pki_dir = workdir / "pki"
    common.write_tls_pki(pki_dir, kinds=("ec",))
    files_dir = workdir / "files"
    files_dir.mkdir()
    pki = build_pki()
    for number in range(50):
        (files_dir / f"cert{number}.pem").write_bytes((pki.valid, pki.expired, pki.intermediate)[number % 3].pem)
    ports = common.free_ports(args.targets)
    bad_ports, held = refused_ports(10)
    started_processes: list[common.Managed] = []
    try:
        nginx = start_nginx_listeners(workdir, pki_dir, ports)
        started_processes.append(nginx)
        config = workdir / "config.yaml"
        config.write_text(
            f"""global: {{interval: {args.interval}s, timeout: 5s, concurrency: 32,
  trust: {{system: false, ca_files: ["{pki_dir}/ec-ca.pem"]}}}}
probes:
  - name: soak
    kind: tls
    targets: {json.dumps([f"localhost:{p}" for p in ports])}
  - name: refused
    kind: tls
    targets: {json.dumps([f"localhost:{p}" for p in bad_ports])}
  - name: disk
    kind: files
    paths: ["{files_dir}"]
"""
        )
        log = workdir / "daemon.log"
        daemon = common.Managed(
            "certscope",
            common.module_command("exporter", "run", f"--config.file={config}", "--web.listen-address=127.0.0.1:0"),
            log=log,
        )
        started_processes.append(daemon)
        address: list[str] = []

        def listening() -> bool:
            match = re.search(r"listening on (\S+):(\d+)", log.read_text(errors="replace"))
            if match:
                address[:] = [f"http://127.0.0.1:{match.group(2)}"]
            return bool(match)

        common.wait_until(listening, "certscope", daemon, [log], timeout=30)
        metrics_url = address[0] + "/metrics"
        # The daemon runs under setpriv: its own pid is the Python child's.
        pid = daemon.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children and "python" in Path(f"/proc/{children[0]}/cmdline").read_bytes().decode(errors="replace"):
            pid = int(children[0])
        samples: list[dict[str, float]] = []
        begin = time.monotonic()
        end = begin + args.minutes * 60
        while True:
            now = time.monotonic()
            sample = {"t": round(now - begin, 1), **proc_sample(pid), **scrape(metrics_url, args.targets)}
            samples.append(sample)
            print(
                f"t={sample['t']:7.1f}s rss={sample['rss_kib'] / 1024:6.1f} MiB fds={sample['fds']:4.0f} "
                f"threads={sample['threads']:3.0f} ok={sample['good_targets_ok']:.0f}/{args.targets} "
                f"rounds={sample['rounds']:.0f} scrape={sample['scrape_seconds'] * 1000:.0f} ms",
                flush=True,
            )
            if now >= end or not daemon.running():
                break
            time.sleep(max(0.0, min(args.sample, end - time.monotonic())))
        steady = [s for s in samples if s["t"] >= args.warmup] or samples
        summary = {
            "rss_mib": {
                "first": samples[0]["rss_kib"] / 1024,
                "after_warmup": steady[0]["rss_kib"] / 1024,
                "last": samples[-1]["rss_kib"] / 1024,
                "max": max(s["rss_kib"] for s in samples) / 1024,
                "slope_kib_per_min": slope_per_minute([(s["t"], s["rss_kib"]) for s in steady]),
            },
            "fds": {
                "first": samples[0]["fds"],
                "last": samples[-1]["fds"],
                "max": max(s["fds"] for s in samples),
                "slope_per_min": slope_per_minute([(s["t"], s["fds"]) for s in steady]),
            },
            "threads": {"last": samples[-1]["threads"], "max": max(s["threads"] for s in samples)},
            "rounds": samples[-1]["rounds"],
            "good_targets_ok_last": samples[-1]["good_targets_ok"],
            "scrape_seconds_max": max(s["scrape_seconds"] for s in samples),
            "daemon_alive": daemon.running(),
        }
        return {
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "summary": summary,
            "samples": samples,
        }
    finally:
        for process in reversed(started_processes):
            process.stop()
        for sock in held:
            sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__, "a smoke test: half a minute, 50 targets (unless given)")
    parser.add_argument("--minutes", type=float, default=None, help="how long (default 30; quick 0.5)")
    parser.add_argument("--targets", type=int, default=None, help="TLS targets (default 500; quick 50)")
    parser.add_argument("--interval", type=float, default=15, help="probe interval seconds (default 15)")
    parser.add_argument("--sample", type=float, default=10, help="seconds between samples (default 10)")
    parser.add_argument("--warmup", type=float, default=60, help="seconds left out of the slopes (default 60)")
    args = parser.parse_args(argv)
    args.minutes = args.minutes if args.minutes is not None else (0.5 if args.quick else 30.0)
    args.targets = args.targets if args.targets is not None else (50 if args.quick else 500)
    results = common.Results("soak", args.out, tools=("nginx",))
    with common.sigterm_exits():
        result = results.write(run(args))
    print(json.dumps(result["summary"], indent=2))
    summary = result["summary"]
    return 0 if summary["daemon_alive"] and summary["good_targets_ok_last"] == args.targets else 1


if __name__ == "__main__":
    sys.exit(main())
