r"""The CLI's one place that builds rich consoles.

Every command prints through :func:`make_console` so one policy holds everywhere: a line the user may copy (a
command, a path, a URL, a trace id) is never broken across lines. Rich wraps ``print`` output at the
console's width, and off a terminal (a pipe, CI, a test capturing output) that width is 80 columns unless
``COLUMNS`` says otherwise, so ``geode trace show <id>`` after a long path used to come out as
``(geode`` / ``trace show <id>)`` and could not be pasted back.

``soft_wrap=True`` makes ``Console.print`` emit each printed line whole (no word wrapping, no cropping); a
terminal still folds a long line on screen, but copying it yields the original text. It does not change
how tables lay out: a ``Table`` is sized to the console width whatever ``soft_wrap`` says. A command that
wants wrapped prose can still pass ``soft_wrap=False`` to one ``print`` call.

What the CLI prints is often a model's output, a retrieved passage or a trace attribute: text nobody
vetted. A terminal obeys control sequences in it (``ESC ] 52`` writes the clipboard, ``ESC [ 2J``
clears the screen, an OSC 8 hyperlink hides its target, a bidi override reorders what is shown). So
the console shows every control character in printed text as a visible escape (``\x1b``), while rich's
own styling still reaches the terminal; :func:`~geode.cli._text.terminal_json` does the same for ``--json``
output.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.segment import Segment

from geode.cli._text import terminal_json, terminal_safe

__all__ = ["make_console", "terminal_json", "terminal_safe"]


class _SafeConsole(Console):
    """A console that neutralises control characters in the text it prints (not in its own styling)."""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        # Rich styles a text segment when it renders the buffer, and marks its own cursor moves as control
        # segments; only the text of plain segments came from what was printed.
        safe = (s if s.control else Segment(terminal_safe(s.text), s.style, s.control) for s in buffer)
        return super()._render_buffer(safe)


def make_console(*, stderr: bool = False) -> Console:
    """A rich console for CLI output that never wraps a printed line and prints no control sequence.

    Args:
        stderr: Write to standard error (progress and diagnostics, so stdout stays clean for ``--json``).

    Returns:
        A console whose ``print`` keeps every line whole at any terminal width.
    """
    return _SafeConsole(stderr=stderr, soft_wrap=True)
