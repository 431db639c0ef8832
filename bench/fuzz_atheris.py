"""Coverage-guided fuzzing (atheris / libFuzzer) of the parsers tests/test_fuzz.py
drives with hypothesis, with the same contract: no exception escapes but the
documented ones.  Not in CI; ``pip install atheris`` first (a binary wheel for
CPython 3.11 on x86-64 Linux; it does not need a compiler).

Usage::

    python -m bench.fuzz_atheris TARGET [-max_total_time=60] [-seed=1] [other libFuzzer flags]

TARGET is one of ``container``, ``pkcs12``, ``ocsp``, ``crl``, ``watch``.  A crash
prints the input and writes it to ``crash-*`` in the current directory.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from probes.certparse import parse_container
    from probes.kubewatch import read_events
    from probes.revocation import crl_lookup, evaluate_crl, evaluate_ocsp

from tests.test_fuzz import CRL_DER, OCSP_GOOD, P12, P12_PASSWORD, PKI
from tests.test_fuzz import NOW as FUZZ_NOW


class _Response:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def iter_content(self, chunk_size: int | None = None) -> Iterator[bytes]:
        yield from self.chunks


def container(data: bytes) -> None:
    parse_container(data, "fuzz")


def pkcs12(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    password = provider.PickValueInList([None, b"", P12_PASSWORD])
    parse_container(provider.ConsumeBytes(provider.remaining_bytes()), "fuzz.p12", pkcs12_password=lambda: password)


def ocsp(data: bytes) -> None:
    evaluate_ocsp(data, PKI.valid.cert, PKI.intermediate.cert, FUZZ_NOW)


def crl(data: bytes) -> None:
    crl_lookup(evaluate_crl(data, PKI.intermediate.cert, FUZZ_NOW), PKI.valid.cert)


def watch(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    chunks = [provider.ConsumeBytes(provider.ConsumeIntInRange(1, 64)) for _ in range(provider.ConsumeIntInRange(1, 8))]
    try:
        for event in read_events(_Response(chunks)):  # type: ignore[arg-type]
            assert isinstance(event, dict)
    except ValueError:
        pass


TARGETS: dict[str, tuple[Callable[[bytes], None], list[bytes]]] = {
    "container": (container, [PKI.valid.pem + PKI.intermediate.pem, PKI.valid.der]),
    "pkcs12": (pkcs12, [b"\x02" + P12]),
    "ocsp": (ocsp, [OCSP_GOOD]),
    "crl": (crl, [CRL_DER]),
    "watch": (watch, [b'{"type": "ADDED", "object": {"metadata": {"name": "a"}}}\n']),
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        raise SystemExit(f"usage: python -m bench.fuzz_atheris {{{','.join(TARGETS)}}} [libFuzzer flags]")
    name = sys.argv[1]
    target, seeds = TARGETS[name]
    corpus = Path(f"/tmp/certscope-atheris-{name}")
    corpus.mkdir(exist_ok=True)
    for number, seed in enumerate(seeds):
        (corpus / f"seed{number}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *sys.argv[2:], str(corpus)], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
