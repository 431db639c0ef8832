"""The worker process that opens PKCS#12 files for ``probes/pkcs12.py``.

Run as a script (``python _pkcs12_worker.py ADDRESS_SPACE``), so it imports
nothing of certscope: the standard library and ``cryptography`` only.  It reads
requests on stdin and answers on stdout until stdin closes:

    request: >I cpu_seconds, >B has_password, >I password length, >I data length,
             then the password and the data
    answer:  >B status, >I length, then: status 0, the DER of every certificate,
             each as >I length + bytes (the file's own certificate first);
             status 1, nothing (cryptography's ValueError: wrong or missing
             password, or data it cannot tell apart from that); status 2, a short
             message (any other error)

Before each request the soft ``RLIMIT_CPU`` is moved to the CPU time used so far
plus ``cpu_seconds``: a derivation that runs past it gets SIGXCPU and the process
ends, even if the parent, which also kills it at its deadline, were stuck.  The
address space is capped once at start.  The private key of a bundle is dropped in
here; it never crosses the pipe.
"""

from __future__ import annotations

import resource
import signal
import struct
import sys


def _read_exactly(stream: object, count: int) -> bytes | None:
    chunks = []
    missing = count
    while missing:
        chunk = stream.read(missing)  # type: ignore[attr-defined]
        if not chunk:
            return None
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _limit_cpu(seconds: int) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def main() -> None:
    # Ctrl-C or a hangup sent to the daemon's process group is the daemon's business:
    # the worker ends when its stdin closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    address_space = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if address_space:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > address_space:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

    requests = sys.stdin.buffer
    answers = sys.stdout.buffer
    while True:
        header = _read_exactly(requests, 13)
        if header is None:
            return
        cpu_seconds, has_password, password_length, data_length = struct.unpack(">IBII", header)
        password = _read_exactly(requests, password_length) if password_length else b""
        data = _read_exactly(requests, data_length) if data_length else b""
        if password is None or data is None:
            return
        _limit_cpu(cpu_seconds)
        try:
            bundle = pkcs12.load_pkcs12(data, password if has_password else None)
            certificates = [bundle.cert.certificate] if bundle.cert is not None else []
            certificates.extend(c.certificate for c in bundle.additional_certs)
            del bundle  # holds the decrypted private key
            ders = [c.public_bytes(Encoding.DER) for c in certificates]
            status, body = 0, b"".join(struct.pack(">I", len(d)) + d for d in ders)
        except ValueError:
            status, body = 1, b""
        except Exception as exc:  # noqa: BLE001 - any other failure is reported, not fatal
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            status, body = 2, text[:200].encode("utf-8", "replace")
        answers.write(struct.pack(">BI", status, len(body)) + body)
        answers.flush()


if __name__ == "__main__":
    main()
