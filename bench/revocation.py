"""Benchmark: OCSP round trips and CRL parsing by ``probes.revocation``, against the bare limits.

One run starts the test fixture ``tests.revocation_servers.revocation_stack()``: an
``openssl ca`` PKI (EC P-256), a real ``openssl ocsp -multi 2`` responder (delegated
signer with the OCSPSigning EKU, nextUpdate a day ahead) and an HTTP server with the
CRLs, among them one of 100,000 entries made by ``openssl ca -gencrl`` (about 4.5 MB
DER).  Only well-formed OCSP requests go to the openssl responder (one malformed
request kills it), and every server is stopped at the end, also on Ctrl-C or SIGTERM.

OCSP cells, each a sequential loop on 1 thread for ``--seconds`` (default 2), all
interleaved (the order is rotated per repetition), medians of ``--repeats`` (3):

``certscope_uncached``
    ``RevocationChecker().ocsp.status(RevocationQuery(cert, issuer, url, deadline,
    ("127.0.0.0/8",)))`` with a fresh checker per call, so every check
    goes to the network: build the request, ``probes.fetch`` (a GET ``/<base64>``:
    the request is short and carries no nonce), judge the answer (``evaluate_ocsp``:
    the single response, the delegated signer and its signature by the CA, the
    response signature, the times).  Each check must be ``good``, not from the cache,
    and make exactly 1 request.
``certscope_cached``
    One long-lived checker (``CHECKER`` here, as the scheduler keeps one), primed once
    beforehand: the answer is before its nextUpdate, so ``CHECKER.requests`` must not grow (asserted and
    reported) and every answer must say ``from_cache``.
``floor``
    The bare limit: ``http.client`` POST of a prebuilt OCSP request +
    ``ocsp.load_der_ocsp_response`` + a check of the response and certificate status.
``floor_signatures``
    ``floor`` plus the two ECDSA verifications any careful client must make (the
    responder certificate by the CA, the response by the responder), with bare
    ``cryptography`` calls: what is left after it is certscope's own overhead.
``fetch_only``
    ``floor`` with ``probes.fetch.fetch`` (the same GET certscope sends) in place of
    ``http.client``: the cost of the egress policy and the bounded reader.

Client CPU per check is ``time.thread_time()`` (CLOCK_THREAD_CPUTIME_ID) of the one
client thread (the HTTP server's thread in this process is idle meanwhile; the cells are
sequential; ``getrusage`` would count in scheduler ticks), the responder's is summed
over the openssl processes from ``/proc/<pid>/stat``.  After the cells, in-process
microbenchmarks (median of 5) split the uncached check into its parts.

CRL cells, on the 100,000-entry CRL (DER), interleaved, each repetition parsing the
CRL ``--crl-parses`` times (default 3):

``crl_certscope``
    ``evaluate_crl(data, issuer, now)`` + ``crl_lookup`` of one serial (not on the CRL:
    the whole list is scanned).
``crl_bare``
    The limit: ``x509.load_der_x509_crl`` + ``len`` + ``is_signature_valid`` +
    ``get_revoked_certificate_by_serial_number`` of the same serial.
``crl_bare_raw_tbs``
    The same, with the signature verified over the TBS bytes sliced from the DER the
    CRL came in, instead of ``is_signature_valid`` (which re-encodes the TBS of the
    parsed CRL): a lower limit.
``lookup_1000``
    ``crl_lookup`` of 1,000 serials (500 on the CRL, spread evenly, 500 not) against
    the loaded CRL, and the alternative: one set of the CRL's serials, then 1,000
    membership tests.
``crl_fetch_200`` / ``crl_revalidate_304``
    ``RevocationChecker().crl.fetch`` of the big CRL over HTTP with a fresh checker
    (200), then again with ``revalidate=True`` (a conditional GET answered 304).

``--quick`` (a smoke test, under 20 s): 0.3 s per OCSP cell, 1 repetition, a
1,000-entry CRL parsed once.  ``--profile`` adds a cProfile of 2,000 uncached checks.

Usage::

    python -m bench.revocation [--quick] [--out bench/out] [--seconds 2] [--repeats 3] [--profile]

Results are printed and written to ``<out>/revocation.json``.
"""

