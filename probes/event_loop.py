"""Event loops for rounds of network probes: a loop thread that runs many runs at once.

``Loops(count, limit)`` starts ``count`` loop threads (the scheduler starts ``LOOPS``,
one); ``submit(fn, *args)`` returns a ``concurrent.futures.Future`` for ``fn(*args)``,
run as a greenlet on whichever loop takes it first, at most ``limit`` runs in flight
over all loops.  ``close()`` cancels what has not started and lets the runs in flight
finish (their deadlines bound them).  A loop that fails (a bug of its own) fails its
runs and, with no loop left, the queue, instead of leaving them waiting.

A run's code is the code that runs in a thread.  Where it waits on a socket
(``cpu_slots.wait_ready``) it switches to its loop instead of sleeping, and the loop
switches back when ``epoll`` reports the socket ready, or at the deadline
(``TimeoutError``).  What blocks inside a library (a DNS lookup, a STARTTLS dialogue,
an OCSP or CRL fetch) goes through ``cpu_slots.blocking(fn)``, which runs ``fn`` on a
helper thread, in a copy of the run's context (its span), while the loop goes on.

Why: with a thread per run in flight, every wait on the network hands the CPU slot to
another thread, which must be woken and finds its stack and session cold.  On the
2-core benchmark machine 64 threads in flight cost 0.2-0.45 ms of CPU per probe more
than two (docs/performance.md, "sixth part"); a loop moves between runs by a function
call, and sleeps only when no run in flight can go on.

Order: a loop resumes every run that can go on before it starts another, so a run
whose server has answered is not held up by runs that have not started, and each run's
reported handshake counts as little of the others' work as possible.

How many: one.  Two loop threads (one per CPU slot on the 2-core benchmark machine)
cost more CPU per probe, not less: every OpenSSL call gives up the GIL, and getting it
back from the other loop is a hand-over between threads, up to the 5 ms switch
interval when the other is in Python.  With two, a first round over 1,000 endpoints
cost 1.01-1.22x blackbox_exporter's CPU per probe, with one 0.86-1.05x (three pairs
per key type; docs/performance.md, "seventh part"), and the loop took up to 59 ms to
get back to a socket that had become ready (mTLS handshakes of about 1 ms reported at
a median of 4-19 ms, against 1.1-1.3 ms with one).  One loop runs about a thousand
probes a second on that machine, more than a fleet of 100,000 endpoints probed every
five minutes needs; beyond that, shard (docs/performance.md, "beyond one pod").

Each loop thread holds one of the process's CPU slots while it computes and gives it
back while it sleeps in ``epoll``, so runs in loops and runs in threads (the ``/probe``
endpoint, other kinds) share the CPUs as before.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from greenlet import getcurrent, greenlet

from probes import cpu_slots

T = TypeVar("T")
log = logging.getLogger(__name__)

LOOPS = 1  # loop threads a scheduler runs (see "How many" above)
_READ = select.EPOLLIN
_WRITE = select.EPOLLOUT


class _Wait:
    """A run waiting on one descriptor, until it is ready or the deadline passes."""

    __slots__ = ("done", "fd", "run")

    def __init__(self, run: greenlet, fd: int) -> None:
        self.run = run
        self.fd = fd
        self.done = False


class _Loop:
    """One loop thread: its epoll, its runs waiting on descriptors and on helpers."""

    def __init__(self, loops: Loops, index: int) -> None:
        self._loops = loops
        self._epoll = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, select.EPOLLIN)
        self._wake_lock = threading.Lock()  # the eventfd is not written after it is closed
        self._ended = False
        self.sleeping = False  # in epoll (or about to be): others must write the eventfd
        # (run, value to switch in with): runs that can go on now.
        self._ready: deque[tuple[greenlet, Any]] = deque()
        # Filled by helper threads: runs whose blocking call has returned.
        self._returned: deque[tuple[greenlet, Any]] = deque()
        self._waits: dict[int, _Wait] = {}
        self._timers: list[tuple[float, int, _Wait]] = []
        self._sequence = itertools.count()
        self._running: set[Future[Any]] = set()  # the futures of the runs in flight
        self.alive = True
        self._hub: greenlet | None = None
        self.thread = threading.Thread(target=self._main, name=f"loop-{index}", daemon=True)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    # -- called by the runs, on this loop's thread ----------------------------------

    def wait(self, fd: int, *, write: bool, deadline: float) -> None:
        """Until ``fd`` is ready, or TimeoutError at ``deadline`` (monotonic)."""
        assert self._hub is not None
        waiting = _Wait(getcurrent(), fd)
        self._epoll.register(fd, _WRITE if write else _READ)
        self._waits[fd] = waiting
        heapq.heappush(self._timers, (deadline, next(self._sequence), waiting))
        if not self._hub.switch():
            raise TimeoutError("the deadline passed")

    def blocking(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a helper thread, in this run's context; the loop goes on meanwhile."""
        assert self._hub is not None
        run = getcurrent()
        context = contextvars.copy_context()

        def on_helper() -> None:
            try:
                outcome: tuple[bool, Any] = (True, context.run(fn))
            except BaseException as exc:  # noqa: BLE001 - handed to the run, which raises it
                outcome = (False, exc)
            self._returned.append((run, outcome))
            self.wake()

        self._loops.helpers.submit(on_helper)
        succeeded, value = self._hub.switch()
        if not succeeded:
            raise value
        return value  # type: ignore[no-any-return]

    # -- called from any thread --------------------------------------------------------

    def wake(self, *, always: bool = False) -> None:
        if self.sleeping or always:
            with self._wake_lock:
                if not self._ended:
                    os.eventfd_write(self._wake_fd, 1)

    # -- the loop ------------------------------------------------------------------------

    def _main(self) -> None:
        self._hub = getcurrent()
        cpu_slots.enter_loop(self)
        try:
            with cpu_slots.held():
                self._loop()
        except BaseException as exc:  # a bug of the loop: its runs fail instead of hanging
            log.exception("the event loop %s failed; its runs fail with it", self.thread.name)
            self.alive = False
            failure = RuntimeError(f"the event loop failed: {type(exc).__name__}: {exc}")
            for future in list(self._running):
                if not future.done():
                    future.set_exception(failure)
            self._loops.lost_loop(failure)
        finally:
            with self._wake_lock:
                self._ended = True
                self._epoll.close()
                os.close(self._wake_fd)

    def _loop(self) -> None:
        loops = self._loops
        ready = self._ready
        while True:
            while ready:
                run, value = ready.popleft()
                run.switch(value)  # back here when it waits or ends
            self._take_returned()
            if ready:
                continue
            events = self._epoll.poll(0) if self._waits else []
            if events:
                self._dispatch(events)
            elif self._expire(time.monotonic()):
                pass
            elif self.in_flight < loops.per_loop and self._start():
                pass
            elif loops.closing and self.in_flight == 0:
                return
            else:
                self._sleep()

    def _sleep(self) -> None:
        self.sleeping = True
        # Checked again after saying so: a submit or a helper that came in between
        # saw ``sleeping`` and wrote the eventfd, or is seen here.
        if self._returned or (self.in_flight < self._loops.per_loop and self._loops.pending()):
            self.sleeping = False
            return
        timers = self._timers
        while timers and timers[0][2].done:
            heapq.heappop(timers)
        timeout = max(0.0, timers[0][0] - time.monotonic()) if timers else -1.0
        with cpu_slots.waiting():
            events = self._epoll.poll(timeout)
        self.sleeping = False
        self._dispatch(events)
        self._expire(time.monotonic())

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        for fd, _ in events:
            if fd == self._wake_fd:
                try:
                    os.eventfd_read(self._wake_fd)
                except BlockingIOError:
                    pass
                continue
            waiting = self._waits.pop(fd, None)
            if waiting is None:
                continue
            self._epoll.unregister(fd)
            waiting.done = True
            self._ready.append((waiting.run, True))

    def _expire(self, now: float) -> bool:
        expired = False
        timers = self._timers
        while timers and (timers[0][2].done or timers[0][0] <= now):
            _, _, waiting = heapq.heappop(timers)
            if waiting.done:
                continue
            waiting.done = True
            del self._waits[waiting.fd]
            self._epoll.unregister(waiting.fd)
            self._ready.append((waiting.run, False))
            expired = True
        return expired

    def _take_returned(self) -> None:
        returned = self._returned
        while returned:
            self._ready.append(returned.popleft())

    def _start(self) -> bool:
        """Start the next submitted run, if any; False when none waits."""
        while True:
            item = self._loops.take()
            if item is None:
                return False
            future, fn, args = item
            if future.set_running_or_notify_cancel():
                break
        self._running.add(future)
        run = greenlet(self._body, parent=self._hub)
        self._ready.append((run, (future, fn, args)))
        return True

    def _body(self, item: tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]) -> None:
        future, fn, args = item
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - the future's caller gets it
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            self._running.discard(future)


