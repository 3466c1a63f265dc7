from __future__ import annotations

import json
import re
from pathlib import Path

import dspy

from geode.evals.compare import ModelRunner, compare_models
from geode.evals.compile import compile_program
from geode.evals.dataset import Dataset
from geode.evals.evaluate import Price, Pricing
from geode.evals.metrics import exact_match
from geode.evals.report import fmt_cost, models_table, write_compile_report, write_models_report
from geode.testing import ScriptedLM


def _data(n: int = 17) -> Dataset:
    return Dataset.from_records(
        [
            {"inputs": {"question": f"<script>alert({i})</script> {i}"}, "outputs": {"answer": str(i)}}
            for i in range(n)
        ]
    )


def _answer(messages: list[dict[str, str]]) -> dict[str, str]:
    n = re.findall(r"</script> (\d+)", messages[-1]["content"])[-1]
    return {"answer": n if len(messages) > 2 or int(n) % 2 == 0 else "<b>wrong</b>"}


def test_compile_report_files_escape_user_text(tmp_path: Path) -> None:
    with dspy.context(lm=ScriptedLM(_answer)):
        result = compile_program(dspy.Predict("question -> answer"), _data(), exact_match)
    files = write_compile_report(result, tmp_path / "r", candidate_version="abc", baseline_version="def")
    page = files.html.read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert "<b>wrong</b>" not in page
    assert "data:image/png;base64," in page
    assert files.png is not None and files.png.read_bytes().startswith(b"\x89PNG")
    assert "would be promoted" in page and "| baseline |" in files.markdown.read_text()
    data = json.loads(files.json.read_text())
    assert data["passes_gate"] is True and data["candidate_version"] == "abc"
    assert len(data["candidate"]["examples"]) == result.candidate.n


def test_models_table_and_report(tmp_path: Path) -> None:
    def runner(name: str, fn: object, price: Price | None) -> ModelRunner:
        lm = ScriptedLM(fn, model=name)  # type: ignore[arg-type]
        return ModelRunner(
            name=name,
            scope=lambda: dspy.context(lm=lm),
            pricing=Pricing({name: price} if price else {}, free=() if price else {name}),
        )

    def right(messages: list[dict[str, str]]) -> dict[str, str]:
        return {"answer": re.findall(r"</script> (\d+)", messages[-1]["content"])[-1]}

    runners = [runner("small", _answer, None), runner("big", right, Price(100.0, 100.0))]
    rows = compare_models(
        dspy.Predict("question -> answer"), _data(), exact_match, runners, optimizer="bootstrap"
    )
    headers, table = models_table(rows)
    assert headers[0] == "model" and headers[-1] == "score per $"
    assert [r[:2] for r in table] == [
        ["small", "base"],
        ["small", "+bootstrap"],
        ["big", "base"],
        ["big", "+bootstrap"],
    ]
    assert table[0][3] == "$0" and table[0][-1] == "free"
    assert table[2][3].startswith("$") and table[2][-1] not in ("free", "n/a")
    files = write_models_report(rows, tmp_path / "m", program="p", metric="exact_match", dataset_id="ds-1")
    assert "score vs cost" not in files.html.read_text()  # that is in the PNG, not the page text
    assert files.png is not None and files.png.stat().st_size > 0
    assert json.loads(files.json.read_text())["rows"][1]["model"] == "big"


def test_fmt_cost() -> None:
    assert fmt_cost(None) == "n/a"
    assert fmt_cost(0.0) == "$0"
    assert fmt_cost(0.01234) == "$0.0123"
    assert fmt_cost(1e-6) == "$1.00e-06"
