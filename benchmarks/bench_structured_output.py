"""Structured-output parse rate of the embedded model through DSPy, with and without constrained decoding.

Ten signatures (classification, extraction, short QA, list outputs, typed ints/bools/floats, a nested
model) x five inputs each, run with ``dspy.Predict`` on ``geode.LocalLM`` through the runtime's default
adapter for it, ``geode.SmallModelAdapter`` (``--adapter json``: ``dspy.JSONAdapter``):

* constrained (ours): the engine declares JSON-schema support, the adapter sends the output schema,
  llama.cpp decodes under the grammar compiled from it (a single text output is a plain-text reply);
* unconstrained (anchor): the same model and prompts, ``structured_output=False``, so the adapter can only
  ask for JSON in the prompt.

Greedy decoding (LocalLM's default temperature 0). A constrained answer cut off by ``max_tokens`` before its
JSON closes is retried once with a repetition penalty (LocalLM's ``repetition_retry``; ``--no-repetition-retry``
turns it off); the seconds per call include such retries.

A call "parses" when DSPy returns every output field with its declared type. "Correct" compares the
fields that have one right answer (a 135M model gets many wrong; parse rate is the target, >= 0.95).

    .venv/bin/python benchmarks/bench_structured_output.py           # 10 signatures x 5 inputs x 2 modes
    .venv/bin/python benchmarks/bench_structured_output.py --quick   # 10 signatures x 1 input x 2 modes
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import dspy
import pydantic
from dspy.utils.exceptions import AdapterParseError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from geode.adapters import SmallModelAdapter
from geode.runtime.lm.local import LocalLM


class Sentiment(dspy.Signature):
    """Classify the sentiment of the review."""

    review: str = dspy.InputField()
    sentiment: Literal["positive", "negative", "neutral"] = dspy.OutputField()


class Topic(dspy.Signature):
    """Classify the news headline by topic."""

    headline: str = dspy.InputField()
    topic: Literal["sports", "politics", "technology", "business", "science"] = dspy.OutputField()


class Person(dspy.Signature):
    """Extract the person's name and age from the sentence."""

    sentence: str = dspy.InputField()
    name: str = dspy.OutputField()
    age: int = dspy.OutputField()


class Contact(dspy.Signature):
    """Extract the email address and the city from the message."""

    message: str = dspy.InputField()
    email: str = dspy.OutputField()
    city: str = dspy.OutputField()


class ContextQA(dspy.Signature):
    """Answer the question with a short phrase copied from the context."""

    context: str = dspy.InputField()
    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


class Keywords(dspy.Signature):
    """List the programming languages mentioned in the text."""

    text: str = dspy.InputField()
    languages: list[str] = dspy.OutputField()


class Count(dspy.Signature):
    """Count how many animals are mentioned in the sentence."""

    sentence: str = dspy.InputField()
    count: int = dspy.OutputField()


class IsQuestion(dspy.Signature):
    """Decide whether the text is a question."""

    text: str = dspy.InputField()
    is_question: bool = dspy.OutputField()


class Review(dspy.Signature):
    """Rate the product review from 1 (worst) to 5 (best) and say whether the reviewer recommends it."""

    review: str = dspy.InputField()
    rating: int = dspy.OutputField()
    recommends: bool = dspy.OutputField()
    summary: str = dspy.OutputField()


class LineItem(pydantic.BaseModel):
    product: str
    quantity: int
    unit_price: float


class Invoice(dspy.Signature):
    """Extract the line items of the order."""

    order: str = dspy.InputField()
    items: list[LineItem] = dspy.OutputField()


@dataclass(frozen=True)
class Case:
    inputs: Mapping[str, str]
    expected: Mapping[str, Any] = field(default_factory=dict)


