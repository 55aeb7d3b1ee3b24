"""Direct Preference Optimization: learning from "this answer is better than that one", without a reward model.

The data is pairs: a prompt x, a chosen completion y_w and a rejected one y_l. The Bradley-Terry model says a
person prefers y_w with probability sigma(r(x, y_w) - r(x, y_l)) for some reward r. RLHF would fit r, then
maximise E[r] - beta * KL(pi || pi_ref) with PPO. That KL-regularised problem has a closed-form optimum,

    pi*(y | x) = pi_ref(y | x) * exp(r(x, y) / beta) / Z(x)

so turned around, every policy pi defines its own reward, the *implicit reward*, up to a term in x alone:

    r(x, y) = beta * log(pi(y | x) / pi_ref(y | x)) + beta * log Z(x)

Put into Bradley-Terry, log Z(x) cancels (both completions share the prompt), and the reward model's
likelihood becomes a loss on the policy itself (Rafailov et al. 2023, eq. 7):

    h    = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]     the margin of log-ratios
    loss = -log sigma(beta * h)                                                   "sigmoid"

Variants change only the function of h (TRL's names; `dpo_loss` follows TRL 1.16's DPOTrainer._compute_loss):

    sigmoid  -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)   conservative DPO: eps = label_smoothing,
             the chance a label is flipped (eps = 0: plain DPO, TRL's "sigmoid"; TRL 1.16 no longer applies
             label_smoothing to "sigmoid": its "aot" at batch size 1 is this formula, which the tests use)
    hinge    relu(1 - beta h)                                      SLiC's hinge on the margin
    ipo      (h' - 1 / (2 beta))^2                                 IPO (Azar et al. 2023, eq. 17): a squared
             loss pulls the margin to a target instead of pushing it to infinity. TRL divides each log-ratio
             by its completion's token count, h' = log-ratio_w / n_w - log-ratio_l / n_l (per-token
             averages), so `dpo_loss` takes the lengths for "ipo" (`completion_lengths`)

log pi(y | x) is the sum of the completion's token log-probs, and only the completion's: the prompt and the
pads carry label -100 (as in finetune.encode_examples: labels[i] is the token after ids[i]).
`sequence_logprobs` computes it from a model's logits, in float32 at least. pi_ref is the frozen starting
model: its log-probs are computed once, without gradient. The implicit rewards beta * log(pi / pi_ref) of
chosen and rejected are what training logs (`reward_metrics`): the margin should grow, and the accuracy (the
share of pairs whose chosen reward is higher) should rise above 1/2.

Shapes: B pairs, T tokens, V vocabulary.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# IGNORE: the label of a token that is not scored (prompt, padding)
from .finetune import IGNORE, collate, record

Example = tuple[list[int], list[int]]  # (ids, labels) of one conversation, only the judged reply scored

LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] at every position: logits (B, T, V), targets (B, T) -> (B, T), >= float32."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"token_logprobs needs logits (B, T, V) and targets (B, T), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 -> float32, float64 stays
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def completion_lengths(labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """The number of scored (completion) tokens of each row: labels (B, T) -> (B,) long."""
    return (labels != ignore_index).sum(-1)


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """log pi(completion | prompt): the sum of the log-probs of the labels != ignore_index. (B, T, V) -> (B,)."""
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels {tuple(labels.shape)} must be logits' first two dims {tuple(logits.shape[:2])}")
    mask = labels != ignore_index
    empty = (~mask.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"rows {empty} have no completion token (every label is {ignore_index}): "
                         f"their log-probability would be 0 and say nothing")
    V = logits.shape[-1]
    if (labels[mask] < 0).any() or (labels[mask] >= V).any():
        raise ValueError(f"labels must be token ids in [0, {V}) or {ignore_index}")
    per_token = token_logprobs(logits, labels.masked_fill(~mask, 0))  # (B, T); masked slots read token 0
    return torch.where(mask, per_token, 0.0).sum(-1)  # masked slots add 0, and get no gradient


def _check_pairs(tensors: dict[str, torch.Tensor]) -> None:
    """Every log-prob vector is 1-D and of one length B."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"dpo_loss needs four log-prob vectors of one shape (B,), got {shapes}")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, chosen_lengths: torch.Tensor | None = None,
             rejected_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO losses and implicit rewards of B pairs: four (B,) log-prob vectors -> (losses, chosen_r, rejected_r).

    The inputs are sequence log-probs (`sequence_logprobs`) of the policy and of the frozen reference. The
    training loss is losses.mean(). Rewards are beta * (log pi - log pi_ref), detached. For "ipo", pass the
    completions' token counts (`completion_lengths`) as TRL does: each log-ratio is divided by its count
    (clamped to >= 1); without them the inputs are taken to be per-token averages already.
    """
    _check_pairs({"policy_chosen": policy_chosen, "policy_rejected": policy_rejected,
                  "ref_chosen": ref_chosen, "ref_rejected": ref_rejected})
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (the strength of the pull towards the reference), got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing is the chance a label is flipped, in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to loss_type 'sigmoid' only, not {loss_type!r}")
    if (chosen_lengths is None) != (rejected_lengths is None) or (chosen_lengths is not None and loss_type != "ipo"):
        raise ValueError("chosen_lengths and rejected_lengths go together, and only with loss_type 'ipo'")
    chosen_logratios = policy_chosen - ref_chosen  # (B,)
    rejected_logratios = policy_rejected - ref_rejected
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        if chosen_lengths is not None:
            chosen_logratios = chosen_logratios / chosen_lengths.clamp(min=1.0)
            rejected_logratios = rejected_logratios / rejected_lengths.clamp(min=1.0)
        losses = (chosen_logratios - rejected_logratios - 1 / (2 * beta)) ** 2
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """Batch means of the implicit rewards, as TRL logs them (rewards/chosen, /rejected, /margins, /accuracies).

    accuracy is the share of pairs whose chosen reward is strictly higher than the rejected one.
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1 or not len(chosen_rewards):
        raise ValueError(f"reward_metrics needs two non-empty (B,) vectors, got {tuple(chosen_rewards.shape)} "
                         f"and {tuple(rejected_rewards.shape)}")
    return {"chosen": chosen_rewards.mean().item(), "rejected": rejected_rewards.mean().item(),
            "margins": (chosen_rewards - rejected_rewards).mean().item(),
            "accuracy": (chosen_rewards > rejected_rewards).float().mean().item()}


