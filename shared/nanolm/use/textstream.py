"""Token ids in, text out as it streams: never half a character, never half a stop string.

A byte-level BPE token is a run of bytes, not of characters: "é" is two bytes (0xC3 0xA9) that may arrive
in two tokens, and an emoji's four bytes in up to four. Decoding each token on its own would print the
replacement character and then garbage. `TextStream` keeps the bytes of an unfinished character until the
rest arrives (Python's incremental UTF-8 decoder does exactly that), so every piece it returns is whole
text, and the pieces joined equal decoding all the ids at once.

Stop strings ("\\nUser:", "</answer>", ...) need the same care one level up: the text "\\nUs" may be the
start of a stop string or just text. The stream holds back the longest tail that could still become a stop
string and releases it once it cannot; when a stop string completes, everything before it is released,
the stop string itself never is, and `stopped` is set.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence


class TextStream:
    """Incremental, UTF-8-safe and stop-string-aware decoding of one generation."""

    def __init__(self, token_bytes: Callable[[int], bytes], stop: Sequence[str] = ()):
        if any(not s for s in stop):
            raise ValueError("a stop string must not be empty")
        self.token_bytes, self.stop = token_bytes, tuple(stop)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # decoded text not released yet: it may be the start of a stop string
        self.text = ""  # everything released so far
        self.stopped = False  # a stop string was found: nothing more is released
        self.stopped_by: str | None = None  # which one

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to show ("" while a character or stop string is open)."""
        if self.stopped:
            return ""
        return self._release(self._utf8.decode(self.token_bytes(token_id)))

    def finish(self) -> str:
        """End of generation: release what was held (an unfinished character becomes U+FFFD)."""
        if self.stopped:
            return ""
        piece = self._release(self._utf8.decode(b"", final=True))
        rest, self._held = self._held, ""
        self.text += rest
        return piece + rest

    def _release(self, new: str) -> str:
        buffer = self._held + new
        hits = [(buffer.find(s), s) for s in self.stop if s in buffer]
        if hits:  # the earliest stop string ends the stream; the text before it is released
            cut, self.stopped_by = min(hits)
            out, self._held, self.stopped = buffer[:cut], "", True
        else:
            keep = _open_tail(buffer, self.stop)
            out, self._held = buffer[:len(buffer) - keep], buffer[len(buffer) - keep:]
        self.text += out
        return out


def _open_tail(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the beginning of some stop string (0 if none)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
