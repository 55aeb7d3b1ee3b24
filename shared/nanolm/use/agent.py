"""The tool loop: a model's turn may call tools; the loop runs them mid-stream and lets the model go on.

One token stream, grown in three kinds of pieces:

    prompt     the conversation so far, rendered, ending with the assistant's opener          (given)
    generated  the model's tokens, up to the end token that closes its turn                   (sampled)
    forced     the tool turns holding each call's output, then the assistant's opener again   (written by us)

    <|user|>What is 12 times 7?<|end|><|assistant|>                                          prompt
    <|tool_call|>{"name": "calculator", "arguments": "12*7"}<|end|>                          generated
    <|tool_result|>84<|end|><|assistant|>                                                    forced
    The answer is 84.<|end|>                                                                 generated

When a generated turn ends and it holds tool calls, `Loop.after_turn` runs them (nanolm.use.tools) and
returns the forced ids: exactly what the chat format renders for those tool turns (`forced_ids`), so the
model reads its tools' outputs the way it saw them in training, where the same tokens were masked from the
loss (a model must not learn to write its tools' answers). The model's own generated tokens stay as they
were sampled; nothing is re-tokenized. A turn without calls is the answer, and the loop ends.

Two caps keep a loop from running away: `max_steps` turns that call tools (then the loop stops with
"step cap"), and `time_limit_s` of wall time (checked before each turn: "time cap").

`Loop` is the state machine and `run` drives it with a model, one turn per generate call (each turn
prefills the whole stream again; notebook 16's engine drives the same Loop with its KV cache instead).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .tools import Call, Toolbox


def forced_ids(fmt, conversation: Sequence[dict], tool_messages: Sequence[dict]) -> list[int]:
    """The ids that follow an assistant turn's end token: its tool turns and the next assistant opener."""
    before = fmt.render(conversation).ids
    after = fmt.render([*conversation, *tool_messages], add_generation_prompt=True).ids
    end = fmt.tokenizer.special(fmt.end)
    cut = len(before) - before[::-1].index(end)  # just after the last end token (ChatML has "\n" after it)
    if after[:cut] != before[:cut]:
        raise AssertionError("the chat format does not render a conversation as a prefix of its continuation")
    return after[cut:]


@dataclass
class Result:
    """What one run of the loop did."""

    answer: str  # the content of the last assistant turn
    messages: list[dict]  # the whole conversation: the input, each tool-calling turn, its tool turns, the answer
    calls: list[Call] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # the whole token stream: prompt, generated and forced
    generated: int = 0  # tokens the model sampled
    stopped_by: str = "answer"  # "answer", "step cap", "time cap" or "length"
    seconds: float = 0.0

    @property
    def tool_seconds(self) -> float:
        return sum(c.seconds for c in self.calls)


class Loop:
    """The tool-use state machine for one conversation (see the module doc)."""

    def __init__(self, fmt, tools: Toolbox, messages: Sequence[dict], max_steps: int = 3,
                 time_limit_s: float = 60.0):
        if max_steps < 0 or time_limit_s <= 0:
            raise ValueError(f"max_steps must be >= 0 and time_limit_s > 0, not {max_steps}, {time_limit_s}")
        self.fmt, self.tools, self.max_steps, self.time_limit_s = fmt, tools, max_steps, time_limit_s
        self.result = Result(answer="", messages=[dict(m) for m in messages])
        self.result.ids = fmt.render(messages, add_generation_prompt=True).ids
        self.steps, self.start, self.done = 0, time.perf_counter(), False

    def time_left(self) -> bool:
        return time.perf_counter() - self.start < self.time_limit_s

    def after_turn(self, turn_ids: Sequence[int]) -> list[int]:
        """Take one generated turn (its ids, up to and including the end token if it was reached); return the
        ids to force next, or [] when the loop is done (then `result` is complete)."""
        fmt, res = self.fmt, self.result
        end = fmt.tokenizer.special(fmt.end)
        res.ids += list(turn_ids)
        res.generated += len(turn_ids)
        try:
            content, calls = fmt.parse_assistant(list(turn_ids))
        except ValueError:  # a malformed call: the turn is text, scored as it stands
            content, calls = fmt.tokenizer.decode([i for i in turn_ids if i != end]), []
        message = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
        res.messages.append(message)
        res.answer = content
        stop = None if end in turn_ids else "length"
        if stop is None and calls:
            stop = "step cap" if self.steps >= self.max_steps else None if self.time_left() else "time cap"
        if stop is not None or not calls:
            return self._finish(stop or "answer")
        self.steps += 1
        done = [self.tools.call(c["name"], c["arguments"]) for c in calls]
        res.calls += done
        tool_turns = [{"role": "tool", "content": c.output} for c in done]
        forced = forced_ids(fmt, res.messages, tool_turns)
        res.messages += tool_turns
        res.ids += forced
        return forced

    def _finish(self, stopped_by: str) -> list[int]:
        self.done, self.result.stopped_by = True, stopped_by
        self.result.seconds = time.perf_counter() - self.start
        return []


@torch.no_grad()
def run(model: nn.Module, fmt, messages: Sequence[dict], tools: Toolbox, *, max_new_tokens: int = 96,
        max_steps: int = 3, time_limit_s: float = 60.0, temperature: float = 0.0,
        generator: torch.Generator | None = None) -> Result:
    """Answer the conversation's last user message, calling tools as the model asks (see the module doc)."""
    loop = Loop(fmt, tools, messages, max_steps, time_limit_s)
    end = fmt.tokenizer.special(fmt.end)
    device = next(model.parameters()).device
    while not loop.done:
        stream = torch.tensor([loop.result.ids], device=device)
        out = model.generate(stream, max_new_tokens, temperature=temperature, generator=generator, stop={end})
        loop.after_turn(out[0, stream.size(1):].tolist())
    return loop.result
