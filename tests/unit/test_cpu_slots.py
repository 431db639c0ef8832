"""CPU slots (probes/cpu_slots.py): no more than ``count`` threads compute at once,
a thread in ``waiting()`` lets another in, a freed slot goes to the run that has
waited longest (one coming back from the network first), and nesting never
deadlocks."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from probes.cpu_slots import CpuSlots


def test_no_more_threads_inside_than_slots() -> None:
    slots = CpuSlots(2)
    inside, most = 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        with slots.held():
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.02)  # a sleep outside waiting(): the slot stays taken
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert most == 2


def test_a_waiting_thread_lets_another_compute() -> None:
    slots = CpuSlots(1)
    released = threading.Event()
    in_wait = threading.Event()
    order: list[str] = []

    def waiter() -> None:
        with slots.held():
            with slots.waiting():
                in_wait.set()
                released.wait(5)
            order.append("waiter done")

    thread = threading.Thread(target=waiter)
    thread.start()
    assert in_wait.wait(5)
    started = time.monotonic()
    with slots.held():  # would block until the waiter finished, were the slot kept
        order.append("other computed")
    assert time.monotonic() - started < 1
    released.set()
    thread.join(5)
    assert order == ["other computed", "waiter done"]


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_run_back_from_the_network_goes_before_runs_not_started() -> None:
    """Its server is waiting on it and its handshake is being timed."""
    slots = CpuSlots(1)
    order: list[str] = []
    answer = threading.Event()

    def in_flight() -> None:
        with slots.held():
            with slots.waiting():
                answer.wait(5)  # the server's answer
            order.append("in flight")

    def starting(name: str) -> None:
        with slots.held():
            order.append(name)

    first = threading.Thread(target=in_flight)
    first.start()
    _until(lambda: slots._free == 1)  # it gave its slot back for the wait
    with slots.held():
        later = [threading.Thread(target=starting, args=(f"new {n}",)) for n in range(3)]
        for queued, thread in enumerate(later, 1):
            thread.start()
            _until(lambda queued=queued: len(slots._starting) == queued)
        answer.set()
        _until(lambda: len(slots._resuming) == 1)
    for thread in [first, *later]:
        thread.join(5)
    assert order == ["in flight", "new 0", "new 1", "new 2"]


def test_a_freed_slot_goes_to_the_waiting_run_not_a_newcomer() -> None:
    """No barging: a run that asks just after a slot is freed queues behind the one
    that was already waiting for it."""
    slots = CpuSlots(1)
    order: list[str] = []

    def run(name: str) -> None:
        with slots.held():
            order.append(name)
            time.sleep(0.02)

    waiting_run = threading.Thread(target=run, args=("waiting",))
    with slots.held():
        waiting_run.start()
        _until(lambda: len(slots._starting) == 1)
    newcomer = threading.Thread(target=run, args=("newcomer",))
    newcomer.start()  # asks while the waiting run may not have woken yet
    for thread in (waiting_run, newcomer):
        thread.join(5)
    assert order == ["waiting", "newcomer"]


def test_nesting_and_waiting_outside_a_slot_are_no_ops() -> None:
    slots = CpuSlots(1)
    with slots.waiting():  # no slot held: nothing to give back, nothing taken after
        assert not slots.holding()
    with slots.held():
        with slots.held():  # the same thread again: no second slot, no deadlock
            assert slots.holding()
        assert slots.holding()
        with slots.waiting():
            assert not slots.holding()
            with slots.waiting():
                assert not slots.holding()
        assert slots.holding()
    assert not slots.holding()


def test_a_slot_comes_back_after_an_exception_in_a_wait() -> None:
    slots = CpuSlots(1)
    with pytest.raises(TimeoutError):
        with slots.held():
            with slots.waiting():
                raise TimeoutError
    done = threading.Event()
    thread = threading.Thread(target=lambda: (slots.held().__enter__(), done.set()))
    thread.start()
    assert done.wait(2), "the slot was not given back"


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CpuSlots(0)


def test_a_cgroup_quota_caps_the_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from probes import cpu_slots

    (tmp_path / "cpu.max").write_text("150000 100000\n")  # limits.cpu: 1.5
    assert cpu_slots._cgroup_cpu_quota(str(tmp_path)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_slots._cgroup_cpu_quota(str(tmp_path)) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")  # cgroup v1, limits.cpu: 0.5
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_slots._cgroup_cpu_quota(str(tmp_path)) == 0.5
    monkeypatch.setattr(cpu_slots, "_cgroup_cpu_quota", lambda: 0.5)
    assert cpu_slots.available_cpus() == 1  # rounded up, never 0
    monkeypatch.setattr(cpu_slots, "_cgroup_cpu_quota", lambda: 1.5)
    assert cpu_slots.available_cpus() == min(2, len(os.sched_getaffinity(0)))
