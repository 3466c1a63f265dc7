"""A safe calculator tool: a small recursive-descent parser over numbers, never ``eval``.

Small models are bad at arithmetic; a calculator tool fixes that, but ``eval`` on model output is
remote code execution. :class:`Calculator` tokenizes and parses the expression itself, knows only
numbers, operators, parentheses and a fixed set of functions, and bounds input length, nesting depth
and the size of results (``9**9**9`` is refused, not computed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from geode.errors import ExpressionError

__all__ = ["Calculator", "ExpressionError", "calculate"]

Number = int | float


_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+(?:_\d+)*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    "|(?P<op>\\*\\*|//|[-+*/%^(),\u00d7\u00f7\u2212]))"
)
# Unicode multiplication, division and minus signs, as models sometimes write them.
_SYMBOLS: Final = {"\u00d7": "*", "\u00f7": "/", "\u2212": "-", "^": "**"}


def _round(x: Number, digits: Number = 0) -> Number:
    if not isinstance(digits, int) and not float(digits).is_integer():
        raise ExpressionError("round: the number of digits must be a whole number")
    return round(x, int(digits))


def _log(x: Number, base: Number = math.e) -> float:
    return math.log(x, base)


_FUNCTIONS: Final[dict[str, tuple[Callable[..., Any], int, int]]] = {
    # name: (function, min args, max args)
    "sqrt": (math.sqrt, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "min": (min, 1, 64),
    "max": (max, 1, 64),
    "log": (_log, 1, 2),
    "ln": (math.log, 1, 1),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "exp": (math.exp, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
}
_CONSTANTS: Final[dict[str, float]] = {"pi": math.pi, "e": math.e, "tau": math.tau}


@dataclass(frozen=True)
class _Token:
    kind: str  # "number", "name", "op" or "end"
    text: str
    pos: int


class Calculator:
    """Evaluates arithmetic expressions safely.

    Supports ``+ - * / // %``, powers (``^`` or ``**``), parentheses, unary signs, the constants
    ``pi``, ``e``, ``tau`` and the functions ``sqrt abs round floor ceil min max log ln log10 log2
    exp sin cos tan``.

    Args:
        max_length: Longest accepted expression, in characters.
        max_depth: Deepest accepted nesting of parentheses and unary operators.
        max_int_bits: Largest integer result, in bits (4096 bits is about 1,233 digits).

    Example:
        >>> Calculator().evaluate("12 * (3 + 4) ^ 2")
        588
        >>> Calculator().evaluate("sqrt(2) * 2")
        2.8284271247461903
    """

    def __init__(self, *, max_length: int = 500, max_depth: int = 40, max_int_bits: int = 4096) -> None:
        self.max_length = max_length
        self.max_depth = max_depth
        self.max_int_bits = max_int_bits

    def evaluate(self, expression: str) -> Number:
        """The value of ``expression``.

        Raises:
            ExpressionError: The expression is malformed, too long or too deep, names something
                unknown, divides by zero, or its result is too large or not a finite number.
        """
        if not isinstance(expression, str):
            raise ExpressionError(f"expected an expression string, got {type(expression).__name__}")
        if len(expression) > self.max_length:
            raise ExpressionError(f"expression is longer than {self.max_length} characters")
        if not expression.strip():
            raise ExpressionError("expression is empty")
        return _Parser(self, expression).parse()

    def __call__(self, expression: str) -> str:
        """Evaluate and format the result as text (what the model reads)."""
        return format_number(self.evaluate(expression))

    def check_int(self, value: int) -> int:
        """``value``, or :class:`ExpressionError` if it has more than ``max_int_bits`` bits."""
        if value.bit_length() > self.max_int_bits:
            raise ExpressionError(f"result is too large (more than {self.max_int_bits} bits)")
        return value


def format_number(value: Number) -> str:
    """Integers as is; floats with 12 significant digits, whole ones without a decimal point."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".12g")


