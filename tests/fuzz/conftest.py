"""Property-based fuzzing (the ``fuzz`` tier): Hypothesis strategies and the bounds every fuzz test holds.

Examples are derandomized (the same inputs every run, so CI cannot turn red by chance) and nothing is
written to the checkout (no example database). ``GEODE_FUZZ_EXAMPLES`` raises the count for a longer hunt
(``GEODE_FUZZ_EXAMPLES=5000 pytest -m fuzz``); ``GEODE_FUZZ_RANDOM=1`` draws new inputs each run.
Time is bounded per example by the tests themselves (they print their slowest case), not by Hypothesis's
deadline, which turns a loaded machine's pause into a failure.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

try:
    from hypothesis import HealthCheck, settings
    from hypothesis.configuration import set_hypothesis_home_dir
except ImportError:  # the fuzz tier is missing: its tests skip (or fail under GEODE_REQUIRE) on import
    pass
else:
    # Hypothesis keeps caches (unicode tables, constants) in ./.hypothesis; tests write only to temp folders.
    set_hypothesis_home_dir(tempfile.mkdtemp(prefix="geode-hypothesis-"))
    settings.register_profile(
        "geode-fuzz",
        max_examples=int(os.environ.get("GEODE_FUZZ_EXAMPLES", "200")),
        derandomize=os.environ.get("GEODE_FUZZ_RANDOM", "") != "1",
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    settings.load_profile("geode-fuzz")


@dataclass
class Timings:
    """Wall time of each fuzz example, to assert a bound and print the figure."""

    name: str
    seconds: list[float] = field(default_factory=list[float])
    slowest_input: str = ""

    @contextmanager
    def measure(self, describe: Callable[[], str]) -> Iterator[None]:
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        if not self.seconds or elapsed > max(self.seconds):
            self.slowest_input = describe()
        self.seconds.append(elapsed)

    def report(self, bound_s: float) -> None:
        """Print the figure and assert the slowest example stayed under ``bound_s``."""
        ordered = sorted(self.seconds)
        median = ordered[len(ordered) // 2] if ordered else 0.0
        slowest = ordered[-1] if ordered else 0.0
        print(
            f"\n[figure] {self.name}: {len(ordered)} examples, median {median * 1000:.2f} ms, "
            f"slowest {slowest * 1000:.1f} ms ({self.slowest_input}); bound {bound_s * 1000:.0f} ms"
        )
        assert slowest < bound_s, f"{self.name}: {slowest:.3f} s on {self.slowest_input}"
