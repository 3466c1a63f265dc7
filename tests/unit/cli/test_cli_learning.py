from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest

from geode.cli import _common, main
from geode.runtime.programs import register_program
from geode.runtime.settings import Settings, TracingSettings
from geode.testing import ScriptedLM, isolated_response_cache


def _exit_code(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _needs_demos(messages: list[dict[str, str]]) -> dict[str, str]:
    """The 'small' model: odd numbers come out right only with demos in the prompt."""
    n = int(re.findall(r"What is (\d+) plus one", messages[-1]["content"])[-1])
    return {"answer": str(n + 1) if len(messages) > 2 or n % 2 == 0 else "?"}


def _always_right(messages: list[dict[str, str]]) -> dict[str, str]:
    n = int(re.findall(r"What is (\d+) plus one", messages[-1]["content"])[-1])
    return {"answer": str(n + 1)}


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> dict[str, ScriptedLM]:
    """Every runtime the CLI builds gets a scripted LM named after --lm (tracing off)."""
    lms: dict[str, ScriptedLM] = {}
    real = _common.Runtime

    def runtime(settings: Settings) -> object:
        model = settings.lm.model
        if model not in lms:
            lms[model] = ScriptedLM(_always_right if model == "big" else _needs_demos, model=model)
        quiet = settings.model_copy(update={"tracing": TracingSettings(enabled=False)})
        return real(quiet, lm=lms[model])

    monkeypatch.setattr(_common, "Runtime", runtime)
    return lms


@pytest.fixture
def program() -> str:
    name = f"cli-plus-one-{uuid.uuid4().hex[:6]}"
    register_program(name, lambda: dspy.Predict("question -> answer"))
    return name


def _dataset(tmp_path: Path, n: int = 17) -> Path:
    path = tmp_path / "plus_one.jsonl"
    lines = [{"schema_version": 1, "name": "plus-one"}]
    lines += [
        {"inputs": {"question": f"What is {i} plus one?"}, "outputs": {"answer": str(i + 1)}}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_eval_compile_versions_promote_rollback(
    tmp_path: Path, program: str, scripted: dict[str, ScriptedLM], capsys: pytest.CaptureFixture[str]
) -> None:
    data = _dataset(tmp_path)
    assert _exit_code(["eval", program, "-d", str(data), "-m", "exact_match", "--json", "--no-phoenix"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["n"] == 17 and before["version"] is None and 0.4 < before["score"] < 0.7

    report = tmp_path / "report"
    argv = [
        "compile",
        program,
        "-d",
        str(data),
        "-m",
        "exact_match",
        "--promote",
        "--json",
        "--report-dir",
        str(report),
    ]
    assert _exit_code(argv) == 0
    compiled = json.loads(capsys.readouterr().out)
    assert compiled["promoted"] is True and compiled["passes_gate"] is True
    assert compiled["candidate"]["score"] == 1.0 > compiled["baseline"]["score"]
    assert compiled["candidate_demos"] > 0
    assert (report / "compile.html").is_file() and (report / "compile.png").is_file()
    assert "Recompilation report" in (report / "compile.html").read_text()
    candidate = compiled["candidate_version"]

    assert _exit_code(["versions", program, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["active"] == candidate
    assert {v["version"] for v in listing["versions"]} == {candidate, compiled["baseline_version"]}

    # The runtime now serves the compiled version: eval scores it and stamps its id.
    assert _exit_code(["eval", program, "-d", str(data), "-m", "exact_match", "--json", "--no-phoenix"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["version"] == candidate and after["score"] == 1.0

    assert _exit_code(["rollback", program]) == 0
    assert "the base program is active" in capsys.readouterr().out
    assert _exit_code(["promote", program, candidate[:8]]) == 0  # gated on the scores compile stored
    out = capsys.readouterr().out
    assert "promoted" in out and "candidate 100.0%" in out

    assert _exit_code(["promote", program, "ffffffffffff"]) == 2
    assert "has no version 'ffffffffffff'" in capsys.readouterr().err

    # A canary for every replica: the baseline version on 20% of requests, then ended.
    baseline = compiled["baseline_version"]
    assert _exit_code(["route", program, "--canary", f"{baseline[:8]}:0.2", "--json"]) == 0
    route = json.loads(capsys.readouterr().out)
    assert (route["active"], route["canary"], route["canary_share"], route["shadow"]) == (
        candidate,
        baseline,
        0.2,
        None,
    )
    assert _exit_code(["route", program, "--shadow", baseline]) == 2  # already the canary
    assert "both the canary and the shadow" in capsys.readouterr().err
    assert _exit_code(["route", program, "--canary", "none"]) == 0
    assert "the active version answers every request" in capsys.readouterr().out


def test_compile_refuses_a_worse_candidate(
    tmp_path: Path, program: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def demos_hurt(messages: list[dict[str, str]]) -> dict[str, str]:
        n = int(re.findall(r"What is (\d+) plus one", messages[-1]["content"])[-1])
        return {"answer": "?" if len(messages) > 2 else str(n + 1)}

    real = _common.Runtime
    lm = ScriptedLM(demos_hurt)
    monkeypatch.setattr(
        _common,
        "Runtime",
        lambda settings: real(settings.model_copy(update={"tracing": TracingSettings(enabled=False)}), lm=lm),
    )
    argv = [
        "compile",
        program,
        "-d",
        str(_dataset(tmp_path)),
        "-m",
        "exact_match",
        "--promote",
        "--max-demos",
        "0",
    ]
    assert _exit_code([*argv, "--report-dir", str(tmp_path / "r")]) == 2
    captured = capsys.readouterr()
    assert "refusing to promote" in captured.err and "promotion needs at least +5.0 points" in captured.err
    assert _exit_code(["versions", program, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["active"] is None


def test_small_and_broken_datasets_are_refused_before_any_lm_call(
    tmp_path: Path, program: str, scripted: dict[str, ScriptedLM], capsys: pytest.CaptureFixture[str]
) -> None:
    small = _dataset(tmp_path, n=6)
    assert _exit_code(["compile", program, "-d", str(small), "-m", "exact_match"]) == 2
    assert "cannot compile" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"schema_version": 1}\n')
    assert _exit_code(["eval", program, "-d", str(empty), "-m", "f1", "--no-phoenix"]) == 2
    assert "has no examples" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"inputs": {"question": "x"}, "output": {"answer": "y"}}\n')
    assert _exit_code(["eval", program, "-d", str(broken), "-m", "f1"]) == 2
    assert "unknown field(s) 'output'" in capsys.readouterr().err
    assert _exit_code(["eval", program, "-d", str(small), "-m", "no_such_metric"]) == 2
    assert "unknown metric" in capsys.readouterr().err
    assert all(not lm.calls for lm in scripted.values())


def test_compare_models_table(
    tmp_path: Path, program: str, scripted: dict[str, ScriptedLM], capsys: pytest.CaptureFixture[str]
) -> None:
    data = _dataset(tmp_path)
    argv = ["compare-models", program, "--models", "small,big", "-d", str(data), "-m", "exact_match"]
    assert _exit_code([*argv, "--optimizer", "bootstrap", "--json", "--report-dir", str(tmp_path / "m")]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["model"] for r in rows] == ["small", "big"]
    small, big = rows
    assert small["candidate"]["score"] > small["baseline"]["score"]
    assert big["baseline"]["score"] == 1.0
    assert small["baseline"]["dataset_id"] == big["baseline"]["dataset_id"]  # same held-out examples
    assert (tmp_path / "m" / "models.html").is_file()
    assert _exit_code([*argv, "--report-dir", str(tmp_path / "m2")]) == 0
    out = capsys.readouterr().out
    assert "small" in out and "big" in out and "models.html" in out


@pytest.fixture
def caching(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[Settings]]:
    """Runtimes whose scripted LM caches as a real LM does when the settings allow it (cache in tmp)."""
    built: list[Settings] = []
    real = _common.Runtime

    def runtime(settings: Settings) -> object:
        built.append(settings)
        quiet = settings.model_copy(update={"tracing": TracingSettings(enabled=False)})
        return real(quiet, lm=ScriptedLM(_always_right, cache=settings.lm.cache))

    monkeypatch.setattr(_common, "Runtime", runtime)
    with isolated_response_cache(tmp_path / "dspy-cache"):
        yield built


def test_measuring_commands_bypass_the_response_cache_unless_allowed(
    tmp_path: Path, program: str, caching: list[Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    data = _dataset(tmp_path, n=3)
    argv = ["eval", program, "-d", str(data), "-m", "exact_match", "--json", "--no-phoenix"]
    for _ in range(2):
        assert _exit_code(argv) == 0
        measured = json.loads(capsys.readouterr().out)
        # Every call reached the model, the second time too: nothing was replayed from a cache.
        assert (measured["lm_calls"], measured["cache_hits"]) == (3, 0) and measured["prompt_tokens"] > 0
    assert [s.lm.cache for s in caching] == [False, False]

    # --allow-cache: the first run fills the cache, the second is answered from it, and says so.
    assert _exit_code([*argv, "--allow-cache"]) == 0
    capsys.readouterr()
    assert _exit_code([*argv, "--allow-cache"]) == 0
    replayed = json.loads(capsys.readouterr().out)
    assert (replayed["lm_calls"], replayed["cache_hits"], replayed["prompt_tokens"]) == (0, 3, 0)
    assert replayed["score"] == 1.0
    assert _exit_code([a for a in argv if a != "--json"] + ["--allow-cache"]) == 0
    shown = capsys.readouterr().out
    assert "3 LM call(s) were answered from DSPy's response cache" in " ".join(shown.split())


def test_each_warning_only_where_it_applies(
    tmp_path: Path, program: str, scripted: dict[str, ScriptedLM], capsys: pytest.CaptureFixture[str]
) -> None:
    data = _dataset(tmp_path, n=3)
    assert _exit_code(["eval", program, "-d", str(data), "-m", "exact_match", "--no-phoenix"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    # Scoring 3 examples is fine, if coarse; only compiling needs more.
    assert "one example moves the score by 33 points" in shown and "compiling needs" not in shown
    assert _exit_code(["compile", program, "-d", str(data), "-m", "exact_match"]) == 2
    captured = capsys.readouterr()
    assert "compiling needs at least" in " ".join((captured.out + captured.err).split())


def test_version_and_dspy_logs_only_when_verbose(
    tmp_path: Path, program: str, scripted: dict[str, ScriptedLM], capsys: pytest.CaptureFixture[str]
) -> None:
    import geode

    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"geode {geode.__version__}"
    data = _dataset(tmp_path, n=3)
    argv = ["eval", program, "-d", str(data), "-m", "exact_match", "--no-phoenix", "--json"]
    assert _exit_code(argv) == 0
    assert "Average Metric" not in capsys.readouterr().err  # DSPy's INFO line repeats the score
    assert _exit_code(["--verbose", *argv]) == 0
    assert "Average Metric" in capsys.readouterr().err


def test_tables_off_a_terminal_are_never_cut(
    tmp_path: Path, scripted: dict[str, ScriptedLM], capsys: pytest.CaptureFixture[str]
) -> None:
    # Output captured here is not a terminal: rich used to squeeze the table into 80 columns.
    name = f"a-program-with-a-rather-long-descriptive-name-{uuid.uuid4().hex[:6]}"
    register_program(name, lambda: dspy.Predict("question -> answer"))
    data = _dataset(tmp_path, n=3)
    assert _exit_code(["eval", name, "-d", str(data), "-m", "exact_match", "--no-phoenix"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if name in line)
    assert "…" not in out
    assert "base" in row and "%" in row and " ms " in row
    assert "LM calls" in out and "tokens" in out


@pytest.mark.parametrize("command", ["compare", "compile", "compare-models"])
def test_every_measuring_command_turns_the_cache_off_unless_allowed(
    command: str, tmp_path: Path, program: str, caching: list[Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    other = f"cli-plus-one-other-{uuid.uuid4().hex[:6]}"
    register_program(other, lambda: dspy.Predict("question -> answer"))
    data = _dataset(tmp_path)
    argv = {
        "compare": ["compare", program, other],
        "compile": ["compile", program, "--max-demos", "1"],
        "compare-models": ["compare-models", program, "--models", "small"],
    }[command]
    argv = [*argv, "-d", str(data), "-m", "exact_match", "--report-dir", str(tmp_path / "r")]
    _exit_code(argv)  # the verdict does not matter here, only how the runtimes were built
    assert caching and all(not settings.lm.cache for settings in caching), command
    out = " ".join(capsys.readouterr().out.split())
    # Only compiling needs a bigger dataset; comparing or scoring 17 examples is not warned about.
    assert ("compiling needs" in out) is False
    caching.clear()
    _exit_code([*argv, "--allow-cache"])
    capsys.readouterr()
    assert caching and all(settings.lm.cache for settings in caching), command
