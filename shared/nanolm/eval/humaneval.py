"""HumanEval: 164 Python functions to complete, each judged by running its unit tests (Chen et al., 2021).

A problem gives the model a `prompt` (imports, a signature and a docstring with examples); the model
writes the body. We cut the completion where the function ends (`truncate`, at the Codex paper's stop
sequences), glue prompt + completion + the problem's `check` function into one program (`program`), and
run it in a separate, fenced-in process (`check`, through core.process.run_python): it passes when every
assertion holds within the time limit.

With n samples per problem of which c pass, pass@k is the chance that at least one of k samples drawn
without replacement from the n passes:

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

the unbiased estimator of the paper (the product form avoids huge binomials). With greedy decoding
(n = 1) pass@1 is simply the fraction of problems solved.

The data set ships with controls a learner should run once: every `canonical_solution` passes, and a
body of `pass` passes none, so a harness that is too lenient or too strict shows at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..core import data
from ..core.process import RunResult, run_python

# The stop sequences of the Codex paper (Chen et al. 2021, section 3.3: "\nclass", "\ndef", "\n#", "\nif",
# "\nprint"), also lm-evaluation-harness's humaneval.yaml `until`. Each starts at column 0, so it ends the
# function body (which is indented) and nothing inside it.
STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
TIMEOUT_S = 5.0  # per program; the human-eval repository uses 3 s, our machines may be slower
WORKERS = 2  # programs run in parallel (each a separate process; threads only wait)


def problems() -> list[dict]:
    """The 164 problems: task_id, prompt, canonical_solution, test, entry_point."""
    return data.read_jsonl("humaneval", "HumanEval.jsonl.gz")


def truncate(completion: str, stop: Sequence[str] = STOP) -> str:
    """The completion up to (not including) the earliest stop sequence."""
    cut = min((i for s in stop if (i := completion.find(s)) >= 0), default=len(completion))
    return completion[:cut]


def program(problem: dict, completion: str) -> str:
    """The program that tests one completion: prompt + completion, the tests, and the call to check()."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def check(problem: dict, completion: str, timeout_s: float = TIMEOUT_S) -> RunResult:
    """Run one completion against its problem's tests in a fenced-in process; `.passed` says the verdict."""
    return run_python(program(problem, completion), timeout_s=timeout_s)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, not {value!r}")
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every k-subset holds a passing sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def evaluate(problems: Sequence[dict], completions_per_problem: Sequence[Sequence[str]],
             k: Sequence[int] = (1,), timeout_s: float = TIMEOUT_S, workers: int = WORKERS) -> dict:
    """Run every completion (already truncated) of every problem; per-problem pass counts and mean pass@k.

    Returns {"problems": [{"task_id", "n", "c", "passed": [bool per completion]}], "pass@k": mean, ...}.
    """
    if len(problems) != len(completions_per_problem):
        raise ValueError(f"{len(problems)} problems but {len(completions_per_problem)} lists of completions")
    if not problems:
        raise ValueError("no problems to evaluate")
    smallest = min(len(cs) for cs in completions_per_problem)
    if any(not 1 <= kk <= smallest for kk in k):
        raise ValueError(f"every k must lie in 1..{smallest} (the fewest completions of any problem), got {list(k)}")
    jobs = [(p, c) for p, cs in zip(problems, completions_per_problem, strict=True) for c in cs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        verdicts = list(pool.map(lambda job: check(*job, timeout_s=timeout_s).passed, jobs))
    rows, at = [], 0
    for p, cs in zip(problems, completions_per_problem, strict=True):
        passed = verdicts[at: at + len(cs)]
        at += len(cs)
        rows.append({"task_id": p["task_id"], "n": len(cs), "c": sum(passed), "passed": passed})
    result: dict = {"problems": rows}
    for kk in k:
        result[f"pass@{kk}"] = sum(pass_at_k(r["n"], r["c"], kk) for r in rows) / len(rows)
    return result
