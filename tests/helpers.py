"""Small helpers several test files share."""

import torch


def train_briefly(model: torch.nn.Module, ids: torch.Tensor, steps: int = 30, lr: float = 2e-2) -> torch.nn.Module:
    """A few AdamW steps on next-token prediction of `ids`, then eval mode.

    Parity tests use it to move weights and logits well away from their tiny initial values (a fresh model's
    logits are ~0.5), where a near-equivalent activation or a wrong epsilon would hide.
    """
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        model(ids, ids.roll(-1, 1))[1].backward()
        opt.step()
        opt.zero_grad()
    return model.eval()
