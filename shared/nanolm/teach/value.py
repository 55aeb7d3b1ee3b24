"""A scalar autograd engine (`Value`), a drawing of its graphs and a tiny MLP: notebook 01's tested version.

Every `Value` remembers the values it was computed from and the local rule for pushing a
gradient back to them; `backward()` visits the graph in reverse topological order, so each
node has its full gradient (the sum over every path that uses it) before it passes it on.
"""

from __future__ import annotations

import math
import numbers
import random
from collections import Counter
from collections.abc import Iterable, Sequence

SUPPORTED = "a Value, int or float"
UNARY_OPS = ("neg", "exp", "log", "tanh", "relu", "sigmoid")
BINARY_OPS = ("+", "-", "*", "/")


_FAST_NUMBERS = (float, int)


def _is_number(x: object) -> bool:
    """True for real numbers (int, float, NumPy scalars) but not bool, complex or str."""
    if type(x) in _FAST_NUMBERS:  # the common case, without the slower ABC check below
        return True
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class Value:
    """A scalar that records how it was computed, so `backward()` can fill `.grad` of every input."""

    __slots__ = ("data", "grad", "_prev", "_local", "_op", "label")

    def __init__(
        self,
        data: float,
        _prev: tuple[Value, ...] = (),
        _local: tuple[float, ...] = (),
        _op: str = "",
        label: str = "",
    ):
        if type(data) is not float and not _is_number(data):
            raise TypeError(f"Value holds a real number (int or float), got {type(data).__name__}")
        self.data = float(data)
        self.grad = 0.0  # d(output of the last backward) / d(self), summed over backward calls
        self._prev = _prev  # the operands this value was computed from
        self._local = _local  # d self / d operand, one number per operand (the local derivatives)
        self._op = _op  # the operation that made it ('' for a leaf)
        self.label = label

    def __repr__(self) -> str:
        name = f"{self.label}=" if self.label else ""
        return f"Value({name}{self.data:.6g}, grad={self.grad:.6g})"

    # ---- operands ----------------------------------------------------------------------
    @staticmethod
    def _lift(other: object, op: str, left: object = None) -> Value:
        """Wrap a number as a leaf Value; refuse anything else with a TypeError that says what works."""
        if type(other) is Value or isinstance(other, Value):
            return other
        if _is_number(other):
            return Value(other)
        a = "Value" if left is None else type(left).__name__
        b = type(other).__name__
        if left is not None:
            a, b = b, a  # reflected operator: `other op self`
        raise TypeError(f"unsupported operand for {op}: {a} {op} {b}; operands must be {SUPPORTED}")

    # ---- binary operations: value, then the local derivative for each operand --------
    def __add__(self, other: Value | float) -> Value:
        other = Value._lift(other, "+")
        return Value(self.data + other.data, (self, other), (1.0, 1.0), "+")

    def __sub__(self, other: Value | float) -> Value:
        other = Value._lift(other, "-")
        return Value(self.data - other.data, (self, other), (1.0, -1.0), "-")

    def __mul__(self, other: Value | float) -> Value:
        other = Value._lift(other, "*")
        return Value(self.data * other.data, (self, other), (other.data, self.data), "*")

    def __truediv__(self, other: Value | float) -> Value:
        other = Value._lift(other, "/")
        a, b = self.data, other.data
        if b == 0.0:
            raise ZeroDivisionError(f"division by a Value that is 0 ({self!r} / {other!r})")
        return Value(a / b, (self, other), (1.0 / b, -a / (b * b)), "/")

    def __pow__(self, exponent: float) -> Value:
        if isinstance(exponent, Value):
            raise TypeError(
                "unsupported operand for **: Value ** Value; the exponent must be an int or float "
                "(for a Value exponent write (y * x.log()).exp())"
            )
        if not _is_number(exponent):
            raise TypeError(
                f"unsupported operand for **: Value ** {type(exponent).__name__}; "
                "the exponent must be an int or float"
            )
        x, p = self.data, float(exponent)
        if x < 0 and not p.is_integer():
            raise ValueError(f"{x!r} ** {p!r} is not a real number (negative base, fractional exponent)")
        if x == 0 and p < 0:
            raise ZeroDivisionError(f"0 ** {p!r} is infinite")
        local = p * x ** (p - 1) if p != 0 else 0.0  # d x^p / dx = p x^(p-1)
        return Value(x**p, (self,), (local,), f"**{p:g}")

    def __neg__(self) -> Value:
        return Value(-self.data, (self,), (-1.0,), "neg")

    # Reflected operators: `2 + x`, `2 - x`, `2 * x`, `2 / x` (the number becomes a leaf).
    def __radd__(self, other: float) -> Value:
        return Value._lift(other, "+", left=self) + self

    def __rsub__(self, other: float) -> Value:
        return Value._lift(other, "-", left=self) - self

    def __rmul__(self, other: float) -> Value:
        return Value._lift(other, "*", left=self) * self

    def __rtruediv__(self, other: float) -> Value:
        return Value._lift(other, "/", left=self) / self

    def __rpow__(self, other: object) -> Value:
        raise TypeError(
            f"unsupported operand for **: {type(other).__name__} ** Value; only Value ** (int or float) "
            "is supported (for a ** x write (x * math.log(a)).exp())"
        )

    # ---- unary functions ---------------------------------------------------------------
    def exp(self) -> Value:
        """e^x; local derivative e^x (the output itself)."""
        e = math.exp(self.data)
        return Value(e, (self,), (e,), "exp")

    def log(self) -> Value:
        """Natural log of a positive value; local derivative 1/x."""
        if self.data <= 0:
            raise ValueError(f"log needs a positive value, got {self.data!r}")
        return Value(math.log(self.data), (self,), (1.0 / self.data,), "log")

    def tanh(self) -> Value:
        """tanh(x); local derivative 1 - tanh(x)^2."""
        t = math.tanh(self.data)
        return Value(t, (self,), (1.0 - t * t,), "tanh")

    def relu(self) -> Value:
        """max(0, x); local derivative 1 where x > 0, else 0 (0 at x = 0, as in PyTorch)."""
        pos = self.data > 0
        return Value(self.data if pos else 0.0, (self,), (1.0 if pos else 0.0,), "relu")

    def sigmoid(self) -> Value:
        """1 / (1 + e^-x), computed without overflow; local derivative s(1 - s)."""
        x = self.data
        s = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
        return Value(s, (self,), (s * (1.0 - s),), "sigmoid")

    # ---- backpropagation ---------------------------------------------------------------
    def backward(self) -> None:
        """Add d self / d node to every node's .grad, visiting nodes in reverse topological order.

        Chain rule: a node passes grad * (local derivative) to each operand, and it does so only
        after every node that uses it has finished, so its own grad is complete by then.
        As in PyTorch, the grads of leaves (inputs, parameters) add up across calls, so reset
        them (zero_grad) before the next backward; inner nodes start from 0 on every call.
        """
        order = topological_order(self)
        for node in order:
            if node._prev:  # an inner node: its grad belongs to this pass only
                node.grad = 0.0
        self.grad += 1.0
        for node in reversed(order):
            g = node.grad
            for child, local in zip(node._prev, node._local, strict=True):
                child.grad += local * g


