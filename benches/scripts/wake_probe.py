#!/usr/bin/env python3
"""The machine's phase before a benchmark, second reading: how long a
sleeping thread on the other core takes to wake. Two processes, one
pinned to each of the first two cores, pass a byte back and forth
through pipes; each round trip is two wake-ups of a process blocked in
`read`. The same ping-pong with both on one core is the baseline (a
context switch without crossing cores). On this VM a cross-core round
trip took 70-110 us in slow hours against ~2 us on one core
(BENCHMARKS.md, "sled's I/O pool woken one thread a job"): every hand-off
between threads of a node that finds the other core idle pays it.

    python3 benches/scripts/wake_probe.py [round trips, default 2000]
"""
import os
import sys
import time

n = int(sys.argv[1] if len(sys.argv) > 1 else 2000)
cores = sorted(os.sched_getaffinity(0))


def ping_pong(here: int, there: int) -> float:
    """Microseconds per round trip, this process on `here`, its partner on `there`."""
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {there})
        for _ in range(n):
            os.write(b_w, os.read(a_r, 1))
        os._exit(0)
    os.sched_setaffinity(0, {here})
    time.sleep(0.05)
    t = time.perf_counter()
    for _ in range(n):
        os.write(a_w, b"x")
        os.read(b_r, 1)
    us = (time.perf_counter() - t) / n * 1e6
    os.waitpid(pid, 0)
    for fd in (a_r, a_w, b_r, b_w):
        os.close(fd)
    os.sched_setaffinity(0, set(cores))
    return us


same = ping_pong(cores[0], cores[0])
if len(cores) < 2:
    print(f"one core only: round trip {same:.1f} us")
else:
    cross = ping_pong(cores[0], cores[1])
    print(f"wake round trip across cores {cross:.1f} us, on one core {same:.1f} us ({n} round trips)")
