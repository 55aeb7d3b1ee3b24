"""The inference engine: many requests share one model, a token at a time, each streamed as it is made.

A request is a rendered prompt plus how to sample it. The engine gives each running request a slot of a
`SlotCache` and repeats one **step**:

1. drop cancelled requests (their slot is free at once) and pick up finished tool calls;
2. admit waiting requests into free slots and prefill each prompt (one forward over it);
3. decode: one forward over the newest token of every running request, all in one batch (per adapter),
   then sample each row with its own settings and generator.

Admitting new requests at every step is **continuous batching**: a short answer leaves and its slot is
refilled at the next step. **Static batching** (batching="static") admits a new batch only when the
whole previous one has finished, so every request waits for the slowest of its batch; notebook 16 compares
the two under the same load.

Each token goes through a `TextStream` (whole characters only, stop strings never shown) and arrives at the
caller as an `Event`. A request ends at its end-of-turn token, a stop string, max_tokens, a full cache, or
cancel(). With tools=True, a turn that ends with tool calls is handed to 14's `agent.Loop`: the calls run
in a worker thread (the other requests keep decoding), their results are forced into the slot exactly as
the chat format renders them, and the model goes on. The text of a call is not streamed as answer text:
it arrives as tool_call and tool_result events instead.

Adapters: with an adapter library (nanolm.adapt.library), each request names one ("base" for none); a
decode step runs the requests of each adapter as one batch after switching the LoRA tensors.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn

from ..adapt import library as adapter_library
from ..model.sampling import sample_next
from .agent import Loop
from .runner import SlotCache, forward_rows
from .textstream import TextStream

BATCHING = ("continuous", "static")


@dataclass
class Request:
    """What to generate: a rendered prompt and how to sample its continuation."""

    prompt: list[int]
    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    adapter: str = "base"
    tools: bool = False
    messages: list[dict] | None = None  # the conversation, for the tool loop


@dataclass
class Event:
    """One thing a request produced: "text", "tool_call", "tool_result" or "done" (then data has
    finish_reason, usage, the whole text and the tool calls)."""

    kind: str
    text: str = ""
    data: dict = field(default_factory=dict)


class Handle:
    """The caller's side of a request: its events in order (a thread-safe queue), and cancel()."""

    def __init__(self, rid: int, request: Request, notify=None):
        self.id, self.request, self.notify = rid, request, notify
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.cancelled = threading.Event()
        self.submitted = time.perf_counter()
        self.first_token_s: float | None = None  # time to the first generated token
        self.token_times: list[float] = []

    def cancel(self) -> None:
        self.cancelled.set()

    def put(self, event: Event) -> None:
        self.events.put(event)
        if self.notify is not None:
            self.notify(event)

    def __iter__(self):
        """Block for each event until "done" (for threads and tests; the server reads events asynchronously)."""
        while True:
            event = self.events.get()
            yield event
            if event.kind == "done":
                return


@dataclass
class _Running:
    handle: Handle
    slot: int
    generator: torch.Generator | None
    stream: TextStream
    loop: Loop | None
    feed: list[int] = field(default_factory=list)  # ids to run through the model next
    turn: list[int] = field(default_factory=list)  # this turn's generated ids
    generated: int = 0
    text: str = ""
    hiding: bool = False  # inside a tool call: tokens are kept but not shown
    tool: Future | None = None  # the tool calls of the last turn, running
    calls_shown: int = 0


