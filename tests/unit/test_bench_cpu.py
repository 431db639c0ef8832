"""``bench.common.TreeCpu``: the CPU of another process tree, to the scheduler's
nanosecond where every thread stayed, and to the tick where one left."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.common import CLK_TCK, TreeCpu

# A child that burns CPU on request in a thread ("spin" keeps it, "exit" lets it end),
# and reports its own CPU (time.process_time: every thread, those that ended too).
CHILD = """
import sys, threading, time
def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
for line in sys.stdin:
    command, seconds = line.split()
    if command == "spin":
        burn(float(seconds))
    elif command == "exit":
        worker = threading.Thread(target=burn, args=(float(seconds),))
        worker.start()
        worker.join()
    print(time.process_time(), flush=True)
"""


def _ask(child: subprocess.Popen[str], command: str) -> float:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(command + "\n")
    child.stdin.flush()
    return float(child.stdout.readline())


def test_cpu_of_threads_that_stayed_is_read_to_the_nanosecond_and_a_thread_that_left_falls_back_to_ticks() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        own_before = _ask(child, "spin 0.05")
        before = TreeCpu.read(child.pid)
        own_after = _ask(child, "spin 0.033")
        after = TreeCpu.read(child.pid)
        # Within a millisecond of the child's own count, far finer than a 10 ms tick.
        assert abs(after.seconds_since(before) - (own_after - own_before)) < 0.001
        assert set(after.thread_ns) >= set(before.thread_ns)

        # A thread that burns and ends between two readings: its nanoseconds leave with
        # it, the ticks keep them.
        own_before, before = own_after, after
        time.sleep(0.01)
        own_after = _ask(child, "exit 0.2")
        after = TreeCpu.read(child.pid)
        measured = after.seconds_since(before)
        assert abs(measured - (own_after - own_before)) <= 3 / CLK_TCK
        assert measured == (after.ticks - before.ticks) / CLK_TCK
    finally:
        child.kill()
        child.wait()
