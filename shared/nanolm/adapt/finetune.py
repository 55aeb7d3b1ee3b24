"""Supervised fine-tuning on (prompt, target) pairs: the loss counts the answer, never the question.

A pretrained model continues text. To teach it a task, show it examples of the task written out as text,
a prompt and the target that should follow it, and train next-token prediction on them; but only the
target's tokens are scored. The prompt is there to be read, not learned: its tokens get the label -100,
which cross-entropy skips (our GPT and Llama pass ignore_index=-100), and so do the pads of a batch.

    text     Title: Neural ODEs for Image Segmentation\nAbstract: We propose a novel approach ... <eos>
    tokens   p0 p1 ... pP-1 t0 t1 ... tT-1 eos
    ids      p0 p1 ... pP-1 t0 ... tT-1          what the model reads (the last token is never read)
    labels   -100 ... -100 t0 t1 ... tT-1 eos    what it must predict there: prompt positions masked

Labels are already shifted by one: labels[i] is the token after ids[i], so `model(ids, labels)` is the
masked loss, and ids never exceed block_size tokens. Prompt and target are encoded apart and joined
(a target starting with a space keeps the token boundary natural for byte-level BPE).

The task here is notebook 11's: write an arXiv-style abstract for a paper's title, from the arxiv domain
of the course's corpus (1000 CS/ML papers). `abstract_examples` splits it deterministically: "val" holds the
documents the course's pretraining never trained on (the held-out tail of the arxiv domain, see
`shards.split_documents`), "train" the rest; titles (and abstracts) are deduplicated across both. The
course's `base` model saw every train document during pretraining (as plain text, not this format); what
SmolLM2's own pretraining saw is unknown, and public arXiv abstracts may well be in it.

`train` runs AdamW on the trainable parameters only (after apply_lora: the adapters) and measures, on its
first step, the memory the step needs: see `step_memory`.

Shapes: B batch, T tokens (<= block_size), V vocabulary.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ..eval.complete import complete
from ..text import corpus, shards
from ..train.loop import human

IGNORE = -100  # the label cross-entropy skips: prompt tokens and padding
PRETRAIN_VAL_FRACTION = 0.05  # the held-out share of every domain in notebook 08's shards
PROMPT = "Title: {title}\nAbstract:"

Example = tuple[str, str]  # (prompt, target)
Encoded = tuple[list[int], list[int]]  # (ids, labels), equal lengths


# ----------------------------------------------------------------------------- the arXiv task


@lru_cache(maxsize=1)
def _arxiv_split() -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """(train, val) title -> abstract examples; val = the arxiv documents pretraining never trained on."""
    docs = corpus.documents("arxiv", cap_bytes=None)  # every document, in the corpus's fixed order
    mix = corpus.documents("arxiv", corpus.DEFAULT_CAP)  # what went into the pretraining mix
    seen = len(shards.split_documents(mix, PRETRAIN_VAL_FRACTION)[0])  # the first `seen` were trained on
    out: tuple[list[Example], list[Example]] = ([], [])
    titles, abstracts = set(), set()
    for i, doc in enumerate(docs):
        title, _, abstract = doc.partition(corpus.DOC_SEP)
        key_t, key_a = title.lower(), abstract.lower()
        if not title or not abstract or key_t in titles or key_a in abstracts:
            continue  # a repeated title or abstract: the first occurrence (train before val) wins
        titles.add(key_t)
        abstracts.add(key_a)
        out[i >= seen].append((PROMPT.format(title=title), f" {abstract}"))
    return tuple(out[0]), tuple(out[1])


def abstract_examples(split: str, n: int | None = None) -> list[Example]:
    """(prompt, target) pairs "Title: {title}\\nAbstract:" -> " {abstract}" of one split, the first n."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if n is not None and n < 1:
        raise ValueError(f"n must be a positive number of examples or None (all), got {n}")
    train, val = _arxiv_split()
    return list((train if split == "train" else val)[:n])


