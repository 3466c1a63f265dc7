"""DSPy's errors as Geode errors: the one translation ``Runtime.run`` and the HTTP server share.

DSPy raises ``AdapterParseError`` when an LM's answer does not parse (it carries the whole answer) and
``LMError`` subclasses when the LM fails. Both become Geode errors with stable codes and a hint. The
wording depends on who reads it:

- ``"caller"``, the program's own caller (``Runtime.run``): the message names the model and the first
  line of DSPy's error, the hint names ``--lm``; every LM failure is ``lm_error``.
- ``"client"``, an HTTP client: no LM text at all; rate limits (``lm_rate_limited``, with the
  provider's retry delay) and timeouts (``lm_timeout``) keep codes of their own so clients can back off,
  and an unreachable LM says so.

The HTTP status of each code is the server's business (``geode.runtime.serving.errors``).
"""

from __future__ import annotations

from typing import Final, Literal

from dspy.utils.exceptions import AdapterParseError, LMRateLimitError, LMTimeoutError, LMTransportError
from dspy.utils.exceptions import LMError as DSPyLMError

from geode.errors import GeodeError, LMError, LMRateLimitedError, LMTimeoutGeodeError, OutputParseError

__all__ = ["DSPY_ERRORS", "Audience", "is_lm_timeout", "translate_dspy_error"]

Audience = Literal["caller", "client"]
"""Who reads the translated error: the program's own caller, or an HTTP client."""

DSPY_ERRORS: Final = (AdapterParseError, DSPyLMError)
"""The DSPy exceptions :func:`translate_dspy_error` translates (catch these, then translate)."""


def translate_dspy_error(
    err: BaseException, program: str, *, audience: Audience, model: str = "?"
) -> GeodeError | None:
    """The Geode error for ``err``, raised by DSPy while running ``program``; None if it is not DSPy's.

    Args:
        err: The exception the program raised.
        program: The program's name, named in the message.
        audience: Who reads the message (see the module's docstring).
        model: The LM's model name, named in a ``"caller"`` message.

    Example:
        >>> from dspy.utils.exceptions import LMError as DSPyLMError
        >>> translate_dspy_error(DSPyLMError("boom"), "qa", audience="client").code
        'lm_error'
    """
    if isinstance(err, AdapterParseError):
        signature = getattr(err, "signature", None)
        fields = ", ".join(getattr(signature, "output_fields", {}) or ())
        hint = "a small model may need a simpler signature, or use a stronger model"
        return OutputParseError(
            f"the LM's answer for {program!r} could not be parsed into its output fields ({fields})",
            hint=f"{hint} with --lm" if audience == "caller" else hint,
        )
    if not isinstance(err, DSPyLMError):
        return None
    if audience == "caller":
        return LMError(
            f"LM {model!r} failed while running {program!r}: {_first_line(err)}",
            hint="check the model name, api_base and API key (GEODE_LM_*)",
        )
    return _for_client(err, program)


def _for_client(err: DSPyLMError, program: str) -> LMError:
    # No LM text: a provider's message may quote the prompt, and clients need only the code.
    if isinstance(err, LMRateLimitError):
        return LMRateLimitedError(
            f"the LM provider rate-limited {program!r} after its retries",
            retry_after_s=err.retry_after,
            hint="retry later, or raise the provider quota",
        )
    if isinstance(err, LMTimeoutError | LMTransportError):
        if not is_lm_timeout(err):
            return LMError(
                f"the LM could not be reached while running {program!r} ({type(err).__name__})",
                hint="check GEODE_LM_API_BASE and that the LM server is up",
            )
        return LMTimeoutGeodeError(
            f"the LM did not answer in time while running {program!r}",
            hint="raise GEODE_LM_TIMEOUT_S or use a faster model",
        )
    return LMError(
        f"the LM failed while running {program!r} ({type(err).__name__})",
        hint="check the model name, api_base and API key (GEODE_LM_*)",
    )


def is_lm_timeout(err: BaseException) -> bool:
    """Whether a DSPy LM error is a timeout (litellm may report one as a connection error)."""
    # litellm reports a read timeout as a connection error; DSPy then calls it a transport error.
    if isinstance(err, LMTimeoutError):
        return True
    text = f"{err} {err.__cause__ or ''}".lower()
    return "timed out" in text or "timeout" in text


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