from __future__ import annotations

import base64
import cProfile
import datetime as dt
import gc
import http.client
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from bench import common
from probes.fetch import fetch, resolve_checked
from probes.reasons import Reason
from probes.revocation import (
    GOOD,
    MAX_OCSP_BYTES,
    RevocationChecker,
    RevocationQuery,
    build_ocsp_request,
    crl_lookup,
    evaluate_crl,
    evaluate_ocsp,
)
from tests.revocation_servers import (
    BIG_SERIAL_BASE,
    HTTP_PATHS,
    RevocationStack,
    ocsp_request,
    revocation_stack,
)

ALLOW = ("127.0.0.0/8",)
DEADLINE_SECONDS = 5.0
BIG_ENTRIES = 100_000
QUICK_ENTRIES = 1_000
LOOKUPS = 1_000

# The goals this benchmark is judged against (see docs/performance.md, "Revocation").
GOAL_OCSP_CPU_OVER_FLOOR = 2.0
GOAL_CACHED_REQUESTS = 0

# The cached cell's checker, long-lived as the scheduler's is in the daemon.
CHECKER = RevocationChecker()

OCSP_CELLS = ("certscope_uncached", "certscope_cached", "floor", "floor_signatures", "fetch_only")
CRL_CELLS = ("crl_certscope", "crl_bare", "crl_bare_raw_tbs")


# -- accounting -------------------------------------------------------------------


@dataclass
class Run:
    """One timed loop: how many operations, wall and CPU seconds, latencies."""

    count: int
    wall: float
    cpu: float
    responder_cpu: float = 0.0
    machine_busy_cores: float = 0.0
    latencies: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.wall

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.count * 1e3

    @property
    def wall_ms(self) -> float:
        return self.wall / self.count * 1e3


