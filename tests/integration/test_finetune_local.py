"""The real fine-tune: SmolLM2-135M from its GGUF through LoRA, back to GGUF, served as a program version.

Slow (minutes of CPU; run it under the shared CPU lock): it loads the 98 MB model into torch, checks the
loaded model predicts llama.cpp's next tokens (the Q/K permutation), trains one short epoch on a dozen
helpdesk questions with their passages, stores the artifact, names it in a version, promotes that version
by force and asks the runtime, which must answer on the new weights. The training questions come from
mined traces: the runtime's own traced runs with code-check feedback, mined from its span file.
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
from geode.runtime.settings import LMSettings, PhoenixSettings, TracingSettings

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


def test_mined_traces_become_fine_tuned_weights_served_as_a_program_version(tmp_path: Path) -> None:
    from geode.evals.mining import mine
    from geode.runtime.feedback import feedback_annotations
    from geode.runtime.finetune import FinetuneOptions, LMArtifactStore, LocalFinetune
    from geode.runtime.phoenix import find_free_port
    from geode.traces.sources import OtlpFileTraceSource

    spans = tmp_path / "spans.jsonl"
    settings = geode.Settings(
        home=tmp_path / "home",
        # Traced to a file; feedback stays local (nothing listens on the Phoenix port).
        phoenix=PhoenixSettings(port=find_free_port()),
        tracing=TracingSettings(otlp_file=spans),
        lm=LMSettings(cache=False),
    )
    examples = _examples()[:10]
    gold = {e.question: e.answer for e in examples}
    with geode.Runtime(settings) as rt:
        program = Answer()
        geode.register_program("answer", program)
        # 1. Production: traced runs, each scored by a code check as feedback.
        for example in examples:
            pred = rt.run("answer", context=example.context, question=example.question)
            rt.feedback(pred, score=float(metric(example, pred)), name="correctness", annotator_kind="CODE")
        pipeline = rt.export_pipeline
        assert pipeline is not None
        pipeline.force_flush()
        # 2. Mining: the traces and their feedback become a dataset; gold answers label it (a reviewer's job).
        mined = mine(
            OtlpFileTraceSource(spans),
            "answer",
            annotations=feedback_annotations(settings),
            annotation_names=["correctness"],
            near_duplicates=False,  # two fixture questions share both passages: near duplicates by words
        )
        assert len(mined.dataset) == len(examples)
        assert {r.score for r in mined.dataset} <= {0.0, 1.0}
        trainset = [
            dspy.Example(**r.inputs, answer=gold[str(r.inputs["question"])]).with_inputs(
                "context", "question"
            )
            for r in mined.dataset
        ]
        # 3. The fine-tune, judged on what would be served (its GGUF through llama.cpp); the best trained
        # epoch is kept either way: this test checks the path, bench_finetune the quality.
        tuner = LocalFinetune(
            metric,
            store=LMArtifactStore(settings.lm_artifacts_dir),
            options=FinetuneOptions(epochs=1, time_budget_s=300, learning_rate=2e-4, val_judge="served"),
            keep_candidate=True,
        )
        with rt.batch():
            tuner.compile(program, trainset=trainset[4:], valset=trainset[:4])
        report = tuner.report
        assert report is not None and report.collected["examples"] > 0
        history = report.training["history"]
        assert [h["epoch"] for h in history] == [0, 1] and all(h["val_score"] is not None for h in history)
        assert tuner.candidate is not None, report.training
        artifact = LMArtifactStore(settings.lm_artifacts_dir).get(tuner.candidate.id)
        assert artifact.base_sha256 and artifact.dataset_id == report.collected["dataset_id"]
        # 4. A version naming the weights, promoted and served by the runtime on them.
        tuned = tuner.bind(program, artifact)
        version = rt.registry.save("answer", tuned, lm_artifact=artifact.id)
        rt.registry.promote("answer", version.version, force=True)
        served = rt.serve("answer")
        assert served.version == version.version and served.problem is None
        bound = [p.lm for _, p in served.module.named_predictors()]
        assert all(getattr(lm, "model_path", None) == artifact.path for lm in bound)
        reply = rt.run("answer", context=examples[0].context, question=examples[0].question)
        assert isinstance(reply.answer, str) and reply.answer
