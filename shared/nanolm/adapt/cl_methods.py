"""Learning a task sequence with one method against forgetting, and filling the accuracy matrix.

`run(model, study, method, seed=...)` trains a copy of a pretrained model on the study's tasks in order and,
after each task, scores every task (a row of R, see nanolm.adapt.continual) and the loss on the text the
model was pretrained on (the first domain: what it knew before any task). Methods:

    sequential   plain fine-tuning, task after task: the baseline that forgets
    replay       keep k examples per finished task (and of the text), replay a share `ratio` of each batch
    ewc          Elastic Weight Consolidation: after each task a diagonal Fisher (`fisher` = "empirical" or
                 "true") anchors the weights; lam/2 * sum F (w - w*)^2 joins the loss
    ssr          self-synthesized rehearsal: before a new task, the current model writes inputs of each
                 old task from its prefix, answers them itself, keeps distinct well-formed ones, replays
                 those; it stores no data at all
    lora         a LoRA adapter per task on the frozen model; scored twice: with the task id given
                 (oracle) and with a router that picks the adapter from the prompt (`run_lora`)
    nested       one LoRA per task, merged into the weights before the next one is trained
    shared-lora  a single LoRA trained through the whole sequence

Every method gets the same steps, batch, learning rate and fresh AdamW per task, so differences are the
method's. Memory counts what a method keeps besides the model: replayed examples, Fisher and anchors,
adapters and the router (bytes).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from . import cl_tasks, continual, ewc, router
from .finetune import Encoded, Example, evaluate
from .lora import apply_lora, load_lora_state, lora_state, merge_and_unload, trainable_parameters

TEXT = "text"  # the name of the pretraining text among the tasks a router or a buffer knows


@dataclass
class Study:
    """The fixed parts of a study: tasks in order, their data, the text, and the training budget."""

    tasks: list[str]
    data: dict[str, tuple[list[Example], list[Example]]]  # task -> (train, test) (prompt, target) pairs
    text_train: list[Encoded]  # pretraining-text windows (replay, Fisher, router)
    text_val: list[Encoded]  # held-out windows: the loss of the first domain
    steps: int = 250
    batch_size: int = 32
    lr: float = 1e-3
    lora_lr: float = 3e-3  # adapters start at zero and have few parameters: they want a larger step
    keep: int = 100  # examples kept per task by replay (and written per task by ssr)
    keep_text: int = 1000  # text windows kept by replay
    fisher_examples: int = 64


@dataclass
class Run:
    """What one method did over the sequence: R, the text loss before and after each task, cost."""

    method: str
    R: list[list[float]] = field(default_factory=list)
    text_loss: list[float] = field(default_factory=list)  # T + 1 values: before any task, then per stage
    seconds: float = 0.0
    memory_bytes: int = 0
    routes: dict = field(default_factory=dict)  # lora: per task, the router's picks for its test prompts
    model: nn.Module | None = None  # the model after the last task

    def summary(self) -> dict:
        return {**continual.summary(self.R), "text_loss_increase": self.text_loss[-1] - self.text_loss[0],
                "seconds": self.seconds, "memory_bytes": self.memory_bytes}


def train_task(model: nn.Module, stream: Iterator, steps: int, lr: float,
               penalty: Callable[[nn.Module], torch.Tensor] | None = None) -> list[float]:
    """AdamW (fresh, constant lr) on the trainable parameters for `steps` batches; the losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        x, y = next(stream)
        loss = model(x, y)[1]
        if penalty is not None:
            loss = loss + penalty(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def score(model: nn.Module, study: Study) -> tuple[list[float], float]:
    """(exact-match accuracy on every task's test pairs, loss in nats on the held-out text)."""
    return ([cl_tasks.accuracy(model, study.data[t][1]) for t in study.tasks],
            evaluate(model, study.text_val, batch_size=64))


def _encoded(study: Study, task: str, whole_line: bool = False) -> list[Encoded]:
    """A task's training pairs: the answer learned, or with whole_line every byte (its inputs too)."""
    return cl_tasks.encode_pairs(study.data[task][0], whole_line=whole_line)


def run(model: nn.Module, study: Study, method: str, *, seed: int, ratio: float = 0.0, lam: float = 0.0,
        fisher: str = "empirical") -> Run:
    """Train a copy of `model` through the study with one method (see the module docstring); its Run."""
    if method not in ("sequential", "replay", "ewc", "ssr"):
        raise ValueError(f"unknown method {method!r}: sequential, replay, ewc, ssr (run_lora for adapters)")
    torch.manual_seed(seed)
    model, out, t0 = copy.deepcopy(model), Run(method), time.perf_counter()
    out.text_loss.append(score(model, study)[1])
    buffer, anchors = continual.ReplayBuffer(), ewc.EWC(lam)
    buffer.add(TEXT, study.text_train, study.keep_text, seed)
    if method == "ewc":
        anchors.consolidate(model, ewc.fisher_diagonal(model, study.text_train[: study.fisher_examples],
                                                       kind=fisher, seed=seed))
    for i, task in enumerate(study.tasks):
        new = _encoded(study, task, whole_line=method == "ssr")  # ssr's model must learn to write inputs
        if method == "ssr":
            buffer = _self_synthesized(model, study, study.tasks[:i], seed + i)
        share = ratio if method in ("replay", "ssr") else 0.0
        stream = continual.replay_batches(new, buffer.groups(), share, study.batch_size, seed * 1000 + i)
        train_task(model, stream, study.steps, study.lr, anchors.penalty if method == "ewc" else None)
        if method == "replay":
            buffer.add(task, new, study.keep, seed)
        if method == "ewc":
            anchors.consolidate(model, ewc.fisher_diagonal(model, new[: study.fisher_examples], kind=fisher,
                                                           seed=seed))
        accs, loss = score(model, study)
        out.R.append(accs)
        out.text_loss.append(loss)
    out.seconds = time.perf_counter() - t0
    out.memory_bytes = {"replay": buffer.memory_bytes(), "ewc": anchors.memory_bytes()}.get(method, 0)
    out.model = model
    return out


# ----------------------------------------------------------------------------- self-synthesized rehearsal


def _self_synthesized(model: nn.Module, study: Study, old: list[str], seed: int) -> continual.ReplayBuffer:
    """The model's own examples of each old task (and of text), answered by itself: a buffer to replay."""
    gen = torch.Generator().manual_seed(seed)
    buffer = continual.ReplayBuffer()
    text = cl_tasks.sample(model, ["\n"] * study.keep, len(study.text_train[0][0]), gen, temperature=1.0)
    buffer.add(TEXT, [cl_tasks.window("\n" + t) for t in text], study.keep, seed)
    for task in old:
        pairs = cl_tasks.synthesize(model, task, 4 * study.keep, gen)
        if pairs:  # a model that forgot a task's format entirely writes none
            buffer.add(task, cl_tasks.encode_pairs(pairs), study.keep, seed)
    return buffer


# ----------------------------------------------------------------------------- adapters


def fit_router(study: Study, base: nn.Module, tasks: list[str]) -> router.Router:
    """A router fitted on the frozen model's features of each learned task's train prompts and of text."""
    prompts, labels = [], []
    for task in tasks:
        prompts += [cl_tasks.encode(p) for p, _ in study.data[task][0][: study.keep]]
        labels += [task] * min(study.keep, len(study.data[task][0]))
    prompts += [ids for ids, _ in study.text_train[: study.keep]]
    labels += [TEXT] * min(study.keep, len(study.text_train))
    return router.Router.fit(router.prompt_features(base, prompts), labels)


def _set_adapter(model: nn.Module, states: dict, name: str, zero: dict) -> None:
    load_lora_state(model, states.get(name, zero))  # the text (or an unlearned task) gets no adapter


def _routed_score(model: nn.Module, study: Study, states: dict, zero: dict, rt: router.Router,
                  routes: dict) -> tuple[list[float], float]:
    """Score every task with the adapter the router picks per prompt; text windows routed the same way."""
    _set_adapter(model, states, "", zero)  # features come from the frozen model with no adapter
    accs = []
    for task in study.tasks:
        test = study.data[task][1]
        picked = rt.predict(router.prompt_features(model, [cl_tasks.encode(p) for p, _ in test]))
        routes.setdefault(task, []).append(picked)
        hits = 0
        for name in set(picked):
            group = [pair for pair, p in zip(test, picked, strict=True) if p == name]
            _set_adapter(model, states, name, zero)
            hits += sum(cl_tasks.exact_match(model, group))
            _set_adapter(model, states, "", zero)
        accs.append(hits / len(test))
    windows = study.text_val
    picked = rt.predict(router.prompt_features(model, [ids for ids, _ in windows]))
    routes.setdefault(TEXT, []).append(picked)
    nll = 0.0
    for name in set(picked):
        group = [w for w, p in zip(windows, picked, strict=True) if p == name]
        _set_adapter(model, states, name, zero)
        nll += evaluate(model, group, batch_size=64) * sum(len(y) for _, y in group)
    _set_adapter(model, states, "", zero)
    return accs, nll / sum(len(y) for _, y in windows)


def run_lora(model: nn.Module, study: Study, *, seed: int, r: int = 8, alpha: float = 16) -> tuple[Run, Run]:
    """One LoRA adapter per task on the frozen model: (the oracle Run with the task id, the routed Run)."""
    torch.manual_seed(seed)
    model, t0 = apply_lora(copy.deepcopy(model), r=r, alpha=alpha, targets="all", seed=seed), time.perf_counter()
    init = {k: v.clone() for k, v in lora_state(model).items()}
    zero = {k: torch.zeros_like(v) if k.endswith(".B") else v for k, v in init.items()}  # B = 0: no change
    oracle, routed = Run("lora-oracle"), Run("lora-routed")
    _set_adapter(model, {}, "", zero)
    oracle.text_loss.append(score(model, study)[1])
    routed.text_loss.append(oracle.text_loss[0])
    states: dict[str, dict] = {}
    for i, task in enumerate(study.tasks):
        load_lora_state(model, init)  # a fresh adapter (the same start for every task)
        stream = continual.replay_batches(_encoded(study, task), [], 0.0, study.batch_size, seed * 1000 + i)
        train_task(model, stream, study.steps, study.lora_lr)
        states[task] = {k: v.clone() for k, v in lora_state(model).items()}
        row = []
        for task_j in study.tasks:  # oracle: task j's own adapter, or none before it is learned
            _set_adapter(model, states, task_j, zero)
            row.append(cl_tasks.accuracy(model, study.data[task_j][1]))
        oracle.R.append(row)
        _set_adapter(model, states, "", zero)
        oracle.text_loss.append(oracle.text_loss[0])  # the text never meets an adapter when the id is known
        rt = fit_router(study, model, study.tasks[: i + 1])
        accs, loss = _routed_score(model, study, states, zero, rt, routed.routes)
        routed.R.append(accs)
        routed.text_loss.append(loss)
    seconds = time.perf_counter() - t0
    adapter_bytes = trainable_parameters(model)[1]  # A and B of one task
    oracle.seconds = routed.seconds = seconds
    oracle.memory_bytes = adapter_bytes * len(study.tasks)
    routed.memory_bytes = oracle.memory_bytes + rt.memory_bytes()  # the last router knows every task
    return oracle, routed


def run_stacked(model: nn.Module, study: Study, method: str, *, seed: int, r: int = 8, alpha: float = 16) -> Run:
    """nested: a fresh LoRA per task, merged into the weights after it; shared-lora: one LoRA for all."""
    if method not in ("nested", "shared-lora"):
        raise ValueError(f"unknown stacking method {method!r}: nested or shared-lora")
    torch.manual_seed(seed)
    model, out, t0 = copy.deepcopy(model), Run(method), time.perf_counter()
    out.text_loss.append(score(model, study)[1])
    if method == "shared-lora":
        model = apply_lora(model, r=r, alpha=alpha, targets="all", seed=seed)
    for i, task in enumerate(study.tasks):
        if method == "nested":
            model = apply_lora(model, r=r, alpha=alpha, targets="all", seed=seed + i)
        stream = continual.replay_batches(_encoded(study, task), [], 0.0, study.batch_size, seed * 1000 + i)
        train_task(model, stream, study.steps, study.lora_lr)
        per_task = trainable_parameters(model)[1]
        if method == "nested":
            model = merge_and_unload(model)  # the adapter becomes part of the weights: it cannot be removed
        accs, loss = score(model, study)
        out.R.append(accs)
        out.text_loss.append(loss)
    out.seconds = time.perf_counter() - t0
    out.memory_bytes = per_task * (len(study.tasks) if method == "nested" else 1)
    out.model = model
    return out
