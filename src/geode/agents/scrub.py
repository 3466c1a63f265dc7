"""Scrub error text before it reaches a language model: secrets and file paths out, length bounded.

A tool's exception message is fed back to the LM so it can correct itself. Raw messages leak what the
model (and whoever reads its output) should not see: credentials in connection strings, API keys, the
layout of the server's file system. :func:`scrub` keeps the useful part (what went wrong) and drops
those.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "scrub"]

REDACTED = "[REDACTED]"
PATH = "[path]"

_SENSITIVE_NAMES = (
    r"password|passwd|pwd|passphrase|secret|client[_-]?secret|token|access[_-]?token|refresh[_-]?token"
    r"|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|private[_-]?key|auth|authorization|credentials?"
    r"|session[_-]?id|cookie"
)

# Order matters: whole-token shapes first, then `name=value` pairs, then paths.
_SECRET_SHAPES: tuple[re.Pattern[str], ...] = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL),
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),  # JWT
    re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}"),  # OpenAI/Anthropic/Stripe-style keys
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}\b"),  # GitHub tokens
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),  # Slack tokens
    re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"),  # Google API keys
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
)
_URL_CREDENTIALS = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@")
_NAME_VALUE = re.compile(
    rf"(?i)(?P<name>\b(?:[A-Za-z0-9]+[_-])*(?:{_SENSITIVE_NAMES})(?:[_-][A-Za-z0-9]+)*\b)(?P<sep>\s*[=:]\s*|\s+is\s+)(?P<q>['\"]?)(?P<value>[^\s'\",;&]+)"
)
_PY_TRACEBACK_FILE = re.compile(r'File "[^"]*", line (\d+)')
# An absolute POSIX path of two or more segments, not part of a URL (`://host/a`) or a relative path.
# Every quantifier here is followed by something its class cannot match (a segment's characters by `/`),
# so a match attempt never has two ways to split the same characters: linear, whatever the input. (The
# old `(?:/?[\w.@+-]+)*` could split `aaaa` 2^n ways: '/' + 'a' * 26 + '!' took about 4 s.)
_POSIX_PATH = re.compile(r"(?<![\w.:/~-])(?:~|/(?=[\w.@+-]))[\w.@+-]*(?:/[\w.@+-]+)+/?")
_WINDOWS_PATH = re.compile(r"\b[A-Za-z]:\\(?:[^\\\s'\"]+\\)*[^\\\s'\"]*")


_SCAN_FACTOR = 4
_MIN_SCAN_CHARS = 2_048


def _cut_for_scan(text: str, max_chars: int) -> tuple[str, int]:
    """``text`` cut to the part the patterns may read, and how many characters were cut.

    The patterns run on a bounded prefix so no input makes them slow. It is several times longer than
    the result can be, so redactions that shorten the text cannot pull the cut edge into the result;
    the cut falls at a separator, so a secret straddling it is dropped whole rather than left as a
    prefix too short for its pattern to recognise.
    """
    limit = max(_SCAN_FACTOR * max_chars, _MIN_SCAN_CHARS)
    if len(text) <= limit:
        return text, 0
    head = text[:limit]
    edge = max(head.rfind(c) for c in " \n\t,;")
    head = head[: edge if edge > limit // 2 else limit // 2]
    return head, len(text) - len(head)


def scrub(text: str, *, max_chars: int = 500, patterns: tuple[re.Pattern[str], ...] = ()) -> str:
    """Remove secrets and file paths from ``text`` and bound its length.

    Args:
        text: Usually ``f"{type(err).__name__}: {err}"``.
        max_chars: Longer results are cut and marked with the number of characters dropped.
        patterns: Extra regular expressions whose matches are replaced by ``[REDACTED]``.

    Returns:
        The scrubbed text. Only the first ``max(4 * max_chars, 2048)`` characters are read (the rest
        is counted as dropped), so the time it takes is bounded whatever the input.

    Example:
        >>> scrub("connect failed: postgres://app:hunter2@db/prod, password=hunter2 in /srv/app/db.py")
        'connect failed: postgres://[REDACTED]@db/prod, password=[REDACTED] in [path]'
    """
    text, unread = _cut_for_scan(text, max_chars)
    for pattern in (*_SECRET_SHAPES, *patterns):
        text = pattern.sub(REDACTED, text)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _NAME_VALUE.sub(_redact_value, text)
    text = _PY_TRACEBACK_FILE.sub(lambda m: f'File "{PATH}", line {m.group(1)}', text)
    text = _WINDOWS_PATH.sub(PATH, text)
    text = _POSIX_PATH.sub(PATH, text)
    if len(text) > max_chars or unread:
        dropped = max(len(text) - max_chars, 0) + unread
        text = f"{text[:max_chars]}... [{dropped} more characters]"
    return text


def _redact_value(match: re.Match[str]) -> str:
    if match.group("value") == REDACTED:
        return match.group(0)
    return f"{match.group('name')}{match.group('sep')}{match.group('q')}{REDACTED}"
