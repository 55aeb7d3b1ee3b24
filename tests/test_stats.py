"""nanolm.eval.stats: Wilson intervals against independent values, the bootstrap, CORE's centering."""

import math
from decimal import Decimal, getcontext

import numpy as np
import pytest

from nanolm.eval import stats


def _wilson_decimal(k: int, n: int, z: str = "1.96") -> tuple[float, float]:
    """The closed form, written out again in 50-digit decimals: an independent check of wilson()."""
    getcontext().prec = 50
    k, n, z = Decimal(k), Decimal(n), Decimal(z)
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)).sqrt()
    return float(center - half), float(center + half)


@pytest.mark.parametrize("k, n", [(1, 10), (5, 10), (9, 10), (124, 300), (3, 1000), (700, 701)])
def test_wilson_matches_the_closed_form_in_decimals(k, n):
    assert stats.wilson(k, n, z=1.96) == pytest.approx(_wilson_decimal(k, n), abs=1e-12)


@pytest.mark.parametrize("k, n", [(0, 10), (1, 10), (124, 300), (300, 300), (17, 23)])
def test_wilson_matches_scipy(k, n):
    scipy_stats = pytest.importorskip("scipy.stats")
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert stats.wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_wilson_textbook_values():
    assert stats.wilson(0, 10, z=1.96) == (0.0, pytest.approx(0.2775, abs=1e-4))  # none right: not [0, 0]
    lo, hi = stats.wilson(10, 10, z=1.96)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.2775, abs=1e-4)  # symmetric
    lo, hi = stats.wilson(5, 10, z=1.96)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))


def test_wilson_refuses_no_trials_and_impossible_counts():
    with pytest.raises(ValueError):
        stats.wilson(0, 0)
    with pytest.raises(ValueError):
        stats.wilson(11, 10)
    with pytest.raises(ValueError):
        stats.wilson(-1, 10)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_interval_contains_p_and_shrinks_like_one_over_sqrt_n(p):
    widths = []
    for n in (100, 400, 1600, 6400):
        lo, hi = stats.wilson(round(p * n), n)
        assert lo < p < hi
        widths.append(hi - lo)
    for wide, narrow in zip(widths, widths[1:], strict=False):
        assert wide / narrow == pytest.approx(2.0, rel=0.05)  # 4x the questions, half the width


def test_bootstrap_is_deterministic_with_a_seed_and_moves_with_it():
    values = np.random.default_rng(1).random(200)
    assert stats.bootstrap(values, seed=3) == stats.bootstrap(values, seed=3)
    assert stats.bootstrap(values, seed=3) != stats.bootstrap(values, seed=4)
    lo, hi = stats.bootstrap(values, n_resamples=500)
    assert lo < float(np.mean(values)) < hi


def test_bootstrap_agrees_with_wilson_for_a_large_n():
    outcomes = [1.0] * 600 + [0.0] * 1400
    lo, hi = stats.bootstrap(outcomes, n_resamples=2000, seed=0)
    w_lo, w_hi = stats.wilson(600, 2000)
    assert lo == pytest.approx(w_lo, abs=0.005) and hi == pytest.approx(w_hi, abs=0.005)


def test_bootstrap_takes_any_statistic_and_level():
    values = list(range(101))
    lo90, hi90 = stats.bootstrap(values, stat=np.median, level=0.90)
    lo99, hi99 = stats.bootstrap(values, stat=np.median, level=0.99)
    assert lo99 <= lo90 < 50 < hi90 <= hi99
    with pytest.raises(ValueError):
        stats.bootstrap([])


def test_accuracy_and_its_text():
    acc = stats.accuracy([True] * 124 + [False] * 176)
    assert (acc.n, acc.correct, acc.value) == (300, 124, pytest.approx(124 / 300))
    assert (acc.lo, acc.hi) == stats.wilson(124, 300)
    assert stats.fmt_interval(acc) == "41.3% [35.9, 47.0] (n=300)"
    assert acc.as_dict() == {"value": acc.value, "n": 300, "correct": 124, "lo": acc.lo, "hi": acc.hi}
    with pytest.raises(ValueError):
        stats.accuracy([])


def test_centered_is_zero_at_chance_and_one_at_perfect():
    assert stats.centered(0.25, 0.25) == 0.0
    assert stats.centered(1.0, 0.25) == 1.0
    assert stats.centered(0.625, 0.25) == pytest.approx(0.5)
    assert stats.centered(0.1, 0.25) < 0  # worse than guessing
    assert stats.centered(0.4, 0.0) == 0.4  # no choices to guess from: unchanged
    with pytest.raises(ValueError):
        stats.centered(0.5, 1.0)


def test_chance_of_is_the_mean_of_one_over_choices():
    assert stats.chance_of([4, 4, 4]) == 0.25
    assert stats.chance_of([2, 4]) == pytest.approx((0.5 + 0.25) / 2)
    with pytest.raises(ValueError):
        stats.chance_of([])
    with pytest.raises(ValueError):
        stats.chance_of([4, 0])


def test_core_average_is_the_plain_mean_over_tasks():
    tasks = {"hellaswag": stats.centered(0.40, 0.25), "arc_easy": stats.centered(0.55, 0.25),
             "lambada": stats.centered(0.30, 0.0)}
    assert stats.core_average(tasks) == pytest.approx((0.2 + 0.4 + 0.3) / 3)
    assert math.isclose(stats.core_average({"one": 0.7}), 0.7)
    with pytest.raises(ValueError):
        stats.core_average({})
