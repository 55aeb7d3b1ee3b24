"""nanolm.teach.gradcheck: central differences and relative error."""

import numpy as np
import pytest

from nanolm.teach import gradcheck


def test_numerical_gradient_of_known_functions():
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    num = gradcheck.numerical_grad(lambda v: float((v**2).sum()), x)
    np.testing.assert_allclose(num, 2 * x, rtol=0, atol=1e-8)
    num = gradcheck.numerical_grad(lambda v: float(np.sin(v).sum()), x)
    np.testing.assert_allclose(num, np.cos(x), rtol=0, atol=1e-8)


def test_input_is_restored():
    x = np.array([1.0, 2.0, 3.0])
    gradcheck.numerical_grad(lambda v: float(v.prod()), x)
    assert x.tolist() == [1.0, 2.0, 3.0]


def test_check_passes_on_right_and_fails_on_wrong_gradient():
    x = np.random.default_rng(0).normal(size=(3, 4))
    f = lambda v: float(np.tanh(v).sum())
    good = gradcheck.check(f, x, 1 - np.tanh(x) ** 2)
    assert good.ok and good.rel_error < 1e-8
    bad = gradcheck.check(f, x, 1 - np.tanh(x) ** 2 + 1e-3)
    assert not bad.ok and "FAILED" in str(bad)


def test_rel_error_is_scale_free_and_checks_shapes():
    a = np.array([1.0, 2.0])
    assert gradcheck.rel_error(a, a) == 0.0
    assert gradcheck.rel_error(1e6 * a, 1e6 * a * (1 + 1e-9)) < 1e-8
    assert gradcheck.rel_error(np.zeros(2), np.zeros(2)) == 0.0
    with pytest.raises(ValueError):
        gradcheck.rel_error(a, np.ones(3))


def test_float32_is_refused():
    with pytest.raises(TypeError, match="float64"):
        gradcheck.numerical_grad(lambda v: float(v.sum()), np.ones(3, dtype=np.float32))
