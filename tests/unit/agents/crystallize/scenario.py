"""A scripted inventory agent whose recorded runs have three tool patterns plus noise, for crystallization tests.

The "model" is a function of the prompt (a ScriptedLM policy): it reads the question and the trajectory
and acts like a competent agent on the bundled inventory task (``geode.examples.inventory``): a lookup
question calls ``lookup_stock``; an arithmetic question calls ``calculate``; a "together" question looks
both items up, then adds. Noise: some arithmetic runs first send a bad expression (a failed call, then a
retry); "loop" questions never finish (max_iters); "wrong" questions finish with a wrong answer (a failed
run once scored). The same policy answers the crystallized workflow's router, plan and answer steps,
from the fields those prompts ask for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from geode.agents.agent import Agent
from geode.agents.crystallize import CrystallizeOptions
from geode.agents.steps import Budget
from geode.examples.inventory import STOCK, build_agent
from geode.runtime.instrumentation import instrument, uninstrument
from geode.testing import ScriptedLM, in_memory_tracing
from geode.traces.sources import InMemoryTraceSource

__all__ = ["QUESTIONS", "TRUSTED", "Recorded", "notes_agent", "oracle", "record_runs"]

QUESTIONS: tuple[str, ...] = (
    "How many widgets are in stock?",
    "How many gadgets are in stock?",
    "How many sprockets do we have in stock?",
    "Is any gizmo in stock? Give the number of units.",
    "How many widgets do we have?",
    "How many gadgets do we have left?",
    "What is 12 times 7?",
    "What is 1234 plus 5678?",
    "What is 9 times 9? (retry)",
    "How many widgets and gadgets are in stock together?",
    "How many sprockets and widgets are in stock together?",
    "How many gadgets and gizmos are in stock together?",
    "How many widgets are in stock? (loop)",
    "What is 3 times 3? (wrong)",
)

TRUSTED = CrystallizeOptions(unscored_ok=True)
"""Nobody scores the scenario's runs; tests about patterns, specs and workflows trust them (the rule
that unscored runs are unknown is tested on its own)."""

_ITEMS = tuple(STOCK)
_OPS = {"times": "*", "plus": "+"}


# The policy reads the prompts of DSPy's ChatAdapter/JSONAdapter (``[[ ## name ## ]]`` sections, "Your
# output fields are") and of geode's SmallModelAdapter (``Label: value`` blocks, "Reply with a JSON
# object with the keys", or a plain-text reply for one output).
_SMALL_KEYS = "Reply with a JSON object with the keys"


def _label(name: str) -> str:
    return " ".join(part.capitalize() for part in re.sub(r"([a-z])(\d)", r"\1_\2", name).split("_"))


def _section(text: str, name: str) -> str | None:
    found = re.search(
        rf"\[\[ ## {re.escape(name)} ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond |\Z)", text, re.S
    )
    if found is None:
        found = re.search(
            rf"^{re.escape(_label(name))}:[ \n](.*?)(?=\n\n[A-Z][\w ]*:[ \n]|\Z)", text, re.S | re.M
        )
    return found.group(1).strip() if found else None


def _outputs(system: str) -> list[str]:
    if "Your output fields are:" in system:
        block = system.split("Your output fields are:", 1)[1].split("All interactions", 1)[0]
        return re.findall(r"\d+\. `(\w+)`", block)
    if _SMALL_KEYS in system:
        return re.findall(r'"(\w+)" \(', system.split(_SMALL_KEYS, 1)[1])
    return ["answer"]  # one text output: the reply is its plain text, whatever its name


def _is_list_field(system: str, name: str) -> bool:
    if f"`{name}`" in system:
        return re.search(r"\(list\[str\]\)", system.split(f"`{name}`", 1)[1][:20]) is not None
    return f'"{name}" (a list of' in system


def _items(question: str) -> list[str]:
    words = re.findall(r"[a-z]+", question.lower())
    found = []
    for word in words:
        name = word[:-1] if word.endswith("s") and word[:-1] in STOCK else word
        if name in STOCK and name not in found:
            found.append(name)
    return found


def _expression(question: str) -> str | None:
    found = re.search(r"(\d+) (times|plus) (\d+)", question)
    if found is None:
        return None
    return f"{found.group(1)} {_OPS[found.group(2)]} {found.group(3)}"


def _agent_step(question: str, trajectory: str) -> dict[str, Any]:
    calls = re.findall(r"\[\[ ## tool_name_\d+ ## \]\]\n(\w+)", trajectory) or re.findall(
        r"^Tool Name \d+: (\w+)", trajectory, re.M
    )
    observations = re.findall(
        r"\[\[ ## observation_\d+ ## \]\]\n(.*?)(?=\n\n\[\[ ## |\Z)", trajectory, re.S
    ) or re.findall(r"^Observation \d+:[ \n](.*?)(?=\n\n[A-Z][\w ]*:[ \n]|\Z)", trajectory, re.S | re.M)
    if "(loop)" in question:
        return {
            "next_thought": "Check again.",
            "next_tool_name": "lookup_stock",
            "next_tool_args": {"item": f"widget{len(calls)}"},
        }
    expression = _expression(question)
    items = _items(question)
    if expression is not None:
        if "(retry)" in question and not calls:
            return {
                "next_thought": "Compute.",
                "next_tool_name": "calculate",
                "next_tool_args": {"expression": "nine times nine"},
            }
        if not any(o.strip().lstrip("-").replace(".", "").isdigit() for o in observations):
            return {
                "next_thought": "Compute.",
                "next_tool_name": "calculate",
                "next_tool_args": {"expression": expression},
            }
        return {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}}
    looked = len([c for c in calls if c == "lookup_stock"])
    if looked < len(items):
        return {
            "next_thought": "Look it up.",
            "next_tool_name": "lookup_stock",
            "next_tool_args": {"item": items[looked]},
        }
    if len(items) > 1 and "calculate" not in calls:
        numbers = [re.search(r": (\d+) units", o) for o in observations]
        total = " + ".join(n.group(1) for n in numbers if n)
        return {
            "next_thought": "Add them.",
            "next_tool_name": "calculate",
            "next_tool_args": {"expression": total},
        }
    return {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}}


def _answer_from(question: str, text: str) -> str:
    if "(wrong)" in question:
        return "10"
    if "together" in question or _expression(question):
        body = re.sub(r"\[\[ ## \w+ ## \]\]", "", text.replace(question, ""))
        body = re.sub(r"(?m)^[A-Z][A-Za-z ]*(?: \d+)?:", "", body)  # SmallModelAdapter's labels
        numbers = re.findall(r"-?\d+(?:\.\d+)?", body)
        return numbers[-1] if numbers else "?"
    found = re.search(r": (\d+) units", text)
    return found.group(1) if found else "?"


def oracle(messages: list[dict[str, str]]) -> dict[str, Any]:
    """Answer any prompt of the inventory agent or of its crystallized workflow."""
    system, user = messages[0]["content"], messages[-1]["content"]
    outputs = _outputs(system)
    question = _section(user, "question") or ""
    if "next_tool_name" in outputs:
        trajectory = user.split("[[ ## trajectory ## ]]\n", 1)[-1].split("\n\nRespond ", 1)[0]
        return _agent_step(question, trajectory)
    answer: dict[str, Any] = {}
    if "route" in outputs:
        if _expression(question) is not None:
            answer["route"] = "calculate"
        elif len(_items(question)) > 1:
            answer["route"] = "lookup_stock_each_then_calculate"
        elif _items(question):
            answer["route"] = "lookup_stock"
        else:
            answer["route"] = "other"
    for name in outputs:
        if name == "reasoning":
            answer[name] = "From the tool results."
        elif name.startswith("lookup_stock") and "_item" in name:
            items = _items(question)
            answer[name] = items if _is_list_field(system, name) else (items[0] if items else "")
        elif name.startswith("calculate") and "_expression" in name:
            results = _section(user, "lookup_stock_results")
            if results:
                numbers = re.findall(r": (\d+) units", results)
                answer[name] = " + ".join(numbers)
            else:
                answer[name] = _expression(question) or ""
        elif name == "answer":
            answer[name] = _answer_from(question, user.split("[[ ## question ## ]]")[-1])
    return answer


def _notes_search() -> Any:
    notes = {
        "return": "Returns are accepted within 30 days.",
        "ship": "Orders ship within 2 days.",
        "warrant": "Every widget has a 1 year warranty.",
    }

    def search(query: str) -> str:
        """Search the shop's notes."""
        return next((text for key, text in notes.items() if key in query.lower()), "No note found.")

    return search


notes_agent = Agent("question -> answer", tools=[_notes_search()], name="notes")
"""An agent whose only tool is a closure (no importable reference): the workflow takes it from the agent."""


@dataclass
class Recorded:
    """Traced runs of the scripted agent."""

    source: InMemoryTraceSource
    lm: ScriptedLM
    agent: dspy.Module


def record_runs(
    questions: Sequence[str] = QUESTIONS, *, agent: dspy.Module | None = None, lm: ScriptedLM | None = None
) -> Recorded:
    """Run the scripted agent (or ``agent`` on ``lm``) on ``questions`` under in-memory tracing."""
    provider, exporter = in_memory_tracing()
    program = agent if agent is not None else build_agent(Budget(max_iters=4))
    lm = lm if lm is not None else ScriptedLM(oracle)
    instrument(tracer_provider=provider)
    try:
        with dspy.context(lm=lm):
            for question in questions:
                program(question=question)
    finally:
        uninstrument()
    return Recorded(InMemoryTraceSource(list(exporter.get_finished_spans())), lm, program)


def dumps(value: Any) -> str:
    """Compact JSON, for assertion messages."""
    return json.dumps(value, default=str)[:2000]
