"""The helpdesk metric: the answer states the gold number, or contains the gold phrase.

A gold answer that is a number (``"498"``, ``"6.95"``) is matched numerically: the prediction is right
when one of the numbers it states equals the gold value (``"Two tents cost $498."`` states 2 and 498)
and it states at most :data:`MAX_NUMBERS` distinct numbers, so pasting a whole passage full of prices
does not count. Any other gold answer is matched as whole tokens after normalisation (case,
punctuation, articles): ``"Reno"`` is found in ``"They ship from Reno, Nevada."``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from geode.evals.metrics import FieldMetric, normalize_text

__all__ = ["MAX_NUMBERS", "metric", "numbers_in", "score_answer"]

MAX_NUMBERS = 3
"""An answer stating more distinct numbers than this scores 0 on a numeric question."""

_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")
_GOLD_NUMBER = re.compile(r"\s*(?:\$\s*)?(-?\d[\d,]*(?:\.\d+)?)\s*")  # no two quantifiers share a space


def numbers_in(text: str) -> list[float]:
    """The numbers stated in ``text``, in order (thousands separators and currency signs ignored)."""
    found: list[float] = []
    for match in _NUMBER.finditer(text):
        raw = match.group().rstrip(",").replace(",", "")
        try:
            found.append(float(raw))
        except ValueError:
            continue
    return found


def _gold_number(gold: str) -> float | None:
    match = _GOLD_NUMBER.fullmatch(gold)
    return float(match.group(1).replace(",", "")) if match else None


def score_answer(gold: Any, got: Any) -> float:
    """1.0 when ``got`` answers ``gold`` (numerically or by containment, see the module docstring), else 0.0."""
    if got is None:
        return 0.0
    answer = str(got)
    number = _gold_number(str(gold))
    if number is not None:
        stated = set(numbers_in(answer))
        if not stated or len(stated) > MAX_NUMBERS:
            return 0.0
        return 1.0 if any(math.isclose(number, n, rel_tol=1e-9, abs_tol=1e-9) for n in stated) else 0.0
    want, have = normalize_text(gold).split(), normalize_text(answer).split()
    if not want:
        return 0.0
    width = len(want)
    return 1.0 if any(have[i : i + width] == want for i in range(len(have) - width + 1)) else 0.0


metric = FieldMetric("helpdesk", score_answer, fields=("answer",))
"""``metric(example, pred, trace=None)``: :func:`score_answer` on the ``answer`` field (``geode.examples.helpdesk:metric``)."""
