"""Local LM throughput: ``geode.LocalLM`` (through dspy.LM's whole call path) vs llama.cpp called directly.

Same process, same loaded model, same prompts, greedy decoding. The KV cache is cleared before every call,
so each side pays for its whole prompt, and the two sides alternate (A B B A ...) so that load on a shared
machine hits both alike. The anchor is ``llama_cpp.Llama.create_chat_completion``; ours is
``LocalLM(messages=...)``, i.e. DSPy's request preparation, our engine, and DSPy's history/usage handling.

Target: our tokens/s >= 0.95 x the anchor's.

    .venv/bin/python benchmarks/bench_local_lm.py            # 6 prompts x 3 rounds, 64 new tokens
    .venv/bin/python benchmarks/bench_local_lm.py --quick    # 3 prompts x 1 round, 32 new tokens
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import dspy
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from geode.runtime.lm.local import LocalLM

Side = Literal["direct", "geode"]


class ContextQA(dspy.Signature):
    """Answer the question using only the context."""

    context: str = dspy.InputField()
    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


class Ticket(dspy.Signature):
    """Triage a support ticket."""

    ticket: str = dspy.InputField()
    category: Literal["billing", "bug", "feature", "other"] = dspy.OutputField()
    urgent: bool = dspy.OutputField()
    summary: str = dspy.OutputField()


def _dspy_messages(signature: type[dspy.Signature], **inputs: str) -> list[dict[str, Any]]:
    # The prompts DSPy programs really send: long system prompt, structured user turn.
    return dspy.JSONAdapter().format(signature, demos=[], inputs=inputs)


def prompts() -> list[tuple[str, list[dict[str, Any]]]]:
    facts = (
        "Paris is the capital of France. The Seine flows through Paris. "
        "The Eiffel Tower was completed in 1889 and is 330 metres tall. " * 3
    )
    return [
        ("haiku", [{"role": "user", "content": "Write a haiku about autumn leaves."}]),
        (
            "dspy qa",
            _dspy_messages(ContextQA, context=facts, question="How tall is the Eiffel Tower?"),
        ),
        (
            "explain",
            [
                {"role": "system", "content": "You are a patient teacher."},
                {"role": "user", "content": "Explain what a vector database is, in a short paragraph."},
            ],
        ),
        (
            "dspy triage",
            _dspy_messages(
                Ticket, ticket="I was charged twice for my subscription this month, please refund one."
            ),
        ),
        ("list", [{"role": "user", "content": "List ten fruits, one per line."}]),
        ("story", [{"role": "user", "content": "Tell a short story about a robot who learns to paint."}]),
    ]


@dataclass
class Tally:
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    texts: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0

    @property
    def all_tokens_per_s(self) -> float:
        return (self.prompt_tokens + self.completion_tokens) / self.seconds if self.seconds else 0.0


def run_direct(lm: LocalLM, messages: list[dict[str, Any]], max_tokens: int) -> tuple[float, int, int, str]:
    llama = lm.llama
    with lm.loaded.lock:
        llama.reset()
        start = time.perf_counter()
        result = llama.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0)
        elapsed = time.perf_counter() - start
    usage = result["usage"]
    text = result["choices"][0]["message"]["content"] or ""
    return elapsed, usage["prompt_tokens"], usage["completion_tokens"], text


def run_geode(lm: LocalLM, messages: list[dict[str, Any]], max_tokens: int) -> tuple[float, int, int, str]:
    with lm.loaded.lock:
        lm.llama.reset()
    start = time.perf_counter()
    with warnings.catch_warnings():
        # messages= is what DSPy's own adapters pass in 3.4 (deprecated for 3.5); it is the path measured.
        warnings.simplefilter("ignore", DeprecationWarning)
        outputs = lm(messages=messages, max_tokens=max_tokens, temperature=0.0)
    elapsed = time.perf_counter() - start
    usage = lm.history[-1]["usage"]
    text = outputs[0] if isinstance(outputs[0], str) else outputs[0]["text"]
    return elapsed, usage["prompt_tokens"], usage["completion_tokens"], text


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 prompts, 1 round, 32 new tokens")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per prompt and side (default 3)")
    parser.add_argument("--max-tokens", type=int, default=None, help="new tokens per call (default 64)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    max_tokens = args.max_tokens or (32 if args.quick else 64)
    cases = prompts()[:3] if args.quick else prompts()

    console = Console(width=120)
    # DSPy warns on every answer cut at max_tokens; here that is the point.
    logging.getLogger("dspy").setLevel(logging.ERROR)
    lm = LocalLM(cache=False, threads=args.threads)
    run_geode(lm, cases[0][1], 4)  # warm-up: first-call allocations, not part of either figure

    per_prompt: dict[str, dict[Side, Tally]] = {
        name: {"direct": Tally(), "geode": Tally()} for name, _ in cases
    }
    pair_ratios: list[float] = []
    runners = {"direct": run_direct, "geode": run_geode}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating", total=len(cases) * rounds * 2)
        for round_index in range(rounds):
            for case_index, (name, messages) in enumerate(cases):
                order: list[Side] = (
                    ["direct", "geode"] if (round_index + case_index) % 2 == 0 else ["geode", "direct"]
                )
                pair: dict[Side, float] = {}
                for side in order:
                    elapsed, prompt_tokens, completion_tokens, text = runners[side](lm, messages, max_tokens)
                    tally = per_prompt[name][side]
                    tally.seconds += elapsed
                    tally.prompt_tokens += prompt_tokens
                    tally.completion_tokens += completion_tokens
                    tally.texts.append(text)
                    pair[side] = completion_tokens / elapsed
                    progress.advance(task)
                pair_ratios.append(pair["geode"] / pair["direct"])

    table = Table(
        title=f"Local LM throughput: {lm.model}, greedy, {max_tokens} new tokens, {rounds} round(s)"
    )
    table.add_column("prompt")
    table.add_column("prompt tok", justify="right")
    table.add_column("direct llama.cpp tok/s", justify="right")
    table.add_column("geode.LocalLM tok/s", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("same text", justify="right")
    totals: dict[Side, Tally] = {"direct": Tally(), "geode": Tally()}
    for name, sides in per_prompt.items():
        direct, ours = sides["direct"], sides["geode"]
        for side, tally in sides.items():
            totals[side].seconds += tally.seconds
            totals[side].prompt_tokens += tally.prompt_tokens
            totals[side].completion_tokens += tally.completion_tokens
        same = sum(a == b for a, b in zip(direct.texts, ours.texts, strict=True))
        table.add_row(
            name,
            str(direct.prompt_tokens // rounds),
            f"{direct.tokens_per_s:.1f}",
            f"{ours.tokens_per_s:.1f}",
            f"{ours.tokens_per_s / direct.tokens_per_s:.3f}",
            f"{same}/{rounds}",
        )
    direct, ours = totals["direct"], totals["geode"]
    table.add_section()
    table.add_row(
        "all (new tokens/s)",
        "",
        f"{direct.tokens_per_s:.1f}",
        f"{ours.tokens_per_s:.1f}",
        f"{ours.tokens_per_s / direct.tokens_per_s:.3f}",
        "",
    )
    table.add_row(
        "all (prompt+new tokens/s)",
        "",
        f"{direct.all_tokens_per_s:.1f}",
        f"{ours.all_tokens_per_s:.1f}",
        f"{ours.all_tokens_per_s / direct.all_tokens_per_s:.3f}",
        "",
    )
    console.print(table)
    ratio = ours.tokens_per_s / direct.tokens_per_s
    console.print(
        f"median per-pair ratio {statistics.median(pair_ratios):.3f} over {len(pair_ratios)} pairs; "
        f"overall {ratio:.3f} (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