def topological_order(root: Value, left_first: bool = False) -> list[Value]:
    """Every node of root's graph once, each after all of its operands (root last); iterative DFS.

    left_first: visit operands left to right, as a recursive walk over `_prev` does (drawing uses that order)."""
    order: list[Value] = []
    seen: set[int] = set()
    stack: list[tuple[Value, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))  # emitted once all operands are
        for child in reversed(node._prev) if left_first else node._prev:  # the stack pops the last pushed first
            if id(child) not in seen:
                stack.append((child, False))
    return order


# ---- drawing a graph (notebook 01) -----------------------------------------------------
def graph_layout(root: Value) -> tuple[list[Value], dict[int, int], dict[int, float]]:
    """Where to draw root's graph: (nodes, operands first; column by id(node); height by id(node)).

    A node's column is one right of its deepest operand, an input's just left of its nearest user;
    barycenter sweeps sort each column by the mean height of its neighbours, to avoid crossings.
    """
    order = topological_order(root, left_first=True)
    users: dict[int, list[Value]] = {id(n): [] for n in order}
    for n in order:
        for c in dict.fromkeys(n._prev):
            users[id(c)].append(n)
    depth: dict[int, int] = {}
    for n in order:  # longest path from the inputs
        depth[id(n)] = 1 + max((depth[id(c)] for c in n._prev), default=-1)
    for n in order:  # an input sits just left of its first user, so its arrows stay short
        if not n._prev and users[id(n)]:
            depth[id(n)] = min(depth[id(u)] for u in users[id(n)]) - 1
    columns: dict[int, list[Value]] = {}
    for n in order:
        columns.setdefault(depth[id(n)], []).append(n)
    ypos: dict[int, float] = {}

    def place(col: list[Value]) -> None:
        for i, n in enumerate(col):
            ypos[id(n)] = (len(col) - 1) / 2 - i

    for d in sorted(columns):
        place(columns[d])
    for _ in range(3):  # barycenter sweeps: sort each column by the mean height of its neighbours
        for d in sorted(columns)[1:]:
            columns[d].sort(key=lambda n: -sum(ypos[id(c)] for c in n._prev) / max(len(n._prev), 1)
                            if n._prev else -ypos[id(n)])
            place(columns[d])
        for d in sorted(columns, reverse=True)[1:]:
            columns[d].sort(key=lambda n: -sum(ypos[id(u)] for u in users[id(n)]) / max(len(users[id(n)]), 1)
                            if users[id(n)] else -ypos[id(n)])
            place(columns[d])
    return order, depth, ypos


