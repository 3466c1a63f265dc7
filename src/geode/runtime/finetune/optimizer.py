"""``LocalFinetune``: weight-level recompilation of the embedded model, driven like a DSPy optimizer.

``LocalFinetune(metric, store=...).compile(program, trainset=..., valset=...)`` follows the contract of
DSPy's ``BootstrapFinetune`` (run the program on the training set, keep the runs the metric accepts,
fine-tune the LM on those calls, return the program bound to the new LM) for an LM DSPy cannot
fine-tune itself: an in-process GGUF model. DSPy's own ``BootstrapFinetune`` needs a provider with a
fine-tuning API (OpenAI, Databricks, a local GPU server); here every step runs in this process on CPU:

1. collect: the program's own calls on the training questions, rendered by the serving adapter
   (:mod:`~geode.runtime.finetune.data`);
2. train: LoRA on those calls, validation after each epoch on questions it never trains on, early stopping
   and a hard time budget (:mod:`~geode.runtime.finetune.train`);
3. write back: merge the adapters and write a GGUF next to the base's tensors
   (:mod:`~geode.runtime.finetune.gguf_io`), store it by content hash with its lineage
   (:mod:`~geode.runtime.finetune.artifacts`);
4. return a copy of the program whose predictors run on the new weights.

When no epoch beats the untrained model on validation, nothing is proposed and the program comes back
unchanged: the report says so. With ``keep_candidate`` the best trained epoch is stored anyway
(:attr:`LocalFinetune.candidate`), so a benchmark can measure the fine-tune that lost and put it
through the gate in the open.

Validation is judged either on the float32 torch model (``val_judge="torch"``) or on what would be
served (``"served"``): each epoch written as GGUF, loaded through the LM factory, and the whole program
run on the validation questions. The second is the honest one for a quantised model (a LoRA update
smaller than the quantisation step is lost in the file, and only the served judge sees that) and, on a
CPU, several times faster than generating with torch.
"""

from __future__ import annotations

import itertools
import logging
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from geode.adapters import SmallModelAdapter
from geode.runtime.finetune.artifacts import LMArtifact, LMArtifactStore, file_sha256
from geode.runtime.finetune.data import ChatExample, Collected, collect_examples
from geode.runtime.finetune.train import (
    FinetuneOptions,
    Progress,
    TrainResult,
    current_weights,
    encode,
    generate_reply,
    train,
)

