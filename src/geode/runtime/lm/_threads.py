"""How many threads llama.cpp should compute with, given the cores this process may use and the load.

ggml splits every matrix product across its threads and waits for all of them at the end of each step.
When another process holds one of the cores, one of those threads waits for a time slice while the
others spin or sleep at the barrier: on 2 cores with a busy process beside it, a call that takes
seconds with 2 threads took minutes (``docs/benchmarks.md``). So the thread count follows the cores
left free by *other* processes: the cores this process may run on (``os.sched_getaffinity``) minus the
1-minute load average, less this process's own share of that load (its CPU use over the same horizon,
so its own llama.cpp threads do not talk it into using fewer). ``GEODE_LM_THREADS`` pins the count.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Final

__all__ = ["ThreadChooser", "threads_for", "usable_cores"]

_HORIZON_S: Final = 60.0
"""The time constant of the kernel's 1-minute load average; this process's CPU use is averaged alike."""


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_for(cores: int, load: float, own_load: float) -> int:
    """The thread count for ``cores`` usable cores when other processes keep ``load - own_load`` busy.

    Rounds to the nearest core: a neighbour using 40% of a core still leaves it mostly free.

    Args:
        cores: Cores this process may use.
        load: The 1-minute load average (runnable tasks, on the whole machine).
        own_load: The part of ``load`` that is this process's own (its average CPU use in cores).
    """
    others = max(0.0, load - own_load)
    return max(1, min(cores, math.floor(cores - others + 0.5)))


class ThreadChooser:
    """Picks the thread count for each llama.cpp call from the current load.

    Args:
        cores: Cores this process may use; default: :func:`usable_cores`.

    Call :meth:`choose` before each call. It keeps an exponentially weighted average of this process's
    CPU use with the load average's own 1-minute time constant, so the two can be subtracted.
    """

    def __init__(self, cores: int | None = None) -> None:
        self.cores = cores if cores is not None else usable_cores()
        self._lock = threading.Lock()
        self._last_wall = time.monotonic()
        self._last_cpu = time.process_time()
        self._own = 0.0

    def own_load(self) -> float:
        """This process's average CPU use, in cores, over about the last minute."""
        with self._lock:
            wall, cpu = time.monotonic(), time.process_time()
            elapsed = wall - self._last_wall
            if elapsed > 0.05:
                used = (cpu - self._last_cpu) / elapsed
                weight = 1.0 - math.exp(-elapsed / _HORIZON_S)
                self._own += weight * (used - self._own)
                self._last_wall, self._last_cpu = wall, cpu
            return self._own

    def choose(self) -> int:
        """The thread count for the next call."""
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this platform: use every core
            return self.cores
        return threads_for(self.cores, load, self.own_load())