def draw_graph(root: Value, title: str | None = None) -> None:
    """Draw root's computation graph with matplotlib: a box per value (label, data, grad), a circle per op.

    Any object with Value's fields (data, grad, label, _prev, _op) works, notebook 01's own Value too.
    """
    import matplotlib.pyplot as plt

    from nanolm.core import plotting

    order, depth, ypos = graph_layout(root)
    per_column = Counter(depth.values())
    tall, wide = max(per_column.values()), max(per_column) + 1
    fig, ax = plotting.subplots(width=2.3 * wide + 0.6, height=0.95 * tall + 1.0)
    ax.set_xlim(-0.6, 2.2 * (wide - 1) + 0.6)
    ax.set_ylim(-tall / 2 - 0.1, tall / 2 + 0.6)  # headroom for arcs over skipped columns
    ax.axis("off")
    boxes = {}
    for n in order:
        X = 2.2 * depth[id(n)]
        text = (f"{n.label}\n" if n.label else "") + f"data {n.data:.4f}\ngrad {n.grad:.4f}"
        color = "#cfe2f3" if not n._prev else ("#fce5cd" if n is root else "#eeeeee")
        boxes[id(n)] = ax.text(X, ypos[id(n)], text, ha="center", va="center", fontsize=8, family="monospace",
                               bbox=dict(boxstyle="round,pad=0.3", fc=color, ec="0.4"))
    arrow = dict(arrowstyle="-|>", color="0.35", lw=0.9, shrinkA=2, shrinkB=2)
    for n in order:
        if not n._prev:
            continue
        X, Y = 2.2 * depth[id(n)] - 0.95, ypos[id(n)]
        op = ax.text(X, Y, n._op, ha="center", va="center", fontsize=9 if len(n._op) < 3 else 7, fontweight="bold",
                     bbox=dict(boxstyle="circle,pad=0.25", fc="white", ec="0.4"))
        ax.annotate("", xy=(0, 0.5), xycoords=boxes[id(n)], xytext=(1, 0.5), textcoords=op, arrowprops=arrow)
        for k, child in enumerate(n._prev):
            if n._prev.count(child) > 1:  # x*x: one arrow per use, bent apart so both show
                rad = 0.35 if k == 0 else -0.35
            elif depth[id(n)] - depth[id(child)] > 1 and abs(ypos[id(n)] - ypos[id(child)]) < 0.5:
                rad = -0.25  # an edge that skips a column would hide behind the straight path: arc over it
            else:
                rad = 0.0
            ax.annotate("", xy=(0, 0.5), xycoords=op, xytext=(1, 0.5), textcoords=boxes[id(child)],
                        arrowprops={**arrow, "connectionstyle": f"arc3,rad={rad}"})
    ax.set_title(title or "computation graph")
    plt.show()