__all__ = ["FinetuneReport", "LocalFinetune", "ValItem", "load_tokenizer", "validation_items"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValItem:
    """A validation question: the prompt the model sees, the reply to learn, and its labelled example."""

    chat: ChatExample
    example: dspy.Example
    signature: type[dspy.Signature]
    base_score: float | None = None
    """The metric on the run that produced this item (the LM in context: the untrained model)."""


@dataclass
class FinetuneReport:
    """What one fine-tune did (also recorded, in part, in the artifact's lineage)."""

    base_model: str
    collected: dict[str, Any]
    n_val: int
    options: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    artifact: str | None = None
    artifact_bytes: int | None = None
    candidate: str | None = None
    """The best trained epoch's stored artifact (``keep_candidate``), proposed or not."""
    candidate_bytes: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return dict(self.__dict__)


def load_tokenizer(model_path: str | Path) -> Any:
    """The tokenizer (with its chat template) of a GGUF model, read by ``transformers``."""
    from transformers import AutoTokenizer

    path = Path(model_path)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def validation_items(
    program: dspy.Module,
    valset: Sequence[dspy.Example],
    adapter: dspy.Adapter,
    metric: Callable[..., Any] | None = None,
) -> list[ValItem]:
    """Each validation question's last call (its real inputs, e.g. retrieved passages) with the gold reply.

    Runs ``program`` once per question in the caller's DSPy context; questions whose run fails or whose
    last call does not produce the labelled fields are skipped. With ``metric``, each item also records
    the run's score (the untrained model's, when the context LM is the base).
    """
    items: list[ValItem] = []
    for index, example in enumerate(valset):
        with dspy.context(trace=[]):
            try:
                prediction = program(**example.inputs())
            except Exception:  # no prompt to validate on
                continue
            trace = list(dspy.settings.trace or [])
        if not trace:
            continue
        predictor, inputs, _ = trace[-1]
        signature = predictor.signature
        labels = example.labels()
        if not all(k in labels for k in signature.output_fields):
            continue
        messages = adapter.format(signature, list(getattr(predictor, "demos", []) or []), dict(inputs))
        reply = adapter.format_assistant_message_content(
            signature, {k: labels[k] for k in signature.output_fields}
        )
        chat = ChatExample(
            tuple({"role": str(m["role"]), "content": str(m["content"])} for m in messages),
            reply,
            str(example.get("id", index)),
            type(predictor).__name__,
            origin="label",
        )
        items.append(ValItem(chat, example, signature, _score(metric, example, prediction)))
    return items


def _score(metric: Callable[..., Any] | None, example: dspy.Example, prediction: Any) -> float | None:
    if metric is None:
        return None
    try:
        return float(metric(example, prediction, None))
    except Exception:  # the metric's own failure on a malformed prediction: wrong
        return 0.0


def _split(
    trainset: Sequence[dspy.Example], fraction: float, seed: int
) -> tuple[list[dspy.Example], list[dspy.Example]]:
    items = list(trainset)
    random.Random(seed).shuffle(items)
    n_val = max(1, round(len(items) * fraction))
    return items[n_val:], items[:n_val]


class LocalFinetune:
    """Fine-tune the embedded GGUF model on a program's correct runs; a DSPy-optimizer-shaped object.

    Args:
        metric: The program's metric, ``metric(example, prediction, trace)``.
        store: Where the fine-tuned weights are stored.
        options: Training options (LoRA rank, learning rate, epochs, patience, time budget, quantisation).
        base_model: The GGUF to fine-tune; default: the context LM's ``model_path`` (a ``geode.LocalLM``).
        use_labels: Also train on wrong runs' last call with the gold answer (see
            :func:`~geode.runtime.finetune.data.collect_examples`).
        keep_candidate: Store the best trained epoch's weights even when they did not beat the untrained
            model on validation (:attr:`candidate`); the returned program stays unchanged then. For
            benchmarks, which must report a fine-tune that lost.
        lm_factory: Builds the LM for the new weights (the runtime passes one with its LM settings);
            default: ``geode.LocalLM(path)``.
        adapter: Renders calls into prompts; default: the context's adapter, else ``SmallModelAdapter``.
        log: Receives one-line progress messages (the CLI prints them).
        progress: Receives training progress after every step (epoch, step, loss, ETA).
        tokenizer: A ``transformers`` tokenizer with the model's chat template; default: read from the
            GGUF by ``transformers``.

    Attributes:
        artifact: The stored LM artifact after :meth:`compile` (``None`` when training did not help).
        candidate: The best trained epoch's artifact: ``artifact`` when training helped, else (with
            ``keep_candidate``) the weights that lost, else ``None``.
        report: What the last :meth:`compile` did.
    """

    def __init__(
        self,
        metric: Callable[..., Any],
        *,
        store: LMArtifactStore,
        options: FinetuneOptions | None = None,
        base_model: str | Path | None = None,
        use_labels: bool = True,
        keep_candidate: bool = False,
        lm_factory: Callable[[Path], dspy.BaseLM] | None = None,
        adapter: dspy.Adapter | None = None,
        log: Callable[[str], None] | None = None,
        progress: Callable[[Progress], None] | None = None,
        tokenizer: Any | None = None,
    ) -> None:
        self.metric = metric
        self.store = store
        self.options = options or FinetuneOptions()
        self.base_model = Path(base_model) if base_model is not None else None
        self.use_labels = use_labels
        self.keep_candidate = keep_candidate
        self.lm_factory = lm_factory
        self.adapter = adapter
        self.log = log or (lambda message: logger.info("%s", message))
        self.progress = progress
        self.tokenizer = tokenizer
        self.artifact: LMArtifact | None = None
        self.candidate: LMArtifact | None = None
        self.report: FinetuneReport | None = None
        self.train_result: TrainResult | None = None

    def _base(self) -> Path:
        if self.base_model is not None:
            return self.base_model
        path = getattr(dspy.settings.lm, "model_path", None)
        if path is None:
            from geode.errors import ConfigError

            raise ConfigError(
                "fine-tuning needs a local GGUF model",
                hint="run under the embedded LM (--lm local) or pass base_model",
            )
        return Path(path)

    def compile(
        self,
        student: dspy.Module,
        *,
        trainset: Sequence[dspy.Example],
        valset: Sequence[dspy.Example] | None = None,
    ) -> dspy.Module:
        """Fine-tune on ``student``'s correct runs over ``trainset``; return it bound to the new weights.

        Args:
            student: The program (not changed; the result is a copy).
            trainset: Labelled training examples.
            valset: Labelled validation examples for early stopping; default: ``options.val_fraction``
                of ``trainset``, never trained on.

        Raises:
            ValueError: No usable training or validation examples.
            ConfigError: No local GGUF model to start from.
        """
        options = self.options
        adapter = self.adapter or dspy.settings.adapter or SmallModelAdapter()
        base = self._base()
        fit, val = (
            (list(trainset), list(valset)) if valset else _split(trainset, options.val_fraction, options.seed)
        )
        timings: dict[str, float] = {}
        collected, val_items = self._collect(student, fit, val, adapter, timings)
        model, tokenizer = self._load(base, timings)
        train_items = [encode(tokenizer, e, options.max_length) for e in collected.examples]
        val_tokens = [encode(tokenizer, v.chat, options.max_length) for v in val_items]
        pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        )
        metadata = {"geode.finetune.base_model": base.name, "geode.finetune.dataset_id": collected.dataset_id}
        with tempfile.TemporaryDirectory(prefix="geode-finetune-") as tmp:
            # Each judged epoch's GGUF (served judge): the candidate stored later is the file that was judged.
            epoch_files: dict[int, Path] = {}
            if options.val_judge == "served":
                score = self._served_judge(student, val_items, base, Path(tmp), metadata, epoch_files)
            else:
                score = self._torch_judge(val_items, tokenizer, adapter)
            self.log(
                f"training ({options.method}, {len(train_items)} examples, {len(val_tokens)} validation "
                f"judged on the {options.val_judge} model, budget {options.time_budget_s:.0f} s)"
            )
            result = train(
                model,
                train_items,
                val_tokens,
                options,
                pad_id=pad_id,
                val_score=score,
                progress=self.progress,
            )
            self.train_result = result
            report = _report(base, collected, len(val_items), options, result, timings)
            self.report = report
            self.artifact = self.candidate = None
            if not result.improved:
                self.log(
                    "no epoch beat the untrained model on validation: nothing proposed, program unchanged"
                )
            if result.improved or (self.keep_candidate and result.candidate):
                t2 = time.perf_counter()
                path = epoch_files.get(result.candidate_epoch) or write_gguf_of(
                    base, Path(tmp) / "model.gguf", result.candidate, options.qtype, metadata
                )
                self._store(base, path, collected, result, report, written_since=t2)
        if self.artifact is None:
            return student.deepcopy()
        return self.bind(student, self.artifact)

    def _collect(
        self,
        student: dspy.Module,
        fit: Sequence[dspy.Example],
        val: Sequence[dspy.Example],
        adapter: dspy.Adapter,
        timings: dict[str, float],
    ) -> tuple[Collected, list[ValItem]]:
        """The training examples (the program's correct runs) and the validation items.

        Raises:
            ValueError: No training or no validation examples.
        """
        t0 = time.perf_counter()
        self.log(f"collecting training data: running the program on {len(fit)} training questions")
        collected: Collected = collect_examples(
            student, fit, self.metric, adapter=adapter, use_labels=self.use_labels, log=self.log
        )
        self.log(
            f"{collected.correct}/{collected.runs} runs correct; {len(collected.examples)} examples "
            f"({sum(e.origin == 'label' for e in collected.examples)} from gold labels)"
        )
        val_items = validation_items(student, val, adapter, self.metric)
        timings["collect_s"] = time.perf_counter() - t0
        if not collected.examples:
            raise ValueError("no training examples: no run scored correct (try use_labels=True)")
        if not val_items:
            raise ValueError(
                "no validation examples: the program's last call does not produce the labelled fields"
            )
        return collected, val_items

    def _load(self, base: Path, timings: dict[str, float]) -> tuple[Any, Any]:
        """The base model in torch and its tokenizer (the training stack loads only now)."""
        from geode.runtime.finetune.gguf_io import load_llama

        t1 = time.perf_counter()
        self.log(f"loading {base.name} into torch")
        model, _ = load_llama(base)
        tokenizer = self.tokenizer if self.tokenizer is not None else load_tokenizer(base)
        timings["load_s"] = time.perf_counter() - t1
        return model, tokenizer

    def _store(
        self,
        base: Path,
        path: Path,
        collected: Collected,
        result: TrainResult,
        report: FinetuneReport,
        *,
        written_since: float,
    ) -> None:
        """Store the candidate's GGUF as an LM artifact; it is proposed (:attr:`artifact`) if it improved.

        ``written_since``: when writing the GGUF began (``report.seconds["write_s"]`` runs from it).
        """
        options = self.options
        stored = self.store.put(
            path,
            base_model=base,
            base_sha256=file_sha256(base),
            dataset_id=collected.dataset_id,
            method=options.method,
            hyperparameters=options.to_dict(),
            training={**result.to_dict(), "collected": report.collected},
            note=None if result.improved else "did not beat the untrained model on validation",
        )
        report.seconds["write_s"] = time.perf_counter() - written_since
        self.candidate = stored
        report.candidate, report.candidate_bytes = stored.id, stored.bytes
        self.log(
            f"stored LM artifact {stored.id} ({stored.bytes / 1e6:.1f} MB, epoch "
            f"{result.candidate_epoch}{'' if result.improved else ', not proposed'})"
        )
        if result.improved:
            self.artifact = stored
            report.artifact, report.artifact_bytes = stored.id, stored.bytes

    def bind(self, program: dspy.Module, artifact: LMArtifact) -> dspy.Module:
        """A copy of ``program`` whose predictors run on ``artifact``'s weights (through the LM factory)."""
        if artifact.path is None:
            raise ValueError(f"LM artifact {artifact.id} has no weights file")
        bound = program.deepcopy()
        bound.set_lm(self._lm(artifact.path))
        return bound

    def _lm(self, path: Path) -> dspy.BaseLM:
        return self.lm_factory(path) if self.lm_factory else _local_lm(path)

    def _torch_judge(
        self, val_items: Sequence[ValItem], tokenizer: Any, adapter: dspy.Adapter
    ) -> Callable[[Any], float]:
        def score(m: Any) -> float:
            total = 0.0
            for item in val_items:
                reply = generate_reply(m, tokenizer, item.chat.messages)
                try:
                    prediction = dspy.Prediction(**adapter.parse(item.signature, reply))
                    total += float(self.metric(item.example, prediction, None))
                except Exception:  # an unparseable reply scores 0
                    continue
            return total / len(val_items)

        return score

    def _served_judge(
        self,
        student: dspy.Module,
        val_items: Sequence[ValItem],
        base: Path,
        folder: Path,
        metadata: dict[str, str],
        epoch_files: dict[int, Path],
    ) -> Callable[[Any], float]:
        epochs = itertools.count()
        # Epoch 0 is the untrained model: its runs were made (and scored) while collecting the items.
        base_total = sum(item.base_score or 0.0 for item in val_items)

        def score(m: Any) -> float:
            epoch = next(epochs)
            if epoch == 0:
                return base_total / len(val_items)
            path = write_gguf_of(
                base, folder / f"epoch-{epoch}.gguf", current_weights(m), self.options.qtype, metadata
            )
            epoch_files[epoch] = path
            program = student.deepcopy()
            program.set_lm(self._lm(path))
            total = 0.0
            for item in val_items:
                try:
                    prediction = program(**item.example.inputs())
                except Exception:  # a failing run is a wrong answer
                    continue
                total += _score(self.metric, item.example, prediction) or 0.0
            return total / len(val_items)

        return score