SUITE: list[tuple[str, str, type[dspy.Signature], list[Case]]] = [
    (
        "sentiment",
        "classification",
        Sentiment,
        [
            Case({"review": "Absolutely loved it, works perfectly!"}, {"sentiment": "positive"}),
            Case({"review": "Broke after two days. Waste of money."}, {"sentiment": "negative"}),
            Case({"review": "It arrived on Tuesday in a brown box."}, {"sentiment": "neutral"}),
            Case({"review": "Terrible customer service, never again."}, {"sentiment": "negative"}),
            Case({"review": "Great value and fast shipping, thank you!"}, {"sentiment": "positive"}),
        ],
    ),
    (
        "topic",
        "classification",
        Topic,
        [
            Case({"headline": "Lakers beat Celtics 112-104 in overtime thriller"}, {"topic": "sports"}),
            Case({"headline": "Senate passes new budget bill after long debate"}, {"topic": "politics"}),
            Case({"headline": "Apple unveils faster chip for its new laptops"}, {"topic": "technology"}),
            Case({"headline": "Oil prices fall as stock markets rally"}, {"topic": "business"}),
            Case({"headline": "Astronomers discover water vapour on a distant planet"}, {"topic": "science"}),
        ],
    ),
    (
        "person",
        "extraction",
        Person,
        [
            Case({"sentence": "Maria Lopez is 34 years old."}, {"name": "Maria Lopez", "age": 34}),
            Case(
                {"sentence": "At 71, John Smith still runs every morning."}, {"name": "John Smith", "age": 71}
            ),
            Case({"sentence": "Little Tom turned 8 last week."}, {"name": "Tom", "age": 8}),
            Case({"sentence": "Priya Patel, aged 45, leads the team."}, {"name": "Priya Patel", "age": 45}),
            Case({"sentence": "The winner, Ken Ito, is 19."}, {"name": "Ken Ito", "age": 19}),
        ],
    ),
    (
        "contact",
        "extraction",
        Contact,
        [
            Case(
                {"message": "Write to anna@example.com, I live in Berlin."},
                {"email": "anna@example.com", "city": "Berlin"},
            ),
            Case(
                {"message": "I'm based in Lyon; reach me at paul.m@mail.fr"},
                {"email": "paul.m@mail.fr", "city": "Lyon"},
            ),
            Case(
                {"message": "Contact: sales@acme.io (office in Toronto)"},
                {"email": "sales@acme.io", "city": "Toronto"},
            ),
            Case({"message": "From Madrid with love - jo@x.es"}, {"email": "jo@x.es", "city": "Madrid"}),
            Case(
                {"message": "Email li.wei@corp.cn about the Shanghai visit."},
                {"email": "li.wei@corp.cn", "city": "Shanghai"},
            ),
        ],
    ),
    (
        "context qa",
        "short QA",
        ContextQA,
        [
            Case(
                {"context": "Paris is the capital of France.", "question": "What is the capital of France?"},
                {"answer": "Paris"},
            ),
            Case(
                {
                    "context": "The Nile is the longest river in Africa.",
                    "question": "Which river is longest in Africa?",
                },
                {"answer": "Nile"},
            ),
            Case(
                {
                    "context": "Water boils at 100 degrees Celsius.",
                    "question": "At what temperature does water boil?",
                },
                {"answer": "100"},
            ),
            Case(
                {"context": "Jupiter is the largest planet.", "question": "What is the largest planet?"},
                {"answer": "Jupiter"},
            ),
            Case(
                {
                    "context": "Ada Lovelace wrote the first program.",
                    "question": "Who wrote the first program?",
                },
                {"answer": "Ada Lovelace"},
            ),
        ],
    ),
    (
        "languages",
        "list output",
        Keywords,
        [
            Case({"text": "We rewrote the Python service in Rust."}, {"languages": ["python", "rust"]}),
            Case(
                {"text": "The frontend uses TypeScript and the backend Go."},
                {"languages": ["typescript", "go"]},
            ),
            Case({"text": "I learned C before Java."}, {"languages": ["c", "java"]}),
            Case({"text": "Ruby scripts call a Perl tool."}, {"languages": ["ruby", "perl"]}),
            Case({"text": "Our data team writes SQL and R."}, {"languages": ["sql", "r"]}),
        ],
    ),
    (
        "count",
        "typed int",
        Count,
        [
            Case({"sentence": "A cat and a dog sat by the door."}, {"count": 2}),
            Case({"sentence": "Three birds, one cow and a horse."}, {"count": 5}),
            Case({"sentence": "The fox watched the rabbit."}, {"count": 2}),
            Case({"sentence": "A lone wolf howled."}, {"count": 1}),
            Case({"sentence": "Two ducks and two geese swam past."}, {"count": 4}),
        ],
    ),
    (
        "is question",
        "typed bool",
        IsQuestion,
        [
            Case({"text": "Where is the nearest station?"}, {"is_question": True}),
            Case({"text": "The station is two blocks away."}, {"is_question": False}),
            Case({"text": "Can you help me with this?"}, {"is_question": True}),
            Case({"text": "Please close the door."}, {"is_question": False}),
            Case({"text": "What time does the shop open?"}, {"is_question": True}),
        ],
    ),
    (
        "review",
        "int + bool + text",
        Review,
        [
            Case({"review": "Five stars. Best headphones I've owned; buy them."}, {"recommends": True}),
            Case({"review": "Awful. The handle snapped. Do not buy."}, {"recommends": False}),
            Case({"review": "Decent blender for the price, I'd recommend it."}, {"recommends": True}),
            Case({"review": "Stopped charging after a week. Avoid."}, {"recommends": False}),
            Case({"review": "Comfortable shoes, I tell all my friends to get them."}, {"recommends": True}),
        ],
    ),
    (
        "invoice",
        "nested list",
        Invoice,
        [
            Case({"order": "2 notebooks at $3.50 each and 1 pen at $1.20."}),
            Case({"order": "One lamp for 25 euros."}),
            Case({"order": "3 apples at 0.40 each, 2 pears at 0.55 each."}),
            Case({"order": "A single chair, price 89.99."}),
            Case({"order": "4 cables at 7.00 and 1 charger at 19.50."}),
        ],
    ),
]


