"""The one DSPy → Geode error translation, for Runtime.run's caller and for an HTTP client."""

from __future__ import annotations

from typing import Any

import dspy
import pytest
from dspy.utils.exceptions import AdapterParseError, LMRateLimitError, LMTimeoutError, LMTransportError
from dspy.utils.exceptions import LMError as DSPyLMError

from geode.runtime.dspy_errors import translate_dspy_error
from geode.runtime.serving.errors import translate_program_errors


def _parse_error() -> AdapterParseError:
    signature: Any = dspy.Predict(
        "question -> answer"
    ).signature  # DSPy annotates an instance; it gets the class
    return AdapterParseError("ChatAdapter", signature, "secret LM text")


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (_parse_error(), "lm_output_unparseable"),
        (DSPyLMError("provider said: secret"), "lm_error"),
        (LMRateLimitError("429 secret", retry_after=7.0), "lm_rate_limited"),
        (LMTimeoutError("secret"), "lm_timeout"),
        (LMTransportError("connection timed out"), "lm_timeout"),
        (LMTransportError("connection refused"), "lm_error"),
    ],
)
def test_a_client_gets_a_stable_code_and_no_lm_text(err: BaseException, code: str) -> None:
    translated = translate_dspy_error(err, "qa", audience="client")
    assert translated is not None
    assert translated.code == code
    assert "secret" not in str(translated) and "'qa'" in str(translated)


def test_a_caller_gets_the_model_and_dspys_first_line() -> None:
    translated = translate_dspy_error(
        LMRateLimitError("429 slow down\nmore"), "qa", audience="caller", model="m"
    )
    assert translated is not None and translated.code == "lm_error"
    assert str(translated).startswith("LM 'm' failed while running 'qa': 429 slow down")
    parse = translate_dspy_error(_parse_error(), "qa", audience="caller")
    assert parse is not None and "--lm" in (parse.hint or "")


def test_other_errors_are_not_translated() -> None:
    assert translate_dspy_error(ValueError("x"), "qa", audience="client") is None


def test_the_server_translates_through_the_same_function() -> None:
    with pytest.raises(Exception) as info, translate_program_errors("qa"):
        raise LMRateLimitError("429", retry_after=3.0)
    assert getattr(info.value, "code", None) == "lm_rate_limited"
    assert getattr(info.value, "retry_after_s", None) == 3.0
