"""Reading files into sections: plain text, Markdown, JSONL (one chosen text field) and PDF (with pypdf).

Loaders never raise for a bad file: they return a :class:`Skipped` with the reason (empty, binary,
unreadable, no text field...), and ingestion carries on with the next file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from geode.retrieval.chunking import Section, split_markdown

__all__ = [
    "MARKDOWN_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "LoadedFile",
    "Skipped",
    "discover",
    "load_file",
]

MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdx"})
TEXT_SUFFIXES = frozenset({".txt", ".text", ".rst", ".adoc", ".org"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
PDF_SUFFIXES = frozenset({".pdf"})
SUPPORTED_SUFFIXES = MARKDOWN_SUFFIXES | TEXT_SUFFIXES | JSONL_SUFFIXES | PDF_SUFFIXES
"""Suffixes picked up when a folder is walked; a file named explicitly is read as text whatever its suffix."""

_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class LoadedFile:
    """A file read into sections, with the hash of its bytes (a changed hash means re-ingest)."""

    path: Path
    source: str
    """The stable identity of the file in the store: its resolved absolute path."""
    content_hash: str
    title: str | None
    sections: list[Section]
    warnings: list[str] = field(default_factory=list[str])
    """Problems inside an otherwise usable file (e.g. JSONL lines without the text field)."""


@dataclass(frozen=True)
class Skipped:
    """A file that was not ingested, and why."""

    path: Path
    reason: str


def discover(paths: Sequence[str | Path]) -> tuple[list[Path], list[Skipped]]:
    """Files to ingest: named files as given, folders walked for supported suffixes (hidden ones skipped).

    Returns:
        The files in a stable order (duplicates removed) and the paths that do not exist.
    """
    found: dict[Path, None] = {}
    missing: list[Skipped] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            found[path.resolve()] = None
        elif path.is_dir():
            for file in _walk(path):
                found[file.resolve()] = None
        else:
            missing.append(Skipped(path, "no such file or folder"))
    return list(found), missing


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in SUPPORTED_SUFFIXES:
                yield Path(root) / name


def load_file(path: Path, *, text_field: str = "text") -> LoadedFile | Skipped:
    """Read one file into sections, or say why it was skipped.

    Args:
        path: The file.
        text_field: For JSONL, the field of each record that holds the text; other scalar fields become
            metadata of that record's chunks.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        return Skipped(path, f"unreadable: {err.strerror or err}")
    if not data.strip():
        return Skipped(path, "empty file")
    suffix = path.suffix.lower()
    content_hash = hashlib.sha256(data).hexdigest()
    source = path.resolve().as_posix()
    if suffix in PDF_SUFFIXES:
        return _load_pdf(path, data, source, content_hash)
    if b"\x00" in data[:_SNIFF_BYTES]:
        return Skipped(path, "binary file (contains NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return Skipped(path, "binary or non-UTF-8 file")
    if suffix in JSONL_SUFFIXES:
        return _load_jsonl(path, text, source, content_hash, text_field)
    if suffix in MARKDOWN_SUFFIXES:
        title, sections = split_markdown(text)
        if not sections:
            return Skipped(path, "no text (only headings or front matter)")
        return LoadedFile(path, source, content_hash, title or path.stem, sections)
    return LoadedFile(path, source, content_hash, path.stem, [Section(text.strip())])


def _load_jsonl(
    path: Path, text: str, source: str, content_hash: str, text_field: str
) -> LoadedFile | Skipped:
    sections: list[Section] = []
    bad_lines: list[int] = []
    missing_field: list[int] = []
    seen_fields: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad_lines.append(number)
            continue
        if not isinstance(record, dict):
            bad_lines.append(number)
            continue
        record = cast("dict[str, Any]", record)  # JSON objects have string keys
        seen_fields.update(str(k) for k in record)
        value = record.get(text_field)
        if not isinstance(value, str) or not value.strip():
            missing_field.append(number)
            continue
        metadata: dict[str, Any] = {"line": number}
        for key, item in record.items():
            if key != text_field and isinstance(item, str | int | float | bool):
                metadata[f"{key}"] = item
        sections.append(Section(value.strip(), None, metadata))
    if not sections:
        if bad_lines and not seen_fields:
            return Skipped(path, "no line is a JSON object")
        fields = ", ".join(sorted(seen_fields)[:10]) or "none"
        return Skipped(path, f"no record has a non-empty text field {text_field!r} (fields seen: {fields})")
    warnings: list[str] = []
    if bad_lines:
        warnings.append(f"{len(bad_lines)} line(s) are not JSON objects (first: line {bad_lines[0]})")
    if missing_field:
        warnings.append(
            f"{len(missing_field)} record(s) have no text field {text_field!r} (first: line {missing_field[0]})"
        )
    return LoadedFile(path, source, content_hash, path.stem, sections, warnings)


def _load_pdf(path: Path, data: bytes, source: str, content_hash: str) -> LoadedFile | Skipped:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError:
        return Skipped(path, "PDF support needs pypdf: pip install 'geode[pdf]'")
    import io

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            return Skipped(path, "encrypted PDF")
        pages = [(i + 1, page.extract_text() or "") for i, page in enumerate(reader.pages)]
        title = reader.metadata.title if reader.metadata is not None else None
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as err:
        return Skipped(path, f"unreadable PDF: {type(err).__name__}: {err}")
    sections = [Section(text.strip(), None, {"page": number}) for number, text in pages if text.strip()]
    if not sections:
        return Skipped(path, "PDF has no extractable text (scanned images?)")
    return LoadedFile(path, source, content_hash, title or path.stem, sections)
