"""The demo's promotion gate: the recompiled workflow serves only if it beats the workflow on validation.

Both versions are stored in the registry with their held-out and validation scores; the gate decides on
the validation questions (training questions the recompile search never saw), by the registry's own
:meth:`~geode.runtime.registry.ProgramRegistry.promote` with a margin of :data:`GATE_MARGIN`.
"""

from __future__ import annotations

from dataclasses import replace

import dspy

from geode.demo.result import Gate
from geode.errors import GeodeError
from geode.evals.evaluate import EvalResult
from geode.runtime.registry import ProgramRegistry, Score

__all__ = ["GATE_MARGIN", "gate", "validation_score"]

GATE_MARGIN = 0.05
"""How much better (in score, 0.05 = 5 points) the candidate must be on the validation questions."""


def validation_score(result: EvalResult) -> Score:
    """``result`` as a registry score on the ``validation`` split."""
    # The gate's split: the registry records it under its own name, beside the held-out score.
    return replace(Score.heldout(result), split="validation")


def gate(
    registry: ProgramRegistry,
    name: str,
    candidate: str,
    base: str,
    module: dspy.Module,
    cand: EvalResult,
    serving: EvalResult,
) -> Gate:
    """Promote ``candidate`` if it beats what serves on validation; the decision either way."""
    active = registry.active(name) or base
    margin = cand.score - serving.score
    decided = {
        "margin": margin,
        "required": GATE_MARGIN,
        "n": cand.n,
        "candidate": candidate,
        "serving": active,
    }
    if candidate == active:
        return Gate("none", f"{candidate} is already serving: the optimizer changed nothing", **decided)
    try:
        registry.promote(
            name,
            candidate,
            candidate_score=cand.score,
            active_score=serving.score,
            margin=GATE_MARGIN,
            module=module,
            reason="geode demo (validation questions)",
            split="validation",
        )
    except GeodeError as err:
        return Gate("refused", f"gate refused {candidate}: {err}", **decided)
    return Gate(
        "promoted",
        f"promoted {candidate}: {100 * cand.score:.0f}% vs {100 * serving.score:.0f}% on the "
        f"{cand.n} validation questions (+{100 * margin:.0f} points; the gate needs {100 * GATE_MARGIN:.0f})",
        **decided,
    )