def chat_example(fmt, messages: list[dict], reply: str | dict) -> tuple[list[int], list[int]]:
    """(ids, labels) of a conversation ending in `reply`, only the reply and its end token scored.

    reply: the assistant's content, or a whole assistant message (one with tool calls, say).

    fmt is a nanolm.text.chat.Format. The conversation is rendered whole, as the model would see it, and every
    label before the end of the prompt (messages plus the generation prompt) is -100: earlier assistant turns
    are context here, not the completion being judged.
    """
    prompt = fmt.render(messages, add_generation_prompt=True).ids
    full = fmt.render([*messages, reply if isinstance(reply, dict) else {"role": "assistant", "content": reply}])
    shared = 0  # the first token of the reply can merge with the opener's text: score from the first difference
    while shared < len(prompt) and full.ids[shared] == prompt[shared]:
        shared += 1
    labels = [t if (m and k >= shared) else IGNORE for k, (t, m) in enumerate(zip(full.ids, full.mask, strict=True))]
    return full.ids[:-1], labels[1:]


def _pair_batch_logps(model: nn.Module, pairs: Sequence[tuple[Example, Example]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs (B,) of the chosen and of the rejected replies, in one forward pass of 2B rows."""
    device = next(model.parameters()).device
    x, y = collate([c for c, _ in pairs] + [r for _, r in pairs])
    logp = sequence_logprobs(model(x.to(device))[0], y.to(device))
    return logp[: len(pairs)], logp[len(pairs):]


@torch.no_grad()
def pair_logprobs(model: nn.Module, pairs: Sequence[tuple[Example, Example]],
                  batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(chosen), log pi(rejected) of every pair, (N,) each: the reference's are computed once this way."""
    was_training = model.training
    model.eval()
    parts = [_pair_batch_logps(model, pairs[i : i + batch_size]) for i in range(0, len(pairs), batch_size)]
    model.train(was_training)
    return torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])


def train(model: nn.Module, pairs: Sequence[tuple[Example, Example]], ref_chosen: torch.Tensor,
          ref_rejected: torch.Tensor, *, steps: int, batch_size: int, lr: float, beta: float = 0.1,
          loss_type: str = "sigmoid", seed: int = 0, log_every: int = 0) -> dict[str, list[float]]:
    """AdamW on the DPO loss over shuffled batches of pairs (the reference's log-probs given, one per pair);
    per step the loss and reward_metrics, as TRL logs them."""
    if steps < 1 or not pairs or len(ref_chosen) != len(pairs) or len(ref_rejected) != len(pairs):
        raise ValueError(f"need steps >= 1 and one reference log-prob per pair; got {steps} steps, {len(pairs)} "
                         f"pairs, {len(ref_chosen)} and {len(ref_rejected)} reference values")
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    history: dict[str, list[float]] = {}
    queue: list[int] = []
    model.train()
    for k in range(1, steps + 1):
        while len(queue) < batch_size:
            queue += rng.sample(range(len(pairs)), len(pairs))
        take, queue = queue[:batch_size], queue[batch_size:]
        chosen, rejected = _pair_batch_logps(model, [pairs[i] for i in take])
        losses, r_c, r_r = dpo_loss(chosen, rejected, ref_chosen[take], ref_rejected[take], beta=beta,
                                    loss_type=loss_type)
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        optimizer.step()
        record(history, {"loss": losses.mean().item(), **reward_metrics(r_c, r_r)}, k, steps, log_every,
               lambda h: f"loss {h['loss'][-1]:.3f} | margin {h['margins'][-1]:+.3f} | "
                         f"reward accuracy {h['accuracy'][-1]:.2f}")
    model.eval()
    return history
