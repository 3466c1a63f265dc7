"""Fidelity: does Geode lose quality or time against the raw local model it runs?

Same process, same model file (SmolLM2-135M-Instruct Q4_1 unless ``--model-path``), loaded once and warm,
greedy decoding, DSPy's response cache off. Per question, in rotating order:

* **raw** (the pinned anchor): llama-cpp-python's ``create_chat_completion`` on the very same loaded model,
  system = the signature's instructions, user = ``Passages:\\n<passages>\\n\\nQuestion: <question>``,
  ``max_tokens=24``, temperature 0;
* **geode** (ours): ``geode.Runtime`` (its default adapter for the local model, tracing on as by default,
  spans written to an OTLP-JSON file) running ``dspy.Predict(signature)``;
* **json** / **chat** (anchors): the same runtime path with ``dspy.JSONAdapter`` / ``dspy.ChatAdapter``.

Two frozen data sets (``benchmarks/data/fidelity/``), committed before the adapter was tuned:

* ``helpdesk.jsonl``: the 23 held-out questions of ``geode.examples.helpdesk`` with the top-2 passages
  the demo's retriever returned for them (cut to 400 characters each, as the helpdesk RAG does), scored
  with the helpdesk metric, through ``HelpdeskContextAnswer`` (``context, question -> answer``);
* ``park.jsonl``: 24 questions about a fictional national park, written for this benchmark, each with
  two handbook excerpts (one answers it), through a signature with other field names
  (``excerpts, query -> reply``), scored by normalised whole-token containment of the gold phrase.

A side's seconds are the sum of its calls' wall time. A reply that cannot be parsed counts as wrong.

    .venv/bin/python benchmarks/bench_fidelity.py                     # both sets, all four sides
    .venv/bin/python benchmarks/bench_fidelity.py --sides raw,geode --limit 8
    .venv/bin/python benchmarks/bench_fidelity.py --freeze-helpdesk   # re-extract the helpdesk fixture
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from rich.console import Console
from rich.table import Table

DATA = Path(__file__).parent / "data" / "fidelity"
RAW_MAX_TOKENS = 24
PASSAGE_CHARS = 400  # geode.examples.helpdesk.build_rag's max_chars_per_passage
SIDES = ("raw", "geode", "json", "chat")


class ParkLookup(dspy.Signature):
    """Answer the visitor's query from the handbook excerpts. Reply with a number or a few words copied from them."""

    excerpts: str = dspy.InputField(desc="excerpts from the park handbook")
    query: str = dspy.InputField()
    # Declares the answer's length, as the raw side's max_tokens does (docs/benchmarks.md, Fidelity).
    reply: str = dspy.OutputField(desc="a number or a few words copied from the excerpts", max_length=100)


@dataclass(frozen=True)
class Item:
    """One question of a set, with what every side needs."""

    id: str
    inputs: dict[str, Any]
    """The signature's inputs (passages already joined)."""
    passages: str
    question: str
    gold: str


@dataclass(frozen=True)
class Task:
    """A data set with its signature, output field and scorer."""

    name: str
    signature: type[dspy.Signature]
    output: str
    items: list[Item]
    score: Callable[[str, str], float]


@dataclass
class Tally:
    correct: int = 0
    seconds: float = 0.0
    unparsed: int = 0
    answers: list[tuple[str, str, float]] = field(default_factory=list)


def containment(gold: str, got: str) -> float:
    """1.0 when the normalised gold phrase occurs as whole tokens in the normalised answer."""
    from geode.evals.metrics import normalize_text

    want, have = normalize_text(gold).split(), normalize_text(got).split()
    width = len(want)
    if not want:
        return 0.0
    return 1.0 if any(have[i : i + width] == want for i in range(len(have) - width + 1)) else 0.0


