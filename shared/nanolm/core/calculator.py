"""A calculator that cannot be tricked into running code: arithmetic evaluated by walking Python's AST.

A model's tool call is untrusted text. `eval("2+2")` would work, and so would `eval("__import__('os')...")`.
So the expression is parsed (`ast.parse`, which only builds a tree and runs nothing) and the tree is walked
by hand, allowing exactly: numbers (int or float), + - * / **, unary minus and plus, and parentheses.
Anything else (a name, an attribute, a call, a string, a comparison, a subscript) is refused by name.

Arithmetic alone can still hurt: 9**9**9 has 370 million digits and would hang the interpreter, and a deeply
nested expression can exhaust the parser. So every limit is checked BEFORE the work it guards:

    length      at most MAX_CHARS characters (checked before parsing)
    depth       at most MAX_DEPTH nested operations (checked on the tree before evaluating)
    magnitude   every intermediate value at most MAX_MAGNITUDE in size; for a power the size of the result
                is estimated from logarithms (|b| * log10|a|) before it is computed, so 10**1000000 is
                refused in microseconds instead of computed

A refusal is a ValueError whose message says what was refused; the tool loop shows it to the model.
The course's data (GSM8K notes, arithmetic problems) and the use layer's tool both call `calculate`.
"""

from __future__ import annotations

import ast
import math
import operator

MAX_CHARS = 200
MAX_DEPTH = 32
MAX_MAGNITUDE = 1e100
MAX_EXPONENT = 100  # also a plain limit on the exponent: 2 ** 100 is fine, 2 ** 1000 is refused

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}


def _depth(node: ast.AST) -> int:
    """How deeply operations nest (a number is depth 0), without recursing past MAX_DEPTH + 1."""
    stack, deepest = [(node, 0)], 0
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node)
                     if not isinstance(child, (ast.operator, ast.unaryop)))
    return deepest


def _check_size(x: float | int, what: str) -> float | int:
    if isinstance(x, complex) or (isinstance(x, float) and not math.isfinite(x)) or abs(x) > MAX_MAGNITUDE:
        raise ValueError(f"{what} is too large or not a finite real number (the limit is {MAX_MAGNITUDE:.0e})")
    return x


def _power(base: float | int, exponent: float | int) -> float | int:
    """base ** exponent, refused before computing when the exponent or the result would be too large."""
    if abs(exponent) > MAX_EXPONENT:
        raise ValueError(f"exponent {exponent} is too large for the calculator (at most {MAX_EXPONENT})")
    if base != 0 and exponent > 0 and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise ValueError(f"{base:.3g} ** {exponent} would be larger than {MAX_MAGNITUDE:.0e}")
    if base == 0 and exponent < 0:
        raise ValueError("zero cannot be raised to a negative power")
    if base < 0 and not float(exponent).is_integer():
        raise ValueError(f"{base} ** {exponent} is not a real number")
    return base ** exponent


def _value(node: ast.AST) -> float | int:
    """Evaluate one node; anything but numbers and the arithmetic operators is refused."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check_size(node.value, f"the number {node.value!r}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return -_value(node.operand) if isinstance(node.op, ast.USub) else _value(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(left, right), "the result")
        if isinstance(node.op, ast.Div) and right == 0:
            raise ValueError("division by zero")
        return _check_size(_BINARY[type(node.op)](left, right), "the result")
    kind = type(node).__name__
    raise ValueError(f"the calculator allows only numbers, + - * / ** and parentheses, not {kind}")


def calculate(expression: str) -> float | int:
    """The value of an arithmetic expression such as "(48+24)/2**3"; ValueError saying why for anything else."""
    if not isinstance(expression, str):
        raise ValueError(f"the expression must be text, not {type(expression).__name__}")
    expression = expression.strip()
    if len(expression) > MAX_CHARS:
        raise ValueError(f"the expression has {len(expression)} characters; the calculator takes at most {MAX_CHARS}")
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from e
    if _depth(tree.body) > MAX_DEPTH:
        raise ValueError(f"the expression nests deeper than {MAX_DEPTH} operations")
    return _value(tree.body)


def format_number(x: float | int) -> str:
    """How the calculator writes a result: whole numbers without ".0", others with at most 6 decimals."""
    if isinstance(x, int):
        return str(x)
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.6f}".rstrip("0").rstrip(".") if abs(x) < 1e15 else f"{x:.6g}"


# Strings a model (or a user who talks to it) might send; every one must be refused, none may run.
ATTACKS = {
    "attribute access": "(1).__class__",
    "a name": "x + 1",
    "a call": "__import__('os').system('echo hi')",
    "a builtin": "abs(-3)",
    "a string": "'a' * 10",
    "a lambda": "(lambda: 1)()",
    "a comparison": "1 < 2",
    "a subscript": "[1, 2][0]",
    "huge power": "9 ** 9 ** 9",
    "huge power, small exponent": "(10 ** 90) ** 2",
    "repeated product": "*".join(["1e60"] * 3),
    "deep nesting": "(" * 40 + "1" + ")" * 40 + "+" + "+".join(["1"] * 40),
    "long input": "1+" * 150 + "1",
    "division by zero": "1 / (2 - 2)",
    "complex result": "(-8) ** 0.5",
    "not arithmetic": "import os",
    "floor division": "7 // 2",
}


def attack_table(attacks: dict[str, str] = ATTACKS) -> list[tuple[str, str, str]]:
    """(attack, expression shortened, the calculator's refusal) for each attack; AssertionError if one runs."""
    rows = []
    for name, expression in attacks.items():
        try:
            value = calculate(expression)
        except ValueError as e:
            rows.append((name, expression if len(expression) <= 40 else expression[:37] + "...", str(e)))
        else:
            raise AssertionError(f"the calculator evaluated the attack {name!r} to {value!r}")
    return rows
