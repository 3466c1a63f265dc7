"""The real fine-tune: SmolLM2-135M from its GGUF through LoRA, back to GGUF, served as a program version.

Slow (minutes of CPU; run it under the shared CPU lock): it loads the 98 MB model into torch, checks the
loaded model predicts llama.cpp's next tokens (the Q/K permutation), trains one short epoch on a dozen
helpdesk questions with their passages, stores the artifact, names it in a version, promotes that version
by force and asks the runtime, which must answer on the new weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dspy
import pytest
from tests.tiers import require_tier

import geode
from geode.examples.helpdesk import metric
from geode.examples.helpdesk.programs import HelpdeskContextAnswer
from geode.runtime.settings import LMSettings, TracingSettings

pytestmark = [pytest.mark.slow, pytest.mark.localmodel, pytest.mark.finetune]

require_tier("localmodel", import_name="llama_cpp")
require_tier("finetune", import_name="gguf")
torch = require_tier("finetune", import_name="torch")

FIXTURE = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "fidelity" / "helpdesk.jsonl"


class Answer(dspy.Module):
    """The helpdesk's answer step on frozen passages (no retrieval: the test needs no embedder)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict(HelpdeskContextAnswer)

    def forward(self, context: str, question: str) -> dspy.Prediction:
        return self.answer(context=context, question=question)


def _examples() -> list[dspy.Example]:
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    return [
        dspy.Example(
            context="\n\n".join(p["text"][:400] for p in row["passages"]),
            question=row["question"],
            answer=row["gold"],
        ).with_inputs("context", "question")
        for row in rows
    ]


def test_the_loaded_model_predicts_llama_cpps_next_tokens() -> None:
    from llama_cpp import Llama

    from geode.runtime.finetune.gguf_io import load_llama
    from geode.runtime.finetune.optimizer import load_tokenizer
    from geode.runtime.lm.local import default_model_path

    path = default_model_path()
    model: Any = load_llama(path)[0]
    tokenizer = load_tokenizer(path)
    messages = [{"role": "user", "content": "How much does the Basecamp family tent cost? Price: $379."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = model.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1] :].tolist()
    llm = Llama(str(path), n_ctx=512, verbose=False)
    completion: Any = llm.create_completion(text, max_tokens=4, temperature=0)
    theirs = completion["choices"][0]["text"]
    # A wrong permutation garbles every answer; quantisation noise may only change later tokens.
    assert (
        tokenizer.decode(ours[:2])
        == llm.detokenize(llm.tokenize(theirs.encode(), add_bos=False)[:2]).decode()
    )


def test_fine_tuned_weights_serve_as_a_program_version(tmp_path: Path) -> None:
    from geode.runtime.finetune import FinetuneOptions, LMArtifactStore, LocalFinetune

    settings = geode.Settings(
        home=tmp_path, tracing=TracingSettings(enabled=False), lm=LMSettings(cache=False)
    )
    examples = _examples()
    with geode.Runtime(settings) as rt:
        program = Answer()
        tuner = LocalFinetune(
            metric,
            store=LMArtifactStore(settings.lm_artifacts_dir),
            options=FinetuneOptions(epochs=1, time_budget_s=240, learning_rate=2e-4),
        )
        with rt.batch():
            # Validation on questions it trains on: this test checks the path, bench_finetune the quality.
            tuned = tuner.compile(program, trainset=examples[:8], valset=examples[:4])
        report = tuner.report
        assert report is not None and report.collected["examples"] > 0
        assert report.training["history"][0]["epoch"] == 0
        assert tuner.artifact is not None, report.training
        artifact = LMArtifactStore(settings.lm_artifacts_dir).get(tuner.artifact.id)
        assert artifact.base_sha256 and artifact.dataset_id == report.collected["dataset_id"]
        version = rt.registry.save("answer", tuned, lm_artifact=artifact.id)
        rt.registry.promote("answer", version.version, force=True)
        geode.register_program("answer", program)
        served = rt.serve("answer")
        assert served.version == version.version and served.problem is None
        bound = [p.lm for _, p in served.module.named_predictors()]
        assert all(getattr(lm, "model_path", None) == artifact.path for lm in bound)
        reply = rt.run("answer", context=examples[0].context, question=examples[0].question)
        assert isinstance(reply.answer, str) and reply.answer
