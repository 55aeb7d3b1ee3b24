"""Measurements notebook 16 prints: decode speed (ours and transformers'), batching, and load on the server.

Speed: time to first token (TTFT: from the request to its first generated token, so the prefill) and decode
tokens per second (after the first token: (n - 1) / (time of the last token - time of the first)). Each is the
median of `reps` runs, on the same weights and threads. Nothing here asserts a speed: they are printed
where learners see them, as measured on the machine that ran them.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence

import httpx
import torch

from .engine import Engine, Request


def _speed(first: float, last: float, n: int) -> float:
    return (n - 1) / (last - first) if n > 1 and last > first else float("nan")


def ours(engine: Engine, prompt: list[int], n: int, reps: int = 3) -> dict:
    """TTFT and decode tokens/s of one request on our engine (its end token must be disabled: end_id=-1)."""
    ttft, speed = [], []
    for _ in range(reps):
        handle = engine.submit(Request(prompt, max_tokens=n))
        engine.run_until_idle()
        ttft.append(handle.first_token_s)
        speed.append(_speed(handle.token_times[0], handle.token_times[-1], len(handle.token_times)))
    return {"ttft_ms": 1e3 * statistics.median(ttft), "tok_s": statistics.median(speed)}


class _Clock:
    """A transformers streamer that notes when each new token arrives (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass


def transformers_generate(model, prompt: list[int], n: int, reps: int = 3) -> dict:
    """The same measurement for a transformers model's generate (greedy, exactly n new tokens)."""
    ttft, speed = [], []
    ids = torch.tensor([prompt])
    for _ in range(reps):
        clock, t0 = _Clock(), time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, streamer=clock, pad_token_id=0)
        ttft.append(clock.times[0] - t0)
        speed.append(_speed(clock.times[0], clock.times[-1], len(clock.times)))
    return {"ttft_ms": 1e3 * statistics.median(ttft), "tok_s": statistics.median(speed)}


def batching(make_engine: Callable[[str], Engine], prompts: Sequence[list[int]], lengths: Sequence[int]) -> dict:
    """The same requests (all submitted at once) through continuous and static batching."""
    out = {}
    for mode in ("continuous", "static"):
        engine = make_engine(mode)
        t0 = time.perf_counter()
        handles = [engine.submit(Request(p, max_tokens=n)) for p, n in zip(prompts, lengths, strict=True)]
        engine.run_until_idle()
        seconds = time.perf_counter() - t0
        latency = [h.token_times[-1] - h.submitted for h in handles]
        tokens = sum(len(h.token_times) for h in handles)
        out[mode] = {"seconds": seconds, "tok_s": tokens / seconds, "mean_latency_s": statistics.mean(latency),
                     "steps": engine.stats["steps"], "tokens": tokens}
    return out


def _client(url: str, body: dict, rows: list, lock: threading.Lock) -> None:
    t0, first, n, error = time.perf_counter(), None, 0, None
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
            if r.status_code != 200:
                error = f"HTTP {r.status_code}"
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    first = first or time.perf_counter()
                    n += 1
    except httpx.HTTPError as e:
        error = type(e).__name__
    with lock:
        rows.append({"ttft_s": (first or time.perf_counter()) - t0, "seconds": time.perf_counter() - t0,
                     "chunks": n, "error": error})


def load(url: str, body: dict, clients: int, rounds: int = 1) -> dict:
    """`clients` concurrent streaming requests, `rounds` times over; TTFT percentiles, throughput, errors."""
    rows, lock = [], threading.Lock()
    t0 = time.perf_counter()
    for _ in range(rounds):
        threads = [threading.Thread(target=_client, args=(url, body, rows, lock)) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    seconds = time.perf_counter() - t0
    ttft = sorted(r["ttft_s"] for r in rows)
    return {"clients": clients, "requests": len(rows), "errors": sum(r["error"] is not None for r in rows),
            "ttft_p50_ms": 1e3 * statistics.median(ttft), "ttft_max_ms": 1e3 * ttft[-1],
            "chunks_per_s": sum(r["chunks"] for r in rows) / seconds, "seconds": seconds}
