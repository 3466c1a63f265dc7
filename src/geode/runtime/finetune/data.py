"""Training data for a fine-tune: a program's own calls on labelled questions, kept when the run scored correct.

This is DSPy's ``BootstrapFinetune`` recipe (run the program on the training set with a trace, keep the
runs the metric accepts, turn each predictor call into one chat example) with one difference that
matters on small models: each call is rendered by the adapter the program is served with
(:class:`~geode.adapters.SmallModelAdapter` for the embedded model), so the model is trained on exactly
the prompts it will see in production, not on DSPy's ChatAdapter markers.

``use_labels``: a run that scored wrong can still teach, when its last call produced the labelled fields
(a retrieve-then-answer program's answer step): its inputs are real, and the gold answer replaces the
wrong one. Off by default: the gold answer may not be derivable from what the model saw.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from geode.adapters import SmallModelAdapter

__all__ = ["ChatExample", "Collected", "collect_examples", "dataset_id"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatExample:
    """One predictor call as a chat: the prompt messages and the reply to learn."""

    messages: tuple[dict[str, str], ...]
    """The prompt (system, earlier turns, user), as the adapter renders it."""
    completion: str
    """The assistant reply the model should produce."""
    source: str
    """Which training example it came from (its id, or its position)."""
    predictor: str
    origin: str = "correct"
    """``correct`` (the run scored correct) or ``label`` (a wrong run's last call, with the gold answer)."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "messages": list(self.messages),
            "completion": self.completion,
            "source": self.source,
            "predictor": self.predictor,
            "origin": self.origin,
        }


@dataclass(frozen=True)
class Collected:
    """The examples collected from one pass of a program over its training questions."""

    examples: tuple[ChatExample, ...]
    runs: int
    correct: int
    failed: int
    """Runs that raised (counted wrong)."""

    @property
    def dataset_id(self) -> str:
        """Content id of the examples (what the LM artifact's lineage records)."""
        return dataset_id(self.examples)


def dataset_id(examples: Sequence[ChatExample]) -> str:
    """16 hex digits of the SHA-256 of the examples' canonical JSON."""
    text = json.dumps(
        [e.to_json() for e in examples], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _predictor_names(program: dspy.Module) -> dict[int, str]:
    return {id(p): name for name, p in program.named_predictors()}


def _outputs(signature: type[dspy.Signature], outputs: Any) -> dict[str, Any]:
    values = outputs.toDict() if hasattr(outputs, "toDict") else dict(outputs)
    return {k: v for k, v in values.items() if k in signature.output_fields}


def _render(
    adapter: dspy.Adapter,
    predictor: Any,
    inputs: dict[str, Any],
    outputs: dict[str, Any],
) -> tuple[tuple[dict[str, str], ...], str]:
    signature = predictor.signature
    messages = adapter.format(signature, list(getattr(predictor, "demos", []) or []), inputs)
    completion = adapter.format_assistant_message_content(signature, outputs)
    return tuple({"role": str(m["role"]), "content": str(m["content"])} for m in messages), completion


def collect_examples(
    program: dspy.Module,
    trainset: Sequence[dspy.Example],
    metric: Callable[..., Any],
    *,
    adapter: dspy.Adapter | None = None,
    use_labels: bool = False,
    threshold: float = 1.0,
    log: Callable[[str], None] | None = None,
) -> Collected:
    """Run ``program`` on each training example (in the caller's DSPy context) and keep the good calls.

    Args:
        program: The program whose calls become training data.
        trainset: Labelled examples (inputs marked with ``with_inputs``).
        metric: ``metric(example, prediction, trace)``; a run scoring at least ``threshold`` is correct.
        adapter: Renders each call; default: the context's adapter, else ``SmallModelAdapter``.
        use_labels: Also learn from wrong runs, with the gold label in place of the last call's output.
        threshold: Metric value a run needs to count as correct.
        log: Receives one-line progress messages.
    """
    render_with = adapter or dspy.settings.adapter or SmallModelAdapter()
    names = _predictor_names(program)
    examples: list[ChatExample] = []
    correct = failed = 0
    for index, example in enumerate(trainset):
        source = str(example.get("id", index)) if hasattr(example, "get") else str(index)
        with dspy.context(trace=[]):
            try:
                prediction = program(**example.inputs())
            except Exception as err:  # a failing run is a wrong run, not a failed collection
                failed += 1
                logger.info("finetune data: example %s raised %s", source, type(err).__name__)
                continue
            trace = list(dspy.settings.trace or [])
        try:
            score = float(metric(example, prediction, trace))
        except Exception:  # the metric's own failure on a malformed prediction: wrong
            score = 0.0
        if score >= threshold:
            correct += 1
            for predictor, inputs, outputs in trace:
                messages, completion = _render(
                    render_with, predictor, dict(inputs), _outputs(predictor.signature, outputs)
                )
                examples.append(
                    ChatExample(
                        messages, completion, source, names.get(id(predictor), type(predictor).__name__)
                    )
                )
        elif use_labels and trace:
            predictor, inputs, outputs = trace[-1]
            labels = example.labels()
            fixed = {**_outputs(predictor.signature, outputs)}
            keys = [k for k in predictor.signature.output_fields if k in labels]
            if keys and len(keys) == len(predictor.signature.output_fields):
                fixed.update({k: labels[k] for k in keys})
                messages, completion = _render(render_with, predictor, dict(inputs), fixed)
                examples.append(
                    ChatExample(
                        messages,
                        completion,
                        source,
                        names.get(id(predictor), type(predictor).__name__),
                        origin="label",
                    )
                )
        if log is not None and (index + 1) % 10 == 0:
            log(
                f"collected {len(examples)} examples from {index + 1}/{len(trainset)} runs ({correct} correct)"
            )
    return Collected(tuple(examples), len(trainset), correct, failed)
