"""The CLI's one place that builds rich consoles.

Every command prints through :func:`make_console` so one policy holds everywhere: a line the user may copy (a
command, a path, a URL, a trace id) is never broken across lines. Rich wraps ``print`` output at the
console's width, and off a terminal (a pipe, CI, a test capturing output) that width is 80 columns unless
``COLUMNS`` says otherwise, so ``geode trace show <id>`` after a long path used to come out as
``(geode`` / ``trace show <id>)`` and could not be pasted back.

``soft_wrap=True`` makes ``Console.print`` emit each printed line whole (no word wrapping, no cropping); a
terminal still folds a long line on screen, but copying it yields the original text. It does not change
how tables lay out: a ``Table`` is sized to the console width whatever ``soft_wrap`` says. A command that
wants wrapped prose can still pass ``soft_wrap=False`` to one ``print`` call.
"""

from __future__ import annotations

from rich.console import Console

__all__ = ["make_console"]


def make_console(*, stderr: bool = False) -> Console:
    """A rich console for CLI output that never wraps a printed line.

    Args:
        stderr: Write to standard error (progress and diagnostics, so stdout stays clean for ``--json``).

    Returns:
        A console whose ``print`` keeps every line whole at any terminal width.
    """
    return Console(stderr=stderr, soft_wrap=True)