def load_tasks(limit: int | None) -> list[Task]:
    from geode.examples.helpdesk import score_answer
    from geode.examples.helpdesk.programs import HelpdeskContextAnswer

    helpdesk: list[Item] = []
    for line in (DATA / "helpdesk.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        passages = "\n\n".join(p["text"].strip()[:PASSAGE_CHARS] for p in row["passages"])
        helpdesk.append(
            Item(
                row["id"],
                {"context": passages, "question": row["question"]},
                passages,
                row["question"],
                row["gold"],
            )
        )
    park: list[Item] = []
    for line in (DATA / "park.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        passages = "\n\n".join(row["excerpts"])
        park.append(
            Item(
                row["id"], {"excerpts": passages, "query": row["query"]}, passages, row["query"], row["gold"]
            )
        )
    return [
        Task("helpdesk", HelpdeskContextAnswer, "answer", helpdesk[:limit], score_answer),
        Task("park", ParkLookup, "reply", park[:limit], containment),
    ]


def freeze_helpdesk() -> None:
    """Write helpdesk.jsonl: each held-out question with the top-2 passages the demo's retriever returns."""
    from geode.agents.tools import passages_of
    from geode.examples import helpdesk
    from geode.retrieval import Ingestor, Retriever
    from geode.runtime.runtime import Runtime
    from geode.runtime.settings import Settings, TracingSettings

    with tempfile.TemporaryDirectory() as home:
        rt = Runtime(Settings(home=Path(home), tracing=TracingSettings(enabled=False)))
        try:
            Ingestor(rt.store, rt.embedder).ingest(helpdesk.corpus_paths(), helpdesk.COLLECTION)
            # The demo's retriever: geode.demo.pipeline builds exactly this one.
            retriever = Retriever(rt.store, rt.embedder, helpdesk.COLLECTION, k=2)
            rows = []
            for q in helpdesk.load_questions("heldout"):
                passages = passages_of(retriever(query=q.question, k=2))
                rows.append(
                    {
                        "id": q.id,
                        "question": q.question,
                        "gold": q.answer,
                        "kind": q.kind,
                        "source": q.source,
                        "passages": [{"id": p.id, "text": p.text} for p in passages],
                    }
                )
        finally:
            rt.close()
    DATA.mkdir(parents=True, exist_ok=True)
    out = DATA / "helpdesk.jsonl"
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} questions to {out}")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


class Sides:
    """Every side, over one loaded model."""

    def __init__(
        self, model_path: str | None, otlp_file: Path, adapter_options: dict[str, Any] | None = None
    ) -> None:
        import geode
        from geode.runtime.settings import LMSettings, Settings, TracingSettings

        self.lm = geode.LocalLM(model_path, cache=False)
        settings = Settings(lm=LMSettings(cache=False), tracing=TracingSettings(otlp_file=otlp_file))
        # Options change the geode side's SmallModelAdapter (to measure them); none: the runtime's default.
        ours = geode.SmallModelAdapter(**adapter_options) if adapter_options else None
        self.runtimes = {
            "geode": geode.Runtime(settings, lm=self.lm, adapter=ours),
            "json": geode.Runtime(settings, lm=self.lm, adapter=dspy.JSONAdapter()),
            "chat": geode.Runtime(settings, lm=self.lm, adapter=dspy.ChatAdapter()),
        }

    def default_adapter(self) -> str:
        return repr(self.runtimes["geode"].adapter)

    def raw(self, task: Task, item: Item) -> str:
        messages = [
            {"role": "system", "content": task.signature.instructions},
            {"role": "user", "content": f"Passages:\n{item.passages}\n\nQuestion: {item.question}"},
        ]
        with self.lm.loaded.lock:
            out: Any = self.lm.llama.create_chat_completion(
                messages=messages, max_tokens=RAW_MAX_TOKENS, temperature=0.0
            )
        return str(out["choices"][0]["message"]["content"] or "")

    module: Callable[[type[dspy.Signature]], dspy.Module] = dspy.Predict

    def run(self, side: str, task: Task, item: Item) -> tuple[str | None, float]:
        """The answer (``None``: unparsed) and the call's wall seconds."""
        from geode.errors import OutputParseError

        started = time.perf_counter()
        if side == "raw":
            answer: str | None = self.raw(task, item)
        else:
            try:
                pred = self.runtimes[side].run(self.module(task.signature), **item.inputs)
                answer = str(pred.get(task.output) or "")
            except OutputParseError:
                answer = None
        return answer, time.perf_counter() - started

    def close(self) -> None:
        for rt in self.runtimes.values():
            rt.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated: raw,geode,json,chat")
    parser.add_argument("--sets", default="helpdesk,park", help="comma-separated: helpdesk,park")
    parser.add_argument("--limit", type=int, default=None, help="first N questions of each set")
    parser.add_argument("--model-path", default=None, help="a GGUF model (default: the bundled SmolLM2-135M)")
    parser.add_argument(
        "--freeze-helpdesk", action="store_true", help="re-extract the helpdesk fixture and exit"
    )
    parser.add_argument(
        "--module",
        choices=("predict", "cot"),
        default="predict",
        help="the program the Geode sides run: dspy.Predict (default) or dspy.ChainOfThought",
    )
    parser.add_argument(
        "--reasoning",
        choices=("auto", "omit", "keep"),
        default=None,
        help="SmallModelAdapter(reasoning=...) on the geode side (with --module cot); default: the runtime's",
    )
    parser.add_argument(
        "--lead-text-max-chars",
        type=int,
        default=None,
        help="SmallModelAdapter(lead_text_max_chars=...) on the geode side: the cap on a kept rationale",
    )
    parser.add_argument("--show", action="store_true", help="print every answer")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.freeze_helpdesk:
        freeze_helpdesk()
        return
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = set(sides) - set(SIDES)
    if unknown or "raw" not in sides:
        parser.error(f"sides must include raw and be among {SIDES}; got {sides}")
    wanted = {s.strip() for s in args.sets.split(",")}
    tasks = [t for t in load_tasks(args.limit) if t.name in wanted]
    console = Console()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        options: dict[str, Any] = {}
        if args.reasoning is not None:
            options["reasoning"] = args.reasoning
        if args.lead_text_max_chars is not None:
            options["lead_text_max_chars"] = args.lead_text_max_chars
        bench = Sides(args.model_path, Path(tmp) / "spans.jsonl", options)
        if args.module == "cot":
            bench.module = dspy.ChainOfThought
        try:
            # Warm-up: load the model, compile grammars, import lazily loaded modules; not timed.
            warm = tasks[0]
            for side in sides:
                bench.run(side, warm, warm.items[0])
            results: dict[str, dict[str, Tally]] = {}
            for task in tasks:
                tallies = results.setdefault(task.name, {side: Tally() for side in sides})
                for index, item in enumerate(task.items):
                    order = sides[index % len(sides) :] + sides[: index % len(sides)]
                    for side in order:
                        answer, seconds = bench.run(side, task, item)
                        tally = tallies[side]
                        tally.seconds += seconds
                        score = 0.0 if answer is None else task.score(item.gold, answer)
                        tally.unparsed += answer is None
                        tally.correct += int(score >= 1.0)
                        tally.answers.append((item.id, "<unparsed>" if answer is None else answer, score))
                        if args.show:
                            console.print(
                                f"{task.name} {item.id} {side:5} {score:.0f} {seconds:5.2f}s {answer!r}"
                            )
            model = bench.lm.model_path.name
            adapter = bench.default_adapter()
        finally:
            bench.close()
    load_after = load_average()
    table = Table(title=f"Fidelity on {model} (greedy, cache off, {args.module}); geode = {adapter}")
    for column in ("set", "side", "correct", "unparsed", "seconds", "time vs raw", "correct vs raw"):
        table.add_column(column, justify="left" if column in ("set", "side") else "right")
    summary: dict[str, Any] = {
        "model": model,
        "adapter": adapter,
        "load_before": load_before,
        "load_after": load_after,
        "sets": {},
    }
    for task in tasks:
        tallies = results[task.name]
        raw = tallies["raw"]
        n = len(task.items)
        for side in sides:
            t = tallies[side]
            table.add_row(
                task.name,
                side,
                f"{t.correct}/{n}",
                str(t.unparsed),
                f"{t.seconds:.1f}",
                f"{t.seconds / raw.seconds:.2f}x" if raw.seconds else "-",
                f"{t.correct - raw.correct:+d}",
            )
        summary["sets"][task.name] = {
            side: {
                "correct": tallies[side].correct,
                "n": n,
                "unparsed": tallies[side].unparsed,
                "seconds": round(tallies[side].seconds, 2),
                "answers": tallies[side].answers,
            }
            for side in sides
        }
    console.print(table)
    console.print(f"load average before: {load_before}; after: {load_after} ({os.cpu_count()} cores)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
