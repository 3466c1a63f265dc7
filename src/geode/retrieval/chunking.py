"""Splitting text into chunks that respect headings and sentences, with overlap.

A chunk never crosses a section (a Markdown heading, a PDF page, a JSONL record). Inside a section, text is
split into paragraphs and sentences, and sentences are packed greedily into chunks of at most
``max_chars``; the next chunk starts with the last sentences of the previous one (up to
``overlap_chars``) so a fact cut at a boundary is still whole in one chunk. Only a single sentence longer
than ``max_chars`` is split inside, at word boundaries. Each chunk of a titled section starts with the
section's heading path, so the chunk carries its context into both the embedding and the prompt.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from geode.errors import ConfigError

__all__ = ["Chunker", "Section", "split_markdown"]

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
# The heading text's closing `#`s and spaces are stripped in Python: as a pattern (`(.+?)\s*#*\s*$`)
# they gave three quantifiers the same spaces to share, cubic in a line's length (11 s for 2,000).
_ATX = re.compile(r"^(#{1,6})\s+(.+)$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


@dataclass(frozen=True)
class Section:
    """A run of text that chunks never cross, with its heading path and metadata."""

    text: str
    heading: str | None = None
    """The heading path, e.g. ``"Returns > Refund timing"``; ``None`` for untitled text."""
    metadata: dict[str, Any] = field(default_factory=dict[str, Any])
    """Copied onto every chunk of the section (``page`` for PDFs, record fields for JSONL)."""


def split_markdown(text: str) -> tuple[str | None, list[Section]]:
    """Split Markdown into sections at ATX (``#``) and setext headings, outside code fences.

    Returns:
        The document title (its first level-1 heading, if any) and the sections in order; a section's
        heading is the path of enclosing headings joined by ``" > "``.
    """
    lines = _strip_front_matter(text).splitlines()
    title: str | None = None
    path: list[tuple[int, str]] = []
    sections: list[Section] = []
    body: list[str] = []
    in_fence = False

    def flush() -> None:
        content = "\n".join(body).strip()
        if content:
            heading = " > ".join(h for _, h in path) or None
            sections.append(Section(content, heading))
        body.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
        level, heading = (0, "") if in_fence else _heading(line, lines[i + 1] if i + 1 < len(lines) else "")
        if level:
            flush()
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, heading))
            if level == 1 and title is None:
                title = heading
            i += 1 if _ATX.match(line) else 2
            continue
        body.append(line)
        i += 1
    flush()
    return title, sections


def _heading(line: str, next_line: str) -> tuple[int, str]:
    match = _ATX.match(line)
    if match:
        text = match.group(2).strip()
        return len(match.group(1)), text.rstrip("#").rstrip() or text
    stripped = next_line.strip()
    if line.strip() and not _LIST_ITEM.match(line) and len(stripped) >= 3:
        if set(stripped) == {"="}:
            return 1, line.strip()
        if set(stripped) == {"-"}:
            return 2, line.strip()
    return 0, ""


def _strip_front_matter(text: str) -> str:
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end != -1:
            return text[end + 5 :]
    return text


@dataclass(frozen=True)
class _Unit:
    text: str
    starts_paragraph: bool
    is_line: bool = False
    """Part of a code block, table or list: joined to the previous unit with a newline."""


class Chunker:
    r"""Packs sentences into overlapping chunks of at most ``max_chars`` characters.

    Args:
        max_chars: Upper bound on a chunk's body (the heading line comes on top). The default (900) stays
            under all-MiniLM-L6-v2's 256-token window for English prose.
        overlap_chars: At most this many characters of whole sentences are repeated from the end of one
            chunk at the start of the next; ``0`` disables overlap.
        code: Keep fenced code blocks (```` ``` ```` / ``~~~``) in the chunks. ``False`` leaves them out,
            for corpora whose readers want the prose: documentation searched by a small model, which
            would otherwise get (and copy) code in answer to a plain question.

    Example:
        >>> chunker = Chunker(max_chars=50, overlap_chars=20)
        >>> chunker.chunk(Section("One fish. Two fish. Red fish. Blue fish. Old fish. New fish.", heading="Fish"))
        ['Fish\n\nOne fish. Two fish. Red fish. Blue fish. Old fish.', 'Fish\n\nOld fish. New fish.']
    """

    def __init__(self, max_chars: int = 900, overlap_chars: int = 150, *, code: bool = True) -> None:
        if max_chars < 50:
            raise ConfigError(f"chunk size {max_chars} is too small; use at least 50 characters")
        if not 0 <= overlap_chars < max_chars // 2:
            raise ConfigError(
                f"overlap {overlap_chars} must be between 0 and half the chunk size ({max_chars})"
            )
        self.max_chars = max_chars
        self.overlap_chars = overlap_chars
        self.code = code

    def chunk(self, section: Section) -> list[str]:
        """The chunks of one section, each prefixed with its heading path if it has one."""
        prefix = f"{section.heading}\n\n" if section.heading else ""
        return [prefix + body for body in self._pack(list(self._units(section.text)))]

    def _units(self, text: str) -> Iterator[_Unit]:
        for paragraph in _paragraphs(text):
            if not self.code:
                paragraph = _without_fences(paragraph)
                if not paragraph:
                    continue
            is_line = paragraph.startswith(("```", "~~~", "    ", "\t", "|")) or bool(
                _LIST_ITEM.match(paragraph)
            )
            if is_line:
                # Code, tables and lists: keep lines intact rather than splitting at full stops.
                pieces = paragraph.splitlines()
            else:
                pieces = _SENTENCE_END.split(" ".join(paragraph.split()))
            first = True
            for piece in pieces:
                for part in self._split_long(piece):
                    yield _Unit(part, starts_paragraph=first, is_line=is_line)
                    first = False

    def _split_long(self, sentence: str) -> Iterator[str]:
        if len(sentence) <= self.max_chars:
            if sentence.strip():
                yield sentence
            return
        words = sentence.split(" ")
        current: list[str] = []
        size = 0
        for word in words:
            while len(word) > self.max_chars:  # a token with no spaces (a URL, base64): cut it
                if current:
                    yield " ".join(current)
                    current, size = [], 0
                yield word[: self.max_chars]
                word = word[self.max_chars :]
            if size + len(word) + (1 if current else 0) > self.max_chars:
                yield " ".join(current)
                current, size = [], 0
            current.append(word)
            size += len(word) + (1 if size else 0)
        if current:
            yield " ".join(current)

    def _pack(self, units: list[_Unit]) -> list[str]:
        chunks: list[str] = []
        current: list[_Unit] = []
        fresh = 0  # units in `current` not carried over from the previous chunk
        for unit in units:
            if current and _joined_len([*current, unit]) > self.max_chars:
                if fresh:
                    chunks.append(_join(current))
                current = self._overlap(current)
                while current and _joined_len([*current, unit]) > self.max_chars:
                    current.pop(0)
                fresh = 0
            current.append(unit)
            fresh += 1
        if current and fresh:
            chunks.append(_join(current))
        return chunks

    def _overlap(self, units: list[_Unit]) -> list[_Unit]:
        if not self.overlap_chars:
            return []
        carried: list[_Unit] = []
        size = 0
        for unit in reversed(units):
            size += len(unit.text) + 1
            if size > self.overlap_chars:
                break
            carried.insert(0, unit)
        if len(carried) == len(units):
            carried = carried[1:]
        return carried


def _paragraphs(text: str) -> Iterator[str]:
    block: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        if not in_fence and not line.strip():
            if block:
                yield "\n".join(block).strip("\n")
                block = []
            continue
        block.append(line)
    if block:
        yield "\n".join(block).strip("\n")


def _without_fences(paragraph: str) -> str:
    """The paragraph without its fenced code blocks (fence lines included)."""
    kept: list[str] = []
    in_fence = False
    for line in paragraph.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            kept.append(line)
    return "\n".join(kept).strip("\n")


def _join(units: list[_Unit]) -> str:
    out = ""
    for i, unit in enumerate(units):
        if i:
            out += "\n\n" if unit.starts_paragraph else ("\n" if unit.is_line else " ")
        out += unit.text
    return out


def _joined_len(units: list[_Unit]) -> int:
    return len(_join(units))
