"""What /metrics reports: requests, errors, tokens per second, time to first token, inter-token latency.

Latencies are kept for the last `window` requests (a ring), and summarized as median and 95th percentile:
a mean hides the slow tail that users feel. Time to first token is measured from the moment the engine
received the request to its first generated token; inter-token latency between consecutive tokens of one
request (a tool call's wait shows up as one long gap).
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np


def percentiles(values) -> dict[str, float | None]:
    """Median and 95th percentile in milliseconds (None without data)."""
    if not len(values):
        return {"p50_ms": None, "p95_ms": None}
    v = np.asarray(values, dtype=float) * 1e3
    return {"p50_ms": round(float(np.percentile(v, 50)), 2), "p95_ms": round(float(np.percentile(v, 95)), 2)}


class Metrics:
    def __init__(self, window: int = 1000):
        self.requests = self.errors = self.tokens = 0
        self.active = 0
        self.ttft: deque[float] = deque(maxlen=window)
        self.itl: deque[float] = deque(maxlen=window * 16)
        self.done: deque[tuple[float, int]] = deque(maxlen=window)  # (finish time, tokens)
        self.started_at = time.time()

    def started(self) -> None:
        self.requests += 1
        self.active += 1

    def ended(self) -> None:
        """A request's handler is over, however it ended (finished, failed, or the client left)."""
        self.active -= 1

    def finished(self, handle, data: dict) -> None:
        """A request reached its end: count its tokens and latencies."""
        if data.get("finish_reason") == "error":
            self.errors += 1
        n = data.get("usage", {}).get("completion_tokens", 0)
        self.tokens += n
        if handle.first_token_s is not None:
            self.ttft.append(handle.first_token_s)
        t = handle.token_times
        self.itl.extend(b - a for a, b in zip(t, t[1:], strict=False))
        self.done.append((time.perf_counter(), n))

    def tokens_per_s(self, span_s: float = 10.0) -> float:
        """Generated tokens per second over the last span_s seconds of finished requests."""
        now = time.perf_counter()
        recent = sum(n for t, n in self.done if now - t <= span_s)
        return round(recent / span_s, 2)

    def summary(self, engines: dict) -> dict:
        return {"requests": self.requests, "active": self.active, "errors": self.errors, "tokens": self.tokens,
                "tokens_per_s_10s": self.tokens_per_s(), "ttft": percentiles(self.ttft),
                "inter_token": percentiles(self.itl), "uptime_s": round(time.time() - self.started_at, 1),
                "engines": {name: {"busy_slots": e.busy_slots(), "waiting": e.waiting(), "slots": e.cache.slots,
                                   **e.stats} for name, e in engines.items()}}