class Loops:
    """``count`` loop threads sharing one queue of submitted runs, ``limit`` in flight."""

    def __init__(self, count: int, limit: int) -> None:
        if count < 1 or limit < 1:
            raise ValueError(f"loops need count and limit of at least 1, got {count} and {limit}")
        self.per_loop = max(1, -(-limit // count))
        self.closing = False
        self._queue: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        # Blocking calls of runs: as many as may be in flight, started as needed.
        self.helpers = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="loop-helper")
        self._loops = [_Loop(self, index) for index in range(count)]
        for loop in self._loops:
            loop.thread.start()

    def alive(self) -> bool:
        """Whether a loop thread is still there to run what is submitted."""
        return any(loop.alive for loop in self._loops)

    def lost_loop(self, failure: Exception) -> None:
        """Called by a loop thread that failed: with none left, nothing queued would
        ever run, so it fails now."""
        if self.alive():
            return
        while (item := self.take()) is not None:
            if item[0].set_running_or_notify_cancel():
                item[0].set_exception(failure)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self.closing:
            raise RuntimeError("the loops are closed")
        if not self.alive():
            raise RuntimeError("no event loop is running")
        future: Future[T] = Future()
        self._queue.append((future, fn, args))
        for loop in self._loops:
            if loop.in_flight < self.per_loop:
                loop.wake()  # only if it sleeps
        return future

    def pending(self) -> bool:
        return bool(self._queue)

    def take(self) -> tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None:
        try:
            return self._queue.popleft()
        except IndexError:
            return None

    def close(self, wait: bool = True) -> None:
        """Cancel the runs not started; with ``wait``, return once the rest have ended."""
        self.closing = True
        while (item := self.take()) is not None:
            item[0].cancel()
        for loop in self._loops:
            loop.wake(always=True)
        if wait:
            for loop in self._loops:
                loop.thread.join()
        self.helpers.shutdown(wait=wait)
