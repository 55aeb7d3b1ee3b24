"""The reference: lm-evaluation-harness run on the same items, so every number can be checked against it.

lm-evaluation-harness (EleutherAI, `lm-eval` on PyPI) is what papers and model cards report with. Here
it runs offline: its own task configs (prompts, preprocessing, metrics) are included unchanged and
only told where the data is, a local JSON-lines file from data/ instead of the Hugging Face hub:

    hellaswag      includes the harness's hellaswag.yaml; its own process_docs prepares each record
    arc_easy/...   include arc_easy.yaml / arc_challenge.yaml; AI2's original files nest the question
                   ({"question": {"stem", "choices": [...]}}), so a small process_docs flattens each
                   record into the Hugging Face layout the harness's prompt expects; nothing else changes

The model is transformers' LlamaForCausalLM on an HF folder (the `smollm2` artifact is one), through
the harness's own HFLM class, in float32. `loglikelihoods` returns, per item, the harness's
(context, continuation) strings and its (log-likelihood, is_greedy) per choice, for an item-by-item
comparison with nanolm.eval.scorer. The harness scores the first `limit` documents in file order.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

from ..core import data
from . import tasks

_INCLUDE = {"hellaswag": "hellaswag/hellaswag.yaml", "arc_easy": "arc/arc_easy.yaml",
            "arc_challenge": "arc/arc_challenge.yaml"}
_ARC_DOCS = '''
def process_docs(dataset):
    """AI2's nested ARC records -> the Hugging Face ai2_arc layout the harness's arc prompt reads."""
    def flat(doc):
        q = doc["question"]
        return {"id": doc["id"], "question": q["stem"], "answerKey": doc["answerKey"],
                "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]}}
    return dataset.map(flat, remove_columns=dataset.column_names)
'''


def _task_yaml(task: str, tasks_dir: Path) -> str:
    """A task config that includes the harness's own and points it at the verified local file."""
    src = data.path(*tasks.FILES[task])
    lines = [f"include: {tasks_dir / _INCLUDE[task]}", f"task: nanolm_{task}", "tag: []", "dataset_path: json",
             "dataset_name: null", "dataset_kwargs:", "  data_files:", f"    validation: {src}",
             "training_split: null", "validation_split: validation", "test_split: null"]
    if task != "hellaswag":
        lines.append("process_docs: !function nanolm_arc.process_docs")
    return "\n".join(lines) + "\n"


def write_tasks(folder: Path, names: list[str]) -> None:
    """Write the local task configs (and ARC's record flattener) into folder."""
    import lm_eval.tasks

    tasks_dir = Path(lm_eval.tasks.__file__).parent
    for name in names:
        if name not in _INCLUDE:
            raise ValueError(f"task must be one of {tuple(_INCLUDE)}, got {name!r}")
        (folder / f"nanolm_{name}.yaml").write_text(_task_yaml(name, tasks_dir), "utf-8")
    (folder / "nanolm_arc.py").write_text(_ARC_DOCS, "utf-8")


def loglikelihoods(hf_folder: str | Path, limits: dict[str, int], batch_size: int = 8,
                   device: str = "cpu") -> dict[str, list[dict]]:
    """{task: [{"doc_id", "arguments": [(context, continuation)], "lls": [(ll, is_greedy)], "acc", "acc_norm"}]}."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on the network
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="nanolm-lm-eval-") as tmp, _quiet():
        write_tasks(Path(tmp), list(limits))
        out = {}
        for name, limit in limits.items():  # one call per task: `limit` applies to every task of a call
            res = lm_eval.simple_evaluate(
                model="hf", model_args=f"pretrained={hf_folder},dtype=float32", tasks=[f"nanolm_{name}"],
                task_manager=TaskManager(include_path=tmp), limit=limit, log_samples=True,
                batch_size=batch_size, device=device, verbosity="ERROR")
            out[name] = [_sample(s) for s in sorted(res["samples"][f"nanolm_{name}"], key=lambda s: s["doc_id"])]
    return out


@contextlib.contextmanager
def _quiet():
    """Progress bars of the harness, datasets and transformers off (they are not results), on again after."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        datasets.enable_progress_bars()
        hf_logging.enable_progress_bar()


def _sample(s: dict) -> dict:
    """The parts of one logged harness sample that the comparison needs."""
    return {"doc_id": s["doc_id"], "arguments": [tuple(a) for a in s["arguments"]],
            "lls": [(float(r[0][0]), bool(r[0][1])) for r in s["resps"]], "acc": s["acc"], "acc_norm": s["acc_norm"]}
