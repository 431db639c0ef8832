"""probes.event_loop over real sockets on 127.0.0.1: runs wait through the loop and
resume when their socket is ready, deadlines end a wait with TimeoutError, blocking
calls go to helper threads in the run's context, a run that raises fails only its own
future, the limit in flight holds, and close() cancels what has not started and lets
the rest finish."""

from __future__ import annotations

import contextvars
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future

import pytest

from probes import cpu_slots
from probes.event_loop import Loops
from tests.fixtures.servers import FaultServer


def delayed_server(delay: float | None) -> FaultServer:
    """Answers each connection with one byte after ``delay`` seconds, or never."""

    def answer(conn: socket.socket, stopping: threading.Event) -> None:
        if delay is not None and not stopping.wait(delay):
            conn.sendall(b"x")
        stopping.wait()

    return FaultServer(f"delayed-{delay}", answer)


@pytest.fixture
def loops() -> Iterator[Loops]:
    running = Loops(2, 8)
    yield running
    running.close(wait=True)


def _fetch_byte(port: int, timeout: float) -> tuple[bytes, str]:
    """A run: connect, wait for the answer through cpu_slots, read it."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setblocking(False)
        cpu_slots.wait_ready(sock, deadline, write=False)
        return sock.recv(1), threading.current_thread().name


def test_runs_wait_in_two_loop_threads_and_overlap() -> None:
    server = delayed_server(0.2)
    running = Loops(2, 16)
    try:
        started = time.monotonic()
        futures = [running.submit(_fetch_byte, server.port, 5.0) for _ in range(16)]
        answers = [future.result(timeout=10) for future in futures]
        elapsed = time.monotonic() - started
    finally:
        running.close(wait=True)
        server.stop()
    assert [data for data, _ in answers] == [b"x"] * 16
    assert {name for _, name in answers} <= {"loop-0", "loop-1"}
    # 16 waits of 0.2 s each, all in flight at once: about 0.2 s, not 3.2 s.
    assert elapsed < 1.5, elapsed


def test_a_wait_past_its_deadline_raises_timeout_and_the_others_go_on(loops: Loops) -> None:
    silent = delayed_server(None)
    answering = delayed_server(0.05)
    try:
        started = time.monotonic()
        stuck = loops.submit(_fetch_byte, silent.port, 0.3)
        fine = [loops.submit(_fetch_byte, answering.port, 5.0) for _ in range(4)]
        assert [f.result(timeout=5)[0] for f in fine] == [b"x"] * 4
        with pytest.raises(TimeoutError):
            stuck.result(timeout=5)
        waited = time.monotonic() - started
    finally:
        silent.stop()
        answering.stop()
    assert 0.25 <= waited < 2.0, waited


def test_a_blocking_call_runs_on_a_helper_in_the_runs_context_while_the_loop_goes_on(loops: Loops) -> None:
    server = delayed_server(0.01)
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    finished: list[str] = []

    def slow_lookup() -> str:
        time.sleep(0.4)
        return f"{marker.get()} on {threading.current_thread().name}"

    def run_with_blocking_call() -> str:
        marker.set("the run's value")
        answer = cpu_slots.blocking(slow_lookup)
        finished.append("blocking")
        return answer

    def quick_run() -> bytes:
        data, _ = _fetch_byte(server.port, 5.0)
        finished.append("quick")
        return data

    try:
        slow = loops.submit(run_with_blocking_call)
        time.sleep(0.05)  # the slow run is in its blocking call now
        quick = [loops.submit(quick_run) for _ in range(6)]
        for future in quick:
            assert future.result(timeout=5) == b"x"
        answer = slow.result(timeout=5)
    finally:
        server.stop()
    assert answer.startswith("the run's value on loop-helper")
    # Both loops went on during the helper's 0.4 s: every quick run ended first.
    assert finished == ["quick"] * 6 + ["blocking"]


def test_an_exception_in_a_blocking_call_is_raised_in_the_run(loops: Loops) -> None:
    def failing() -> None:
        raise socket.gaierror(-2, "Name or service not known")

    def run() -> str:
        try:
            cpu_slots.blocking(failing)
        except socket.gaierror as exc:
            return f"caught {exc.strerror}"
        return "not raised"

    assert loops.submit(run).result(timeout=5) == "caught Name or service not known"


def test_a_run_that_raises_fails_only_its_future(loops: Loops) -> None:
    def broken() -> None:
        raise RuntimeError("a bug")

    bad = loops.submit(broken)
    good = loops.submit(lambda: 42)
    assert good.result(timeout=5) == 42
    with pytest.raises(RuntimeError, match="a bug"):
        bad.result(timeout=5)
    assert loops.submit(lambda: "still running").result(timeout=5) == "still running"


def test_no_more_runs_in_flight_than_the_limit() -> None:
    server = delayed_server(0.05)
    in_flight = 0
    most = 0
    lock = threading.Lock()

    def counted() -> bytes:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        try:
            return _fetch_byte(server.port, 5.0)[0]
        finally:
            with lock:
                in_flight -= 1

    running = Loops(2, 6)
    try:
        futures = [running.submit(counted) for _ in range(40)]
        assert [f.result(timeout=10) for f in futures] == [b"x"] * 40
    finally:
        running.close(wait=True)
        server.stop()
    assert 2 <= most <= 6, most


def test_close_cancels_runs_not_started_and_lets_the_others_finish() -> None:
    server = delayed_server(0.3)
    running = Loops(1, 2)
    futures: list[Future[tuple[bytes, str]]] = [running.submit(_fetch_byte, server.port, 5.0) for _ in range(10)]
    time.sleep(0.1)  # two are in flight, waiting on the server
    before = {t.name for t in threading.enumerate()}
    assert "loop-0" in before
    running.close(wait=True)
    server.stop()
    done = [f for f in futures if not f.cancelled()]
    assert len(done) == 2
    assert [f.result()[0] for f in done] == [b"x", b"x"]
    for future in futures:
        if future.cancelled():
            with pytest.raises(CancelledError):
                future.result()
    assert "loop-0" not in {t.name for t in threading.enumerate()}
    with pytest.raises(RuntimeError):
        running.submit(lambda: None)


def test_loop_threads_share_the_cpu_slots_with_threads() -> None:
    """While a loop computes it holds one of the process's slots: a thread asking for a
    slot meanwhile waits, and gets it as soon as the loop sleeps in epoll."""
    slots = cpu_slots.SLOTS
    release = threading.Event()
    computing = threading.Event()

    def busy() -> None:
        computing.set()
        release.wait(5)  # stands for Python work: the loop thread keeps its slot

    running = Loops(slots.count, slots.count)
    try:
        futures = [running.submit(busy) for _ in range(slots.count)]
        assert computing.wait(5)
        time.sleep(0.1)
        got_slot = threading.Event()

        def thread_run() -> None:
            with slots.held():
                got_slot.set()

        threading.Thread(target=thread_run, daemon=True).start()
        assert not got_slot.wait(0.3), "a thread took a slot while every loop computed"
        release.set()
        for future in futures:
            future.result(timeout=5)
        assert got_slot.wait(5), "the slot was not handed over once the loops slept"
    finally:
        release.set()
        running.close(wait=True)


def test_a_loop_that_fails_fails_its_runs_and_the_queue_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the loop itself (here: its epoll dispatch raising) must not leave a
    round waiting forever: the runs in flight and those queued fail with it, and the
    scheduler's runners start a new loop for what comes next."""
    from exporter.scheduler import TargetRunners
    from probes import event_loop

    server = delayed_server(0.2)
    real_dispatch = event_loop._Loop._dispatch
    broken = {"on": True}

    def dispatch(self: event_loop._Loop, events: list[tuple[int, int]]) -> None:
        if broken["on"] and any(fd != self._wake_fd for fd, _ in events):
            raise ValueError("a bug in the loop")
        real_dispatch(self, events)

    monkeypatch.setattr(event_loop._Loop, "_dispatch", dispatch)
    runners = TargetRunners(2)
    probe = type("LoopKind", (), {"runs_in_event_loop": True})()
    try:
        futures = [runners.submit(probe, _fetch_byte, server.port, 5.0) for _ in range(5)]
        for future in futures:
            with pytest.raises(RuntimeError, match="the event loop failed: ValueError: a bug in the loop"):
                future.result(timeout=5)
        broken["on"] = False
        assert runners.submit(probe, _fetch_byte, server.port, 5.0).result(timeout=5)[0] == b"x"
    finally:
        runners.shutdown(wait=True)
        server.stop()
