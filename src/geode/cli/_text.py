"""Untrusted text made safe for a terminal, without rich (``--json`` output must not wait for it to load).

See :mod:`geode.cli._console` for why: model output, passages and trace attributes can carry control
sequences a terminal obeys.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

__all__ = ["terminal_json", "terminal_json_text", "terminal_safe"]

# C0 controls but tab and newline, DEL, C1 controls, and the bidi embeddings, overrides and isolates.
_UNSAFE: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# What json.dumps(ensure_ascii=False) leaves raw in strings (it escapes C0 itself), plus line separators.
_UNSAFE_IN_JSON: Final = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    r"""``text`` with every control character a terminal would obey shown as an escape instead.

    Example:
        >>> terminal_safe("ok\x1b]52;c;aGk=\x07 \u202eevil")
        'ok\\x1b]52;c;aGk=\\x07 \\u202eevil'
    """
    return _UNSAFE.sub(_visible, text)


def terminal_json(value: Any, **kwargs: Any) -> str:
    r"""``json.dumps(value, ensure_ascii=False, **kwargs)`` through :func:`terminal_json_text`.

    Example:
        >>> terminal_json({"a": "\x9b31m\u202e"})
        '{"a": "\\u009b31m\\u202e"}'
    """
    return terminal_json_text(json.dumps(value, ensure_ascii=False, **kwargs))


def terminal_json_text(text: str) -> str:
    r"""JSON text with the characters a terminal would act on written as ``\uXXXX`` escapes.

    They are the C1 controls, bidi overrides and line separators; ``json.dumps`` escapes C0 itself.

    The result parses back to the same value: outside its strings, JSON text is ASCII.
    """
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
