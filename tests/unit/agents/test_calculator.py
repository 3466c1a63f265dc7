from __future__ import annotations

import time

import pytest

from geode.agents.calculator import Calculator, ExpressionError, calculate, format_number
from geode.errors import ToolError


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("12 * (3 + 4) ^ 2", "588"),
        ("2 ** 3 ** 2", "512"),  # right-associative
        ("-2 ^ 2", "-4"),  # power binds tighter than unary minus
        ("2 ^ -1", "0.5"),
        ("7 / 2", "3.5"),
        ("8 / 2", "4"),
        ("7 // 2", "3"),
        ("10 % 3", "1"),
        ("0.1 + 0.2", "0.3"),
        ("1e3 + 1", "1001"),
        ("1_000 * 2", "2000"),
        ("12 \u00d7 7", "84"),
        ("9 \u00f7 3 \u2212 1", "2"),
        ("sqrt(16) + abs(-2)", "6"),
        ("round(2.567, 2)", "2.57"),
        ("max(3, 9, 4) - min(3, 9, 4)", "6"),
        ("floor(2.7) + ceil(2.1)", "5"),
        ("ln(e) + log(100, 10) + log10(1000)", "6"),
        ("2 * pi", "6.28318530718"),
        ("  42  ", "42"),
    ],
)
def test_evaluates(expression: str, expected: str) -> None:
    assert calculate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ^ -1", "division by zero"),
        ("3 +", "expected a number"),
        ("(1 + 2", "expected ')'"),
        ("1 + 2)", "unexpected ')'"),
        ("2 3", "unexpected '3'"),
        ("foo(1)", "unknown name 'foo'"),
        ("__import__('os').system('true')", "unexpected character"),
        ("__import__(1)", "unknown name '__import__'"),
        ("().__class__", "unexpected character '.'"),
        ("sqrt(-1)", "sqrt() failed"),
        ("sqrt(1, 2)", "takes 1 arguments"),
        ("(-8) ^ (1/3)", "not a real number"),
        ("1e308 * 10", "not a finite number"),
        ("10.0 ^ 400", "too large"),
        ("9 ^ 9 ^ 9", "too large"),
        ("1 $ 2", "unexpected character '$'"),
    ],
)
def test_rejects_with_a_clear_message(expression: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=None) as info:
        calculate(expression)
    assert message in str(info.value)
    assert isinstance(info.value, ToolError)
    assert info.value.code == "invalid_expression"


def test_huge_powers_are_refused_before_they_are_computed() -> None:
    started = time.perf_counter()
    with pytest.raises(ExpressionError, match="too large"):
        Calculator().evaluate("99999 ^ 99999999")
    assert time.perf_counter() - started < 0.5


def test_limits_length_and_depth() -> None:
    calc = Calculator(max_length=20, max_depth=5)
    with pytest.raises(ExpressionError, match="longer than 20"):
        calc.evaluate("1 + " * 10 + "1")
    with pytest.raises(ExpressionError, match="nested deeper than 5"):
        calc.evaluate("(" * 6 + "1" + ")" * 6)
    assert calc.evaluate("((1))") == 1
    # Unary chains count towards depth too, so they cannot exhaust the Python stack.
    with pytest.raises(ExpressionError, match="nested deeper"):
        Calculator().evaluate("-" * 400 + "1")


def test_int_results_are_bounded() -> None:
    with pytest.raises(ExpressionError, match="too large"):
        Calculator(max_int_bits=64).evaluate("2 ^ 70")
    assert Calculator(max_int_bits=64).evaluate("2 ^ 62") == 2**62


def test_non_string_input() -> None:
    with pytest.raises(ExpressionError, match="expected an expression string"):
        Calculator().evaluate(12)  # type: ignore[arg-type]


def test_format_number() -> None:
    assert format_number(3) == "3"
    assert format_number(3.0) == "3"
    assert format_number(1 / 3) == "0.333333333333"
    assert format_number(1e20) == "1e+20"
