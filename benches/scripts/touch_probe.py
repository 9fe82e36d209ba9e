#!/usr/bin/env python3
"""The machine's phase before a benchmark: the cost of a first touch of
fresh anonymous memory (a page fault and a zeroed page) against touching
the same pages again. On this VM the figures of every benchmark move
with the hour; a street catching up spends a third of its CPU on fresh
pages (BENCHMARKS.md, "Issue 9's goals measured together on one build
(2026-12-05, 21:25-21:43)"), so this is read before and after a run.

    python3 benches/scripts/touch_probe.py [MiB, default 512]

Prints microseconds per 4 KiB page (the loop's own cost is in both
figures; subtract "again" from "first touch" for the kernel's share).
"""
import mmap
import sys
import time

size = int(sys.argv[1] if len(sys.argv) > 1 else 512) << 20
m = mmap.mmap(-1, size)
pages = size // 4096
timed = []
for value in (1, 2):
    t = time.perf_counter()
    for i in range(0, size, 4096):
        m[i] = value
    timed.append((time.perf_counter() - t) / pages * 1e6)
print(f"first touch {timed[0]:.2f} us/page, again {timed[1]:.2f} us/page ({pages} pages)")
