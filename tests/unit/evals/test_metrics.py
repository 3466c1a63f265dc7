from __future__ import annotations

from pathlib import Path

import dspy
import pytest

from geode.errors import ConfigError
from geode.evals.metrics import (
    FEEDBACK_FIELD,
    FeedbackMetric,
    LMJudge,
    contains,
    exact_match,
    f1,
    is_feedback_metric,
    label_fields,
    normalize_text,
    numeric_match,
    numeric_metric,
    resolve_metric,
    score_value,
    with_feedback,
)
from geode.testing import ScriptedLM


def _gold(**labels: object) -> dspy.Example:
    return dspy.Example(question="q?", **labels).with_inputs("question")


def test_normalize_text_drops_case_punctuation_and_articles() -> None:
    assert normalize_text("  The  Eiffel Tower! ") == "eiffel tower"


def test_exact_match() -> None:
    gold = _gold(answer="Paris")
    assert exact_match(gold, dspy.Prediction(answer="paris.")) == 1.0
    assert exact_match(gold, dspy.Prediction(answer="Paris, France")) == 0.0
    assert exact_match(gold, dspy.Prediction(other="Paris")) == 0.0  # missing field scores 0


def test_exact_match_accepts_any_of_several_gold_answers() -> None:
    gold = _gold(answer=["NYC", "New York City"])
    assert exact_match(gold, dspy.Prediction(answer="new york city")) == 1.0


def test_contains_is_whole_token() -> None:
    gold = _gold(answer="1")
    assert contains(gold, dspy.Prediction(answer="the answer is 1")) == 1.0
    assert contains(gold, dspy.Prediction(answer="10")) == 0.0
    assert contains(_gold(answer="New York"), dspy.Prediction(answer="It is in New York, USA")) == 1.0


def test_f1_token_overlap() -> None:
    gold = _gold(answer="Paris")
    assert f1(gold, dspy.Prediction(answer="Paris, France")) == pytest.approx(2 / 3)
    assert f1(gold, dspy.Prediction(answer="Lyon")) == 0.0
    assert f1(gold, dspy.Prediction(answer="paris")) == 1.0


def test_numeric_match_reads_the_first_number() -> None:
    gold = _gold(answer="8849")
    assert numeric_match(gold, dspy.Prediction(answer="8,849 metres")) == 1.0
    assert numeric_match(gold, dspy.Prediction(answer="8848")) == 0.0
    assert numeric_match(gold, dspy.Prediction(answer="no number")) == 0.0
    loose = numeric_metric(rel_tol=0.01)
    assert loose(gold, dspy.Prediction(answer="8800")) == 1.0


def test_metrics_average_over_label_fields_and_skip_reserved_fields() -> None:
    gold = dspy.Example(q="x", name="Ada", year="1815", **{FEEDBACK_FIELD: "note"}).with_inputs("q")
    assert label_fields(gold) == ["name", "year"]
    assert exact_match(gold, dspy.Prediction(name="Ada", year="1816")) == 0.5


def test_with_trace_the_metric_returns_pass_fail() -> None:
    gold = _gold(answer="Paris")
    assert f1(gold, dspy.Prediction(answer="Paris, France"), trace=[]) is False  # 0.67 < 0.8
    assert f1(gold, dspy.Prediction(answer="Paris"), trace=[]) is True
    assert exact_match(gold, dspy.Prediction(answer="Lyon"), trace=[]) is False


def test_for_fields_restricts_the_comparison() -> None:
    gold = dspy.Example(q="x", name="Ada", year="1815").with_inputs("q")
    only_name = exact_match.for_fields("name")
    assert only_name(gold, dspy.Prediction(name="Ada", year="wrong")) == 1.0


def test_feedback_variant_explains_and_carries_the_annotators_note() -> None:
    gold = dspy.Example(question="q?", answer="Paris", **{FEEDBACK_FIELD: "the capital, not a region"})
    gold = gold.with_inputs("question")
    metric = with_feedback(exact_match)
    assert is_feedback_metric(metric)
    out = metric(gold, dspy.Prediction(answer="Ile-de-France"), None, "predict", None)
    assert isinstance(out, dspy.Prediction)
    assert out.score == 0.0
    assert "expected 'Paris'" in out.feedback
    assert "the capital, not a region" in out.feedback
    assert with_feedback(metric) is metric
    assert not is_feedback_metric(exact_match)


def test_feedback_variant_of_an_arbitrary_metric_reports_the_score() -> None:
    def always_half(example: dspy.Example, pred: dspy.Prediction, trace: object = None) -> float:
        return 0.5

    out = FeedbackMetric(always_half)(_gold(answer="a"), dspy.Prediction(answer="b"))
    assert out.score == 0.5
    assert "0.50" in out.feedback


def test_lm_judge_uses_its_own_lm_and_records_no_trace() -> None:
    judge_lm = ScriptedLM(
        [{"reasoning": "same city", "correct": True}, {"reasoning": "wrong city", "correct": False}]
    )
    program_lm = ScriptedLM([])  # must never be called
    judge = LMJudge(judge_lm)
    gold = _gold(answer="Paris")
    trace: list[object] = []
    with dspy.context(lm=program_lm, trace=trace):
        assert judge(gold, dspy.Prediction(answer="It's Paris")) == 1.0
        assert judge(gold, dspy.Prediction(answer="Lyon")) == 0.0
    assert trace == []
    assert len(judge_lm.calls) == 2
    assert program_lm.calls == []
    sent = judge_lm.calls[0].messages[-1]["content"]
    assert "Paris" in sent and "It's Paris" in sent


def test_lm_judge_feedback_variant_returns_its_reasoning() -> None:
    judge = LMJudge(ScriptedLM([{"reasoning": "names another city", "correct": False}]))
    out = with_feedback(judge)(_gold(answer="Paris"), dspy.Prediction(answer="Lyon"), None, None, None)
    assert out.score == 0.0
    assert out.feedback == "names another city"


def test_score_value() -> None:
    assert score_value(True) == 1.0
    assert score_value(3) == 3.0
    assert score_value(dspy.Prediction(score=0.25, feedback="x")) == 0.25
    with pytest.raises(TypeError):
        score_value("high")
    with pytest.raises(ValueError):
        score_value(float("nan"))


def test_resolve_metric_short_names_refs_and_fields() -> None:
    assert resolve_metric("exact_match") is exact_match
    assert resolve_metric("geode.evals.metrics:f1") is f1
    restricted = resolve_metric("contains:answer")
    gold = dspy.Example(q="x", answer="Paris", other="zzz").with_inputs("q")
    assert restricted(gold, dspy.Prediction(answer="in Paris")) == 1.0


def test_resolve_metric_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "my_metric.py"
    path.write_text("def loud(example, pred, trace=None):\n    return pred.answer.isupper()\n")
    metric = resolve_metric(f"{path}:loud")
    assert metric(_gold(answer="x"), dspy.Prediction(answer="YES")) is True


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nope", "unknown metric 'nope'"),
        ("no_such_module_xyz:fn", "module 'no_such_module_xyz' not found"),
        ("geode.evals.metrics:missing", "has no attribute 'missing'"),
        ("geode.evals.metrics:RESERVED_PREFIX", "not a callable"),
        ("", "a metric must be"),
    ],
)
def test_resolve_metric_errors_are_clear(ref: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_metric(ref)
