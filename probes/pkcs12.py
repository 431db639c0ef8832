"""PKCS#12 from untrusted hands: priced before it is opened, opened where a runaway
costs only that file.

A PKCS#12 file names the cost of its own key derivations: the iteration count of
its MAC and of every password-based encryption inside it.  ``cryptography``'s
``load_pkcs12`` pays whatever is asked while holding the GIL: a 1 KB file with a
MAC of 2^31-1 iterations froze the whole daemon (scrapes, health checks, every
other probe) for about 230 s (docs/reliability.md).  So:

* ``price(data, password_given)`` reads those counts from the DER, without any
  cryptography: the MAC's iterations (twice when no password is configured, since
  OpenSSL then tries both the absent and the empty password), PBKDF2's, the PKCS#12
  and PKCS#5 v1 PBE schemes', and scrypt's N·r·p (counted four times: one scrypt
  unit costs about as much as two to three PBKDF2 iterations here).  A file whose
  total is over ``MAX_KDF_ITERATIONS`` is refused by the caller
  (``Reason.KDF_TOO_EXPENSIVE``) without ever being opened.
* What the DER does not show cannot be priced: a key bag inside an encrypted
  SafeContents carries its own iteration count, readable only after decryption;
  BER (indefinite lengths) is not read here at all.  So every PKCS#12 that involves
  a password at all is opened by ``open_isolated`` in a separate worker process
  (``probes/_pkcs12_worker.py``), under a deadline the parent enforces by killing
  it, with a CPU limit (``RLIMIT_CPU``) in the worker as a second stop.  The calling
  thread waits on a pipe, which releases the GIL: the rest of the daemon runs on.

Workers are started on first use and reused (at most ``MAX_WORKERS`` at once; one
costs about 25 MB of RSS).  Only the certificates' DER comes back; the decrypted
private key never leaves the worker.  The password goes over the pipe, never on a
command line or in the environment.  A file that ran into the deadline is
remembered (by a digest of its bytes and password) and refused at once the next
time, so a Secret relisted every resync costs its deadline once.
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from probes.cpu_slots import wait_ready
from probes.der import DerError, Element, elements

# The total of key derivation iterations a file may ask for.  Real files use 2,048
# (OpenSSL), 10,000 (Java) to 600,000 (OWASP's PBKDF2-SHA256 figure) per derivation,
# three or four derivations in all; 10 million costs 1.5-2.5 s of CPU here.
MAX_KDF_ITERATIONS = 10_000_000
# What a worker may spend on one file, wall clock and CPU.
DEADLINE_SECONDS = 5.0
MAX_WORKERS = 2
# The worker's address space: bounds what a hostile scrypt or a huge file can make
# it allocate (it needs about 40 MB of address space for itself, 30 MB resident).
WORKER_ADDRESS_SPACE = 256 * 1024 * 1024
_MAX_ANSWER = 64 * 1024 * 1024

_WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_pkcs12_worker.py")


# -- pricing ----------------------------------------------------------------------


def _oid(dotted: str) -> bytes:
    """The DER contents of an OBJECT IDENTIFIER."""
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body.extend(reversed(chunk))
    return bytes(body)


_ID_DATA = _oid("1.2.840.113549.1.7.1")
_ID_ENCRYPTED_DATA = _oid("1.2.840.113549.1.7.6")
_PBKDF2 = _oid("1.2.840.113549.1.5.12")
_SCRYPT = _oid("1.3.6.1.4.1.11591.4.11")
# PBEParameter ::= SEQUENCE { salt OCTET STRING, iterationCount INTEGER }: the PKCS#12
# PBE schemes (RFC 7292 appendix C) and PKCS#5 v1.5 PBES1 (RFC 8018 A.3).
_PBE_PARAMETER_SCHEMES = {
    *(_oid(f"1.2.840.113549.1.12.1.{n}") for n in range(1, 7)),
    *(_oid(f"1.2.840.113549.1.5.{n}") for n in (1, 3, 4, 6, 10, 11)),
}
_PASSWORD_SCHEMES = {
    _PBKDF2,
    _SCRYPT,
    _oid("1.2.840.113549.1.5.13"),  # PBES2
    _oid("1.2.840.113549.1.5.14"),  # PBMAC1
    *_PBE_PARAMETER_SCHEMES,
}
_SCRYPT_WEIGHT = 4
_MAX_DEPTH = 24
_MAX_ELEMENTS = 200_000


class _Unreadable(Exception):
    """Not DER this reader follows (BER, a high tag number, a length past the end)."""


@dataclass(frozen=True)
class Price:
    """What opening a PKCS#12 would cost in key derivation, as far as its DER shows."""

    iterations: int  # the total, weighted as in the module docstring
    largest: str  # the dearest derivation, for messages: "MAC: 2147483647 iterations"
    # A MAC, an encryption or anything unreadable: open only in a worker.
    password_based: bool
    readable: bool = True


_ElementList = list[Element]  # (tag, contents start, contents end)