# ----------------------------------------------------------------------------- tokens and batches


def encode_examples(examples: Sequence[Example], encode: Callable[[str], list[int]], block_size: int,
                    eos_id: int | None = None) -> list[Encoded]:
    """(prompt, target) pairs -> (ids, labels): labels -100 on the prompt, at most block_size tokens each."""
    if not examples:
        raise ValueError("encode_examples needs at least one (prompt, target) example, got none")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    out = []
    for k, (prompt, target) in enumerate(examples):
        p, t = encode(prompt), encode(target) + ([eos_id] if eos_id is not None else [])
        if not p or not t:
            raise ValueError(f"example {k}: the prompt and the target (with eos) need at least one token each, "
                             f"got {len(p)} and {len(t)}")
        if len(p) > block_size:
            raise ValueError(f"example {k}: its prompt is {len(p)} tokens but block_size is {block_size}, so no "
                             f"target token would be predicted; raise block_size or shorten the prompt")
        seq = (p + t)[: block_size + 1]  # (<= block_size + 1,): the last token is only ever predicted
        labels = [IGNORE] * (len(p) - 1) + seq[len(p):]  # labels[i] = the token after ids[i], or -100
        out.append((seq[:-1], labels))
    return out


def collate(items: Sequence[Encoded], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (ids, labels) pairs into x (B, T) and y (B, T); pads get label -100 (never counted)."""
    T = max(len(ids) for ids, _ in items)
    x = torch.full((len(items), T), pad_id, dtype=torch.long)
    y = torch.full((len(items), T), IGNORE, dtype=torch.long)
    for b, (ids, labels) in enumerate(items):
        x[b, : len(ids)] = torch.tensor(ids)
        y[b, : len(labels)] = torch.tensor(labels)
    return x, y  # causal attention: a real token never sees the pads to its right


def batches(encoded: Sequence[Encoded], batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches (x, y), each (batch_size, T): epoch after epoch, a new permutation each."""
    if not encoded or batch_size < 1:
        raise ValueError(f"batches needs examples and batch_size >= 1, got {len(encoded)} and {batch_size}")
    g = torch.Generator().manual_seed(seed)
    queue: list[int] = []
    while True:
        while len(queue) < batch_size:  # permutations joined end to end: every batch is full
            queue += torch.randperm(len(encoded), generator=g).tolist()
        take, queue = queue[:batch_size], queue[batch_size:]
        yield collate([encoded[i] for i in take])


# ----------------------------------------------------------------------------- loss and evaluation


def masked_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled (target) tokens of a batch: x, y (B, T) -> scalar."""
    if not (y != IGNORE).any():
        raise ValueError("this batch has no target token (every label is -100): its mean loss is undefined")
    return model(x, y)[1]  # our models' cross-entropy skips label -100


@torch.no_grad()
def evaluate(model: nn.Module, encoded: Sequence[Encoded], batch_size: int) -> float:
    """Mean loss per target token over every example, in nats (each token weighs the same)."""
    if not encoded:
        raise ValueError("evaluate needs at least one encoded example")
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    nll, count = 0.0, 0
    for i in range(0, len(encoded), batch_size):
        x, y = (t.to(device) for t in collate(encoded[i: i + batch_size]))
        logits = model(x)[0]  # (B, T, V)
        nll += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE,
                               reduction="sum").item()
        count += int((y != IGNORE).sum())
    model.train(was_training)
    return nll / count


# ----------------------------------------------------------------------------- training


def _storages(tensors) -> dict[int, int]:
    """{storage address: bytes} of tensors, each storage once (views and tied weights share one)."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def step_memory(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One training step, measuring the bytes it needs: weights + grads + optimizer state + saved activations.

    On CPU no allocator keeps a peak (and the process's max RSS only grows), so the step is measured by its
    parts: the storage of every parameter and buffer, of every gradient and optimizer-state tensor after
    the step, and of every tensor autograd saved for the backward pass (saved_tensors_hooks; storages
    counted once, weights excluded). Those are the tensors alive together at the end of the forward pass,
    plus the grads backward makes; transient buffers inside single ops (a matmul's output before it is
    saved, the backward's temporaries) are not counted, so the total is the step's floor, not its peak.
    """
    owned = _storages(list(model.parameters()) + list(model.buffers()))
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        """Record a saved tensor's storage (unless a weight's) and hand the tensor on unchanged."""
        ptr = t.untyped_storage().data_ptr()
        if ptr not in owned:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = masked_loss(model, x, y)
    loss.backward()
    grads = _storages(p.grad for p in model.parameters() if p.grad is not None)
    optimizer.step()
    state = _storages(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim())
    mem = {"weights": sum(owned.values()), "grads": sum(grads.values()), "optimizer": sum(state.values()),
           "activations": sum(saved.values())}
    mem["total"] = sum(mem.values())
    mem["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # whole process, ever (Linux KB)
    if x.is_cuda:
        mem["cuda_peak"] = torch.cuda.max_memory_allocated(x.device)
    return {"loss": loss, "memory": mem}


def record(history: dict[str, list[float]], stats: dict[str, float], step: int, steps: int, log_every: int,
           line: Callable[[dict[str, list[float]]], str]) -> None:
    """Append one step's statistics to history; every log_every steps (and at the last) print
    "step {step}/{steps} | " + line(history)."""
    for name, v in stats.items():
        history.setdefault(name, []).append(v)
    if log_every and (step % log_every == 0 or step == steps):
        print(f"step {step}/{steps} | {line(history)}")


def train(model: nn.Module, encoded_train: Sequence[Encoded], *, steps: int, batch_size: int, lr: float,
          weight_decay: float = 0.0, log_every: int, seed: int, params: Sequence[nn.Parameter] | None = None,
          print_fn: Callable[[str], None] | None = print) -> dict:
    """AdamW (constant lr) on the trainable parameters over shuffled batches; losses, speed and memory."""
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: apply_lora (or requires_grad_) before fine-tuning")
    if steps < 1 or log_every < 1:
        raise ValueError(f"steps and log_every must be >= 1, got {steps} and {log_every}")
    device, was_training = next(model.parameters()).device, model.training
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    stream = batches(encoded_train, batch_size, seed)
    losses, times, tokens, targets, memory = [], [], 0, 0, {}
    model.train()
    for step in range(1, steps + 1):
        x, y = (t.to(device) for t in next(stream))
        t0 = time.perf_counter()
        if step == 1:
            first = step_memory(model, optimizer, x, y)
            loss, memory = first["loss"], first["memory"]
        else:
            loss = masked_loss(model, x, y)
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # reading the loss waits for the device: the time below is the step's
        times.append(time.perf_counter() - t0)
        tokens, targets = tokens + x.numel(), targets + int((y != IGNORE).sum())
        if print_fn and (step % log_every == 0 or step == steps):
            window = losses[-log_every:]
            print_fn(f"step {step}/{steps} | loss {sum(window) / len(window):.2f} | "
                     f"{human(tokens / sum(times))} tok/s | {sum(times):.1f} s")
    model.train(was_training)
    return {"losses": losses, "seconds_per_step": statistics.median(times), "seconds": sum(times),
            "tokens_per_s": tokens / sum(times), "target_tokens_per_s": targets / sum(times), "memory": memory}


def generate_abstract(model: nn.Module, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
                      title: str, max_new_tokens: int, eos_id: int | None,
                      until: Sequence[str] = ("\nTitle:",)) -> str:
    """The model's greedy abstract for a title, stopped at eos, at a next "Title:" or after max_new_tokens."""
    prompt = PROMPT.format(title=" ".join(title.split()))
    stop = {eos_id} if eos_id is not None else None
    return complete(model, encode, decode, prompt, max_new_tokens, until=until, stop_ids=stop).text.strip()
