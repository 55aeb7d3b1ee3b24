"""nanolm.teach.value against torch autograd in float64: every op, random expression graphs, the MLP."""

from __future__ import annotations

import math
import random
import warnings

import pytest
import tolerances
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nanolm.teach.value import (
    MLP,
    Value,
    draw_graph,
    graph_layout,
    num_parameters,
    topological_order,
)

TOL = tolerances.FLOAT64  # gradients match torch float64 to rounding (measured at most 3.6e-15)


def leaf_pair(xs: list[float]) -> tuple[list[Value], list[torch.Tensor]]:
    """The same inputs as Values and as float64 torch leaves that require grad."""
    vs = [Value(x) for x in xs]
    ts = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in xs]
    return vs, ts


def grads_match(f, xs: list[float]) -> None:
    """f written once with methods both Value and torch.Tensor have; compare output and gradients."""
    vs, ts = leaf_pair(xs)
    out_v, out_t = f(*vs), f(*ts)
    out_v.backward()
    out_t.backward()
    torch.testing.assert_close(torch.tensor(out_v.data, dtype=torch.float64), out_t.detach(), **TOL)
    got = torch.tensor([v.grad for v in vs], dtype=torch.float64)
    want = torch.stack([t.grad if t.grad is not None else torch.zeros((), dtype=torch.float64) for t in ts])
    torch.testing.assert_close(got, want, **TOL)


