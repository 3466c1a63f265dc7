r"""Learning a regular expression that extracts values from tool observations.

An ``extract`` derivation (see :mod:`geode.agents.crystallize.derivations`) is a value found in an
earlier observation by one expression learned from the recorded runs, e.g. ``": (\d+) units in stock"``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["learn_extractor"]

_MAX_CONTEXT = 16
# Value shapes an extractor may capture, tried from the most specific to the most general.
_VALUE_CLASSES = (
    r"-?\d+(?:[.,]\d+)*",
    r"[A-Za-z0-9_.:/-]+",
    r"\S+",
    r"[^\n]+?",
)


def learn_extractor(pairs: Sequence[tuple[str, Sequence[str]]]) -> str | None:
    r"""A regular expression whose group finds each expected value in its text, or ``None``.

    Each pair is a text and the values expected from it, in order: one value is found with
    ``re.search``, several with ``re.findall``. The expression is built from the context the values
    share in every text (the common end of what precedes them, the common start of what follows) and
    the narrowest value shape that fits, and is kept only if it reproduces every expected value.

    Example:
        >>> learn_extractor([("widget: 3 units in stock", ["3"]), ("gadget: 14 units in stock", ["14"])])
        ': (-?\\d+(?:[.,]\\d+)*) units in stock'
    """
    if not pairs or any(not values or any(not v for v in values) for _, values in pairs):
        return None
    lefts: list[str] = []
    rights: list[str] = []
    for text, values in pairs:
        position = 0
        for value in values:
            found = text.find(value, position)
            if found < 0:
                return None
            lefts.append(text[:found])
            rights.append(text[found + len(value) :])
            position = found + len(value)
    left = _whole_words_left(_common_suffix(lefts)[-_MAX_CONTEXT:], lefts)
    right = _whole_words_right(_common_prefix(rights)[:_MAX_CONTEXT], rights)
    suffix = "$" if all(not s for s in rights) else _escape(right)
    if all(not s for s in lefts):
        prefixes = ["^"]
    else:
        # Words that open the shared context may be the sample's, not the format's ("gadget: " when
        # every recorded run asked about gadgets): the expression without them is tried first, and
        # wins if it still reproduces every value.
        general = re.sub(r"^\w+", "", left)
        prefixes = list(dict.fromkeys([_escape(general), _escape(left)]))
    for prefix in prefixes:
        for value_class in _VALUE_CLASSES:
            if value_class.endswith("+?") and not suffix:
                continue  # a lazy match needs something after it to stop at
            pattern = f"{prefix}({value_class}){suffix}"
            if _reproduces(pattern, pairs):
                return pattern
    return None


_SPECIAL = frozenset(".^$*+?{}[]\\|()#")
_CONTROL = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(text: str) -> str:
    """Like ``re.escape``, but spaces stay spaces: the expression is shown to people in reports."""
    return "".join("\\" + c if c in _SPECIAL else _CONTROL.get(c, c) for c in text)


def _whole_words_left(context: str, texts: Sequence[str]) -> str:
    # "dget: " shared by "widget: " and "gadget: " is the tail of different words: keep ": ".
    cut = any(len(t) > len(context) and _is_word(t[-len(context) - 1]) for t in texts)
    return re.sub(r"^\w+", "", context) if cut and context and _is_word(context[0]) else context


def _whole_words_right(context: str, texts: Sequence[str]) -> str:
    cut = any(len(t) > len(context) and _is_word(t[len(context)]) for t in texts)
    return re.sub(r"\w+$", "", context) if cut and context and _is_word(context[-1]) else context


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _common_suffix(texts: Sequence[str]) -> str:
    reversed_prefix = _common_prefix([t[::-1] for t in texts])
    return reversed_prefix[::-1]


def _common_prefix(texts: Sequence[str]) -> str:
    if not texts:
        return ""
    first = min(texts)
    last = max(texts)
    size = 0
    while size < len(first) and first[size] == last[size]:
        size += 1
    return first[:size]


def _reproduces(pattern: str, pairs: Sequence[tuple[str, Sequence[str]]]) -> bool:
    compiled = re.compile(pattern)
    for text, values in pairs:
        if len(values) == 1:
            found = compiled.search(text)
            if found is None or found.group(1) != values[0]:
                return False
        elif compiled.findall(text) != list(values):
            return False
    return True