class _Parser:
    def __init__(self, calculator: Calculator, text: str) -> None:
        self.calc = calculator
        self.text = text
        self.tokens = self._tokenize(text)
        self.pos = 0
        self.depth = 0

    @staticmethod
    def _tokenize(text: str) -> list[_Token]:
        tokens: list[_Token] = []
        index = 0
        while index < len(text):
            match = _TOKEN.match(text, index)
            if match is None or match.end() == index:
                if text[index:].strip() == "":
                    break
                bad = text[index:].lstrip()[0]
                raise ExpressionError(f"unexpected character {bad!r} at position {index + 1}")
            kind = match.lastgroup
            if kind is None:  # trailing whitespace only
                break
            value = match.group(kind)
            tokens.append(_Token(kind, _SYMBOLS.get(value, value), match.start(kind)))
            index = match.end()
        tokens.append(_Token("end", "", len(text)))
        return tokens

    @property
    def current(self) -> _Token:
        return self.tokens[self.pos]

    def _take(self, *ops: str) -> str | None:
        token = self.current
        if token.kind == "op" and token.text in ops:
            self.pos += 1
            return token.text
        return None

    def _expect(self, op: str) -> None:
        if self._take(op) is None:
            found = self.current.text or "the end"
            raise ExpressionError(f"expected {op!r} at position {self.current.pos + 1}, found {found!r}")

    def parse(self) -> Number:
        value = self._sum()
        if self.current.kind != "end":
            raise ExpressionError(f"unexpected {self.current.text!r} at position {self.current.pos + 1}")
        return self._finite(value)

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > self.calc.max_depth:
            raise ExpressionError(f"expression is nested deeper than {self.calc.max_depth} levels")

    def _sum(self) -> Number:
        value = self._product()
        while (op := self._take("+", "-")) is not None:
            right = self._product()
            value = self._apply(op, value, right)
        return value

    def _product(self) -> Number:
        value = self._unary()
        while (op := self._take("*", "/", "//", "%")) is not None:
            right = self._unary()
            value = self._apply(op, value, right)
        return value

    def _unary(self) -> Number:
        if (op := self._take("+", "-")) is not None:
            self._enter()
            operand = self._unary()
            self.depth -= 1
            return -operand if op == "-" else operand
        return self._power()

    def _power(self) -> Number:
        base = self._atom()
        if self._take("**") is not None:
            self._enter()
            exponent = self._unary()  # right-associative, and 2^-1 is allowed
            self.depth -= 1
            return self._apply("**", base, exponent)
        return base

    def _atom(self) -> Number:
        token = self.current
        if token.kind == "number":
            self.pos += 1
            text = token.text.replace("_", "")
            if re.fullmatch(r"\d+", text):
                return self.calc.check_int(int(text))
            return float(text)
        if token.kind == "name":
            self.pos += 1
            return self._name(token)
        if self._take("(") is not None:
            self._enter()
            value = self._sum()
            self._expect(")")
            self.depth -= 1
            return value
        found = token.text or "the end"
        raise ExpressionError(f"expected a number, name or '(' at position {token.pos + 1}, found {found!r}")

    def _name(self, token: _Token) -> Number:
        name = token.text.lower()
        if name in _FUNCTIONS:
            function, low, high = _FUNCTIONS[name]
            self._expect("(")
            self._enter()
            args = [self._sum()]
            while self._take(",") is not None:
                args.append(self._sum())
            self._expect(")")
            self.depth -= 1
            if not low <= len(args) <= high:
                count = str(low) if low == high else f"{low} to {high}"
                raise ExpressionError(f"{name}() takes {count} arguments, got {len(args)}")
            try:
                return self._finite(function(*args))
            except (ValueError, ArithmeticError) as err:
                raise ExpressionError(f"{name}() failed: {err}") from None
        if name in _CONSTANTS:
            return _CONSTANTS[name]
        known = ", ".join(sorted([*_FUNCTIONS, *_CONSTANTS]))
        raise ExpressionError(
            f"unknown name {token.text!r} at position {token.pos + 1}; known names: {known}"
        )

    def _apply(self, op: str, left: Number, right: Number) -> Number:
        try:
            if op == "+":
                result = left + right
            elif op == "-":
                result = left - right
            elif op == "*":
                result = left * right
            elif op == "/":
                result = left / right
                if isinstance(left, int) and isinstance(right, int) and left % right == 0:
                    result = left // right
            elif op == "//":
                result = left // right
            elif op == "%":
                result = left % right
            else:
                result = self._pow(left, right)
        except ZeroDivisionError:
            raise ExpressionError("division by zero") from None
        except OverflowError:
            raise ExpressionError("result is too large") from None
        if isinstance(result, int):
            return self.calc.check_int(result)
        return self._finite(result)

    def _pow(self, base: Number, exponent: Number) -> Number:
        if isinstance(base, int) and isinstance(exponent, int) and exponent >= 0:
            # Refuse before computing: 9**9**9 would take minutes and gigabytes.
            if (
                base not in (-1, 0, 1)
                and exponent * max(abs(base).bit_length() - 1, 1) > self.calc.max_int_bits
            ):
                raise ExpressionError(f"result is too large (more than {self.calc.max_int_bits} bits)")
            return base**exponent
        if base == 0 and exponent < 0:
            raise ZeroDivisionError
        result = float(base) ** float(exponent)
        if isinstance(result, complex):
            raise ExpressionError("a negative number to a fractional power is not a real number")
        return result

    @staticmethod
    def _finite(value: Number) -> Number:
        if isinstance(value, float) and not math.isfinite(value):
            raise ExpressionError("result is not a finite number")
        return value


_DEFAULT = Calculator()


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression with numbers, + - * / ^ and parentheses; returns the result."""
    return _DEFAULT(expression)
