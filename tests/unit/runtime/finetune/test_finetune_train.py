"""The fine-tune's data collection, tokenization and training loop, on scripted LMs and a tiny llama."""
# ruff: noqa: E402

from __future__ import annotations

from pathlib import Path
from typing import Any

import dspy
import pytest
from tests.tiers import require_tier

pytestmark = pytest.mark.finetune
require_tier("finetune", import_name="torch")
require_tier("finetune", import_name="transformers")
require_tier("finetune", import_name="gguf")

import torch
from tests.unit.runtime.finetune.test_finetune_gguf import write_tiny_llama

from geode.adapters import SmallModelAdapter
from geode.runtime.finetune.data import ChatExample, collect_examples, dataset_id
from geode.runtime.finetune.gguf_io import load_llama
from geode.runtime.finetune.train import FinetuneOptions, Progress, Tokenized, encode, train
from geode.testing import ScriptedLM


class Capital(dspy.Signature):
    """Name the capital city."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def _exact(example: dspy.Example, prediction: Any, trace: Any = None) -> float:
    return float(example.answer == prediction.answer)


def _examples() -> list[dspy.Example]:
    rows = [("France?", "Paris"), ("Italy?", "Rome"), ("Spain?", "Madrid")]
    return [
        dspy.Example(id=f"q{i}", question=q, answer=a).with_inputs("question")
        for i, (q, a) in enumerate(rows)
    ]


def test_collect_keeps_correct_runs_in_the_adapters_prompt_format() -> None:
    lm = ScriptedLM(
        {"France": {"answer": "Paris"}, "Italy": {"answer": "Rome"}, "Spain": {"answer": "Lisbon"}},
        adapter=SmallModelAdapter(),
    )
    with dspy.context(lm=lm, adapter=SmallModelAdapter()):
        collected = collect_examples(dspy.Predict(Capital), _examples(), _exact)
        with_labels = collect_examples(dspy.Predict(Capital), _examples(), _exact, use_labels=True)
    assert (collected.runs, collected.correct, collected.failed) == (3, 2, 0)
    assert [e.completion for e in collected.examples] == ["Paris", "Rome"]
    first = collected.examples[0]
    assert first.messages[0] == {"role": "system", "content": "Name the capital city."}
    assert first.messages[-1] == {"role": "user", "content": "Question: France?"}
    assert (first.source, first.origin) == ("q0", "correct")
    # A wrong run's last call is kept with the gold answer when asked.
    assert [(e.completion, e.origin) for e in with_labels.examples][-1] == ("Madrid", "label")
    assert collected.dataset_id != with_labels.dataset_id
    assert dataset_id(collected.examples) == collected.dataset_id


class ChatTemplateTokenizer:
    """A character-level stand-in for a Hugging Face tokenizer with a ChatML template (ids below 128)."""

    eos_token = "<|im_end|>"
    eos_token_id = 2
    pad_token_id = 0
    specials = ("<|im_start|>", "<|im_end|>")

    def convert_tokens_to_ids(self, token: str) -> int:
        return 1 + self.specials.index(token)

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return "".join(chr(int(i)) for i in ids if int(i) >= 3)

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, tokenize: bool, add_generation_prompt: bool = False
    ) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = []
        i = 0
        while i < len(text):
            for n, special in enumerate(self.specials):
                if text.startswith(special, i):
                    ids.append(1 + n)
                    i += len(special)
                    break
            else:
                ids.append(min(ord(text[i]), 127))
                i += 1
        return ids

    def __call__(
        self, text: str, *, add_special_tokens: bool, return_tensors: str | None = None
    ) -> dict[str, Any]:
        ids = self._ids(text)
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}


def test_encode_puts_labels_on_the_reply_only() -> None:
    tok = ChatTemplateTokenizer()
    example = ChatExample(
        ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}), "Yo", "s", "p"
    )
    item = encode(tok, example, max_length=512)
    learned = [x for x in item.labels if x != -100]
    assert learned == tok._ids("Yo<|im_end|>\n")
    assert len(item.labels) == len(item.input_ids)
    # Too long: the prompt loses its oldest tokens, the reply stays whole.
    short = encode(tok, example, max_length=20)
    assert len(short.input_ids) == 20
    assert [x for x in short.labels if x != -100] == learned


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    write_tiny_llama(path, vocab=128)
    return path


def _items() -> list[Tokenized]:
    # "a b c -> d" patterns over the tiny vocabulary; the loss is on the last two tokens.
    out = []
    for start in range(1, 9):
        ids = tuple((start + k) % 40 for k in range(8))
        out.append(Tokenized(ids, (-100,) * 6 + ids[6:]))
    return out


def test_training_lowers_validation_loss_and_returns_the_best_epochs_weights(tiny_path: Path) -> None:
    torch.manual_seed(0)
    model, _ = load_llama(tiny_path)
    seen: list[Progress] = []
    options = FinetuneOptions(
        rank=4, alpha=8.0, dropout=0.0, learning_rate=5e-2, epochs=3, batch_size=4, patience=3, threads=1
    )
    result = train(model, _items(), _items()[:4], options, pad_id=0, progress=seen.append)
    losses = [h.val_loss for h in result.history]
    assert losses[-1] < losses[0]
    assert result.best_epoch > 0 and result.improved and result.stopped == "epochs"
    assert len(result.changed) == 2 * 7
    assert result.candidate_epoch == result.best_epoch and result.candidate is result.changed
    assert all(name.endswith("_proj.weight") for name in result.changed)
    assert [p.step for p in seen] == list(range(1, 7))
    assert seen[-1].eta_s == pytest.approx(0.0, abs=1e-9) or seen[-1].eta_s >= 0
    assert seen[0].steps_total == 6 and seen[0].eta_s > 0
    assert result.trainable_parameters > 0 and result.peak_rss_mb > 0


def test_no_improvement_on_validation_stops_early_and_changes_nothing(tiny_path: Path) -> None:
    model, _ = load_llama(tiny_path)
    options = FinetuneOptions(rank=4, learning_rate=1e-2, epochs=5, batch_size=4, patience=2, threads=1)
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.0])  # every epoch worse than the untrained model
    result = train(model, _items(), _items()[:2], options, pad_id=0, val_score=lambda m: next(scores))
    assert result.stopped == "early_stop"
    assert [h.epoch for h in result.history] == [0, 1, 2]
    assert result.best_epoch == 0 and not result.improved
    assert result.changed == {}
    # The best trained epoch is still handed back, to be measured and refused in the open.
    assert result.candidate_epoch == 1 and len(result.candidate) == 2 * 7
    assert result.to_dict()["candidate_epoch"] == 1


def test_the_time_budget_stops_training_before_it_is_overrun(tiny_path: Path) -> None:
    model, _ = load_llama(tiny_path)
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every look at the clock costs a second
        return now[0]

    options = FinetuneOptions(rank=4, epochs=50, batch_size=2, time_budget_s=30.0, threads=1)
    result = train(model, _items(), _items()[:2], options, pad_id=0, clock=clock)
    assert result.stopped == "time_budget"
    assert result.seconds <= 30.0 + 5.0
    assert len(result.history) < 50


def test_options_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="method"):
        FinetuneOptions(method="qlora")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="val_fraction"):
        FinetuneOptions(val_fraction=1.0)
    with pytest.raises(ValueError, match="time_budget_s"):
        FinetuneOptions(time_budget_s=0)


def test_local_finetune_trains_on_correct_runs_stores_the_weights_and_binds_the_program(
    tiny_path: Path, tmp_path: Path
) -> None:
    gguf = require_tier("finetune", import_name="gguf")
    from geode.runtime.finetune import LMArtifactStore, LocalFinetune

    answers = {"France": {"answer": "Paris"}, "Italy": {"answer": "Rome"}, "Spain": {"answer": "Madrid"}}
    rows = [(f"{c} {i}?", answers[c]["answer"]) for i in range(3) for c in answers]
    trainset = [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in rows]
    lm = ScriptedLM(
        lambda messages: answers[next(c for c in answers if c in messages[-1]["content"])],
        adapter=SmallModelAdapter(),
    )
    built: list[Path] = []

    def factory(path: Path) -> dspy.BaseLM:
        built.append(path)
        return ScriptedLM([{"answer": "tuned"}], adapter=SmallModelAdapter())

    store = LMArtifactStore(tmp_path / "lms")
    # The torch judge: the factory's scripted LM would otherwise answer the validation questions.
    options = FinetuneOptions(
        rank=4,
        alpha=8.0,
        dropout=0.0,
        learning_rate=5e-2,
        epochs=2,
        batch_size=4,
        patience=2,
        threads=1,
        val_judge="torch",
    )
    tuner = LocalFinetune(
        _exact,
        store=store,
        options=options,
        base_model=tiny_path,
        lm_factory=factory,
        tokenizer=ChatTemplateTokenizer(),
        adapter=SmallModelAdapter(),
    )
    program = dspy.Predict(Capital)
    with dspy.context(lm=lm, adapter=SmallModelAdapter()):
        tuned = tuner.compile(program, trainset=trainset[2:], valset=trainset[:2])
    report = tuner.report
    assert report is not None and report.collected["correct"] == len(trainset) - 2 and report.n_val == 2
    assert tuner.artifact is not None and built == [tuner.artifact.path]
    assert store.get(tuner.artifact.id).dataset_id == report.collected["dataset_id"]
    assert tuner.artifact.hyperparameters["rank"] == 4 and tuner.artifact.method == "lora"
    # The written GGUF differs from the base only in the trained projections.
    assert tuner.artifact.path is not None
    changed = {t.name for t in gguf.GGUFReader(str(tuner.artifact.path)).tensors}
    assert "blk.0.attn_q.weight" in changed
    assert program.lm is None and tuned.lm is not None
    with dspy.context(lm=lm, adapter=SmallModelAdapter()):
        assert tuned(question="France?").answer == "tuned"


def test_the_served_judge_scores_each_written_epoch_and_a_losing_candidate_is_kept_not_proposed(
    tiny_path: Path, tmp_path: Path
) -> None:
    from geode.runtime.finetune import LMArtifactStore, LocalFinetune

    answers = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid"}
    rows = [(f"{c} {i}?", a) for i in range(3) for c, a in answers.items()]
    trainset = [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in rows]
    base_lm = ScriptedLM(
        lambda messages: {"answer": next(a for c, a in answers.items() if c in messages[-1]["content"])},
        adapter=SmallModelAdapter(),
    )
    judged: list[Path] = []

    def factory(path: Path) -> dspy.BaseLM:
        # Every written epoch answers wrong: the fine-tune loses on validation.
        judged.append(path)
        assert path.is_file() and path.suffix == ".gguf"
        return ScriptedLM(lambda messages: {"answer": "Lyon"}, adapter=SmallModelAdapter())

    store = LMArtifactStore(tmp_path / "lms")
    options = FinetuneOptions(
        rank=4,
        alpha=8.0,
        dropout=0.0,
        learning_rate=5e-2,
        epochs=2,
        patience=2,
        threads=1,
        val_judge="served",
    )
    tuner = LocalFinetune(
        _exact,
        store=store,
        options=options,
        base_model=tiny_path,
        lm_factory=factory,
        tokenizer=ChatTemplateTokenizer(),
        adapter=SmallModelAdapter(),
        keep_candidate=True,
    )
    program = dspy.Predict(Capital)
    with dspy.context(lm=base_lm, adapter=SmallModelAdapter()):
        tuned = tuner.compile(program, trainset=trainset[2:], valset=trainset[:2])
    report = tuner.report
    assert report is not None
    # Epoch 0 is the base's own validation runs; epochs 1 and 2 ran on their written GGUF files.
    assert [h["val_score"] for h in report.training["history"]] == [1.0, 0.0, 0.0]
    assert [p.name for p in judged[:2]] == ["epoch-1.gguf", "epoch-2.gguf"]
    assert not report.training["improved"] and tuner.artifact is None and report.artifact is None
    assert tuned.lm is None  # nothing proposed: the program is unchanged
    candidate = tuner.candidate
    assert candidate is not None and report.candidate == candidate.id
    assert report.training["candidate_epoch"] in (1, 2)
    assert store.get(candidate.id).note == "did not beat the untrained model on validation"
    assert candidate.hyperparameters["val_judge"] == "served"
    assert tuner.bind(program, candidate).lm is not None
    with pytest.raises(ValueError, match="val_judge"):
        FinetuneOptions(val_judge="gpu")  # type: ignore[arg-type]
