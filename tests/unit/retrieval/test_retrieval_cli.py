"""``geode ingest`` and ``geode search`` end to end, with the hashing embedder standing in for the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.unit.retrieval.test_retrieval_loaders import make_pdf

from geode.cli import main
from geode.cli.search import parse_pairs
from geode.errors import InputError
from geode.retrieval import EdgeStore, sample_corpus_dir
from geode.runtime import stores
from geode.runtime.settings import RetrievalSettings
from geode.testing import HashingEmbedder


@pytest.fixture(autouse=True)
def hashing_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    def build(settings: RetrievalSettings) -> HashingEmbedder:
        return HashingEmbedder()

    monkeypatch.setattr(stores, "build_embedder", build)


def run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_parse_pairs() -> None:
    assert parse_pairs(["a=1", "b:=2", "c:=true", "a=x"], "--filter") == {"a": ["1", "x"], "b": 2, "c": True}
    for bad in (["a"], ["=1"], ["a:={"], ["a:=[1]"]):
        with pytest.raises(InputError):
            parse_pairs(bad, "--filter")


def test_ingest_then_search(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["ingest", str(sample_corpus_dir()), "--collection", "kb", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["collection"], summary["files"], summary["unchanged"]) == ("kb", 16, 0)
    assert summary["chunks"] > 40 and summary["skipped"] == []

    assert run(["ingest", str(sample_corpus_dir()), "-c", "kb"]) == 0
    out = capsys.readouterr().out
    assert "files unchanged (skipped)" in out and "16" in out

    assert run(["search", "gift cards never expire", "-c", "kb", "--k", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["collection"] == "kb" and len(result["passages"]) == 2
    top = result["passages"][0]
    assert set(top) == {"id", "score", "text", "metadata"}
    assert top["metadata"]["source"].endswith("gift-cards.md") and "never expire" in top["text"]

    assert run(["search", "gift cards", "-c", "kb", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["passages"]
    assert run(["search", "gift cards", "-c", "kb"]) == 0
    table = capsys.readouterr().out
    assert "gift-cards.md" in table and "score" in table
    for passage in expected:  # every row shows its id and score
        assert passage["id"] in table and f"{passage['score']:.3f}" in table


def test_search_filter_by_source_path_and_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nTents and stoves.\n")
    (docs / "b.md").write_text("# B\n\nTents and boots.\n")
    assert run(["ingest", str(docs), "--meta", "team=gear", "--meta", "year:=2024"]) == 0
    capsys.readouterr()
    assert run(["search", "tents", "--filter", f"source={docs / 'b.md'}", "--json"]) == 0
    passages = json.loads(capsys.readouterr().out)["passages"]
    assert [Path(p["metadata"]["source"]).name for p in passages] == ["b.md"]
    assert passages[0]["metadata"]["team"] == "gear" and passages[0]["metadata"]["year"] == 2024
    assert run(["search", "tents", "--filter", "year:=2023", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passages"] == []


def test_missing_collection_names_existing_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["ingest", str(sample_corpus_dir() / "returns.md"), "-c", "faq"]) == 0
    capsys.readouterr()
    assert run(["search", "refund", "-c", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: collection 'nope' does not exist; existing collections: 'faq'")


def test_bad_paths_and_unusable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["ingest", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run(["ingest", str(tmp_path / "empty")]) == 2
    assert "no files to ingest" in capsys.readouterr().err
    (tmp_path / "blank.md").write_text("   \n")
    assert run(["ingest", str(tmp_path / "blank.md")]) == 2
    err = capsys.readouterr().err
    assert "skipped" in err and "empty file" in err and "none of the 1 file(s) could be ingested" in err


def test_locked_store_says_so(geode_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    holder = EdgeStore(geode_home / "qdrant")
    try:
        assert run(["search", "anything"]) == 2
    finally:
        holder.close()
    assert "locked by another process" in capsys.readouterr().err


def test_ingest_a_folder_of_pdf_jsonl_and_binary_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "manual.pdf").write_bytes(
        make_pdf(["Tents must be dried before storage.", "Stoves stay outside."])
    )
    records = [
        {"answer": "Gift cards never expire.", "lang": "en"},
        {"answer": "Geschenkkarten verfallen nie.", "lang": "de"},
        {"question": "no answer field here"},
    ]
    (docs / "faq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (docs / "logo.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")

    assert run(["ingest", str(docs), "-c", "mixed", "--text-field", "answer", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["files"], summary["chunks"]) == (2, 4)  # 2 PDF pages + 2 JSONL records
    assert [Path(s["path"]).name for s in summary["skipped"]] == ["logo.txt"]
    assert "binary" in summary["skipped"][0]["reason"] and "skipped" in captured.err
    assert "1 record(s) have no text field 'answer'" in captured.err

    assert run(["search", "stoves", "-c", "mixed", "--filter", "page:=2", "--json"]) == 0
    (page,) = json.loads(capsys.readouterr().out)["passages"]
    assert page["text"] == "Stoves stay outside." and page["metadata"]["source"].endswith("manual.pdf")
    assert run(["search", "gift cards", "-c", "mixed", "--filter", "lang=de", "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)["passages"]
    assert record["text"] == "Geschenkkarten verfallen nie." and record["metadata"]["line"] == 2


def test_search_text_off_a_terminal_is_never_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Off a terminal rich lays out at 80 columns; a passage's long lines must come out whole there.
    monkeypatch.delenv("COLUMNS", raising=False)
    line = "The warranty covers " + " ".join(f"part-{i}" for i in range(30)) + " for two years."
    (tmp_path / "warranty.md").write_text(f"# Warranty\n\n{line}\n")
    assert run(["ingest", str(tmp_path / "warranty.md"), "-c", "long", "--json"]) == 0
    capsys.readouterr()
    assert run(["search", "warranty", "-c", "long", "--k", "1"]) == 0
    out = capsys.readouterr().out
    assert f"   {line}" in out.splitlines(), out