OPS = {
    "add": (lambda a, b: a + b, [1.5, -0.7]),
    "sub": (lambda a, b: a - b, [1.5, -0.7]),
    "mul": (lambda a, b: a * b, [1.5, -0.7]),
    "div": (lambda a, b: a / b, [1.5, -0.7]),
    "pow2": (lambda a: a**2, [-1.3]),
    "pow3": (lambda a: a**3, [-1.3]),
    "pow_half": (lambda a: a**0.5, [2.2]),
    "pow_neg": (lambda a: a**-1.5, [0.8]),
    "pow_zero": (lambda a: a**0, [0.8]),
    "neg": (lambda a: -a, [0.4]),
    "exp": (lambda a: a.exp(), [0.9]),
    "log": (lambda a: a.log(), [0.3]),
    "tanh": (lambda a: a.tanh(), [-0.6]),
    "relu_pos": (lambda a: a.relu(), [0.6]),
    "relu_neg": (lambda a: a.relu(), [-0.6]),
    "relu_zero": (lambda a: a.relu(), [0.0]),
    "sigmoid": (lambda a: a.sigmoid(), [-1.2]),
    "sigmoid_far": (lambda a: a.sigmoid(), [-40.0]),
    "radd": (lambda a: 2.5 + a, [0.3]),
    "rsub": (lambda a: 2.5 - a, [0.3]),
    "rmul": (lambda a: 2.5 * a, [0.3]),
    "rdiv": (lambda a: 2.5 / a, [0.3]),
    "neuron": (lambda w1, x1, w2, x2, b: (w1 * x1 + w2 * x2 + b).tanh(), [-3.0, 2.0, 1.0, 0.0, 6.88]),
    "mixed": (lambda a, b: ((a * b).exp() + (b * b + 1).log() - a / (b**2 + 1)).sigmoid() * a, [0.7, -1.1]),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_op_matches_torch(name):
    f, xs = OPS[name]
    grads_match(f, xs)


def test_reused_node_gets_the_sum_of_its_paths():
    x = Value(0.5)
    y = x * 3.0  # path 1: dy/dx = 3
    z = x.exp()  # path 2: dz/dx = e^x
    (y + z).backward()
    assert x.grad == pytest.approx(3.0 + math.exp(0.5), abs=1e-15)

    a = Value(-1.25)
    (a + a).backward()
    assert a.grad == 2.0
    b = Value(3.0)
    (b * b).backward()
    assert b.grad == 6.0
    grads_match(lambda u: (u * u + u).tanh() * u - u / (u * u + 2), [0.8])


def test_leaf_grads_accumulate_like_torch_until_reset():
    f = lambda u, v: (u * v).tanh() + v.exp()
    vs, ts = leaf_pair([0.3, -0.4])
    out_v, out_t = f(*vs), f(*ts)
    for _ in range(3):  # three backward calls without resetting
        out_v.backward()
        out_t.backward(retain_graph=True)
    torch.testing.assert_close(torch.tensor([v.grad for v in vs], dtype=torch.float64), torch.stack([t.grad for t in ts]), **TOL)
    out_v.backward()
    single = vs[0].grad / 4
    for v in vs:
        v.grad = 0.0
    out_v.backward()
    assert vs[0].grad == pytest.approx(single, abs=1e-15)


def test_topological_order_puts_operands_first():
    a, b = Value(1.0), Value(2.0)
    c = a * b
    d = c + a
    e = d * c
    order = topological_order(e)
    pos = {id(n): i for i, n in enumerate(order)}
    assert len(order) == 5 and order[-1] is e
    for n in order:
        for child in n._prev:
            assert pos[id(child)] < pos[id(n)]


def recursive_walk(root: Value) -> list[Value]:
    """Notebook 01's `walk`: a recursive depth-first walk, operands left to right, each node after them."""
    order, seen = [], set()

    def visit(node):
        if id(node) not in seen:
            seen.add(id(node))
            for child in node._prev:
                visit(child)
            order.append(node)

    visit(root)
    return order


def test_graph_layout_columns_and_heights():
    x, y, z = Value(2.0, label="x"), Value(-3.0, label="y"), Value(10.0, label="z")
    L = (x * y + z).tanh()
    s = L._prev[0]
    xy = s._prev[0]
    order, depth, ypos = graph_layout(L)
    assert order == recursive_walk(L)
    assert [depth[id(n)] for n in (x, y, xy, z, s, L)] == [0, 0, 1, 1, 2, 3]  # z sits next to its user
    assert [ypos[id(n)] for n in (x, y, xy, z, s, L)] == [0.5, -0.5, 0.5, -0.5, 0.0, 0.0]


def test_graph_layout_order_is_the_recursive_walk_on_random_graphs():
    rng = random.Random(0)
    for _ in range(50):
        nodes = [Value(rng.uniform(-1, 1)) for _ in range(3)]
        for _ in range(rng.randint(1, 12)):
            a, b = rng.choice(nodes), rng.choice(nodes)  # reuse and x*x included
            nodes.append(rng.choice([a + b, a * b, a - b, a.tanh()]))
        order, depth, ypos = graph_layout(nodes[-1])
        assert order == recursive_walk(nodes[-1])
        for n in order:
            assert all(depth[id(c)] < depth[id(n)] for c in n._prev)
        columns = {}
        for n in order:
            columns.setdefault(depth[id(n)], []).append(ypos[id(n)])
        for heights in columns.values():  # distinct heights, centred on 0
            assert len(set(heights)) == len(heights) and sum(heights) == pytest.approx(0.0)


def test_draw_graph_draws_every_value_and_operation():
    plt = pytest.importorskip("matplotlib.pyplot")
    from matplotlib.text import Annotation

    x = Value(3.0, label="x")
    a = x * x
    out = a + a.exp()  # x is used twice by *, a twice, and the + skips the exp's column
    out.backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # plt.show() on a non-interactive backend
        draw_graph(out, "test graph")
    ax = plt.gcf().axes[0]
    try:
        boxes = [t.get_text() for t in ax.texts if not isinstance(t, Annotation)]
        arrows = [t for t in ax.texts if isinstance(t, Annotation)]
        values = [(f"{n.label}\n" if n.label else "") + f"data {n.data:.4f}\ngrad {n.grad:.4f}"
                  for n in (x, a, out._prev[1], out)]
        assert ax.get_title() == "test graph"
        assert sorted(boxes) == sorted([*values, "*", "exp", "+"])
        assert len(arrows) == 3 + 5  # op -> result, and one per operand use
    finally:
        plt.close("all")


def test_deep_graph_does_not_hit_the_recursion_limit():
    x = Value(1.0)
    y = x
    for _ in range(5000):
        y = y + x * 0.001
    y.backward()
    assert x.grad == pytest.approx(1.0 + 5000 * 0.001)


@pytest.mark.parametrize(
    "expr, words",
    [
        (lambda: Value(2.0) ** Value(3.0), ["Value ** Value", "int or float"]),
        (lambda: 2.0 ** Value(3.0), ["float ** Value", "int or float"]),
        (lambda: Value(2.0) ** "3", ["Value ** str", "int or float"]),
        (lambda: Value(1.0) + "a", ["Value + str", "Value, int or float"]),
        (lambda: "a" + Value(1.0), ["str + Value", "Value, int or float"]),
        (lambda: Value(1.0) * [1.0], ["Value * list", "Value, int or float"]),
        (lambda: None - Value(1.0), ["NoneType - Value", "Value, int or float"]),
        (lambda: Value(1.0) / 1j, ["Value / complex", "Value, int or float"]),
        (lambda: Value("1.0"), ["real number", "str"]),
        (lambda: Value(True), ["real number", "bool"]),
    ],
)
def test_unsupported_operands_raise_a_clear_type_error(expr, words):
    with pytest.raises(TypeError) as info:
        expr()
    for w in words:
        assert w in str(info.value)


def test_domain_errors():
    with pytest.raises(ValueError, match="positive"):
        Value(0.0).log()
    with pytest.raises(ValueError, match="negative base"):
        Value(-2.0) ** 0.5
    with pytest.raises(ZeroDivisionError):
        Value(1.0) / Value(0.0)
    with pytest.raises(ZeroDivisionError):
        Value(0.0) ** -1


def test_numpy_scalars_are_numbers():
    import numpy as np  # a dependency of the course (torch, safetensors): never a reason to skip
    v = Value(np.float32(1.5)) * np.int64(2) + np.float64(0.25)
    assert v.data == 3.25


# ---- random expression graphs ---------------------------------------------------------
UNARY = ["neg", "exp", "log", "tanh", "relu", "sigmoid", "pow"]
BINARY = ["add", "sub", "mul", "div", "radd", "rsub", "rmul", "rdiv"]
EXPONENTS = [2, 3, -1, 0.5, -0.5, 1.5, -2]
LEAF = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False)


