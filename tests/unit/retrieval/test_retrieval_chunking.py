from __future__ import annotations

import itertools
import re
import time

import pytest

from geode.errors import ConfigError
from geode.retrieval import Chunker, Section, sample_corpus_dir
from geode.retrieval.chunking import split_markdown


def test_markdown_sections_follow_heading_paths() -> None:
    title, sections = split_markdown(
        "# Guide\n\nIntro text.\n\n## Install\n\nRun it.\n\n### Linux\n\nUse apt.\n\n## Use\n\nCall it.\n"
    )
    assert title == "Guide"
    assert [(s.heading, s.text) for s in sections] == [
        ("Guide", "Intro text."),
        ("Guide > Install", "Run it."),
        ("Guide > Install > Linux", "Use apt."),
        ("Guide > Use", "Call it."),
    ]


def test_headings_inside_code_fences_are_text() -> None:
    _, sections = split_markdown("# A\n\n```bash\n# not a heading\necho hi\n```\n")
    assert len(sections) == 1
    assert "# not a heading" in sections[0].text


def test_setext_headings_and_front_matter() -> None:
    title, sections = split_markdown("---\ntitle: x\n---\nTop\n===\n\nBody one.\n\nSub\n---\n\nBody two.\n")
    assert title == "Top"
    assert [(s.heading, s.text) for s in sections] == [("Top", "Body one."), ("Top > Sub", "Body two.")]


def test_chunks_never_cut_a_sentence_and_respect_the_size() -> None:
    sentences = [f"Sentence number {i} says something about tents and stoves." for i in range(40)]
    chunker = Chunker(max_chars=300, overlap_chars=80)
    chunks = chunker.chunk(Section(" ".join(sentences)))
    assert len(chunks) > 5
    for chunk in chunks:
        assert len(chunk) <= 300
        assert chunk.startswith("Sentence number") and chunk.endswith(".")
    # Every sentence survives whole in some chunk.
    for sentence in sentences:
        assert any(sentence in c for c in chunks)


def test_overlap_repeats_whole_trailing_sentences() -> None:
    text = " ".join(f"S{i} is a short sentence." for i in range(20))
    chunks = Chunker(max_chars=120, overlap_chars=50).chunk(Section(text))
    for previous, current in itertools.pairwise(chunks):
        first_sentence = current.split(". ")[0] + "."
        assert first_sentence in previous, "the next chunk starts with the end of the previous one"


def test_no_overlap_when_disabled() -> None:
    text = " ".join(f"S{i} is a short sentence." for i in range(20))
    chunks = Chunker(max_chars=120, overlap_chars=0).chunk(Section(text))
    assert " ".join(chunks) == text


def test_heading_prefix_and_long_sentence_split_at_words() -> None:
    long_sentence = "word " * 200
    chunks = Chunker(max_chars=100, overlap_chars=0).chunk(Section(long_sentence.strip(), heading="H"))
    assert all(c.startswith("H\n\n") for c in chunks)
    assert all(len(c) <= len("H\n\n") + 100 for c in chunks)
    assert all(not c.endswith(" ") and "wor d" not in c for c in chunks)


def test_unbroken_token_is_cut() -> None:
    chunks = Chunker(max_chars=60, overlap_chars=0).chunk(Section("x" * 150))
    assert [len(c) for c in chunks] == [60, 60, 30]


def test_lists_and_code_keep_their_lines() -> None:
    text = "Items:\n\n- first item. Still first.\n- second item\n\n```\na = 1\nb = 2\n```"
    (chunk,) = Chunker(max_chars=500, overlap_chars=0).chunk(Section(text))
    assert "- first item. Still first.\n- second item" in chunk
    assert "```\na = 1\nb = 2\n```" in chunk


@pytest.mark.parametrize(("size", "overlap"), [(49, 0), (100, 50), (100, -1)])
def test_bad_sizes_are_config_errors(size: int, overlap: int) -> None:
    with pytest.raises(ConfigError):
        Chunker(max_chars=size, overlap_chars=overlap)


def test_sample_corpus_chunks_are_bounded_and_titled() -> None:
    chunker = Chunker()
    for path in sorted(sample_corpus_dir().glob("*.md")):
        _, sections = split_markdown(path.read_text())
        for section in sections:
            for chunk in chunker.chunk(section):
                heading, _, body = chunk.partition("\n\n")
                assert heading == section.heading
                assert 0 < len(body) <= chunker.max_chars
                assert not re.search(r"\s{3,}", body.replace("\n\n", " "))


def test_code_blocks_can_be_left_out_of_the_chunks() -> None:
    text = (
        "Install it first.\n\n```bash\npip install geode\n```\n\n"
        "Then run it:\n```python\nimport geode\nrt = geode.Runtime()\n```\nIt starts at once.\n\n"
        "~~~\nraw block\n\nwith a blank line\n~~~\n\nThe end."
    )
    section = Section(text, heading="Guide")
    kept = Chunker().chunk(section)
    assert "pip install geode" in kept[0] and "import geode" in kept[0]
    prose = Chunker(code=False).chunk(section)
    assert prose == ["Guide\n\nInstall it first.\n\nThen run it: It starts at once.\n\nThe end."]
    # A section that is only code has no chunk at all.
    assert Chunker(code=False).chunk(Section("```\nx = 1\n```", heading="Code")) == []


def test_heading_closing_hashes_are_stripped_in_linear_time() -> None:
    _, sections = split_markdown("# Title ##\n\nBody.\n\n## C# tips #\n\nMore.\n")
    assert [s.heading for s in sections] == ["Title", "Title > C# tips"]
    # A heading line of spaces ending in a word took 11 s at 2,000 characters (cubic backtracking).
    start = time.perf_counter()
    split_markdown("# a" + " " * 20_000 + "x\n\nbody\n")
    assert time.perf_counter() - start < 0.5
