"""Which shape of the crystallized helpdesk answer step keeps the embedded model's quality?

The demo's recompile search (``geode.demo.recompile``) tries shapes of the crystallized workflow's answer
step: how many passages of the search result it reads, and whether it reads them before the question.
This measures those shapes on the helpdesk's **training** questions (the split the demo may choose on;
the held-out questions are not read here), against the raw model with a plain prompt on the same
passages, in one process on one loaded model (SmolLM2-135M-Instruct Q4_1 unless ``--model-path``),
greedy, DSPy's response cache off:

* **raw k=2 / raw k=1** (the anchor): llama-cpp-python's ``create_chat_completion`` on the same model,
  system = the answer step's instructions, user = ``Passages:\\n<passages>\\n\\nQuestion: <question>``,
  ``max_tokens=24``;
* **geode** sides: ``geode.Runtime`` (its default adapter for the local model, tracing off) running
  ``dspy.Predict`` over the crystallized step's signature (``question, search_result -> answer`` with the
  agent's instructions), reshaped by the functions the workflow uses (``first_passages``,
  ``reorder_inputs``).

Passages are what the demo's agent's ``search`` tool returns for the question (top 2 of 400 characters,
``[1] ...``), retrieved once per question. Sides rotate per question. Scored by the helpdesk metric.

    .venv/bin/python benchmarks/bench_answer_shape.py                  # the 48 training questions
    .venv/bin/python benchmarks/bench_answer_shape.py --limit 12 --sides raw-k1,question-last
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dspy
from dspy.signatures.signature import make_signature
from rich.console import Console
from rich.table import Table

RAW_MAX_TOKENS = 24
SUFFIX = "\n\nProduce the final outputs from the tool results."
"""What crystallization appends to the agent's instructions for an answer step (``build.py``)."""


@dataclass(frozen=True)
class Side:
    """One way to answer: raw or through Geode, with a passage count, order and instruction."""

    name: str
    raw: bool
    passages: int | None
    tool_results_first: bool = False
    terse: bool = False


SIDES = (
    Side("raw-k2", True, None),
    Side("raw-k1", True, 1),
    Side("as-crystallized", False, None),
    Side("one-passage", False, 1),
    Side("tool-results-first", False, None, tool_results_first=True),
    Side("question-last", False, 1, tool_results_first=True),
    Side("terse-question-last", False, 1, tool_results_first=True, terse=True),
)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def signature(side: Side) -> type[dspy.Signature]:
    """The crystallized answer step's signature, reshaped as the workflow would for ``side``."""
    from geode.agents.crystallize.shape import reorder_inputs
    from geode.demo.recompile import TERSE
    from geode.examples.helpdesk.programs import SEARCH_ONLY

    instructions = TERSE if side.terse else SEARCH_ONLY + SUFFIX
    base = make_signature(
        {
            "question": (str, dspy.InputField()),
            "search_result": (str, dspy.InputField(desc="What the tool `search` returned.")),
            "answer": (str, dspy.OutputField(desc="a number or a few words copied from the passages")),
        },
        instructions,
    )
    return reorder_inputs(base, ["search_result", "question"]) if side.tool_results_first else base


def questions(split: Literal["train"], limit: int | None, home: Path) -> list[dict[str, Any]]:
    """Each question of ``split`` with the search result the demo's agent would read."""
    from geode.agents.tools import search_tool
    from geode.examples import helpdesk
    from geode.retrieval import Ingestor, Retriever
    from geode.runtime.runtime import Runtime
    from geode.runtime.settings import Settings, TracingSettings

    rt = Runtime(Settings(home=home, tracing=TracingSettings(enabled=False)))
    try:
        ingestor = Ingestor(
            rt.store, rt.embedder, chunker=helpdesk.helpdesk_chunker(), metadata=helpdesk.CHUNKING
        )
        ingestor.ingest(helpdesk.corpus_paths(), helpdesk.COLLECTION)
        retriever = Retriever(rt.store, rt.embedder, helpdesk.COLLECTION, k=2)
        # The demo's agent's tool: helpdesk.build_agent's defaults.
        search = search_tool(retriever, k=2, max_chars_per_passage=400, passage_ids=False)
        picked = helpdesk.load_questions(split)[:limit]
        return [
            {
                "id": q.id,
                "question": q.question,
                "gold": q.answer,
                "result": str(search.func(query=q.question)),
            }
            for q in picked
        ]
    finally:
        rt.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", default="train", choices=("train",), help="only the training questions")
    parser.add_argument("--limit", type=int, default=None, help="the first N questions")
    parser.add_argument("--sides", default=",".join(s.name for s in SIDES))
    parser.add_argument("--model-path", default=None, help="a GGUF model (default: the bundled SmolLM2-135M)")
    args = parser.parse_args()
    wanted = [s.strip() for s in args.sides.split(",") if s.strip()]
    sides = [s for s in SIDES if s.name in wanted]
    if len(sides) != len(wanted):
        parser.error(f"sides must be among {[s.name for s in SIDES]}")

    import geode
    from geode.agents.crystallize.shape import first_passages
    from geode.examples import helpdesk
    from geode.runtime.settings import LMSettings, Settings, TracingSettings

    console = Console(stderr=True)
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        items = questions("train", args.limit, Path(tmp) / "home")
        lm = geode.LocalLM(args.model_path, cache=False)
        settings = Settings(
            home=Path(tmp) / "home", lm=LMSettings(cache=False), tracing=TracingSettings(enabled=False)
        )
        rt = geode.Runtime(settings, lm=lm)
        correct = {s.name: 0 for s in sides}
        seconds = {s.name: 0.0 for s in sides}
        try:
            rt.run(dspy.Predict(signature(SIDES[2])), question="warm-up", search_result="[1] warm-up")
            for index, item in enumerate(items):
                for side in sides[index % len(sides) :] + sides[: index % len(sides)]:
                    result = first_passages(item["result"], side.passages)
                    started = time.perf_counter()
                    if side.raw:
                        messages = [
                            {"role": "system", "content": signature(side).instructions},
                            {
                                "role": "user",
                                "content": f"Passages:\n{result}\n\nQuestion: {item['question']}",
                            },
                        ]
                        with lm.loaded.lock:
                            out: Any = lm.llama.create_chat_completion(
                                messages=messages, max_tokens=RAW_MAX_TOKENS, temperature=0.0
                            )
                        answer = str(out["choices"][0]["message"]["content"] or "")
                    else:
                        pred = rt.run(
                            dspy.Predict(signature(side)), question=item["question"], search_result=result
                        )
                        answer = str(pred.get("answer") or "")
                    seconds[side.name] += time.perf_counter() - started
                    correct[side.name] += int(helpdesk.score_answer(item["gold"], answer) >= 1.0)
                console.print(f"{index + 1}/{len(items)} {item['id']}", style="dim")
            model = lm.model_path.name
        finally:
            rt.close()
    n = len(items)
    table = Table(
        title=f"Answer-step shapes on {model}, helpdesk {args.split} questions (n={n}), greedy, cache off"
    )
    for column in ("side", "correct", "s/question", "correct vs raw-k2"):
        table.add_column(column, justify="left" if column == "side" else "right")
    anchor = correct.get("raw-k2")
    for side in sides:
        vs = f"{correct[side.name] - anchor:+d}" if anchor is not None else "-"
        table.add_row(side.name, f"{correct[side.name]}/{n}", f"{seconds[side.name] / n:.2f}", vs)
    Console().print(table)
    print(f"load average before: {load_before}; after: {load_average()}")


if __name__ == "__main__":
    main()
