"""Benchmark: the ``kubernetes`` probe's first complete inventory, and its peak memory.

The API server fixture (``tests/kube_apiserver.py``, real HTTP on 127.0.0.1) holds N
``kubernetes.io/tls`` Secrets — ``tls.crt`` = a distinct leaf plus the shared
intermediate, ``ca.crt`` = the root (all issued with the tests' ``tests.pki.issue``),
``tls.key`` = a key (never decoded) — and H Helm
release Secrets of 1 MB each (type ``helm.sh/release.v1``).  The fixture runs in this
process; each measured case runs in a fresh child process, so its peak RSS is its
own:

``bare``
    The limit: paginated GETs (``limit=500``, ``fieldSelector=type=kubernetes.io/tls``)
    with ``requests``, ``json`` parse of each page, base64 decode of every ``tls.crt``
    and ``ca.crt`` value; nothing kept.
``bare_parse``
    ``bare``, plus each distinct certificate loaded with ``cryptography`` and the
    fields certscope needs read into a tuple (``bench.common.bare_fields``), every
    Secret key's tuples kept: the least an inventory costs.
``certscope``
    ``KubernetesProbe.targets()`` until the first complete inventory (every Secret's
    certificates parsed into facts and kept), then one ``run`` per target, as a
    round does.

Reported per case: seconds to the first complete inventory, peak RSS (``VmHWM``)
and its growth over the child's RSS after imports.  The peak memory must not grow
with H: the Helm Secrets are filtered out by the API server.

Usage::

    python -m bench.kubernetes [--sizes 10000,30000] [--helm 0,300] [--out bench/out] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bench import common
from tests.pki import DAY, NOW, issue

TOKEN = "bench-token"
PAGE = 500


def populate(server: Any, size: int, helm: int) -> None:
    """N TLS Secrets with distinct leaves (one shared key pair: signing is the cost
    that matters here, and the key is never read) and H 1 MB Helm Secrets."""
    root = issue("bench root", ca=True, not_after=NOW + 3650 * DAY)
    intermediate = issue("bench intermediate", root, ca=True, not_after=NOW + 3650 * DAY)
    leaf_key = common.private_key("ec")
    root_b64 = base64.b64encode(root.pem).decode()
    for number in range(size):
        name = f"app-{number}.bench.example"
        leaf = issue(name, intermediate, key=leaf_key, not_after=NOW + (60 + number % 30) * DAY, sans=(name,))
        chain = leaf.pem + intermediate.pem
        key_b64 = base64.b64encode(leaf.key_pem).decode()
        server.put(
            "secrets",
            {
                "metadata": {"namespace": f"ns-{number % 50}", "name": f"tls-{number}"},
                "type": "kubernetes.io/tls",
                "data": {"tls.crt": base64.b64encode(chain).decode(), "tls.key": key_b64, "ca.crt": root_b64},
            },
        )
    release = base64.b64encode(os.urandom(750_000)).decode()  # 1 MB once base64-encoded
    for number in range(helm):
        server.put(
            "secrets",
            {
                "metadata": {"namespace": f"ns-{number % 50}", "name": f"sh.helm.release.v1.app-{number}.v1"},
                "type": "helm.sh/release.v1",
                "data": {"release": release},
            },
        )


# --------------------------------------------------------------------------- children


def _pages(url: str) -> Iterator[dict[str, Any]]:
    """The paginated LIST a client must make: limit, the type as a field selector, continue."""
    session = requests.Session()
    params = {"limit": str(PAGE), "fieldSelector": "type=kubernetes.io/tls"}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    while True:
        page = session.get(url + "/api/v1/secrets", params=params, headers=headers, timeout=60).json()
        token = page["metadata"].get("continue")
        yield page
        del page  # the page's objects go before the next page arrives
        if not token:
            return
        params["continue"] = token


def child_bare(url: str) -> dict[str, Any]:
    baseline = common.status_value("VmRSS")
    started = time.perf_counter()
    objects = 0
    decoded = 0
    for page in _pages(url):
        for item in page["items"]:
            objects += 1
            for key in ("tls.crt", "ca.crt"):
                decoded += len(base64.b64decode(item["data"][key]))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "objects": objects, "decoded_bytes": decoded, **_peak(baseline)}


def child_bare_parse(url: str) -> dict[str, Any]:
    baseline = common.status_value("VmRSS")
    started = time.perf_counter()
    known: dict[bytes, tuple[Any, ...]] = {}
    inventory: dict[tuple[str, str, str], list[tuple[Any, ...]]] = {}
    for page in _pages(url):
        for item in page["items"]:
            metadata = item["metadata"]
            for key in ("tls.crt", "ca.crt"):
                rows = []
                for cert in x509.load_pem_x509_certificates(base64.b64decode(item["data"][key])):
                    der = cert.public_bytes(serialization.Encoding.DER)
                    if der not in known:
                        known[der] = common.bare_fields(cert)
                    rows.append(known[der])
                inventory[(metadata["namespace"], metadata["name"], key)] = rows
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "targets": len(inventory), **_peak(baseline)}


def child_certscope(url: str, workdir: str) -> dict[str, Any]:
    from probes.context import ProbeContext
    from probes.kubernetes import KubernetesProbe, KubernetesSettings
    from probes.settings import Seconds

    kubeconfig = Path(workdir) / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "current-context": "bench",
                "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
                "clusters": [{"name": "bench", "cluster": {"server": url}}],
                "users": [{"name": "bench", "user": {"token": TOKEN}}],
            }
        )
    )
    baseline = common.status_value("VmRSS")
    started = time.perf_counter()
    probe = KubernetesProbe(KubernetesSettings(kubeconfig=str(kubeconfig), page_size=PAGE, list_timeout=Seconds(600)))
    discovery = probe.targets()
    listed = time.perf_counter() - started
    ctx = ProbeContext(deadline=float("inf"))
    certificates = sum(len(probe.run(target, ctx).certificates) for target in discovery.targets)
    seconds = time.perf_counter() - started
    assert discovery.up, discovery.errors
    result = {
        "seconds": seconds,
        "list_seconds": listed,
        "targets": len(discovery.targets),
        "certificates": certificates,
        **_peak(baseline),
    }
    probe.close()
    return result


def _peak(baseline_kib: int) -> dict[str, int]:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so a child
    # of this (large) process would report the parent's peak.
    peak = common.status_value("VmHWM")
    return {"peak_rss_kib": peak, "baseline_rss_kib": baseline_kib, "peak_growth_kib": peak - baseline_kib}


def run_child(case: str, url: str, workdir: Path) -> dict[str, Any]:
    return common.run_json_child("bench.kubernetes", "--child", case, "--url", url, "--out", str(workdir))


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = common.argument_parser(__doc__, "a tiny run that checks the benchmark works")
    parser.add_argument(
        "--sizes", type=common.int_list(), default=(10_000, 30_000), help="TLS Secrets (default 10000,30000)"
    )
    parser.add_argument(
        "--helm", type=common.int_list(minimum=0), default=(0, 300), help="1 MB Helm Secrets beside the TLS Secrets"
    )
    parser.add_argument("--child", choices=("bare", "bare_parse", "certscope"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.child == "bare":
        print(json.dumps(child_bare(args.url)))
        return
    if args.child == "bare_parse":
        print(json.dumps(child_bare_parse(args.url)))
        return
    if args.child == "certscope":
        print(json.dumps(child_certscope(args.url, str(out))))
        return

    from tests.kube_apiserver import FakeApiServer

    results = common.Results("kubernetes", out)
    sizes = (100, 200) if args.quick else args.sizes
    helm_counts = (0, 5) if args.quick else args.helm
    runs: list[dict[str, Any]] = []
    print(f"{'secrets':>8} {'helm':>5} {'case':>10} {'seconds':>8} {'peak RSS MiB':>13} {'growth MiB':>11}")
    for size in sizes:
        for helm in helm_counts:
            server = FakeApiServer().start()
            try:
                server.allow(token=TOKEN)
                populate(server, size, helm)
                run: dict[str, Any] = {"secrets": size, "helm_secrets": helm}
                for case in ("bare", "bare_parse", "certscope"):
                    run[case] = run_child(case, server.url, out)
                    figures = run[case]
                    print(
                        f"{size:>8} {helm:>5} {case:>10} {figures['seconds']:>8.2f}"
                        f" {figures['peak_rss_kib'] / 1024:>13.1f} {figures['peak_growth_kib'] / 1024:>11.1f}"
                    )
                assert run["certscope"]["targets"] == 2 * size, run["certscope"]
                ours, floor = run["certscope"], run["bare_parse"]
                run["time_over_bare"] = ours["seconds"] / run["bare"]["seconds"]
                run["time_over_bare_parse"] = ours["seconds"] / floor["seconds"]
                run["growth_over_bare_parse"] = ours["peak_growth_kib"] / max(1, floor["peak_growth_kib"])
                run["bytes_per_secret"] = ours["peak_growth_kib"] * 1024 / size
                print(
                    f"{'':>8} {'':>5} certscope: time {run['time_over_bare']:.2f}x bare,"
                    f" {run['time_over_bare_parse']:.2f}x bare_parse; peak growth"
                    f" {run['growth_over_bare_parse']:.2f}x bare_parse, {run['bytes_per_secret']:.0f} B per Secret"
                )
                runs.append(run)
            finally:
                server.stop()
    results.write({"runs": runs})


if __name__ == "__main__":
    main()
