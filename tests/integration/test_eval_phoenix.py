"""Against a real Phoenix: ``evaluate(..., phoenix_url=...)`` logs the run as an experiment."""

from __future__ import annotations

import re
import uuid

import dspy
import pytest

from geode.evals.dataset import Dataset
from geode.evals.evaluate import evaluate
from geode.evals.metrics import exact_match
from geode.runtime.phoenix import PhoenixStatus
from geode.testing import ScriptedLM

pytestmark = pytest.mark.phoenix


def test_evaluation_is_logged_as_an_experiment(phoenix: PhoenixStatus) -> None:
    from phoenix.client import Client

    name = f"eval-{uuid.uuid4().hex[:8]}"
    data = Dataset.from_records(
        [{"inputs": {"question": f"q{i}"}, "outputs": {"answer": str(i)}} for i in range(5)], name=name
    )

    def answer(messages: list[dict[str, str]]) -> dict[str, str]:
        n = re.findall(r"q(\d+)", messages[-1]["content"])[-1]
        if n == "2":
            raise RuntimeError("model down")
        return {"answer": n if n != "4" else "wrong"}

    with dspy.context(lm=ScriptedLM(answer)):
        result = evaluate(
            dspy.Predict("question -> answer"),
            data,
            exact_match,
            phoenix_url=phoenix.url,
            experiment_name=name,
        )
    assert result.phoenix is not None, "the experiment was not logged"
    assert result.phoenix.url.startswith(phoenix.url)

    client = Client(base_url=phoenix.url)
    experiment = client.experiments.get_experiment(experiment_id=result.phoenix.experiment_id)
    runs = experiment["task_runs"]
    assert len(runs) == 5
    errors = [r for r in runs if r.get("error")]
    assert len(errors) == 1 and "model down" in str(errors[0].get("error"))
    scores: list[float] = []
    for evaluation in experiment["evaluation_runs"]:
        assert evaluation.name == "exact_match"
        outcome = evaluation.result
        assert isinstance(outcome, dict)
        scores.append(float(outcome.get("score") or 0.0))
    assert sorted(scores) == [0.0, 1.0, 1.0, 1.0]