class Engine:
    """A model, its tokenizer and chat end token, served to many requests at once (see the module doc)."""

    def __init__(self, model: nn.Module, tokenizer, end_id: int, *, slots: int = 8, max_len: int = 2048,
                 batching: str = "continuous", fmt=None, toolbox=None, library=None, max_tool_steps: int = 3):
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
        self.model, self.tokenizer, self.end_id = model.eval(), tokenizer, end_id
        self.cache = SlotCache(model, slots, max_len)
        self.batching, self.fmt, self.toolbox, self.library = batching, fmt, toolbox, library
        self.max_tool_steps = max_tool_steps
        self.adapter = "base"
        self.device = next(model.parameters()).device
        self._waiting: deque[Handle] = deque()
        self._lock = threading.Lock()  # the queue of waiting requests and new adapters
        self._stepping = threading.Lock()  # one step at a time
        self._running: dict[int, _Running] = {}
        self._tools = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tools")
        self._ids = 0
        self._new_adapters: list[tuple[str, dict]] = []
        self.stats = {"requests": 0, "finished": 0, "cancelled": 0, "errors": 0, "tokens": 0, "steps": 0}

    # ------------------------------------------------------------------ the caller's side (any thread)

    def adapters(self) -> list[str]:
        with self._lock:  # adapters added but not yet taken count: a request may name one at once
            pending = [n for n, _ in self._new_adapters]
            names = list(self.library.names) if self.library is not None else ["base"]
        return names + [n for n in pending if n not in names]

    def check(self, request: Request) -> None:
        """Refuse what the engine cannot do, with what to change (the server answers these with a 400)."""
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {request.max_tokens}")
        if len(request.prompt) + request.max_tokens > self.cache.max_len:
            raise ValueError(f"prompt ({len(request.prompt)} tokens) + max_tokens ({request.max_tokens}) exceed the "
                             f"context of {self.cache.max_len} tokens: shorten the conversation or lower max_tokens")
        if request.adapter not in self.adapters():
            raise ValueError(f"unknown adapter {request.adapter!r}; available: {self.adapters()}")
        if request.tools and (self.toolbox is None or self.fmt is None):
            raise ValueError("this engine has no tools: start it with a toolbox and a chat format")

    def submit(self, request: Request, notify=None) -> Handle:
        self.check(request)
        with self._lock:
            self._ids += 1
            handle = Handle(self._ids, request, notify)
            self._waiting.append(handle)
            self.stats["requests"] += 1
        return handle

    def add_adapter(self, name: str, tensors: dict) -> None:
        """Offer a new (or replaced) adapter to requests; it takes effect at the engine's next step."""
        own = {k: v.detach().cpu().clone() for k, v in tensors.items()}  # copied here, in the caller's thread
        with self._lock:
            self._new_adapters.append((name, own))

    def busy_slots(self) -> int:
        return len(self._running)

    def waiting(self) -> int:
        return len(self._waiting)

    # ------------------------------------------------------------------ the engine's thread

    def step(self) -> bool:
        """One scheduling step (see the module doc); False when there was nothing to do. Steps from several
        threads run one after another, never interleaved (each request advances once per step)."""
        with self._stepping:
            return self._step()

    def _step(self) -> bool:
        self._take_new_adapters()
        self._drop_cancelled()
        self._collect_tools()
        admitted = self._admit()
        ready = [r for r in self._running.values() if r.feed and r.tool is None and r not in admitted]
        for r in [r for r in ready if len(r.feed) > 1]:  # after a tool call: its result, prefilled alone
            self._forward([r], r.handle.request.adapter)
        decoding = [r for r in ready if len(r.feed) == 1]
        for adapter in sorted({r.handle.request.adapter for r in decoding}, key=lambda a: a != self.adapter):
            self._forward([r for r in decoding if r.handle.request.adapter == adapter], adapter)
        self.stats["steps"] += 1
        return bool(admitted or decoding or self._running)

    def run_until_idle(self, max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            if not self.step() and not self._waiting:
                return
            if all(r.tool is not None for r in self._running.values()) and self._running:
                time.sleep(0.001)  # only tool calls are running: wait for them

    def generate(self, request: Request) -> tuple[str, dict]:
        """Run one request to the end here: (its text, the "done" event's data)."""
        handle = self.submit(request)
        self.run_until_idle()
        done = [e for e in handle if e.kind == "done"][0]
        return done.data["text"], done.data

    def _take_new_adapters(self) -> None:
        # One move from pending to the library, under the lock: adapters() never misses a name between the two.
        with self._lock:
            new, self._new_adapters = self._new_adapters, []
            for name, tensors in new:
                self.library.adapters[name] = tensors
        if self.adapter in {name for name, _ in new}:
            self.adapter = None  # replaced while active: load it again before the next use

    def _drop_cancelled(self) -> None:
        for r in [r for r in self._running.values() if r.handle.cancelled.is_set()]:
            self._finish(r, "cancelled")
        with self._lock:
            for h in [h for h in self._waiting if h.cancelled.is_set()]:
                self._waiting.remove(h)
                self.stats["cancelled"] += 1
                h.put(Event("done", data={"finish_reason": "cancelled", "text": "", "usage": {}, "tool_calls": []}))

    def _admit(self) -> list[_Running]:
        if self.batching == "static" and self._running:
            return []
        free = [s for s in range(self.cache.slots) if s not in {r.slot for r in self._running.values()}]
        admitted = []
        with self._lock:
            while free and self._waiting:
                handle = self._waiting.popleft()
                admitted.append(self._start(handle, free.pop(0)))
        for r in admitted:
            self._forward([r], r.handle.request.adapter)  # prefill, one prompt at a time
        return admitted

    def _start(self, handle: Handle, slot: int) -> _Running:
        req = handle.request
        gen = torch.Generator().manual_seed(req.seed) if req.seed is not None else None
        loop = Loop(self.fmt, self.toolbox, req.messages or [], self.max_tool_steps) if req.tools else None
        self.cache.free(slot)
        r = _Running(handle, slot, gen, self._text_stream(req), loop, feed=list(req.prompt))
        self._running[slot] = r
        return r

    def _text_stream(self, req: Request) -> TextStream:
        call = (self.fmt.call_open[0],) if req.tools else ()
        return TextStream(self.tokenizer.token_bytes, (*req.stop, *call))

    def _forward(self, rows: list[_Running], adapter: str) -> None:
        """Run each row's pending ids (prefill: one row; decode: one id per row), sample, handle the tokens."""
        if adapter != self.adapter and self.library is not None:
            adapter_library.use(self.model, self.library, adapter)
            self.adapter = adapter
        ids = torch.tensor([rows[0].feed] if len(rows) == 1 else [r.feed for r in rows], device=self.device)
        logits = forward_rows(self.model, ids, self.cache, [r.slot for r in rows])[:, -1]  # (N, V)
        for r, row_logits in zip(rows, logits, strict=True):
            req = r.handle.request
            token = int(sample_next(row_logits[None], req.temperature, req.top_k, req.top_p, r.generator))
            r.feed = [token]
            self._on_token(r, token)

    def _on_token(self, r: _Running, token: int) -> None:
        req, h, now = r.handle.request, r.handle, time.perf_counter()
        r.generated += 1
        self.stats["tokens"] += 1
        if h.first_token_s is None:
            h.first_token_s = now - h.submitted
        h.token_times.append(now)
        r.turn.append(token)
        if token == self.end_id:  # the turn is over: show what was held, then answer or tool calls
            self._show(r, r.stream.finish())
            if r.loop is None:
                return self._finish(r, "stop")
            turn, r.turn = r.turn, []
            r.tool = self._tools.submit(r.loop.after_turn, turn)  # runs the calls, if any, off this thread
            return None
        self._show(r, r.stream.push(token))
        if r.stream.stopped and not r.hiding:
            if r.loop is not None and r.stream.stopped_by == self.fmt.call_open[0]:
                r.hiding = True  # a tool call is being written: keep it for the loop, do not show it
            else:
                return self._finish(r, "stop")
        if r.generated >= req.max_tokens or int(self.cache.lengths[r.slot]) + 1 >= self.cache.max_len:
            return self._finish(r, "length")
        return None

    def _show(self, r: _Running, piece: str) -> None:
        if piece and not r.hiding:
            r.text += piece
            r.handle.put(Event("text", piece))

    def _collect_tools(self) -> None:
        for r in [r for r in self._running.values() if r.tool is not None and r.tool.done()]:
            try:
                forced = r.tool.result()
            except Exception as e:  # a bug in a tool or the loop: this request ends, the others go on
                r.tool = None
                self.stats["errors"] += 1
                return self._finish(r, "error", error=f"{type(e).__name__}: {e}")
            r.tool = None
            for call in r.loop.result.calls[r.calls_shown:]:
                r.handle.put(Event("tool_call", data={"name": call.name, "arguments": call.arguments}))
                r.handle.put(Event("tool_result", call.output, {"name": call.name, "ok": call.ok,
                                                               "seconds": round(call.seconds, 4)}))
            r.calls_shown = len(r.loop.result.calls)
            if not forced:
                return self._finish(r, "stop" if r.loop.result.stopped_by == "answer" else "length")
            if int(self.cache.lengths[r.slot]) + 1 + len(forced) >= self.cache.max_len:
                return self._finish(r, "length")
            r.feed = r.feed + forced  # the end token just sampled, then the tool turns and the next opener
            r.stream, r.hiding = self._text_stream(r.handle.request), False
        return None

    def _finish(self, r: _Running, reason: str, error: str | None = None) -> None:
        req = r.handle.request
        if reason == "length":  # cut short: what was held back is text after all (a cut character: U+FFFD)
            self._show(r, r.stream.finish())
        calls = [{"name": c.name, "arguments": c.arguments, "output": c.output} for c in
                 (r.loop.result.calls if r.loop is not None else [])]
        data = {"finish_reason": reason, "text": r.text, "tool_calls": calls,
                "usage": {"prompt_tokens": len(req.prompt), "completion_tokens": r.generated},
                **({"error": error} if error else {})}
        self.stats["cancelled" if reason == "cancelled" else "finished"] += 1  # counted before the slot shows free
        del self._running[r.slot]
        self.cache.free(r.slot)
        r.handle.put(Event("done", data=data))
