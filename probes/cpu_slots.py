"""CPU slots: how many probe runs compute at once, however many are in flight.

A probe run that cooperates holds a slot (``held()``) for its whole run and gives it
back whenever it waits on the network (``waiting()``): a DNS answer, a connect, a
socket that is not yet readable, an OCSP or CRL fetch.  So of the 64 runs a round
keeps in flight, only as many as there are CPUs run Python at a time, and the rest
sleep on one semaphore instead of on the GIL.

Why: every OpenSSL call gives up the GIL, and a thread that comes back from one
finds it taken when dozens of threads are runnable.  On the 2-core benchmark machine
64 threads handshaking with loopback servers made 87 voluntary context switches per
probe in a first round (4 with one thread), and the switching cost as much CPU as
the probe's own work; with two slots it made 13 (docs/performance.md).

How a slot changes hands: a thread that gives one back hands it to the longest
waiting thread, and a run coming back from a wait on the network goes before a run
that has not started.  The run coming back has a server waiting on it and its
handshake timed; a run not started has neither.  A plain semaphore lets whichever
thread asks first take a freed slot, so an unlucky run could queue behind dozens of
newcomers: at 1,000 loopback endpoints and 64 in flight, handshakes of about 1 ms
were reported at up to 48 ms (median) and 0.42-1.19 s (99th percentile), and a short
timeout would have failed them.  Handed over in order, the same rounds report
2.8-5 ms and 7-19 ms.  The price: a slot handed to a sleeping thread idles until it
wakes, a few per cent of CPU and throughput on first sight of a chain, within the
noise for chains seen before (``bench/cpu_slots.py``, docs/performance.md).

The contract for a cooperating probe: a wait on a socket goes through
``wait_ready()``, and anything else that can block (a library's DNS lookup or HTTP
fetch) through ``blocking(fn)``; nothing inside ``held()`` waits on anything but the
CPU.  The same code then also runs in an event loop (``probes.event_loop``): there
``wait_ready()`` switches to the loop and ``blocking(fn)`` runs ``fn`` on a helper
thread.  A thread holds at most one slot (``held()`` inside ``held()`` is a no-op), and
``waiting()`` outside a slot is a no-op, so helpers can call it whoever calls them.
"""

from __future__ import annotations

import _thread
import math
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

T = TypeVar("T")


class CpuSlots:
    """``count`` slots, handed over in order; resuming runs before starting ones."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"CPU slots must be at least 1, got {count}")
        self.count = count
        self._free = count  # > 0 only while nobody waits
        self._mutex = _thread.allocate_lock()
        # One locked lock per waiting thread, released by the thread handing it a slot.
        self._resuming: deque[_thread.LockType] = deque()
        self._starting: deque[_thread.LockType] = deque()
        self._local = threading.local()  # .state: None, "held" or "waiting"

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold a slot for the block (waiting for one if all are taken)."""
        if getattr(self._local, "state", None) is not None:
            yield  # this thread is already in a slot's run
            return
        self._take(self._starting)
        self._local.state = "held"
        try:
            yield
        finally:
            # "waiting" here: taking the slot back after a wait was interrupted.
            if self._local.state == "held":
                self._give()
            self._local.state = None

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Give this thread's slot back for the block (a blocking wait), and take
        one again after it, before any run that has not started."""
        if getattr(self._local, "state", None) != "held":
            yield
            return
        self._local.state = "waiting"
        self._give()
        try:
            yield
        finally:
            self._take(self._resuming)
            self._local.state = "held"

    def _take(self, queue: deque[_thread.LockType]) -> None:
        with self._mutex:
            if self._free:
                self._free -= 1
                return
            handed = _thread.allocate_lock()
            handed.acquire()
            queue.append(handed)
        try:
            handed.acquire()  # until a thread giving its slot back releases it
        except BaseException:  # interrupted (a signal in the main thread)
            with self._mutex:
                if handed in queue:
                    queue.remove(handed)
                    raise
            self._give()  # the slot arrived meanwhile: pass it on
            raise

    def _give(self) -> None:
        with self._mutex:
            if self._resuming:
                self._resuming.popleft().release()
            elif self._starting:
                self._starting.popleft().release()
            else:
                self._free += 1

    def holding(self) -> bool:
        """Whether this thread holds a slot now (for tests)."""
        return getattr(self._local, "state", None) == "held"


def available_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup CPU quota
    (a container's ``resources.limits.cpu``), rounded up, at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return count


def _cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs' worth of the cgroup's quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or None."""
    try:
        with open(f"{root}/cpu.max") as handle:
            quota, period = handle.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with (
            open(f"{root}/cpu/cpu.cfs_quota_us") as quota_file,
            open(f"{root}/cpu/cpu.cfs_period_us") as period_file,
        ):
            quota_us, period_us = int(quota_file.read()), int(period_file.read())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


# One set of slots for the process: all cooperating probes share the CPUs.
SLOTS = CpuSlots(available_cpus())
held = SLOTS.held
waiting = SLOTS.waiting


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


class EventLoop(Protocol):
    """What a loop thread offers the runs on it (``probes.event_loop``)."""

    def wait(self, fd: int, *, write: bool, deadline: float) -> None: ...

    def blocking(self, fn: Callable[[], T]) -> T: ...


_thread_loop = threading.local()  # .loop: the EventLoop this thread runs, on loop threads


def enter_loop(loop: EventLoop) -> None:
    """Make this thread ``loop``'s: its runs wait through the loop from now on."""
    _thread_loop.loop = loop


def blocking(fn: Callable[[], T]) -> T:
    """``fn()``, which may block inside a library: in a thread, with the slot given
    back meanwhile; in an event loop, on a helper thread while the loop goes on."""
    loop: EventLoop | None = getattr(_thread_loop, "loop", None)
    if loop is not None:
        return loop.blocking(fn)
    with waiting():
        return fn()


def wait_ready(source: int | _HasFileno, deadline: float, *, write: bool) -> None:
    """Until ``source`` (a socket, a pipe's descriptor) is readable, or writable, or
    TimeoutError at ``deadline`` (monotonic).  The slot is given back only when it is
    not ready at once (a loopback or LAN peer often is).  poll(), not select():
    beside thousands of sockets, descriptors above 1,024 are common."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the deadline passed")
    poller = select.poll()
    poller.register(source, select.POLLOUT if write else select.POLLIN)
    if poller.poll(0):
        return
    loop: EventLoop | None = getattr(_thread_loop, "loop", None)
    if loop is not None:
        loop.wait(source if isinstance(source, int) else source.fileno(), write=write, deadline=deadline)
        return
    with waiting():
        ready = poller.poll(remaining * 1000)
    if not ready:
        raise TimeoutError("the deadline passed")
