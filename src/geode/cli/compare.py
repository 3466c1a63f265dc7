"""The old name of ``geode compare``'s module, :mod:`geode.cli.compare_programs` (kept for imports)."""

from geode.cli._learning import print_comparison, run_comparison
from geode.cli.compare_programs import compare_command, register

__all__ = ["compare_command", "print_comparison", "register", "run_comparison"]