def _elements(data: bytes, start: int, end: int) -> _ElementList:
    """probes/der.py's walk: BER, high tag numbers and lengths past the end are unreadable."""
    try:
        return elements(data, start, end)
    except DerError:
        raise _Unreadable from None


class _Pricer:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.total = 0
        self.largest = (0, "")
        self.password_based = False
        self.elements = 0

    def add(self, cost: int, what: str) -> None:
        self.total += cost
        if cost > self.largest[0]:
            self.largest = (cost, what)

    def children(self, element: tuple[int, int, int]) -> _ElementList:
        found = _elements(self.data, element[1], element[2])
        self.elements += len(found)
        if self.elements > _MAX_ELEMENTS:
            raise _Unreadable
        return found

    def integer(self, element: tuple[int, int, int]) -> int:
        tag, start, end = element
        if tag != 0x02 or end == start:
            raise _Unreadable
        return int.from_bytes(self.data[start:end], "big", signed=True)

    def visit(self, element: tuple[int, int, int], depth: int) -> None:
        """Price ``element`` and everything under it that is readable before
        decryption."""
        if depth > _MAX_DEPTH:
            raise _Unreadable
        if not element[0] & 0x20:
            return  # primitive: nothing under it (OCTET STRINGs are entered below only)
        children = self.children(element)
        if element[0] == 0x30 and children and children[0][0] == 0x06:
            if self.algorithm(children, depth):
                return
        for child in children:
            self.visit(child, depth + 1)

    def algorithm(self, children: _ElementList, depth: int) -> bool:
        """A SEQUENCE starting with an OID: an AlgorithmIdentifier or a
        ContentInfo.  True when its contents were dealt with here."""
        algorithm = self.data[children[0][1] : children[0][2]]
        params = children[1] if len(children) > 1 else None
        if algorithm in _PASSWORD_SCHEMES or algorithm == _ID_ENCRYPTED_DATA:
            self.password_based = True  # encrypted data: what it holds is read after decryption only
        if algorithm == _ID_DATA and params is not None and params[0] == 0xA0:
            # ContentInfo { id-data, [0] EXPLICIT OCTET STRING }: DER inside the
            # OCTET STRING.  BER's constructed OCTET STRING is not followed.
            inner = self.children(params)
            if len(inner) != 1 or inner[0][0] != 0x04:
                raise _Unreadable
            for child in self.children(inner[0]):
                self.visit(child, depth + 1)
            return True
        if params is not None and params[0] == 0x30:
            fields = self.children(params)
            if algorithm == _PBKDF2 and len(fields) >= 2:
                iterations = self.integer(fields[1])
                self.add(iterations, f"PBKDF2 of {_count(iterations)} iterations")
            elif algorithm in _PBE_PARAMETER_SCHEMES and len(fields) >= 2:
                iterations = self.integer(fields[1])
                self.add(iterations, f"PBE of {_count(iterations)} iterations")
            elif algorithm == _SCRYPT and len(fields) >= 4:
                n, r, p = (self.integer(f) for f in fields[1:4])
                self.add(_SCRYPT_WEIGHT * n * r * p, f"scrypt with N={_count(n)} r={_count(r)} p={_count(p)}")
        return False


def _count(number: int) -> str:
    """A number from a hostile file, for a message: never thousands of digits."""
    return str(number) if abs(number) < 10**15 else f"about 2^{number.bit_length()}"


def price(data: bytes, *, password_given: bool) -> Price:
    """What opening ``data`` (a PFX, see ``certparse``) costs in key derivations.
    Never raises; a structure this reader cannot follow is ``readable=False`` and
    password-based, so it is opened in a worker."""
    pricer = _Pricer(data)
    try:
        (pfx,) = _elements(data, 0, len(data))
        fields = pricer.children(pfx) if pfx[0] == 0x30 else []  # version, authSafe, macData
        if len(fields) < 2 or fields[1][0] != 0x30:
            raise _Unreadable
        pricer.visit(fields[1], 1)
        if len(fields) > 2 and fields[2][0] == 0x30:
            mac = pricer.children(fields[2])  # DigestInfo, macSalt, iterations DEFAULT 1
            iterations = pricer.integer(mac[2]) if len(mac) > 2 else 1
            tries = 1 if password_given else 2
            pricer.add(
                tries * iterations,
                f"a MAC of {_count(iterations)} iterations" + ("" if password_given else ", tried twice"),
            )
            pricer.password_based = True
            pricer.visit(fields[2], 1)  # PBMAC1 (RFC 9579) names its PBKDF2 here
    except (_Unreadable, ValueError, IndexError):
        return Price(pricer.total, pricer.largest[1], password_based=True, readable=False)
    return Price(pricer.total, pricer.largest[1], pricer.password_based)


# -- opening in a worker ----------------------------------------------------------


