"""nanolm.core.calculator: arithmetic equal to Python's own, and every attack refused before it runs."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanolm.core import calculator as calc


def test_every_attack_is_refused_with_its_reason():
    rows = {name: reason for name, _, reason in calc.attack_table()}
    assert set(rows) == set(calc.ATTACKS)
    assert "not Attribute" in rows["attribute access"] and "not Call" in rows["a call"]
    assert "not Name" in rows["a name"] and "not Constant" in rows["a string"]
    assert "exponent 387420489" in rows["huge power"]  # refused by the exponent check, never computed
    assert "would be larger" in rows["huge power, small exponent"]  # refused by the log estimate
    assert "too large" in rows["repeated product"]
    assert "nests deeper" in rows["deep nesting"] and "at most 200" in rows["long input"]
    assert rows["division by zero"] == "division by zero" and "not a real number" in rows["complex result"]


def test_attack_table_raises_when_an_attack_runs():
    with pytest.raises(AssertionError, match="evaluated the attack"):
        calc.attack_table({"harmless": "1 + 1"})


def test_limits_sit_exactly_at_their_bounds():
    assert calc.calculate("2 ** 100") == 2**100 and calc.calculate("10 ** 100") == 10**100
    with pytest.raises(ValueError, match="at most 100"):
        calc.calculate("2 ** 101")
    with pytest.raises(ValueError, match="larger than"):
        calc.calculate("11 ** 100")
    chain = "+".join(["1"] * (calc.MAX_DEPTH + 1))  # depth MAX_DEPTH: allowed
    assert calc.calculate(chain) == calc.MAX_DEPTH + 1
    with pytest.raises(ValueError, match="nests deeper"):
        calc.calculate(chain + "+1")
    with pytest.raises(ValueError, match="must be text"):
        calc.calculate(12)


_numbers = st.integers(-999, 999) | st.floats(-1e3, 1e3, allow_nan=False).map(lambda x: round(x, 3))


@st.composite
def _expressions(draw, depth=3):
    """A random arithmetic expression with + - * / and small powers, fully parenthesised."""
    if depth == 0 or draw(st.booleans()):
        return repr(draw(_numbers))
    op = draw(st.sampled_from(["+", "-", "*", "/", "**"]))
    left = draw(_expressions(depth=depth - 1))
    right = repr(draw(st.integers(0, 3))) if op == "**" else draw(_expressions(depth=depth - 1))
    return f"({left} {op} {right})"


@settings(max_examples=300, deadline=None)
@given(_expressions())
def test_equals_python_on_random_expressions(expression):
    """The reference is Python itself (eval of text this test generated: numbers and operators only)."""
    try:
        expected = eval(expression, {"__builtins__": {}})  # noqa: S307
    except (ZeroDivisionError, OverflowError):
        expected = None
    if expected is None or isinstance(expected, complex) or not math.isfinite(expected) or abs(expected) > 1e100:
        with pytest.raises(ValueError):
            calc.calculate(expression)
    else:
        assert calc.calculate(expression) == expected


def test_format_number():
    assert [calc.format_number(x) for x in (24.0, 7, 2.5, 1 / 3, -0.125, 2**60, 1e20)] == [
        "24", "7", "2.5", "0.333333", "-0.125", "1152921504606846976", "1e+20"]
