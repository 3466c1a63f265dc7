"""A small bundled agent task: stock lookups plus arithmetic, with questions and expected answers.

Used by ``benchmarks/bench_agent.py`` (valid-step rate and task success on the embedded model), the
local-model integration test and the docs. Run it with the CLI as ``geode.examples.inventory:agent``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from dspy.signatures.signature import make_signature

from geode.agents.agent import Agent
from geode.agents.calculator import calculate
from geode.agents.steps import Budget

__all__ = ["STOCK", "TASKS", "InventoryTask", "agent", "build_agent", "is_correct", "lookup_stock"]

STOCK: Mapping[str, int] = {"widget": 3, "gadget": 14, "sprocket": 27, "gizmo": 0}


def _normalize(item: str) -> str:
    name = item.strip().lower()
    if name not in STOCK and name.endswith("s") and name[:-1] in STOCK:
        name = name[:-1]
    return name


def lookup_stock(item: str) -> str:
    """Look up how many units of one item are in stock. Items: widget, gadget, sprocket, gizmo."""
    name = _normalize(item)
    if name not in STOCK:
        return f"Unknown item {item!r}. Known items: {', '.join(STOCK)}."
    return f"{name}: {STOCK[name]} units in stock"


@dataclass(frozen=True)
class InventoryTask:
    """One question of the bundled task and the number its answer must state."""

    question: str
    expected: float
    needs: tuple[str, ...]
    """The tools a correct run calls."""


TASKS: tuple[InventoryTask, ...] = (
    InventoryTask("How many widgets are in stock?", 3, ("lookup_stock",)),
    InventoryTask("How many gadgets are in stock?", 14, ("lookup_stock",)),
    InventoryTask("How many sprockets do we have in stock?", 27, ("lookup_stock",)),
    InventoryTask("Is any gizmo in stock? Give the number of units.", 0, ("lookup_stock",)),
    InventoryTask("What is 12 times 7?", 84, ("calculate",)),
    InventoryTask("What is 1234 plus 5678?", 6912, ("calculate",)),
    InventoryTask("How many widgets and gadgets are in stock together?", 17, ("lookup_stock", "calculate")),
    InventoryTask(
        "Each gadget costs 5 dollars. What is the value of all gadgets in stock?",
        70,
        ("lookup_stock", "calculate"),
    ),
)

_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")
_WORDS = {"zero": 0, "none": 0, "no": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}


def is_correct(answer: object, expected: float) -> bool:
    """Whether the answer states the expected number (the first number in it, or a number word)."""
    text = str(answer or "").lower()
    numbers = _NUMBER.findall(text.replace(",", ""))
    if numbers:
        return abs(float(numbers[0]) - expected) < 1e-6
    words = [w for w in re.findall(r"[a-z]+", text) if w in _WORDS]
    return bool(words) and _WORDS[words[0]] == expected


def build_agent(
    budget: Budget | None = None, *, stop_on_repeated_call: bool = True, grammar_schema: bool | None = None
) -> Agent:
    """The inventory agent: ``question -> answer`` with ``lookup_stock`` and ``calculate``."""
    signature = make_signature(
        "question -> answer", "Answer questions about the shop's stock. Answer with a number."
    )
    return Agent(
        signature,
        tools=[lookup_stock, calculate],
        name="inventory",
        budget=budget or Budget(max_iters=5, max_seconds=300),
        stop_on_repeated_call=stop_on_repeated_call,
        grammar_schema=grammar_schema,
    )


agent = build_agent()
