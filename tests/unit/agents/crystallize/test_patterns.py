"""Pattern detection and argument derivation over recorded runs with three patterns and noise."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from tests.unit.agents.crystallize.scenario import Recorded

from geode.agents.crystallize import (
    AgentRun,
    CrystallizeError,
    CrystallizeOptions,
    RunScore,
    ToolCall,
    analyze,
    choose_patterns,
    learn_extractor,
    runs_from_traces,
)
from geode.agents.crystallize.patterns import pattern_key


def _run(
    question: str, calls: list[tuple[str, dict[str, Any], str | None]], answer: Any, **extra: Any
) -> AgentRun:
    return AgentRun(
        trace_id=f"{abs(hash(question)):032x}"[-32:],
        span_id=f"{abs(hash(question)):016x}"[-16:],
        program="p",
        agent="a",
        inputs={"question": question},
        outputs={"answer": answer},
        calls=tuple(
            ToolCall(
                tool, args, None if obs is None else obs, None if obs is not None else "boom", f"{i:016x}"
            )
            for i, (tool, args, obs) in enumerate(calls)
        ),
        termination=extra.pop("termination", "finish"),
        status="OK",
        started=datetime.now(UTC),
        duration_ms=1.0,
        lm_calls=3,
        tokens=10,
        score=extra.pop("score", 1.0),
        score_source=extra.pop("score_source", "feedback"),
        **extra,
    )


def test_three_patterns_with_shares_success_rates_and_noise(recorded_runs: list[AgentRun]) -> None:
    analysis = analyze(recorded_runs, output_fields=["answer"], unscored_ok=True)
    assert analysis.runs == 14 and analysis.successful == 13
    assert analysis.failures == {"max_iters": 1}
    by_label = {p.label: p for p in analysis.patterns}
    assert list(by_label) == ["lookup_stock", "calculate", "lookup_stock_each_then_calculate"]
    lookup, calc, both = by_label.values()
    assert (len(lookup.runs), lookup.attempts) == (6, 7)  # the looping run followed it and failed
    assert lookup.share == pytest.approx(6 / 13) and lookup.success_rate == pytest.approx(6 / 7)
    assert calc.retried == 1  # the run whose first expression failed
    assert both.tools == ("lookup_stock", "calculate")
    assert both.steps[0].repeated and both.steps[0].max_calls == 2 and not both.steps[1].repeated
    assert analysis.dominant is lookup


def test_repeats_collapse_and_failed_calls_drop_out_of_the_pattern_key() -> None:
    run = _run(
        "q",
        [
            ("search", {"q": "a"}, None),
            ("search", {"q": "b"}, "x"),
            ("search", {"q": "c"}, "y"),
            ("read", {}, "z"),
        ],
        "z",
    )
    assert pattern_key(run) == ("search", "read")


def test_argument_and_output_derivations(recorded_runs: list[AgentRun]) -> None:
    analysis = analyze(recorded_runs, output_fields=["answer"], unscored_ok=True)
    by_label = {p.label: p for p in analysis.patterns}
    lookup = by_label["lookup_stock"]
    item = lookup.steps[0].args["item"]
    assert item.kind == "lm" and item.depends_on == ()  # "widget" from "How many widgets...": a model's job
    answer = lookup.outputs["answer"]
    assert answer.kind == "extract" and answer.step == 0 and answer.support == 6
    assert answer.pattern is not None and "units" in answer.pattern
    both = by_label["lookup_stock_each_then_calculate"]
    expression = both.steps[1].args["expression"]
    assert expression.kind == "lm" and expression.depends_on == (0,)  # "3 + 14" reads the lookups
    assert both.outputs["answer"].kind == "observation" and both.outputs["answer"].step == 1
    # The "(wrong)" run answered 10 for 3 x 3, so copying the calculator's result holds in 3 of 4 runs only.
    calc_answer = by_label["calculate"].outputs["answer"]
    assert calc_answer.kind == "lm" and calc_answer.found_in == (0,)
    assert "found in step 1 (calculate)" in calc_answer.describe(["calculate"])


def test_a_score_turns_a_wrong_run_into_a_failure_and_the_rule_holds(recorded: Recorded) -> None:
    traces = list(recorded.source.traces())
    wrong = next(t for t in traces if t.root is not None and "(wrong)" in str(t.root.input_value))
    runs = runs_from_traces(traces, scores={wrong.trace_id: RunScore(0.0)})
    analysis = analyze(runs, output_fields=["answer"], unscored_ok=True)
    calc = next(p for p in analysis.patterns if p.label == "calculate")
    assert analysis.failures == {"max_iters": 1, "low score": 1}
    assert (len(calc.runs), calc.attempts) == (3, 4)
    assert calc.outputs["answer"].kind == "observation"


def test_input_copies_constants_and_their_guards() -> None:
    runs = [
        _run("alpha", [("search", {"query": "alpha", "k": 3}, "found alpha")], "found alpha"),
        _run("beta", [("search", {"query": "beta", "k": 3}, "found beta")], "found beta"),
        _run(" Gamma ", [("search", {"query": "gamma", "k": 3}, "found gamma")], "found gamma"),
    ]
    (pattern,) = analyze(runs, output_fields=["answer"], agreement=1.0).patterns
    query = pattern.steps[0].args["query"]
    assert (query.kind, query.field, query.transform) == ("input", "question", "lower")
    k = pattern.steps[0].args["k"]
    assert (k.kind, k.value) == ("constant", 3)
    assert pattern.outputs["answer"].kind == "observation"
    # The same question asked twice: a value that never varies proves nothing, so it stays an LM step.
    same = [
        _run("alpha", [("search", {"query": "x"}, "r")], "r"),
        _run("alpha", [("search", {"query": "x"}, "r")], "r"),
    ]
    (pattern,) = analyze(same, output_fields=["answer"]).patterns
    assert pattern.steps[0].args["query"].kind == "lm"


def test_one_run_is_not_enough_for_a_rule_except_an_input_copy() -> None:
    runs = [_run("alpha", [("search", {"query": "alpha", "k": 3}, "found 7 things")], "7")]
    (pattern,) = analyze(runs, output_fields=["answer"]).patterns
    assert pattern.steps[0].args["query"].kind == "input"
    assert pattern.steps[0].args["k"].kind == "lm"
    assert pattern.outputs["answer"].kind == "lm"


def test_learned_extractors() -> None:
    assert learn_extractor([("widget: 3 units in stock", ["3"]), ("gadget: 14 units in stock", ["14"])]) == (
        r": (-?\d+(?:[.,]\d+)*) units in stock"
    )
    ids = learn_extractor(
        [("[1] (doc-12) a\n[2] (doc-3) b", ["doc-12", "doc-3"]), ("[1] (kb-7) c", ["kb-7"])]
    )
    assert ids is not None
    import re

    assert re.findall(ids, "[1] (x-1) a\n[2] (y-22) b") == ["x-1", "y-22"]
    assert learn_extractor([("12", ["12"]), ("345", ["345"])]) == r"^(-?\d+(?:[.,]\d+)*)$"
    # Two runs that both asked about gadgets: "gadget" is the sample's word, not the format's.
    same = [("gadget: 14 units in stock", ["14"])] * 2
    assert learn_extractor(same) == r": (-?\d+(?:[.,]\d+)*) units in stock"
    assert learn_extractor([("abc", ["zzz"])]) is None
    assert learn_extractor([]) is None


def test_choosing_routes(recorded_runs: list[AgentRun]) -> None:
    analysis = analyze(recorded_runs, output_fields=["answer"], unscored_ok=True)
    routes, why = choose_patterns(analysis, CrystallizeOptions())
    assert [p.label for p in routes] == ["lookup_stock", "calculate", "lookup_stock_each_then_calculate"]
    assert "covers only 46%" in why and "router over 3" in why
    routes, why = choose_patterns(analysis, CrystallizeOptions(min_share=0.4))
    assert [p.label for p in routes] == ["lookup_stock"] and "one fixed route" in why
    routes, _ = choose_patterns(analysis, CrystallizeOptions(max_routes=2, min_route_runs=4))
    assert [p.label for p in routes] == ["lookup_stock", "calculate"]


def test_nothing_to_crystallize() -> None:
    failed = [_run("q", [("search", {"query": "q"}, "r")], None, termination="max_iters")]
    with pytest.raises(CrystallizeError, match=r"none of the 1 recorded runs succeeded \(1 max_iters\)"):
        choose_patterns(analyze(failed), CrystallizeOptions())
    once = [_run("q", [("search", {"query": "q"}, "r")], "r")]
    with pytest.raises(CrystallizeError, match="no tool pattern occurs in 2 or more successful runs"):
        choose_patterns(analyze(once), CrystallizeOptions())


def test_a_value_found_in_the_inputs_is_not_a_constant() -> None:
    # Two questions about gadgets, phrased differently: lookup("gadget") both times is a sample's
    # coincidence, not a constant; the answer 14 comes from the tool, not from nowhere.
    runs = [
        _run("How many gadgets do we have?", [("lookup", {"item": "gadget"}, "gadget: 14 units")], "14"),
        _run(
            "How many units of gadget are in stock?",
            [("lookup", {"item": "gadget"}, "gadget: 14 units")],
            "14",
        ),
    ]
    (pattern,) = analyze(runs, output_fields=["answer"]).patterns
    assert pattern.steps[0].args["item"].kind == "lm"
    assert pattern.outputs["answer"].kind == "extract"


def test_retries_after_a_first_call_that_copies_the_input_are_dropped() -> None:
    # A small model searches the question, then a truncated copy of it: the workflow searches once.
    runs = [
        _run(q, [("search", {"q": q}, f"about {q}"), ("search", {"q": q[:-4]}, "noise")], f"answer {i}")
        for i, q in enumerate(["What does the tent cost?", "When do stores open?", "Is there a warranty?"])
    ]
    (pattern,) = analyze(runs, output_fields=["answer"]).patterns
    (step,) = pattern.steps
    assert pattern.label == "search" and not step.repeated and step.max_calls == 1
    assert step.args["q"].kind == "input" and pattern.retried == 3
    assert [calls[0].observation for calls in step.calls] == [f"about {r.inputs['question']}" for r in runs]
    assert pattern.outputs["answer"].kind == "lm"


def test_near_copies_of_the_input_top_up_exact_ones() -> None:
    # Two runs search the question itself; the third appends a guess to it. At the default agreement
    # (3 of 3 runs) exact copies alone fall short, and the near copy makes up the difference.
    questions = ["What does the Ridgeline tent cost?", "When do the stores open?", "Is there a warranty?"]
    queries = [questions[0], questions[1], questions[2] + " 2 years"]
    runs = [
        _run(q, [("search", {"q": query}, f"about {q}")], f"answer {i}")
        for i, (q, query) in enumerate(zip(questions, queries, strict=True))
    ]
    (pattern,) = analyze(runs, output_fields=["answer"]).patterns
    rule = pattern.steps[0].args["q"]
    assert (rule.kind, rule.field, rule.support, rule.near) == ("input", "question", 2, 1)
    assert rule.describe() == "copied from input 'question' (2/3 runs, 1 more a near copy)"
    # The whole question followed by a long made-up answer is a copy too: the model kept on writing.
    rambling = questions[0] + " The Ridgeline backpacking tent is priced at $10, with 25% off all items."
    two = [_run(questions[0], [("search", {"q": rambling}, "r")], "answer 0"), runs[1]]
    (pattern,) = analyze(two, output_fields=["answer"]).patterns
    assert (pattern.steps[0].args["q"].kind, pattern.steps[0].args["q"].near) == ("input", 1)


def test_fragments_of_the_input_are_not_near_copies() -> None:
    # "gadget" out of "How many gadgets are in stock?" is an extraction: no copy rule, however many runs.
    questions = ["How many gadgets are in stock?", "How many widgets are left?", "Count the sprockets please"]
    items = ["gadget", "widget", "sprocket"]
    runs = [
        _run(q, [("lookup", {"item": item}, f"{item}: {i} units")], str(i))
        for i, (q, item) in enumerate(zip(questions, items, strict=True))
    ]
    (pattern,) = analyze(runs, output_fields=["answer"]).patterns
    assert pattern.steps[0].args["item"].kind == "lm"
    # Near copies alone never make a rule: at least as many runs must copy the input exactly.
    paraphrased = [
        _run(q, [("search", {"q": q + " now"}, "r")], "r")
        for q in ["When do the stores open?", "Is there a warranty?"]
    ]
    (pattern,) = analyze(paraphrased, output_fields=["answer"]).patterns
    assert pattern.steps[0].args["q"].kind == "lm"


def test_completed_runs_decide_an_argument_the_successful_ones_leave_to_an_lm_step() -> None:
    # One correct run searched a paraphrase; four wrong runs of the same tool sequence searched the question
    # itself. From the correct run alone the query needs an LM step; how the agent forms it is a copy.
    right = _run("How much does the tent cost?", [("search", {"q": "tent price list"}, "Tent: $249")], "249")
    wrong = [
        _run(q, [("search", {"q": q}, f"about {q}")], "no idea", score=0.0)
        for q in [
            "When do stores open?",
            "Is there a warranty?",
            "Do you ship abroad?",
            "Who makes the stove?",
        ]
    ]
    # A failed run (a tool error) is no evidence of how arguments are formed.
    broken = _run("What is the boot's sole?", [("search", {"q": "boots"}, None)], None, score=0.0)
    runs = [right, *wrong, broken]
    (alone,) = analyze(runs, output_fields=["answer"]).patterns
    assert alone.steps[0].args["q"].kind == "lm"
    (pattern,) = analyze(runs, output_fields=["answer"], arg_evidence="completed").patterns
    rule = pattern.steps[0].args["q"]
    assert (rule.kind, rule.field, rule.completed, rule.support, rule.total) == (
        "input",
        "question",
        True,
        4,
        5,
    )
    assert rule.describe() == "copied from input 'question' (4/5 of the completed runs)"
    # Patterns, outputs and demos still come from the correct run only.
    assert [r.inputs["question"] for r in pattern.runs] == ["How much does the tent cost?"]
    assert pattern.outputs["answer"].kind != "input"
    # A majority suffices, near copies included (a small model's searches are noisy) ...
    noisy = [
        _run(
            "Where do you ship from?",
            [("search", {"q": "Where do you ship from? Reno"}, "r")],
            "x",
            score=0.0,
        ),
        _run("Can I rent a stove?", [("search", {"q": "stove"}, "r")], "x", score=0.0),
    ]
    (pattern,) = analyze(
        [right, *wrong[:2], *noisy], output_fields=["answer"], arg_evidence="completed"
    ).patterns
    rule = pattern.steps[0].args["q"]
    assert (rule.kind, rule.support, rule.near, rule.total) == ("input", 2, 1, 5)
    # ... but when most completed runs do not copy it, it stays an LM step.
    invented = [_run(q, [("search", {"q": "catalogue"}, "r")], "x", score=0.0) for q in ["A?", "B?", "C?"]]
    (still,) = analyze(
        [right, wrong[0], *invented], output_fields=["answer"], arg_evidence="completed"
    ).patterns
    assert still.steps[0].args["q"].kind == "lm"
