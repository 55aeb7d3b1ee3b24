"""A reward model: one number for how good a response is, learned from "this answer beats that one".

People find it easier to compare two answers than to grade one. A preference pair is a prompt x, a chosen
completion y_w and a rejected one y_l. The Bradley-Terry model says a person prefers y_w with probability
sigma(r(x, y_w) - r(x, y_l)) for some score r; fitting r by maximum likelihood gives the loss

    loss = -log sigma(r_w - r_l)        (= log 2 when the two rewards are equal; -> 0 as r_w - r_l grows)

whose gradient pushes r_w up and r_l down by the same amount, sigma(r_l - r_w) each. Only differences count:
adding a constant to every reward changes nothing, so the head's bias is never learned (it is kept for shape).

`RewardModel` is a language model body with its vocabulary head replaced, in effect, by a scalar head: a
Linear(C, 1) on the final-norm hidden state of each sequence's LAST real token, the one that has read the
prompt and the whole completion (causal attention: the right-padding after it is never seen). It reads
that state with a forward hook on the body's `norm_f` and hands the LM head only those B states, so the
(B, T, V) logits are never computed. The head starts at zero, so every reward starts at 0 and the loss at log 2.

The data is Anthropic's HH-RLHF (harmless-base, test file, 2312 pairs): each record holds two full
transcripts "\\n\\nHuman: ...\\n\\nAssistant: ..." that share all turns but the last reply. `hh_rlhf_pairs`
splits them into (prompt, chosen, rejected). The dataset was collected to elicit harmful answers, so much
of it is offensive, chosen answers included: `offensive` is a crude word-list filter a notebook can apply
before showing any text (it misses a lot; it is no safety measure).

Shapes: B pairs (or sequences), T tokens, C embedding width.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core import data

Pair = tuple[str, str, str]  # (prompt, chosen completion, rejected completion)
EncodedPair = tuple[list[int], list[int]]  # (chosen ids, rejected ids), each prompt + completion
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"

# ----------------------------------------------------------------------------- the model


class RewardModel(nn.Module):
    """body (a Llama or anything with `norm_f`, `config.n_embd`) + a scalar head on the last real token."""

    def __init__(self, body: nn.Module):
        super().__init__()
        if not isinstance(getattr(body, "norm_f", None), nn.Module):
            raise ValueError("RewardModel reads the final norm's output: the body needs a `norm_f` module")
        self.body = body
        self.score = nn.Linear(body.config.n_embd, 1)
        nn.init.zeros_(self.score.weight)  # every reward starts at 0: the loss starts at log 2
        nn.init.zeros_(self.score.bias)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) right-padded, lengths (B,) real tokens per row -> rewards (B,) in float32."""
        B, T = ids.shape
        lengths = torch.as_tensor(lengths, device=ids.device)
        if lengths.shape != (B,) or int(lengths.min()) < 1 or int(lengths.max()) > T:
            raise ValueError(f"lengths must be (B,) = ({B},) with values in 1..{T} (T = ids.shape[1]), "
                             f"got shape {tuple(lengths.shape)}, values {lengths.tolist()[:8]}")
        last: list[torch.Tensor] = []

        def keep_last(_module, _inputs, out):  # out (B, T, C) -> (B, 1, C): the head reads B states only
            last.append(out[torch.arange(B, device=ids.device), lengths - 1])
            return last[-1][:, None, :]

        hook = self.body.norm_f.register_forward_hook(keep_last)
        try:
            self.body(ids)
        finally:
            hook.remove()
        return self.score(last[-1].to(self.score.weight.dtype))[:, 0].float()


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-log sigma(r_chosen - r_rejected), averaged over pairs: (B,), (B,) -> scalar."""
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 1 or r_chosen.numel() == 0:
        raise ValueError(f"need two non-empty (B,) reward tensors of equal shape, got {tuple(r_chosen.shape)} "
                         f"and {tuple(r_rejected.shape)}")
    return -F.logsigmoid(r_chosen.float() - r_rejected.float()).mean()


def preference_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """The share of pairs whose chosen reward is strictly higher (a tie counts as wrong)."""
    if r_chosen.shape != r_rejected.shape or r_chosen.numel() == 0:
        raise ValueError(f"need two non-empty reward tensors of equal shape, got {tuple(r_chosen.shape)} "
                         f"and {tuple(r_rejected.shape)}")
    return (r_chosen > r_rejected).float().mean().item()


# ----------------------------------------------------------------------------- tokens and batches


def encode_pairs(pairs: Sequence[Pair], encode: Callable[[str], list[int]], block_size: int,
                 eos_id: int | None = None) -> list[EncodedPair]:
    """(prompt, chosen, rejected) -> (prompt + chosen ids, prompt + rejected ids), each at most block_size.

    A sequence that is too long loses tokens from its start (the prompt's beginning): the end, where the
    completion is and where the reward is read, always stays. eos_id, if given, ends each completion.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    out = []
    tail = [eos_id] if eos_id is not None else []
    for k, (prompt, chosen, rejected) in enumerate(pairs):
        p = encode(prompt)
        c, r = encode(chosen) + tail, encode(rejected) + tail
        if not c or not r:
            raise ValueError(f"pair {k}: a completion encodes to no token")
        out.append(((p + c)[-block_size:], (p + r)[-block_size:]))
    return out


def collate(seqs: Sequence[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into ids (N, T) and lengths (N,)."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("collate needs at least one sequence, none of them empty")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
    return ids, torch.tensor([len(s) for s in seqs])


def pair_rewards(rm: RewardModel, batch: Sequence[EncodedPair], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected), each (B,): both halves of the batch in one forward pass of 2B sequences."""
    device = next(rm.parameters()).device
    ids, lengths = collate([c for c, _ in batch] + [r for _, r in batch], pad_id)
    rewards = rm(ids.to(device), lengths.to(device))
    return rewards[: len(batch)], rewards[len(batch):]


# ----------------------------------------------------------------------------- training and evaluation


def train_reward_model(rm: RewardModel, pairs_encoded: Sequence[EncodedPair], steps: int, lr: float = 1e-3,
                       batch_size: int = 16, seed: int = 0, weight_decay: float = 0.0,
                       pad_id: int = 0) -> dict[str, list[float]]:
    """AdamW on the Bradley-Terry loss over shuffled batches of pairs; {"loss": [...], "accuracy": [...]} per step.

    The accuracy is the batch's, before the step (a training accuracy): `evaluate_reward_model` on held-out
    pairs is the number to believe.
    """
    if not pairs_encoded:
        raise ValueError("train_reward_model needs at least one encoded pair")
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps and batch_size must be >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    g = torch.Generator().manual_seed(seed)
    params = [p for p in rm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    was_training = rm.training
    rm.train()
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    queue: list[int] = []
    try:
        for _ in range(steps):
            while len(queue) < batch_size:  # permutations end to end: every batch is full
                queue += torch.randperm(len(pairs_encoded), generator=g).tolist()
            take, queue = queue[:batch_size], queue[batch_size:]
            r_c, r_r = pair_rewards(rm, [pairs_encoded[i] for i in take], pad_id)
            loss = bradley_terry_loss(r_c, r_r)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history["loss"].append(loss.item())
            history["accuracy"].append(preference_accuracy(r_c.detach(), r_r.detach()))
    finally:
        rm.train(was_training)
    return history


@torch.no_grad()
def evaluate_reward_model(rm: RewardModel, pairs_encoded: Sequence[EncodedPair], batch_size: int = 32,
                          pad_id: int = 0) -> dict[str, float]:
    """Held-out {"accuracy", "loss", "margin"} (mean r_chosen - r_rejected) over every pair."""
    if not pairs_encoded:
        raise ValueError("evaluate_reward_model needs at least one encoded pair")
    was_training = rm.training
    rm.eval()
    try:
        parts = [pair_rewards(rm, pairs_encoded[i : i + batch_size], pad_id)
                 for i in range(0, len(pairs_encoded), batch_size)]
    finally:
        rm.train(was_training)
    r_c, r_r = torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])
    return {"accuracy": preference_accuracy(r_c, r_r), "loss": bradley_terry_loss(r_c, r_r).item(),
            "margin": (r_c - r_r).mean().item()}


# ----------------------------------------------------------------------------- HH-RLHF


def split_pair(chosen: str, rejected: str) -> Pair | None:
    """Two transcripts -> (prompt, chosen reply, rejected reply), or None when they are no such pair.

    The prompt is the shared beginning up to and including the last "\\n\\nAssistant:" inside it (its leading
    blank line dropped); the replies are what follows, stripped. None when nothing is shared up to an
    "Assistant:", when a reply goes on into another "Human:" turn (the pair differs earlier than the last
    reply), or when the two replies are the same.
    """
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(ASSISTANT, 0, n)
    if cut < 0:
        return None
    cut += len(ASSISTANT)
    prompt, c, r = chosen[:cut].lstrip("\n"), chosen[cut:].strip(), rejected[cut:].strip()
    if HUMAN in c or HUMAN in r or c == r or not c or not r:
        return None
    return prompt, " " + c, " " + r


def hh_rlhf_pairs(n: int | None = None, max_chars: int | None = None) -> list[Pair]:
    """The first n (prompt, chosen, rejected) triples of HH-RLHF harmless-base (test, 2312 records, 2308 kept).

    Records `split_pair` rejects are dropped (4 whose chosen reply is empty), and so are triples longer than max_chars (prompt plus the
    longer reply). Replies start with a space, so prompt + reply reads as the transcript does.
    """
    if n is not None and n < 1:
        raise ValueError(f"n must be a positive number of pairs or None (all), got {n}")
    out = []
    for rec in data.read_jsonl("hh_rlhf", "harmless-base_test.jsonl.gz"):
        pair = split_pair(rec["chosen"], rec["rejected"])
        if pair is None or (max_chars is not None and len(pair[0]) + max(map(len, pair[1:])) > max_chars):
            continue
        out.append(pair)
        if n is not None and len(out) == n:
            break
    return out


def transcript_messages(prompt: str) -> list[dict]:
    """An HH-RLHF prompt ("Human: ...\\n\\nAssistant: ..." ending in "Assistant:") as chat messages."""
    text = "\n\n" + prompt.strip()
    if not text.endswith(ASSISTANT.rstrip()) or not text.startswith(HUMAN):
        raise ValueError(f"an HH-RLHF prompt starts with 'Human:' and ends with 'Assistant:', got {prompt[:60]!r}...")
    messages, text = [], text[: -len(ASSISTANT)]
    for k, turn in enumerate(re.split(r"\n\n(?:Human|Assistant):", text)[1:]):
        # a chat message may not be empty; a few HH turns are (the person said nothing): keep the turn, as "..."
        messages.append({"role": ("user", "assistant")[k % 2], "content": turn.strip() or "..."})
    return messages


# Crude on purpose: whole words only, so it misses misspellings, and it flags harmless uses ("kill time").
OFFENSIVE_WORDS = frozenset("""
fuck fucking fucked fucker motherfucker shit shitty bullshit bitch bitches bastard asshole cunt dick cock pussy
whore slut porn porno nude naked sex sexual rape raped rapist molest masturbate masturbating penis vagina
nigger nigga faggot fag retard retarded kike spic chink tranny dyke
kill killing murder suicide bomb terrorist cocaine heroin meth
""".split())
_WORD = re.compile(r"[a-z]+")


def offensive(text: str) -> bool:
    """True if the text holds a word of OFFENSIVE_WORDS (a crude word-list filter, case-insensitive)."""
    return any(w in OFFENSIVE_WORDS for w in _WORD.findall(text.lower()))
