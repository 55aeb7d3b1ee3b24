"""ThreadWatch: train on two threads while two beat one, judged on the training steps themselves.

PyTorch splits each matrix product across its threads. On idle cores two threads are faster; when something
else runs on the machine, a thread that waits for its busy twin at every small parallel section wastes its core,
and two threads become slower than one. Notebook 07's loop calls `after_step` with each step's duration: the
watch times a first stretch of steps on one thread, switches to `threads`, drops back to one whenever a stretch
on `threads` runs slower than one thread did, and tries again every `retry_every` steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class ThreadWatch:
    """Keeps torch on `threads` threads while that beats one thread; `log` holds (step, threads) per switch."""

    def __init__(self, tokens_per_step: int, threads: int, retry_every: int = 1000, window: int = 50,
                 print_fn: Callable[[str], None] | None = None):
        if threads < 2:
            raise ValueError(f"ThreadWatch chooses between 1 and `threads` threads; got threads={threads}")
        self.tokens, self.threads, self.retry, self.window = tokens_per_step, threads, retry_every, window
        self.print_fn = print_fn
        self.steps, self.seconds, self.one_rate, self.last_switch = 0, 0.0, None, 0
        self.log: list[tuple[int, int]] = []
        torch.set_num_threads(1)  # first, a stretch on one thread

    def after_step(self, step: int, seconds: float) -> None:
        """Call after every training step with its number (from 1) and its duration in seconds."""
        self.steps, self.seconds = self.steps + 1, self.seconds + seconds
        rate = self.steps * self.tokens / self.seconds  # tokens per second in this stretch
        if torch.get_num_threads() == 1:
            if self.steps >= self.window:
                self.one_rate = rate  # what one thread manages under the current load
                if not self.log or step - self.last_switch >= self.retry:
                    self._switch(step, self.threads, f"one thread: {rate / 1e3:.1f}k tok/s; trying {self.threads}")
                else:
                    self.steps, self.seconds = 0, 0.0
        elif self.steps >= 10 or self.seconds >= 1.0:
            if rate < self.one_rate:
                self._switch(step, 1, f"{self.threads} threads: {rate / 1e3:.1f}k tok/s, slower than one thread "
                                      f"({self.one_rate / 1e3:.1f}k): the machine is busy")
            elif self.steps >= self.window:
                self.steps, self.seconds = 0, 0.0

    def _switch(self, step: int, threads: int, why: str) -> None:
        torch.set_num_threads(threads)
        self.steps, self.seconds, self.last_switch = 0, 0.0, step
        self.log.append((step, threads))
        if self.print_fn and len(self.log) > 1:
            self.print_fn(f"step {step}: {why} -> {threads} thread(s)")
