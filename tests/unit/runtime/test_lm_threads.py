"""The embedded LM's thread count follows the cores other processes leave free."""

from __future__ import annotations

import os
import time

import pytest

from geode.runtime.lm import _threads
from geode.runtime.lm._threads import ThreadChooser, threads_for, usable_cores


@pytest.mark.parametrize(
    ("cores", "load", "own", "expected"),
    [
        (2, 0.0, 0.0, 2),  # idle machine: every core
        (2, 2.0, 2.0, 2),  # the load is our own llama.cpp threads: keep them
        (2, 1.0, 0.0, 1),  # a busy process beside us holds one core
        (2, 3.0, 1.3, 1),  # oversubscribed: our 2 threads got 1.3 cores next to a busy process
        (2, 0.4, 0.0, 2),  # a neighbour at 40% of a core leaves it mostly free
        (2, 0.6, 0.0, 1),
        (2, 9.0, 0.0, 1),  # never below one thread
        (8, 3.2, 1.0, 6),
        (4, 1.0, 3.0, 4),  # own share above the load (averaging lag): never above the cores
    ],
)
def test_threads_for_leaves_the_cores_others_use(cores: int, load: float, own: float, expected: int) -> None:
    assert threads_for(cores, load, own) == expected


def test_usable_cores_is_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert usable_cores() == 3


def test_usable_cores_without_affinity_falls_back_to_the_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cores() == 6


def test_the_chooser_counts_its_own_cpu_use_and_not_the_idle_time() -> None:
    chooser = ThreadChooser(cores=2)
    time.sleep(0.1)
    assert chooser.own_load() < 0.05
    end = time.process_time() + 0.3
    while time.process_time() < end:  # one busy core
        pass
    busy = chooser.own_load()
    # Averaged with the load average's 1-minute time constant: a 0.3 s burst moves it a little, upwards.
    assert 0.0 < busy < 0.1
    assert chooser.own_load() == pytest.approx(busy, abs=0.02)


def test_the_chooser_reads_the_load_average(monkeypatch: pytest.MonkeyPatch) -> None:
    chooser = ThreadChooser(cores=2)
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (1.2, 0.5, 0.1))
    assert chooser.choose() == 1
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (0.1, 0.5, 0.1))
    assert chooser.choose() == 2


def test_without_a_load_average_every_core_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable() -> tuple[float, float, float]:
        raise OSError("no load average")

    monkeypatch.setattr(_threads.os, "getloadavg", unavailable)
    assert ThreadChooser(cores=3).choose() == 3
