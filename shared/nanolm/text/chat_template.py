"""ChatML, SmolLM2's chat format, rendered in plain Python: the text its chat template (Jinja) makes.

    <|im_start|>system\\n{system prompt}<|im_end|>\\n
    <|im_start|>user\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n{content}<|im_end|>\\n
    ...
    <|im_start|>assistant\\n                      (the generation prompt, when asked for)

When the conversation does not open with a system message, the template writes its default system prompt
first. `ChatML.from_template` checks that a file's template is this ChatML template and reads that default
out of it; `render` uses the course's SmolLM2 file. The full renderer with loss masks is the alignment
notebook's; this is the text it must match (tests compare it with transformers' apply_chat_template).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from ..core import data, gguf
from .gguf_tokenizer import SMOLLM2

START, END = "<|im_start|>", "<|im_end|>"

# The ChatML template as SmolLM2's GGUF file spells it (line breaks inside its string literals), around
# its default system prompt.
_HEAD = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
         "{{ '<|im_start|>system\n")
_TAIL = ("<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
         "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
         "{% endif %}")
_SHAPE = re.compile(re.escape(_HEAD) + r"([^'\\{}]*)" + re.escape(_TAIL))  # a prompt with no quote/escape/brace


class ChatTemplateError(ValueError):
    """A template this renderer does not know, or a conversation it cannot render."""


Message = Mapping[str, str]  # {"role": "user", "content": "..."}


@dataclass(frozen=True)
class ChatML:
    """The ChatML template with its default system prompt."""

    default_system: str

    @classmethod
    def from_template(cls, template: str) -> ChatML:
        """Check that a Jinja chat template is SmolLM2's ChatML template and read its default system prompt."""
        m = _SHAPE.fullmatch(template)
        if m is None:
            raise ChatTemplateError(
                "this chat template is not the ChatML template chat_template.py renders "
                f"(it begins {template[:80]!r}); render it with Jinja instead"
            )
        return cls(m.group(1))

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False,
               system: str | None = None) -> str:
        """The conversation as ChatML text, as apply_chat_template(messages, tokenize=False) gives it.

        system: a system prompt to use instead of the default (when messages carry no system message).
        """
        messages = list(messages)
        for k, msg in enumerate(messages):
            for key in ("role", "content"):
                if not isinstance(msg.get(key), str):
                    raise ChatTemplateError(f"message {k} needs a string {key!r}, got {msg.get(key)!r}")
        if system is not None:
            if messages and messages[0]["role"] == "system":
                raise ChatTemplateError("system= was given but the conversation opens with a system message")
            messages.insert(0, {"role": "system", "content": system})
        if not messages:
            raise ChatTemplateError("an empty conversation has no ChatML text (transformers refuses it too)")
        parts = []
        if messages and messages[0]["role"] != "system":
            parts.append(turn("system", self.default_system))
        parts += [turn(msg["role"], msg["content"]) for msg in messages]
        if add_generation_prompt:
            parts.append(f"{START}assistant\n")
        return "".join(parts)


def turn(role: str, content: str) -> str:
    """One ChatML turn: <|im_start|>role\\ncontent<|im_end|>\\n."""
    return f"{START}{role}\n{content}{END}\n"


@lru_cache(maxsize=1)
def smollm2() -> ChatML:
    """ChatML as the course's SmolLM2-135M-Instruct file defines it (its template read from the file)."""
    meta = gguf.read(data.path(*SMOLLM2)).metadata
    if "tokenizer.chat_template" not in meta:
        raise ChatTemplateError(f"{SMOLLM2[1]} holds no tokenizer.chat_template")
    return ChatML.from_template(meta["tokenizer.chat_template"])  # type: ignore[arg-type]


def render(messages: Sequence[Message], add_generation_prompt: bool = False, system: str | None = None) -> str:
    """A conversation as SmolLM2's ChatML text (its default system prompt unless one is given)."""
    return smollm2().render(messages, add_generation_prompt, system)