# ---- a tiny neural network ------------------------------------------------------------
ACTIVATIONS = ("relu", "tanh", "sigmoid", "linear")


def _activate(x: Value, act: str) -> Value:
    if act == "linear":
        return x
    return getattr(x, act)()


class Module:
    """Something with parameters: zero_grad() resets their gradients before the next backward."""

    def parameters(self) -> list[Value]:
        """All trainable Values, in a fixed order."""
        return []

    def zero_grad(self) -> None:
        """Set every parameter's .grad to 0 (backward adds to .grad; it never overwrites it)."""
        for p in self.parameters():
            p.grad = 0.0


class Neuron(Module):
    """act(w . x + b) for a list of nin inputs; weights ~ U(-1/sqrt(nin), 1/sqrt(nin)) like nn.Linear."""

    def __init__(self, nin: int, act: str = "relu", rng: random.Random | None = None):
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; use one of {ACTIVATIONS}")
        rng = rng or random.Random(0)
        bound = 1.0 / math.sqrt(nin)
        self.w = [Value(rng.uniform(-bound, bound), label="w") for _ in range(nin)]
        self.b = Value(rng.uniform(-bound, bound), label="b")
        self.act = act

    def __call__(self, x: Sequence[Value | float]) -> Value:
        if len(x) != len(self.w):
            raise ValueError(f"Neuron expects {len(self.w)} inputs, got {len(x)}")
        z = self.b
        for wi, xi in zip(self.w, x, strict=True):
            z = z + wi * xi
        return _activate(z, self.act)

    def parameters(self) -> list[Value]:
        return [*self.w, self.b]

    def __repr__(self) -> str:
        return f"Neuron({len(self.w)}, act={self.act!r})"


class Layer(Module):
    """nout independent neurons that read the same nin inputs."""

    def __init__(self, nin: int, nout: int, act: str = "relu", rng: random.Random | None = None):
        rng = rng or random.Random(0)
        self.neurons = [Neuron(nin, act, rng) for _ in range(nout)]

    def __call__(self, x: Sequence[Value | float]) -> list[Value]:
        return [n(x) for n in self.neurons]  # nout values

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self) -> str:
        return f"Layer({len(self.neurons[0].w)} -> {len(self.neurons)}, act={self.neurons[0].act!r})"


class MLP(Module):
    """Layers nin -> nouts[0] -> ... -> nouts[-1]; hidden layers use `act`, the last one is linear."""

    def __init__(self, nin: int, nouts: Iterable[int], act: str = "relu", seed: int = 0):
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; use one of {ACTIVATIONS}")
        sizes = [nin, *nouts]
        rng = random.Random(seed)
        self.layers = [
            Layer(sizes[i], sizes[i + 1], act if i < len(sizes) - 2 else "linear", rng)
            for i in range(len(sizes) - 1)
        ]

    def __call__(self, x: Sequence[Value | float]) -> list[Value]:
        for layer in self.layers:
            x = layer(x)
        return x  # one Value per output unit

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self) -> str:
        return f"MLP([{', '.join(map(repr, self.layers))}])"


def num_parameters(sizes: Sequence[int]) -> int:
    """Weights plus biases of an MLP with layer widths `sizes` (e.g. [2, 16, 16, 1] -> 337)."""
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))
