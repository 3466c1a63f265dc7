"""``geode search``: search a collection and print id, score, source and text of the top passages."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import typer
from rich.text import Text

from geode.cli._common import make_settings, parse_pairs
from geode.cli._console import make_console
from geode.cli._text import terminal_json
from geode.errors import InputError
from geode.retrieval import Passage
from geode.retrieval.base import FilterValue
from geode.runtime.runtime import Runtime

__all__ = ["parse_pairs", "register", "search"]


def _filter(pairs: Sequence[str]) -> dict[str, FilterValue] | None:
    parsed = parse_pairs(pairs, "--filter")
    for key, value in parsed.items():
        if isinstance(value, float) or (isinstance(value, list) and any(isinstance(v, float) for v in value)):
            raise InputError(f"--filter {key}: only text, integers and booleans can be matched exactly")
        if key == "source":
            # Sources are stored as absolute paths; let people name the file the way they ingested it.
            values = value if isinstance(value, list) else [value]
            resolved = [Path(v).resolve().as_posix() if Path(v).exists() else v for v in values]
            parsed[key] = resolved if isinstance(value, list) else resolved[0]
    return parsed or None


def _shown_source(passage: Passage) -> str:
    source = passage.source
    if source is None:
        return "-"
    try:
        shown = str(Path(source).relative_to(Path.cwd()))
    except ValueError:
        shown = source
    page = passage.metadata.get("page")
    return f"{shown} p.{page}" if page is not None else shown


def search(
    query: str = typer.Argument(..., help="What to search for."),
    collection: str | None = typer.Option(
        None,
        "--collection",
        "-c",
        help="Collection to search. Default: GEODE_RETRIEVAL_COLLECTION, else 'docs'.",
    ),
    k: int = typer.Option(5, "--k", "-k", min=1, max=100, help="How many passages to return."),
    filters: list[str] = typer.Option(  # noqa: B008  (typer's declaration style)
        [],
        "--filter",
        "-f",
        help="Payload condition key=value (key:=<json> for numbers/booleans); repeat a key to match any of "
        "its values. 'source' accepts a file path.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the passages as JSON."),
) -> None:
    """Search a collection and print the top passages with id, score, source and text.

    Example: geode search "how do I return a tent?" --collection docs --k 3
    """
    payload_filter = _filter(filters)
    settings = make_settings()
    err = make_console(stderr=True)
    with Runtime(settings) as rt:
        retriever = rt.retriever(collection=collection, k=k)
        with err.status("searching (the first search loads the embedding model)...", spinner="dots"):
            passages: list[Passage] = retriever(query=query, filter=payload_filter).passages
    if as_json:
        out = {
            "query": query,
            "collection": retriever.collection,
            "passages": [p.to_dict() for p in passages],
        }
        typer.echo(terminal_json(out, indent=2))
        return
    console = make_console()
    if not passages:
        console.print(f"no passages in collection {retriever.collection!r} match {query!r}", markup=False)
        return
    console.print(Text(f"{retriever.collection}: {query}", style="bold"))
    # One block per passage rather than a table: a table column folds the id across lines on an
    # 80-column terminal, and the id is what people copy.
    for rank, p in enumerate(passages, start=1):
        text = p.text if len(p.text) <= 600 else p.text[:600] + " [...]"
        header = Text.assemble(
            f"\n{rank}. ", ("score ", "dim"), f"{p.score:.3f}  ", (_shown_source(p), "cyan")
        )
        console.print(header)
        console.print(Text.assemble(("   id ", "dim"), p.id), overflow="ignore", crop=False)
        # Indented as plain lines: a Padding is laid out at the console's width (80 off a terminal)
        # and cropped each line of the passage there.
        console.print(Text(textwrap.indent(text, "   ")), overflow="ignore", crop=False)


def register(app: typer.Typer) -> None:
    """Add ``geode search`` to the CLI."""
    app.command("search")(search)
