"""Tables the CLI prints: laid out whole when the output is not a terminal.

Rich sizes a table to the console's width, and off a terminal (a pipe, a file, CI, a test capturing
output) that width is 80 columns: a nine-column table then shrinks its cells and cuts names
(``progr…``, ``basel… │ app.p…``). Nothing folds long lines back there, and what is printed is read
or copied later, so a table is laid out at its natural width instead. On a terminal the table still
fits the window.
"""

from __future__ import annotations

from rich.console import Console, RenderableType

__all__ = ["print_table"]

_UNBOUNDED = 100_000
"""Width to measure a table's natural width against (no real table is wider)."""


def print_table(console: Console, table: RenderableType) -> None:
    """Print a table (or any renderable): to a terminal as rich lays it out, elsewhere never cut."""
    if console.is_terminal:
        console.print(table)
        return
    natural = console.measure(table, options=console.options.update_width(_UNBOUNDED)).maximum
    # Console.print(width=) is capped at the console's width, so the console is widened for this table.
    before = console.width
    console.width = max(before, natural)
    try:
        console.print(table)
    finally:
        console.width = before
