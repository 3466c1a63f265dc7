from __future__ import annotations

import json
from pathlib import Path

from geode.retrieval.loaders import LoadedFile, Skipped, discover, load_file


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page."""
    objects: list[bytes] = []
    page_ids = [4 + 2 * i for i in range(len(pages))]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{i} 0 R" for i in page_ids).encode()
    objects.append(b"<< /Type /Pages /Kids [" + kids + b"] /Count " + str(len(pages)).encode() + b" >>")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents " + str(page_ids[i] + 1).encode() + b" 0 R >>"
        )
        objects.append(
            b"<< /Length " + str(len(content)).encode() + b" >>\nstream\n" + content + b"\nendstream"
        )
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def test_discover_walks_supported_files_and_skips_hidden(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n\ntext")
    (tmp_path / "b.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden.md").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "c.md").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.txt").write_text("d")
    explicit = tmp_path / "notes.log"
    explicit.write_text("named explicitly")
    files, missing = discover([tmp_path, explicit, tmp_path / "a.md", tmp_path / "nope"])
    assert [f.name for f in files] == ["a.md", "d.txt", "notes.log"]
    assert [m.path.name for m in missing] == ["nope"]


def test_empty_and_binary_files_are_skipped_with_a_reason(tmp_path: Path) -> None:
    empty = tmp_path / "empty.md"
    empty.write_text("  \n\n")
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    headings_only = tmp_path / "h.md"
    headings_only.write_text("# Title\n\n## Sub\n")
    results = {p.name: load_file(p) for p in (empty, binary, latin, headings_only)}
    assert all(isinstance(r, Skipped) for r in results.values())
    reasons = {name: r.reason for name, r in results.items() if isinstance(r, Skipped)}
    assert reasons["empty.md"] == "empty file"
    assert "binary" in reasons["image.txt"]
    assert "non-UTF-8" in reasons["latin.txt"]
    assert "no text" in reasons["h.md"]


def test_text_and_markdown(tmp_path: Path) -> None:
    txt = tmp_path / "plain.txt"
    txt.write_text("\ufeffHello there.\n\nSecond paragraph.\n")
    md = tmp_path / "guide.md"
    md.write_text("# Guide\n\n## Part\n\nBody.\n")
    loaded_txt = load_file(txt)
    loaded_md = load_file(md)
    assert isinstance(loaded_txt, LoadedFile) and isinstance(loaded_md, LoadedFile)
    assert loaded_txt.sections[0].text.startswith("Hello there.")
    assert loaded_txt.title == "plain"
    assert loaded_md.title == "Guide"
    assert loaded_md.sections[0].heading == "Guide > Part"
    assert loaded_md.source == md.resolve().as_posix()
    assert len(loaded_md.content_hash) == 64


def test_jsonl_uses_the_text_field_and_keeps_scalar_fields(tmp_path: Path) -> None:
    path = tmp_path / "faq.jsonl"
    lines = [
        json.dumps({"question": "q1", "body": "Answer one.", "lang": "en", "source": "crm", "tags": ["x"]}),
        "not json",
        json.dumps({"question": "q2"}),
        "",
        json.dumps({"body": "Answer three.", "lang": "de"}),
    ]
    path.write_text("\n".join(lines))
    loaded = load_file(path, text_field="body")
    assert isinstance(loaded, LoadedFile)
    assert [s.text for s in loaded.sections] == ["Answer one.", "Answer three."]
    assert loaded.sections[0].metadata == {"line": 1, "question": "q1", "lang": "en", "source": "crm"}
    assert loaded.sections[1].metadata["line"] == 5
    assert len(loaded.warnings) == 2
    assert "line 2" in loaded.warnings[0] and "line 3" in loaded.warnings[1]


def test_jsonl_without_the_field_is_skipped_naming_the_fields(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"title": "a", "content": "b"}) + "\n")
    result = load_file(path, text_field="text")
    assert isinstance(result, Skipped)
    assert "'text'" in result.reason and "content, title" in result.reason


def test_pdf_pages_become_sections(tmp_path: Path) -> None:
    path = tmp_path / "manual.pdf"
    path.write_bytes(make_pdf(["Tents must be dried before storage.", "Stoves stay outside."]))
    loaded = load_file(path)
    assert isinstance(loaded, LoadedFile), loaded
    assert [s.metadata["page"] for s in loaded.sections] == [1, 2]
    assert "dried before storage" in loaded.sections[0].text


def test_corrupt_pdf_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")
    result = load_file(path)
    assert isinstance(result, Skipped)
    assert "PDF" in result.reason