@dataclass
class Cell:
    name: str
    runs: list[Run] = field(default_factory=list)

    def median(self, value: Callable[[Run], float]) -> float:
        return statistics.median(value(r) for r in self.runs)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(x for r in self.runs for x in r.latencies)
        result: dict[str, Any] = {
            "runs": [
                {
                    "count": r.count,
                    "wall_seconds": round(r.wall, 6),
                    "cpu_seconds": round(r.cpu, 6),
                    "responder_cpu_seconds": round(r.responder_cpu, 3),
                    "machine_busy_cores": round(r.machine_busy_cores, 3),
                    **r.extra,
                }
                for r in self.runs
            ],
            "median_per_second": round(self.median(lambda r: r.rate), 1),
            "median_cpu_ms": round(self.median(lambda r: r.cpu_ms), 4),
            "median_wall_ms": round(self.median(lambda r: r.wall_ms), 4),
            "cpu_ms_range": [round(min(r.cpu_ms for r in self.runs), 4), round(max(r.cpu_ms for r in self.runs), 4)],
        }
        if latencies:
            result["p50_ms"] = round(latencies[len(latencies) // 2] * 1e3, 3)
            result["p99_ms"] = round(latencies[int(len(latencies) * 0.99)] * 1e3, 3)
        if any(r.responder_cpu for r in self.runs):
            result["median_responder_cpu_ms"] = round(self.median(lambda r: r.responder_cpu / r.count * 1e3), 4)
        return result


def timed_loop(action: Callable[[], object], seconds: float, responder_pids: Sequence[int] = ()) -> Run:
    """Call ``action`` back to back for ``seconds`` on this thread."""
    gc.collect()
    latencies: list[float] = []
    busy0, total0 = common.system_ticks()
    responder0 = common.processes_cpu_seconds(responder_pids)
    cpu0 = time.thread_time()
    started = time.perf_counter()
    end = started + seconds
    now = started
    while now < end:
        action()
        after = time.perf_counter()
        latencies.append(after - now)
        now = after
    wall = now - started
    cpu = time.thread_time() - cpu0
    responder = common.processes_cpu_seconds(responder_pids) - responder0
    busy1, total1 = common.system_ticks()
    cores = (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1) if total1 > total0 else 0.0
    return Run(len(latencies), wall, cpu, responder, cores, latencies)


def timed_times(action: Callable[[], object], times: int) -> Run:
    gc.collect()
    cpu0 = time.thread_time()
    started = time.perf_counter()
    for _ in range(times):
        action()
    wall = time.perf_counter() - started
    return Run(times, wall, time.thread_time() - cpu0)


# -- OCSP -------------------------------------------------------------------------


class OcspBench:
    """The OCSP clients, all against the stack's openssl responder."""

    def __init__(self, stack: RevocationStack) -> None:
        self.stack = stack
        self.cert = stack.pki.good.cert
        self.issuer = stack.pki.ca.cert
        self.url = stack.ocsp.url
        self.host, self.port = stack.ocsp.address
        self.request = ocsp_request(self.cert, self.issuer)
        encoded = base64.b64encode(build_ocsp_request(self.cert, self.issuer, None)).decode()
        self.get_url = self.url.rstrip("/") + "/" + quote(encoded, safe="")  # what OcspClient.status sends
        self.uncached_requests = 0
        first = CHECKER.ocsp.status(self.query())
        if first.state != GOOD or first.reason is not Reason.OK:
            raise SystemExit(f"certscope's first OCSP check is not good: {first}")
        self.cached_requests_before = CHECKER.requests
        self.cached_checks = 0

    def query(self) -> RevocationQuery:
        return RevocationQuery(self.cert, self.issuer, self.url, time.monotonic() + DEADLINE_SECONDS, ALLOW)

    def certscope_uncached(self) -> None:
        checker = RevocationChecker()
        facts = checker.ocsp.status(self.query())
        if facts.state != GOOD or facts.from_cache or checker.requests != 1:
            raise SystemExit(f"uncached check: {facts} after {checker.requests} request(s)")
        self.uncached_requests += checker.requests

    def certscope_cached(self) -> None:
        facts = CHECKER.ocsp.status(self.query())
        if facts.state != GOOD or not facts.from_cache:
            raise SystemExit(f"cached check: {facts}")
        self.cached_checks += 1

    def _post(self) -> bytes:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=DEADLINE_SECONDS)
        try:
            connection.request("POST", "/", body=self.request, headers={"Content-Type": "application/ocsp-request"})
            return connection.getresponse().read()
        finally:
            connection.close()

    @staticmethod
    def _check(der: bytes) -> ocsp.OCSPResponse:
        response = ocsp.load_der_ocsp_response(der)
        if (
            response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL
            or response.certificate_status != ocsp.OCSPCertStatus.GOOD
        ):
            raise SystemExit(f"the responder did not answer good: {response.response_status}")
        return response

    def floor(self) -> None:
        self._check(self._post())

    def _signatures(self, response: ocsp.OCSPResponse) -> tuple[Callable[[], None], Callable[[], None]]:
        """The two ECDSA verifications a careful client makes: the delegated responder
        certificate by the CA, and the response by the responder."""
        signer = response.certificates[0]
        issuer_key = self.issuer.public_key()
        signer_key = signer.public_key()
        assert isinstance(issuer_key, ec.EllipticCurvePublicKey) and isinstance(signer_key, ec.EllipticCurvePublicKey)
        assert signer.signature_hash_algorithm is not None and response.signature_hash_algorithm is not None
        signer_algorithm = ec.ECDSA(signer.signature_hash_algorithm)
        response_algorithm = ec.ECDSA(response.signature_hash_algorithm)
        return (
            lambda: issuer_key.verify(signer.signature, signer.tbs_certificate_bytes, signer_algorithm),
            lambda: signer_key.verify(response.signature, response.tbs_response_bytes, response_algorithm),
        )

    def floor_signatures(self) -> None:
        for verify in self._signatures(self._check(self._post())):
            verify()

    def fetch_only(self) -> None:
        response = fetch(
            self.get_url, deadline=time.monotonic() + DEADLINE_SECONDS, max_bytes=MAX_OCSP_BYTES, allow_networks=ALLOW
        )
        if response.status != 200:
            raise SystemExit(f"HTTP {response.status} from the responder")
        self._check(response.body)

    def cell(self, name: str) -> Callable[[], None]:
        return {
            "certscope_uncached": self.certscope_uncached,
            "certscope_cached": self.certscope_cached,
            "floor": self.floor,
            "floor_signatures": self.floor_signatures,
            "fetch_only": self.fetch_only,
        }[name]

    def breakdown(self, number: int) -> dict[str, float]:
        """Microseconds per call (median of 5 repeats) of the parts of an uncached check."""
        der = self._post()
        response = self._check(der)
        verify_signer, verify_response = self._signatures(response)
        now = dt.datetime.now(dt.UTC)
        parts: dict[str, Callable[[], object]] = {
            "build_ocsp_request": lambda: build_ocsp_request(self.cert, self.issuer, None),
            "evaluate_ocsp": lambda: evaluate_ocsp(der, self.cert, self.issuer, now),
            "load_der_ocsp_response + status": lambda: ocsp.load_der_ocsp_response(der).certificate_status,
            "verify responder certificate (ECDSA P-256)": verify_signer,
            "verify response signature (ECDSA P-256)": verify_response,
            "responder_name == issuer.subject": lambda: response.responder_name == self.issuer.subject,
            "issuer fingerprint (cache key)": lambda: self.issuer.fingerprint(hashes.SHA256()),
            "resolve_checked('127.0.0.1')": lambda: resolve_checked(self.host, self.port, ALLOW),
        }
        result = {}
        for label, action in parts.items():
            times = timeit.repeat(action, number=number, repeat=5)
            result[label] = round(statistics.median(times) / number * 1e6, 2)
        return result

    def profile(self, out: Path, checks: int = 2000, top: int = 20) -> str:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(checks):
            self.certscope_uncached()
        profiler.disable()
        path = out / "revocation.uncached.pstats"
        profiler.dump_stats(path)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).strip_dirs().sort_stats("tottime").print_stats(top)
        return f"== cProfile of {checks} uncached checks, by tottime (saved {path}) ==\n{text.getvalue()}"


