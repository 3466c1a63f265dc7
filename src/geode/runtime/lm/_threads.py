"""How many threads llama.cpp computes with: every core this process may use.

``os.cpu_count()`` counts the machine's cores; a container or ``taskset`` may allow fewer, and threads
beyond those only queue behind each other. So the default is the affinity mask's size.

Fewer threads than usable cores on a busy machine was measured and rejected
(``benchmarks/bench_lm_threads.py``, ``docs/benchmarks.md``): with llama.cpp's threads waiting passively
(``OMP_WAIT_POLICY=PASSIVE``, set by ``import_llama_cpp``), one thread was 1.4-1.7x slower than two on 2
cores at load average 5-6, with and without a CPU-bound process beside it. Linux shares a busy CPU per
thread, not per process, so a process with fewer threads simply gets less of it. ``GEODE_LM_THREADS``
pins the count.
"""

from __future__ import annotations

import os

__all__ = ["usable_cores"]


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)