def _report(
    base: Path,
    collected: Collected,
    n_val: int,
    options: FinetuneOptions,
    result: TrainResult,
    timings: dict[str, float],
) -> FinetuneReport:
    # `timings` is shared, not copied: the write time is added once the artifact is stored.
    return FinetuneReport(
        base_model=base.name,
        collected={
            "runs": collected.runs,
            "correct": collected.correct,
            "failed": collected.failed,
            "examples": len(collected.examples),
            "from_labels": sum(e.origin == "label" for e in collected.examples),
            "dataset_id": collected.dataset_id,
        },
        n_val=n_val,
        options=options.to_dict(),
        training=result.to_dict(),
        seconds=timings,
    )


def write_gguf_of(
    base: Path, out: Path, weights: dict[str, Any], qtype: str | None, metadata: dict[str, str]
) -> Path:
    """Write ``weights`` (torch tensors by Hugging Face name) over ``base``'s tensors as a GGUF file."""
    from geode.runtime.finetune.gguf_io import write_gguf

    return write_gguf(
        base,
        out,
        {name: t.detach().cpu().numpy() for name, t in weights.items()},
        qtype=qtype,
        metadata=metadata,
    )


def _local_lm(path: Path) -> dspy.BaseLM:
    from geode.runtime.lm.local import LocalLM

    return LocalLM(path)