@st.composite
def programs(draw):
    """Leaves plus a list of steps; each step applies an op to earlier nodes (so nodes get reused)."""
    leaves = draw(st.lists(LEAF, min_size=1, max_size=4))
    step = st.tuples(
        st.sampled_from(UNARY + BINARY),
        st.integers(0, 63),  # first operand (index into the nodes so far, modulo their number)
        st.integers(0, 63),  # second operand
        st.sampled_from(EXPONENTS),
        st.floats(-3.0, 3.0, allow_nan=False).filter(lambda c: abs(c) > 0.1),  # a constant
    )
    steps = draw(st.lists(step, min_size=1, max_size=14))
    n_out = draw(st.integers(1, 3))
    return leaves, steps, n_out


def apply(op: str, u, v, k: float, c: float):
    """One step on one backend (Value or tensor): the methods and operators both share."""
    if op == "neg":
        return -u
    if op in ("exp", "log", "tanh", "relu", "sigmoid"):
        return getattr(u, op)()
    if op == "pow":
        return u**k
    if op == "add":
        return u + v
    if op == "sub":
        return u - v
    if op == "mul":
        return u * v
    if op == "div":
        return u / v
    if op == "radd":
        return c + u
    if op == "rsub":
        return c - u
    if op == "rmul":
        return c * u
    if op == "rdiv":
        return c / u
    if op == "safe":  # u*u + 0.5: a positive stand-in for u that still depends on it (reuses u)
        return u * u + 0.5
    if op == "squash":  # 5 tanh(u/5): keeps magnitudes, and so rounding, small
        return (u * 0.2).tanh() * 5.0
    raise AssertionError(op)


def run_program(steps, n_out, nodes):
    """Apply the steps to `nodes`, a list of (Value, tensor) pairs, building both graphs in lockstep.

    Every domain decision looks at the Value's data, so both backends build the same graph.
    """
    pairs = list(nodes)

    def step(op, a, b=None, k=0.0, c=0.0):
        b = b or a
        return (apply(op, a[0], b[0], k, c), apply(op, a[1], b[1], k, c))

    for op, i, j, k, c in steps:
        a, b = pairs[i % len(pairs)], pairs[j % len(pairs)]
        if op == "log" and a[0].data <= 0.1:
            a = step("safe", a)
        elif op == "pow" and (not float(k).is_integer() or k < 0) and abs(a[0].data) <= 0.1:
            a = step("safe", a)
        elif op == "pow" and not float(k).is_integer() and a[0].data <= 0:
            a = step("safe", a)
        elif op == "rdiv" and abs(a[0].data) <= 0.1:
            a = step("safe", a)
        elif op == "div" and abs(b[0].data) <= 0.1:
            b = step("safe", b)
        out = step(op, a, b, k, c)
        if abs(out[0].data) > 5.0:
            out = step("squash", out)
        pairs.append(out)
    total = pairs[-1]
    for p in pairs[-n_out:-1]:
        total = step("add", total, p)
    return total


