"""A model's weights as one flat dict for safetensors, and back: the part GPT and Llama share.

A tied head is the token embedding itself, so it is stored once (under tok_emb.weight) and tied again
on the way back. Rebuilding refuses tensors that do not fit the config, naming the first few that differ.
"""

from __future__ import annotations

import torch


class WeightsMixin:
    """tensors() and from_tensors(cfg, tensors) for a model with tok_emb and a head that may be tied to it."""

    def _tied(self) -> bool:
        return self.head.weight is self.tok_emb.weight

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state dict without a tied head (it is the token embedding), ready for safetensors."""
        tied = self._tied()
        return {k: v for k, v in self.state_dict().items() if not (tied and k == "head.weight")}

    @classmethod
    def from_tensors(cls, cfg, tensors: dict[str, torch.Tensor]):
        """Rebuild a model from `tensors()`; missing or unexpected keys are refused."""
        model = cls(cfg)
        expected, got = set(model.tensors()), set(tensors)
        if expected != got:
            raise ValueError(
                f"these tensors do not fit a {cls.__name__} with this config: "
                f"missing {sorted(expected - got)[:5]}, unexpected {sorted(got - expected)[:5]}"
            )
        state = dict(tensors)
        if model._tied():
            state["head.weight"] = tensors["tok_emb.weight"]
        model.load_state_dict(state)
        return model