def _matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, str):
        return isinstance(actual, str) and expected.lower() in actual.lower()
    if isinstance(expected, list):
        return isinstance(actual, list) and sorted(expected) == sorted(str(a).lower() for a in actual)
    return expected == actual


@dataclass
class Score:
    calls: int = 0
    parsed: int = 0
    correct: int = 0
    checked: int = 0
    errors: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


ADAPTERS: dict[str, Any] = {"small": SmallModelAdapter, "json": dspy.JSONAdapter}


def run_case(
    lm: LocalLM, adapter: dspy.Adapter, signature: type[dspy.Signature], case: Case, score: Score
) -> None:
    score.calls += 1
    start = time.perf_counter()
    try:
        with dspy.context(lm=lm, adapter=adapter):
            prediction = dspy.Predict(signature)(**case.inputs)
    except AdapterParseError as exc:
        score.failures.append((exc.lm_response or "")[:120])
        return
    except Exception as exc:  # an engine or LM failure is not a parse failure; count it apart
        score.errors += 1
        score.failures.append(f"{type(exc).__name__}: {exc}"[:120])
        return
    finally:
        score.seconds += time.perf_counter() - start
    score.parsed += 1
    if case.expected:
        score.checked += 1
        score.correct += all(_matches(v, getattr(prediction, k, None)) for k, v in case.expected.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one input per signature")
    parser.add_argument("--max-tokens", type=int, default=192, help="cap on generated tokens per call")
    parser.add_argument("--show-failures", action="store_true", help="print the raw output of failed calls")
    parser.add_argument(
        "--adapter",
        choices=sorted(ADAPTERS),
        default="small",
        help="small: geode.SmallModelAdapter (the runtime's default for LocalLM); json: dspy.JSONAdapter",
    )
    parser.add_argument(
        "--repeat-penalty", type=float, default=None, help="llama.cpp repetition penalty on every call"
    )
    parser.add_argument(
        "--no-repetition-retry",
        action="store_true",
        help="do not retry schema-constrained answers cut off mid-JSON (LocalLM retries once by default)",
    )
    args = parser.parse_args()
    # DSPy logs every truncated answer; the table counts them.
    logging.getLogger("dspy").setLevel(logging.ERROR)

    console = Console(width=120)
    common: dict[str, Any] = {"cache": False, "max_tokens": args.max_tokens}
    if args.repeat_penalty is not None:
        common["repeat_penalty"] = args.repeat_penalty
    if args.no_repetition_retry:
        common["repetition_retry"] = None
    modes = {
        "constrained": LocalLM(structured_output=True, **common),
        "unconstrained": LocalLM(structured_output=False, **common),
    }
    adapter = ADAPTERS[args.adapter]()
    suite = [(name, kind, sig, cases[:1] if args.quick else cases) for name, kind, sig, cases in SUITE]
    scores = {(name, mode): Score() for name, *_ in suite for mode in modes}
    total = sum(len(cases) for *_, cases in suite) * len(modes)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("calling the local model", total=total)
        turn = 0
        for name, _kind, signature, cases in suite:
            for case in cases:
                # Alternate which mode goes first so shared-machine load and KV-cache reuse favour neither.
                order = list(modes) if turn % 2 == 0 else list(modes)[::-1]
                turn += 1
                for mode in order:
                    run_case(modes[mode], adapter, signature, case, scores[(name, mode)])
                    progress.advance(task)

    table = Table(title=f"Structured output through {type(adapter).__name__} on {modes['constrained'].model}")
    table.add_column("signature")
    table.add_column("kind")
    table.add_column("parsed, constrained (ours)", justify="right")
    table.add_column("parsed, unconstrained", justify="right")
    table.add_column("correct, constrained", justify="right")
    table.add_column("correct, unconstrained", justify="right")
    totals = {mode: Score() for mode in modes}
    for name, kind, *_ in suite:
        ours, anchor = scores[(name, "constrained")], scores[(name, "unconstrained")]
        for mode in modes:
            s, t = scores[(name, mode)], totals[mode]
            t.calls += s.calls
            t.parsed += s.parsed
            t.correct += s.correct
            t.checked += s.checked
            t.errors += s.errors
            t.seconds += s.seconds
        table.add_row(
            name,
            kind,
            f"{ours.parsed}/{ours.calls}",
            f"{anchor.parsed}/{anchor.calls}",
            f"{ours.correct}/{ours.checked}" if ours.checked else "-",
            f"{anchor.correct}/{anchor.checked}" if anchor.checked else "-",
        )
    ours, anchor = totals["constrained"], totals["unconstrained"]
    table.add_section()
    table.add_row(
        "parse rate",
        "",
        f"{ours.parsed / ours.calls:.2f}",
        f"{anchor.parsed / anchor.calls:.2f}",
        f"{ours.correct}/{ours.checked}",
        f"{anchor.correct}/{anchor.checked}",
    )
    table.add_row(
        "seconds per call",
        "",
        f"{ours.seconds / ours.calls:.1f}",
        f"{anchor.seconds / anchor.calls:.1f}",
        "",
        "",
    )
    console.print(table)
    if ours.errors or anchor.errors:
        console.print(
            f"LM errors (not parse failures): constrained {ours.errors}, unconstrained {anchor.errors}"
        )
    rate = ours.parsed / ours.calls
    console.print(
        f"constrained parse rate {rate:.2f} (target >= 0.95: {'met' if rate >= 0.95 else 'NOT met'})"
    )
    if args.show_failures:
        for (name, mode), score in scores.items():
            for failure in score.failures:
                console.print(f"[dim]{mode:>13} {name:<12} {failure!r}[/dim]")


if __name__ == "__main__":
    main()