def measure_ocsp(bench: OcspBench, seconds: float, repeats: int) -> dict[str, Cell]:
    cells = {name: Cell(name) for name in OCSP_CELLS}
    pids = bench.stack.ocsp.openssl_pids
    for name in OCSP_CELLS:  # warm-up: imports, first connections
        timed_loop(bench.cell(name), min(0.1, seconds), pids)
    for repeat in range(repeats):
        order = OCSP_CELLS[repeat % len(OCSP_CELLS) :] + OCSP_CELLS[: repeat % len(OCSP_CELLS)]
        for name in order:
            requests_before = CHECKER.requests
            run = timed_loop(bench.cell(name), seconds, pids)
            if name == "certscope_cached":
                run.extra["network_requests"] = CHECKER.requests - requests_before
                if run.extra["network_requests"] != GOAL_CACHED_REQUESTS:
                    raise SystemExit(f"the cached checker made {run.extra['network_requests']} requests")
            cells[name].runs.append(run)
        print(
            f"  OCSP repeat {repeat + 1}/{repeats}: "
            + ", ".join(f"{n}={cells[n].runs[-1].rate:.0f}/s {cells[n].runs[-1].cpu_ms:.3f}ms" for n in OCSP_CELLS),
            flush=True,
        )
    if not bench.stack.ocsp.alive():
        raise SystemExit("the openssl responder stopped answering during the run")
    return cells


# -- CRL --------------------------------------------------------------------------


def raw_tbs(der: bytes) -> bytes:
    """The tbsCertList element exactly as it is in ``der`` (a DER CertificateList)."""

    def header(position: int) -> tuple[int, int]:  # (content start, content length)
        first = der[position + 1]
        if first & 0x80:
            count = first & 0x7F
            return position + 2 + count, int.from_bytes(der[position + 2 : position + 2 + count], "big")
        return position + 2, first

    start, _ = header(0)
    content, length = header(start)
    return der[start : content + length]


