"""``geode demo``: the whole learning loop, offline, on the bundled helpdesk application.

This area composes the others (it may import every area but ``cli`` and ``testing``):
:func:`run_demo` runs the stages on one runtime and returns a :class:`DemoResult` (whose
:meth:`~DemoResult.summary` is the JSON of ``geode demo --json``); :mod:`geode.demo.recompile` is the
search over recompilations that the gate judges;
:mod:`geode.demo.report` turns it into the summary table and the HTML report; :mod:`geode.demo.app`
holds zero-argument factories of the helpdesk programs for the CLI.
"""

from geode.demo.pipeline import run_demo
from geode.demo.result import (
    DEFAULT_HELD_OUT,
    DEFAULT_QUESTIONS,
    DEFAULT_VALIDATION,
    QUICK,
    DemoOptions,
    DemoParts,
    DemoResult,
    Progress,
)

__all__ = [
    "DEFAULT_HELD_OUT",
    "DEFAULT_QUESTIONS",
    "DEFAULT_VALIDATION",
    "QUICK",
    "DemoOptions",
    "DemoParts",
    "DemoResult",
    "Progress",
    "run_demo",
]
