"""``geode ingest``: chunk, embed and store files in a collection, with a progress bar and a summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from geode.cli._common import make_settings, parse_pairs
from geode.cli._console import make_console
from geode.cli._tables import print_table
from geode.errors import InputError
from geode.retrieval import Chunker, Ingestor, IngestReport
from geode.retrieval.ingest import Phase
from geode.retrieval.loaders import SUPPORTED_SUFFIXES, discover
from geode.runtime.runtime import Runtime

__all__ = ["ingest", "register"]

_PHASE_LABELS: dict[Phase, str] = {
    "read": "reading and chunking files",
    "embed": "embedding and writing chunks",
    "index": "building the search index",
}


def _summary(report: IngestReport, console: Console) -> None:
    table = Table(title=f"ingested into collection {report.collection!r}", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("files written", str(report.files))
    table.add_row("files unchanged (skipped)", str(report.unchanged))
    table.add_row("files skipped (warnings)", str(len(report.skipped)))
    table.add_row("chunks written", str(report.chunks))
    if report.deleted:
        table.add_row("stale chunks deleted", str(report.deleted))
    table.add_row("seconds (total)", f"{report.seconds:.1f}")
    table.add_row("chunks / second (embedding + writing)", f"{report.chunks_per_second:.1f}")
    print_table(console, table)


def ingest(
    paths: list[Path] = typer.Argument(  # noqa: B008  (typer's declaration style)
        ..., help="Files and folders; folders are walked for .md, .txt, .jsonl, .pdf (and similar) files."
    ),
    collection: str | None = typer.Option(
        None,
        "--collection",
        "-c",
        help="Collection to write. Default: GEODE_RETRIEVAL_COLLECTION, else 'docs'.",
    ),
    text_field: str = typer.Option(
        "text", "--text-field", help="JSONL: the field of each record holding the text."
    ),
    chunk_size: int = typer.Option(900, "--chunk-size", min=50, help="Maximum characters per chunk."),
    overlap: int = typer.Option(
        150, "--overlap", min=0, help="Characters of whole sentences repeated between chunks."
    ),
    batch_size: int = typer.Option(
        1024, "--batch-size", min=1, help="Chunks embedded and written at a time."
    ),
    no_code: bool = typer.Option(
        False, "--no-code", help="Leave fenced code blocks out of the chunks (prose-only search)."
    ),
    meta: list[str] = typer.Option(  # noqa: B008
        [],
        "--meta",
        "-m",
        help="Metadata key=value put on every chunk (filterable with `geode search --filter`).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Ingest files into a collection: re-running updates changed files and skips unchanged ones.

    Example: geode ingest docs/ --collection docs
    """
    files = _files(paths)
    metadata = parse_pairs(meta, "--meta")
    if any(isinstance(v, list) for v in metadata.values()):
        raise InputError("--meta: each key may be given once")
    chunker = Chunker(max_chars=chunk_size, overlap_chars=overlap, code=not no_code)
    settings = make_settings()
    name = collection or settings.retrieval.collection
    err = make_console(stderr=True)
    with Runtime(settings) as rt:
        ingestor = Ingestor(
            rt.store,
            rt.embedder,
            chunker=chunker,
            batch_size=batch_size,
            text_field=text_field,
            metadata=metadata,
        )
        report = _ingest(rt, ingestor, files, name, err)
    for skipped in report.skipped:
        err.print(f"[yellow]warning:[/yellow] skipped {skipped.path}: {skipped.reason}", soft_wrap=True)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(_report_json(report), indent=2))
    else:
        _summary(report, make_console())
    if report.files == 0 and report.unchanged == 0:
        raise InputError(f"none of the {len(files)} file(s) could be ingested (see the warnings above)")


def _files(paths: list[Path]) -> list[Path]:
    """The files to ingest under ``paths``; refuses a missing path or nothing to ingest."""
    files, missing = discover(paths)
    if missing:
        raise InputError(f"no such file or folder: {', '.join(str(m.path) for m in missing)}")
    if not files:
        suffixes = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise InputError(
            f"no files to ingest under {', '.join(map(str, paths))}", hint=f"supported: {suffixes}"
        )
    return files


def _ingest(rt: Runtime, ingestor: Ingestor, files: list[Path], name: str, err: Console) -> IngestReport:
    """Run the ingestion with a progress bar per phase on stderr; an interrupt keeps what was written."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    tasks: dict[Phase, TaskID] = {}

    def on_progress(phase: Phase, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(_PHASE_LABELS[phase], total=total or None)
        progress.update(tasks[phase], completed=done, total=total or None)

    try:
        with err.status("opening the store and loading the embedding model...", spinner="dots"):
            _ = rt.store, rt.embedder.dimension
        with progress:
            return ingestor.ingest(files, name, on_progress=on_progress)
    except KeyboardInterrupt:
        err.print(
            "[yellow]interrupted: chunks already written are kept; run the same command to resume[/yellow]"
        )
        raise


def _report_json(report: IngestReport) -> dict[str, Any]:
    return {
        "collection": report.collection,
        "files": report.files,
        "unchanged": report.unchanged,
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in report.skipped],
        "chunks": report.chunks,
        "deleted": report.deleted,
        "seconds": round(report.seconds, 3),
        "write_seconds": round(report.write_seconds, 3),
        "chunks_per_second": round(report.chunks_per_second, 1),
    }


def register(app: typer.Typer) -> None:
    """Add ``geode ingest`` to the CLI."""
    app.command("ingest")(ingest)