@dataclass(frozen=True)
class SerialOnly:
    """What ``crl_lookup`` reads from a certificate: its serial."""

    serial_number: int


class CrlBench:
    def __init__(self, stack: RevocationStack, entries: int) -> None:
        assert stack.crls.big is not None
        self.stack = stack
        self.entries = entries
        self.data = stack.crls.big.der
        self.issuer = stack.pki.ca.cert
        self.cert = stack.pki.good.cert  # not on the CRL: a lookup scans the whole list
        self.now = dt.datetime.now(dt.UTC)
        # the synthetic entries plus the PKI's own revocations
        self.expected_entries = entries + sum(1 for e in stack.pki.entries().values() if e.status == "R")
        step = max(1, entries // (LOOKUPS // 2))
        present = [BIG_SERIAL_BASE + i * step for i in range(LOOKUPS // 2)]
        absent = [BIG_SERIAL_BASE + entries + 1 + i for i in range(LOOKUPS - len(present))]
        self.serials = [s for pair in zip(present, absent, strict=False) for s in pair]
        self.url = stack.http.url(HTTP_PATHS["crl_big"])

    def crl_certscope(self) -> None:
        info = evaluate_crl(self.data, self.issuer, self.now)
        judgement = crl_lookup(info, self.cert)
        if info.reason is not Reason.OK or info.entries != self.expected_entries or judgement.state != GOOD:
            raise SystemExit(f"evaluate_crl: {info.reason} {info.message} {info.entries} entries; {judgement}")

    def crl_bare(self) -> None:
        crl = x509.load_der_x509_crl(self.data)
        count = len(crl)
        valid = crl.is_signature_valid(self.issuer.public_key())  # type: ignore[arg-type]
        entry = crl.get_revoked_certificate_by_serial_number(self.cert.serial_number)
        if count != self.expected_entries or not valid or entry is not None:
            raise SystemExit(f"bare CRL parse: {count} entries, signature valid {valid}, entry {entry}")

    def crl_bare_raw_tbs(self) -> None:
        crl = x509.load_der_x509_crl(self.data)
        count = len(crl)
        key = self.issuer.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and crl.signature_hash_algorithm is not None
        key.verify(crl.signature, raw_tbs(self.data), ec.ECDSA(crl.signature_hash_algorithm))
        entry = crl.get_revoked_certificate_by_serial_number(self.cert.serial_number)
        if count != self.expected_entries or entry is not None:
            raise SystemExit(f"bare CRL parse: {count} entries, entry {entry}")

    def cell(self, name: str) -> Callable[[], None]:
        return {
            "crl_certscope": self.crl_certscope,
            "crl_bare": self.crl_bare,
            "crl_bare_raw_tbs": self.crl_bare_raw_tbs,
        }[name]

    def lookups(self) -> tuple[Run, Run, Run]:
        """(certscope crl_lookup x 1000, building a set of serials, 1000 set lookups)."""
        info = evaluate_crl(self.data, self.issuer, self.now)
        assert info.crl is not None
        crl = info.crl
        found: list[int] = []
        stand_ins = [SerialOnly(s) for s in self.serials]

        def certscope() -> None:
            found.append(sum(crl_lookup(info, c).state == "revoked" for c in stand_ins))  # type: ignore[arg-type]

        lookup = timed_times(certscope, 1)
        index: list[set[int]] = []
        build = timed_times(lambda: index.append({entry.serial_number for entry in crl}), 1)
        hits: list[int] = []
        probe = timed_times(lambda: hits.append(sum(s in index[0] for s in self.serials)), 1)
        if found[0] != LOOKUPS // 2 or hits[0] != LOOKUPS // 2:
            raise SystemExit(f"lookups found {found[0]} / {hits[0]} revoked serials, expected {LOOKUPS // 2}")
        lookup.count = probe.count = LOOKUPS
        return lookup, build, probe

    def over_http(self) -> tuple[Run, Run]:
        """CrlClient.fetch with a fresh checker (200), then revalidated (304)."""
        checker = RevocationChecker()
        results: list[tuple[Any, Any, Any]] = []

        def get(revalidate: bool) -> None:
            results.append(
                checker.crl.fetch(
                    self.url,
                    self.issuer,
                    deadline=time.monotonic() + 60,
                    allow_networks=ALLOW,
                    revalidate=revalidate,
                )
            )

        first = timed_times(lambda: get(False), 1)
        again = timed_times(lambda: get(True), 1)
        (info, _, status), (info304, _, status304) = results
        if status != 200 or status304 != 304 or info.reason is not Reason.OK or info304.reason is not Reason.OK:
            raise SystemExit(f"crl.fetch: {status} {info.reason} then {status304} {info304.reason}")
        return first, again


def measure_crl(bench: CrlBench, parses: int, repeats: int) -> dict[str, Cell]:
    cells = {name: Cell(name) for name in (*CRL_CELLS, "lookup_1000", "set_build", "set_lookup_1000")}
    cells |= {"crl_fetch_200": Cell("crl_fetch_200"), "crl_revalidate_304": Cell("crl_revalidate_304")}
    for name in CRL_CELLS:  # warm-up
        bench.cell(name)()
    for repeat in range(repeats):
        order = CRL_CELLS if repeat % 2 == 0 else tuple(reversed(CRL_CELLS))
        for name in order:
            cells[name].runs.append(timed_times(bench.cell(name), parses))
        lookup, build, probe = bench.lookups()
        cells["lookup_1000"].runs.append(lookup)
        cells["set_build"].runs.append(build)
        cells["set_lookup_1000"].runs.append(probe)
        first, again = bench.over_http()
        cells["crl_fetch_200"].runs.append(first)
        cells["crl_revalidate_304"].runs.append(again)
        print(
            f"  CRL repeat {repeat + 1}/{repeats}: "
            + ", ".join(f"{n}={cells[n].runs[-1].wall_ms:.1f}ms" for n in CRL_CELLS)
            + f", {LOOKUPS} lookups={lookup.wall * 1e3:.0f}ms, 200={first.wall * 1e3:.0f}ms, "
            f"304={again.wall * 1e3:.0f}ms",
            flush=True,
        )
    return cells


# -- report -----------------------------------------------------------------------


def crypto_ratio(breakdown: dict[str, float]) -> float:
    """(build the request + evaluate_ocsp) over (build + parse + the two ECDSA verifications)."""
    bare = (
        breakdown["build_ocsp_request"]
        + breakdown["load_der_ocsp_response + status"]
        + breakdown["verify responder certificate (ECDSA P-256)"]
        + breakdown["verify response signature (ECDSA P-256)"]
    )
    return round((breakdown["build_ocsp_request"] + breakdown["evaluate_ocsp"]) / bare, 3)


def ratios(ocsp_cells: dict[str, Cell], crl_cells: dict[str, Cell]) -> dict[str, Any]:
    def cpu(name: str) -> float:
        return ocsp_cells[name].median(lambda r: r.cpu_ms)

    def ms(name: str) -> float:
        return crl_cells[name].median(lambda r: r.wall_ms)

    def crl_cpu(name: str) -> float:
        return crl_cells[name].median(lambda r: r.cpu_ms)

    uncached_over_floor = cpu("certscope_uncached") / cpu("floor")
    cached_requests = sum(r.extra.get("network_requests", 0) for r in ocsp_cells["certscope_cached"].runs)
    paired = [
        round(u.cpu_ms / f.cpu_ms, 3)
        for u, f in zip(ocsp_cells["certscope_uncached"].runs, ocsp_cells["floor"].runs, strict=True)
    ]
    return {
        "ocsp_uncached_cpu_over_floor": round(uncached_over_floor, 3),
        "ocsp_uncached_cpu_over_floor_per_repeat": paired,
        "ocsp_uncached_cpu_over_floor_signatures": round(cpu("certscope_uncached") / cpu("floor_signatures"), 3),
        "ocsp_fetch_only_cpu_over_floor": round(cpu("fetch_only") / cpu("floor"), 3),
        "ocsp_uncached_rate_over_floor": round(
            ocsp_cells["certscope_uncached"].median(lambda r: r.rate) / ocsp_cells["floor"].median(lambda r: r.rate), 3
        ),
        "ocsp_cached_network_requests": cached_requests,
        "crl_certscope_over_bare": round(ms("crl_certscope") / ms("crl_bare"), 3),
        "crl_certscope_over_bare_cpu": round(crl_cpu("crl_certscope") / crl_cpu("crl_bare"), 3),
        "crl_certscope_over_bare_raw_tbs": round(ms("crl_certscope") / ms("crl_bare_raw_tbs"), 3),
        "lookup_1000_over_set_build_and_lookups": round(
            ms("lookup_1000") * LOOKUPS / (ms("set_build") + ms("set_lookup_1000") * LOOKUPS), 2
        ),
        "goal_ocsp_cpu_over_floor_met": uncached_over_floor <= GOAL_OCSP_CPU_OVER_FLOOR,
        "goal_cached_requests_met": cached_requests == GOAL_CACHED_REQUESTS,
    }


def print_tables(ocsp_cells: dict[str, Cell], crl_cells: dict[str, Cell], entries: int, size: int) -> None:
    print("\nOCSP against openssl ocsp -multi 2, 1 client thread (medians)")
    print(f"  {'cell':<20}{'checks/s':>10}{'CPU ms':>9}{'p50 ms':>9}{'p99 ms':>9}{'resp. ms':>10}   CPU ms per run")
    for cell in ocsp_cells.values():
        s = cell.summary()
        runs = " ".join(f"{r.cpu_ms:.3f}" for r in cell.runs)
        responder = s.get("median_responder_cpu_ms")
        print(
            f"  {cell.name:<20}{s['median_per_second']:>10,.0f}{s['median_cpu_ms']:>9.3f}{s['p50_ms']:>9.3f}"
            f"{s['p99_ms']:>9.3f}{responder if responder is not None else 0:>10.3f}   {runs}"
        )
    print(f"\nCRL: {entries:,} entries, {size:,} bytes DER (medians; one CRL per operation)")
    print(f"  {'cell':<20}{'ms':>10}{'CPU ms':>9}{'entries/s':>13}   ms per run")
    for name in (*CRL_CELLS, "crl_fetch_200", "crl_revalidate_304"):
        cell = crl_cells[name]
        wall = cell.median(lambda r: r.wall_ms)
        runs = " ".join(f"{r.wall_ms:.1f}" for r in cell.runs)
        print(
            f"  {name:<20}{wall:>10.2f}{cell.median(lambda r: r.cpu_ms):>9.2f}{entries / wall * 1e3:>13,.0f}   {runs}"
        )
    lookup = crl_cells["lookup_1000"].median(lambda r: r.wall) * 1e3
    build = crl_cells["set_build"].median(lambda r: r.wall) * 1e3
    probe = crl_cells["set_lookup_1000"].median(lambda r: r.wall) * 1e3
    print(
        f"  {LOOKUPS:,} serials (half on the CRL): crl_lookup {lookup:.1f} ms ({lookup / LOOKUPS * 1e3:.0f} us each); "
        f"a set of the serials: {build:.1f} ms to build + {probe:.3f} ms for the {LOOKUPS:,} lookups"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.argument_parser(__doc__, "smoke test: 0.3 s cells, 1 repeat, 1,000-entry CRL")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per OCSP cell (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument("--crl-parses", type=int, default=None, help="CRL parses per cell and repetition (default 3)")
    parser.add_argument("--profile", action="store_true", help="also cProfile 2,000 uncached OCSP checks")
    args = parser.parse_args(argv)

    seconds: float = args.seconds or (0.3 if args.quick else 2.0)
    repeats: int = args.repeats or (1 if args.quick else 3)
    parses: int = args.crl_parses or (1 if args.quick else 3)
    entries = QUICK_ENTRIES if args.quick else BIG_ENTRIES
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = common.Results("revocation", out, tools=("openssl_cli",))
    print(f"{results.describe()}; {results.header['machine']['openssl_cli']}")
    print(f"{repeats} repeat(s), interleaved; {seconds} s per OCSP cell; {parses} CRL parse(s) per cell and repeat")
    report: dict[str, Any] = {
        "quick": args.quick,
        "repeats": repeats,
        "seconds_per_ocsp_cell": seconds,
        "crl_parses_per_cell": parses,
        "goals": {
            "ocsp_uncached_cpu_over_floor_max": GOAL_OCSP_CPU_OVER_FLOOR,
            "ocsp_cached_network_requests": GOAL_CACHED_REQUESTS,
        },
    }
    with common.sigterm_exits(), tempfile.TemporaryDirectory(prefix="certscope-revocation-bench-") as scratch:
        started = time.monotonic()
        with revocation_stack(Path(scratch), big_entries=entries) as stack:
            print(f"stack up in {time.monotonic() - started:.1f} s: {stack.ocsp!r}", flush=True)
            ocsp_bench = OcspBench(stack)
            ocsp_cells = measure_ocsp(ocsp_bench, seconds, repeats)
            breakdown = ocsp_bench.breakdown(200 if args.quick else 2000)
            profile = ocsp_bench.profile(out) if args.profile else ""
            crl_bench = CrlBench(stack, entries)
            crl_cells = measure_crl(crl_bench, parses, repeats)
            size = len(crl_bench.data)
            responder_alive = stack.ocsp.alive()
            checker_requests = CHECKER.requests

    print_tables(ocsp_cells, crl_cells, crl_bench.expected_entries, size)
    print("\nuncached check, parts (in-process, median of 5, us per call)")
    for label, micros in breakdown.items():
        print(f"  {label:<45}{micros:>9.1f}")
    if profile:
        print("\n" + profile)
    result = ratios(ocsp_cells, crl_cells)
    result["ocsp_crypto_over_bare_crypto"] = crypto_ratio(breakdown)
    print(
        f"\nratios: OCSP uncached CPU / http.client floor = {result['ocsp_uncached_cpu_over_floor']:.2f}x "
        f"(goal <= {GOAL_OCSP_CPU_OVER_FLOOR}x, {'met' if result['goal_ocsp_cpu_over_floor_met'] else 'NOT met'}); "
        f"(per repeat {', '.join(f'{r:.2f}' for r in result['ocsp_uncached_cpu_over_floor_per_repeat'])}); "
        f"OCSP uncached / floor+signatures = {result['ocsp_uncached_cpu_over_floor_signatures']:.2f}x; "
        f"OCSP fetch_only / floor = {result['ocsp_fetch_only_cpu_over_floor']:.2f}x; "
        f"OCSP build+evaluate / bare crypto = {result['ocsp_crypto_over_bare_crypto']:.2f}x; "
        f"OCSP cached network requests = {result['ocsp_cached_network_requests']} "
        f"over {ocsp_bench.cached_checks:,} checks (goal 0); "
        f"CRL evaluate+lookup / bare parse = {result['crl_certscope_over_bare']:.2f}x "
        f"(/ raw-TBS floor {result['crl_certscope_over_bare_raw_tbs']:.2f}x)"
    )
    report.update(
        {
            "ocsp": {
                "responder": "openssl ocsp -multi 2, delegated EC P-256 signer, -ndays 1",
                "cells": {name: cell.summary() for name, cell in ocsp_cells.items()},
                "uncached_network_requests": ocsp_bench.uncached_requests,
                "cached_checks": ocsp_bench.cached_checks,
                "checker_requests_total": checker_requests,
                "responder_alive_at_end": responder_alive,
                "breakdown_us": breakdown,
            },
            "crl": {
                "entries": crl_bench.expected_entries,
                "der_bytes": size,
                "cells": {name: cell.summary() for name, cell in crl_cells.items()},
            },
            "ratios": result,
        }
    )
    results.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