class Pkcs12Error(Exception):
    """Opening failed; ``kind`` is ``password`` (wrong or missing password, or
    data OpenSSL cannot tell apart from that), ``invalid``, ``deadline`` or
    ``worker`` (the worker could not be started or died)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Worker:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, _WORKER_SCRIPT, str(WORKER_ADDRESS_SPACE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in = self.process.stdin.fileno()
        self._out = self.process.stdout.fileno()
        os.set_blocking(self._in, False)
        os.set_blocking(self._out, False)

    def ask(self, request: bytes, deadline: float) -> tuple[int, bytes]:
        """Send one request and read its answer, both before ``deadline``
        (monotonic); raises TimeoutError or OSError, after which the worker is
        unusable."""
        view = memoryview(request)
        while view:
            wait_ready(self._in, deadline, write=True)
            written = os.write(self._in, view[: 1 << 16])
            view = view[written:]
        header = self._read(5, deadline)
        status, length = struct.unpack(">BI", header)
        if length > _MAX_ANSWER:
            raise OSError("answer too long")
        return status, self._read(length, deadline)

    def _read(self, count: int, deadline: float) -> bytes:
        chunks: list[bytes] = []
        missing = count
        while missing:
            wait_ready(self._out, deadline, write=False)
            chunk = os.read(self._out, min(missing, 1 << 20))
            if not chunk:
                raise OSError("the worker exited")
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.process.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass  # reaped by the next Popen's cleanup


class _Pool:
    def __init__(self) -> None:
        self._idle: list[_Worker] = []
        self._running = 0
        self._changed = threading.Condition()

    def take(self, deadline: float) -> _Worker:
        with self._changed:
            while not self._idle and self._running >= MAX_WORKERS:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self._changed.wait(remaining)
            if self._idle:
                return self._idle.pop()
            self._running += 1
        try:
            return _Worker()
        except OSError:
            self._gone()
            raise

    def give_back(self, worker: _Worker) -> None:
        with self._changed:
            self._idle.append(worker)
            self._changed.notify()

    def discard(self, worker: _Worker) -> None:
        worker.close()
        self._gone()

    def _gone(self) -> None:
        with self._changed:
            self._running -= 1
            self._changed.notify()


_POOL = _Pool()
# Digests of (file, password) that ran into the deadline: refused again at once.
_too_slow: OrderedDict[bytes, None] = OrderedDict()
_too_slow_lock = threading.Lock()
_TOO_SLOW_REMEMBERED = 1024


def open_isolated(data: bytes, password: bytes | None, seconds: float = DEADLINE_SECONDS) -> list[bytes]:
    """The DER of every certificate in the PKCS#12 ``data`` (its own certificate
    first), opened in a worker process given at most ``seconds``.  Raises
    ``Pkcs12Error``."""
    seconds = max(0.0, min(seconds, DEADLINE_SECONDS))
    digest = hashlib.sha256(b"%d:" % len(password or b"") + (password or b"") + b"\0" + data).digest()
    with _too_slow_lock:
        if digest in _too_slow:
            _too_slow.move_to_end(digest)
            raise Pkcs12Error("deadline", "took longer than its deadline to open before; not tried again")
    deadline = time.monotonic() + seconds
    try:
        worker = _POOL.take(deadline)
    except TimeoutError:
        raise Pkcs12Error("deadline", f"waited {seconds:.3g} s for a free worker process; not opened") from None
    except OSError as exc:
        raise Pkcs12Error("worker", f"cannot start the PKCS#12 worker process ({exc.strerror or exc})") from None
    flag = b"\x00" if password is None else b"\x01"
    password_bytes = password or b""
    cpu = max(1, int(seconds + 0.999))
    request = struct.pack(">IBII", cpu, flag[0], len(password_bytes), len(data)) + password_bytes + data
    try:
        status, answer = worker.ask(request, deadline)
    except TimeoutError:
        _POOL.discard(worker)
        _remember_too_slow(digest)
        raise Pkcs12Error("deadline", f"took longer than {seconds:.3g} s to open; stopped") from None
    except (OSError, struct.error):
        _POOL.discard(worker)
        if worker.process.returncode == -signal.SIGXCPU:  # its own CPU limit: the file's doing
            _remember_too_slow(digest)
            raise Pkcs12Error("deadline", f"took more than {cpu} s of CPU to open; stopped") from None
        raise Pkcs12Error("worker", f"its worker process died (exit status {worker.process.returncode})") from None
    _POOL.give_back(worker)
    if status == 0:
        return _split(answer)
    if status == 1:
        raise Pkcs12Error("password", "")
    raise Pkcs12Error("invalid", answer.decode("utf-8", "replace")[:200])


def _remember_too_slow(digest: bytes) -> None:
    with _too_slow_lock:
        _too_slow[digest] = None
        if len(_too_slow) > _TOO_SLOW_REMEMBERED:
            _too_slow.popitem(last=False)


def _split(answer: bytes) -> list[bytes]:
    found = []
    position = 0
    while position < len(answer):
        (length,) = struct.unpack_from(">I", answer, position)
        position += 4
        found.append(answer[position : position + length])
        position += length
    return found