@settings(max_examples=150, deadline=None)
@given(programs())
def test_random_graphs_match_torch(program):
    leaves, steps, n_out = program
    vs, ts = leaf_pair(leaves)
    out_v, out_t = run_program(steps, n_out, zip(vs, ts, strict=True))
    out_v.backward()
    out_t.backward()
    torch.testing.assert_close(torch.tensor(out_v.data, dtype=torch.float64), out_t.detach(), **TOL)
    got = torch.tensor([v.grad for v in vs], dtype=torch.float64)
    want = torch.stack([t.grad if t.grad is not None else torch.zeros((), dtype=torch.float64) for t in ts])
    torch.testing.assert_close(got, want, **TOL)


# ---- the MLP ------------------------------------------------------------------------------
def test_mlp_parameter_count_and_shapes():
    model = MLP(2, [16, 16, 1], seed=0)
    assert len(model.parameters()) == num_parameters([2, 16, 16, 1]) == 337
    assert len({id(p) for p in model.parameters()}) == 337
    out = model([0.5, -1.0])
    assert len(out) == 1 and isinstance(out[0], Value)
    assert [layer.neurons[0].act for layer in model.layers] == ["relu", "relu", "linear"]
    assert len(MLP(3, [4, 2], act="tanh")([1.0, 2.0, 3.0])) == 2
    with pytest.raises(ValueError, match="expects 2 inputs"):
        model([1.0])
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(2, [3], act="gelu")


def test_mlp_matches_torch_and_is_seeded():
    model = MLP(3, [5, 4, 2], act="tanh", seed=3)
    assert [p.data for p in model.parameters()] == [p.data for p in MLP(3, [5, 4, 2], act="tanh", seed=3).parameters()]
    x = [0.3, -1.2, 2.0]
    loss_v = sum(o * o for o in model(x))
    loss_v.backward()
    # the same network as float64 tensors: W is (nout, nin), b is (nout,)
    params = []
    for layer in model.layers:
        W = torch.tensor([[w.data for w in n.w] for n in layer.neurons], dtype=torch.float64, requires_grad=True)
        b = torch.tensor([n.b.data for n in layer.neurons], dtype=torch.float64, requires_grad=True)
        params.append((W, b))
    h = torch.tensor(x, dtype=torch.float64)
    for i, (W, b) in enumerate(params):
        h = W @ h + b
        if i < len(params) - 1:
            h = torch.tanh(h)
    (h * h).sum().backward()
    torch.testing.assert_close(torch.tensor(loss_v.data, dtype=torch.float64), (h * h).sum().detach(), **TOL)
    for layer, (W, b) in zip(model.layers, params, strict=True):
        gW = torch.tensor([[w.grad for w in n.w] for n in layer.neurons], dtype=torch.float64)
        gb = torch.tensor([n.b.grad for n in layer.neurons], dtype=torch.float64)
        torch.testing.assert_close(gW, W.grad, **TOL)
        torch.testing.assert_close(gb, b.grad, **TOL)


def test_one_training_step_reduces_the_loss():
    xs = [[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [-1.0, -0.5]]
    ys = [1.0, -1.0, 1.0, -1.0]
    model = MLP(2, [4, 1], seed=1)

    def loss_fn():
        return sum((model(x)[0] - y) ** 2 for x, y in zip(xs, ys, strict=True)) / len(xs)

    before = loss_fn()
    model.zero_grad()
    before.backward()
    assert any(p.grad != 0.0 for p in model.parameters())
    for p in model.parameters():
        p.data -= 0.05 * p.grad
    after = loss_fn()
    assert after.data < before.data - 1e-3
    model.zero_grad()
    assert all(p.grad == 0.0 for p in model.parameters())
