"""How fast this (shared, virtual) machine is right now: a fixed pure-Python loop, timed in CPU time.

The 2-core machines the benchmarks run on vary by a quarter or more from minute to minute with nothing
else running (their host is shared), and every latency or throughput figure varies with them. Benchmarks
print this reference before and after their measurement, so two runs can be compared: when the reference
took 30 % longer, expect throughput ~30 % lower.
"""

from __future__ import annotations

import statistics
import time


def reference_ms(rounds: int = 3) -> float:
    """Median CPU milliseconds of a fixed loop (about 0.3 s on an unloaded core of these machines)."""
    times = []
    for _ in range(rounds):
        started = time.process_time()
        total = 0
        for i in range(3_000_000):
            total += i * i
        times.append((time.process_time() - started) * 1000)
    return statistics.median(times)
