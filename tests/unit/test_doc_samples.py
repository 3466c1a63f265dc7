"""The doc-sample runner (tests/integration/doc_samples.py) reads marks and compares outputs as documented.

Its own checks must be able to fail, or a doc sample that prints something else would pass.
"""

from __future__ import annotations

from tests.integration.doc_samples import output_problems, parse_samples

PAGE = """
Some prose.

<!-- doc-run home=qa tier=localmodel lines=2 -->
```bash
geode trace show 4f575784f676e55e5abfadaf46d53df2   # a placeholder id: not run
geode run app:qa --input question="Capital of France?" \\
    --json
```

More prose, then what it printed:

<!-- doc-output -->
```json
{"outputs": {"answer": "Paris"}, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}
```

```bash
geode eval app:qa   # not marked: parsed elsewhere, never run
```

<!-- doc-run slow -->
```
geode compile app:qa --trainset qa.jsonl
```
"""


def test_marks_choose_blocks_lines_homes_and_outputs() -> None:
    first, second = parse_samples("docs/x.md", PAGE)
    assert (first.home, first.tiers, first.slow) == ("qa", ("localmodel",), False)
    assert first.commands == ['geode run app:qa --input question="Capital of France?"      --json']
    assert first.expected_lang == "json" and first.expected is not None and "Paris" in first.expected
    # An unmarked home is the page's; no output was shown for it.
    assert (second.home, second.slow, second.expected) == ("x", True, None)
    assert second.where == "docs/x.md:23"  # the opening fence


def test_text_output_matches_line_by_line_with_values_left_open() -> None:
    shown = (
        "answer  Paris is the capital of France.\n"
        "trace 5d0c5e2f0b6a4c1e9a3f7b2d8e6c4a10 → … (geode trace show 5d0c5e2f0b6a4c1e9a3f7b2d8e6c4a10)\n"
        "p50 0.53 s · 3 LM calls"
    )
    printed = (
        "loading…\n"
        "answer   Paris is the capital of France.\n"
        "trace 0123456789abcdef0123456789abcdef → http://127.0.0.1:6006/redirects/traces/0123456789abcdef"
        "0123456789abcdef  (geode trace show 0123456789abcdef0123456789abcdef)\n"
        "p50 1.24 s · 12 LM calls\n"
    )
    assert output_problems(shown, "text", printed) == []
    # A different answer, a missing line, or the lines in another order do not match.
    assert output_problems(shown, "text", printed.replace("Paris", "Lyon"))
    assert output_problems(shown, "text", "\n".join(printed.splitlines()[:2]))
    assert output_problems("b\na", "text", "a\nb")


def test_json_output_matches_the_keys_and_values_shown() -> None:
    shown = '{"program": "qa", "outputs": {"answer": "Paris"}, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "usage": {"total_tokens": 127, "cost_usd": null}}'
    printed = '{"program": "qa", "outputs": {"answer": "Paris"}, "trace_id": "0123456789abcdef0123456789abcdef", "usage": {"total_tokens": 99, "cost_usd": null}, "extra": 1}'
    assert output_problems(shown, "json", printed) == []
    assert output_problems(shown, "json", printed.replace('"Paris"', '"Lyon"')) == [
        "$.outputs.answer: expected 'Paris', got 'Lyon'"
    ]
    assert output_problems(shown, "json", printed.replace('"program": "qa", ', ""))
    assert output_problems(shown, "json", printed.replace("99", '"99"'))
    assert output_problems(shown, "json", printed.replace("0123456789abcdef0123456789abcdef", "none"))
    assert output_problems(shown, "json", "error: not JSON")


def test_a_block_runs_in_several_homes_and_nooutput_skips_the_shown_output() -> None:
    page = (
        "<!-- doc-run home=qa -->\n"
        "<!-- doc-run home=phoenix tier=phoenix nooutput -->\n"
        "```bash\ngeode run app:qa -i q=x\n```\n\n"
        "<!-- doc-output -->\n```text\nanswer  x → spans.jsonl\n```\n"
    )
    qa, phoenix = parse_samples("p.md", page)
    assert (qa.home, qa.expected) == ("qa", "answer  x → spans.jsonl")
    assert (phoenix.home, phoenix.tiers, phoenix.expected) == ("phoenix", ("phoenix",), None)
    assert qa.commands == phoenix.commands == ["geode run app:qa -i q=x"]


def test_doc_files_are_handed_to_the_blocks_after_them() -> None:
    page = (
        "<!-- doc-file app.py -->\n```python\nagent = 1\n```\n"
        "<!-- doc-run home=h -->\n```bash\npython app.py\n```\n"
        "<!-- doc-file data.jsonl -->\n```json\n{}\n```\n"
        "<!-- doc-run home=h -->\n```bash\ngeode eval app.py:agent --dataset data.jsonl\n```\n"
    )
    first, second = parse_samples("p.md", page)
    assert first.files == {"app.py": "agent = 1\n"}
    assert second.files == {"app.py": "agent = 1\n", "data.jsonl": "{}\n"}
    # A file block is not a command block, and not an output.
    assert first.commands == ["python app.py"] and first.expected is None
