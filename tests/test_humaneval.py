"""HumanEval: the controls (canonical solutions all pass, a `pass` body passes none), timeouts, stop sequences, pass@k."""

import itertools
import math

import pytest

from nanolm.eval import humaneval


@pytest.fixture(scope="module")
def problems():
    return humaneval.problems()


def test_the_data_set(problems):
    assert len(problems) == 164
    assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert all(set(p) >= {"prompt", "canonical_solution", "test", "entry_point"} for p in problems)


def test_positive_control_every_canonical_solution_passes(problems):
    result = humaneval.evaluate(problems, [[p["canonical_solution"]] for p in problems])
    failed = [r["task_id"] for r in result["problems"] if r["c"] != 1]
    assert failed == [] and result["pass@1"] == 1.0


def test_negative_control_a_pass_body_passes_nothing(problems):
    result = humaneval.evaluate(problems, [["    pass\n"]] * len(problems))
    passed = [r["task_id"] for r in result["problems"] if r["c"]]
    assert passed == [] and result["pass@1"] == 0.0


def test_a_solution_that_loops_forever_fails_by_timeout(problems):
    r = humaneval.check(problems[0], "    while True:\n        pass\n", timeout_s=1)
    assert r.timed_out and not r.passed and r.seconds < 3


def test_a_wrong_solution_fails_with_an_assertion(problems):
    r = humaneval.check(problems[0], "    return False\n")
    assert not r.passed and not r.timed_out and "AssertionError" in r.stderr


def test_program_glues_prompt_completion_and_tests():
    p = {"prompt": "def f(x):\n", "test": "def check(candidate):\n    assert candidate(1) == 2\n", "entry_point": "f"}
    text = humaneval.program(p, "    return x + 1\n")
    assert text == ("def f(x):\n    return x + 1\n\n\ndef check(candidate):\n    assert candidate(1) == 2\n"
                    "\n\ncheck(f)\n")
    assert humaneval.check(p, "    return x + 1\n").passed
    assert not humaneval.check(p, "    return x\n").passed


@pytest.mark.parametrize("completion, expected", [
    ("    return x + 1\n", "    return x + 1\n"),  # nothing to cut
    ("    return x + 1\n\ndef g():\n    pass\n", "    return x + 1\n"),
    ("    return 1\nclass A:\n    pass", "    return 1"),
    ("    return 1\n# a comment at column 0\n", "    return 1"),
    ("    return 1\nif __name__ == '__main__':\n    f()\n", "    return 1"),
    ("    return 1\nprint(f(2))\n", "    return 1"),
    ("    if x:\n        return 1\n    # indented comment\n    return 2\n\ndef h(): pass",
     "    if x:\n        return 1\n    # indented comment\n    return 2\n"),  # indented stops do not count
    ("    return 1\nprint(1)\ndef g(): pass", "    return 1"),  # the earliest stop wins
    ("", ""),
])
def test_truncate(completion, expected):
    assert humaneval.truncate(completion) == expected


def _brute_force(n, c, k):
    """The chance that a random k-subset of n samples (the first c passing) holds a passing one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_the_brute_force_probability(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert math.isclose(humaneval.pass_at_k(n, c, k), _brute_force(n, c, k), abs_tol=1e-12), (n, c, k)


def test_pass_at_k_edge_cases():
    assert humaneval.pass_at_k(10, 0, 1) == 0.0
    assert humaneval.pass_at_k(10, 10, 10) == 1.0
    assert humaneval.pass_at_k(10, 1, 10) == 1.0  # n - c < k: every subset holds the passing one
    assert math.isclose(humaneval.pass_at_k(10, 3, 1), 0.3)  # pass@1 is c / n
    assert math.isclose(humaneval.pass_at_k(200, 13, 100), 1 - math.comb(187, 100) / math.comb(200, 100))


@pytest.mark.parametrize("n, c, k", [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (5.0, 2, 1), (5, True, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        humaneval.pass_at_k(n, c, k)


def test_evaluate_counts_and_averages():
    p = {"task_id": "t/0", "prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"}
    q = {**p, "task_id": "t/1"}
    right, wrong = "    return x + 1\n", "    return x\n"
    result = humaneval.evaluate([p, q], [[right, wrong, wrong], [wrong, wrong, wrong]], k=(1, 2))
    assert [(r["n"], r["c"], r["passed"]) for r in result["problems"]] == [(3, 1, [True, False, False]), (3, 0, [False] * 3)]
    assert math.isclose(result["pass@1"], (1 / 3 + 0) / 2)
    assert math.isclose(result["pass@2"], (2 / 3 + 0) / 2)
    with pytest.raises(ValueError):
        humaneval.evaluate([p], [[right]], k=(2,))
    with pytest.raises(ValueError):
        humaneval.evaluate([p, q], [[right]])
