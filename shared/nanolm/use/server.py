"""An OpenAI-compatible HTTP server around the engines: the one place where everything meets.

    GET  /health                   {"status": "ok"}: answers at once, however busy the models are
    GET  /v1/models                the served models (OpenAI's list format)
    POST /v1/chat/completions      OpenAI's chat completions, streamed (server-sent events) or not
    GET  /metrics                  requests, errors, tokens/s, time to first token, inter-token latency
    GET  /                         the web page (nanolm/use/web/index.html)

The official `openai` client talks to it unchanged (base_url=http://127.0.0.1:8000/v1). Each model has an
`Engine` stepped by its own thread, so the event loop only moves bytes: /health answers while streams run.
A request's events cross from the engine thread to the event loop through `call_soon_threadsafe`. A client
that goes away cancels its request: the engine frees its slot at the next step.

Limits are checked before anything runs, and a request over one gets a 400 that says what to change
(`Limits`). Tool calls run by the server appear in the stream as chunks with an extra `nanolm` field
(`{"tool_call": ...}`, `{"tool_result": ...}`); OpenAI clients ignore fields they do not know.
/learn and the adapter routes are added by nanolm.use.learn_api.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from .engine import Engine, Event, Request
from .metrics import Metrics

WEB = Path(__file__).parent / "web" / "index.html"


@dataclass
class Limits:
    """What one request may ask for; over a limit is a 400 naming it."""

    messages: int = 64
    message_chars: int = 8_000
    total_chars: int = 32_000
    max_tokens: int = 1_024
    temperature: float = 2.0
    stop_strings: int = 4


@dataclass
class Served:
    """One model behind the API: its engine and chat format (render messages, end token, tool syntax)."""

    engine: Engine
    fmt: object
    tools: bool = False  # run tool calls for this model's requests
    name: str = ""
    owners: dict[str, str] = field(default_factory=dict)  # adapter -> owner ("server" or a user id)
    defaults: dict[str, str] = field(default_factory=dict)  # user -> the adapter their requests use
    replay_texts: list[str] = field(default_factory=list)  # general text /learn may mix in
    worker: EngineThread | None = field(default=None, repr=False)

    def adapter_for(self, user: str, asked: str | None) -> str:
        """The adapter a user's request runs on: the one asked for, else the user's active one, else "base"."""
        name = asked or self.defaults.get(user, "base")
        if name != "base" and self.owners.get(name, "server") not in ("server", user):
            raise BadRequest(f"adapter {name!r} belongs to another user: use your own or the server's", 403)
        return name


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | None = ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI fields we do not implement (n, logprobs, ...) are ignored
    model: str
    messages: list[Message]
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    adapter: str | None = None  # nanolm's extension: which LoRA adapter answers


class BadRequest(ValueError):
    """A request the server refuses with a 400 (or the given status) and a message saying what to change."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class EngineThread:
    """Steps one engine in a background thread while it has work; sleeps until a request arrives."""

    def __init__(self, engine: Engine, name: str):
        self.engine, self.wake, self.stopping = engine, threading.Event(), False
        self.thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            if not self.engine.step() and not self.engine.waiting():
                self.wake.wait(0.05)
                self.wake.clear()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self.thread.join(timeout=5)


def check(body: ChatRequest, served: dict[str, Served], limits: Limits) -> None:
    """Every limit, before anything runs; the message says which and what to change."""
    if body.model not in served:
        raise BadRequest(f"unknown model {body.model!r}; this server has {sorted(served)}", 404)
    if not body.messages:
        raise BadRequest("messages is empty: send at least one message")
    if len(body.messages) > limits.messages:
        raise BadRequest(f"{len(body.messages)} messages; at most {limits.messages} per request: drop older turns")
    if bad := [m.role for m in body.messages if m.role not in ("system", "user", "assistant", "tool")]:
        raise BadRequest(f"unknown role {bad[0]!r}: use system, user, assistant or tool")
    sizes = [len(m.content or "") for m in body.messages]
    if max(sizes) > limits.message_chars:
        raise BadRequest(f"a message has {max(sizes)} characters; at most {limits.message_chars}: shorten it")
    if sum(sizes) > limits.total_chars:
        raise BadRequest(f"the messages have {sum(sizes)} characters in all; at most {limits.total_chars}")
    if not 0.0 <= body.temperature <= limits.temperature:
        raise BadRequest(f"temperature {body.temperature} is outside [0, {limits.temperature}]")
    if body.top_p is not None and not 0.0 < body.top_p <= 1.0:
        raise BadRequest(f"top_p {body.top_p} is outside (0, 1]")
    vocab = served[body.model].engine.model.config.vocab_size
    if body.top_k is not None and not 1 <= body.top_k <= vocab:
        raise BadRequest(f"top_k {body.top_k} is outside [1, {vocab}] (the vocabulary size)")
    n = max_tokens(body, limits)
    if not 1 <= n <= limits.max_tokens:
        raise BadRequest(f"max_tokens {n} is outside [1, {limits.max_tokens}]")
    if len(stops(body)) > limits.stop_strings or any(not s for s in stops(body)):
        raise BadRequest(f"stop: at most {limits.stop_strings} non-empty strings")


def max_tokens(body: ChatRequest, limits: Limits) -> int:
    """The request's max_tokens (or max_completion_tokens); unset: 256 or the server's limit if lower."""
    return body.max_completion_tokens or body.max_tokens or min(256, limits.max_tokens)


def stops(body: ChatRequest) -> list[str]:
    return [body.stop] if isinstance(body.stop, str) else list(body.stop or [])


def to_request(body: ChatRequest, served: Served, limits: Limits, user: str = "server") -> Request:
    messages = [{"role": m.role, "content": m.content or ""} for m in body.messages]
    prompt = served.fmt.render(messages, add_generation_prompt=True).ids
    n = max_tokens(body, limits)
    if not (body.max_tokens or body.max_completion_tokens):  # unset: as much as the context leaves, up to n
        n = max(1, min(n, served.engine.cache.max_len - len(prompt)))
    request = Request(prompt, max_tokens=n, temperature=body.temperature, top_k=body.top_k,
                      top_p=body.top_p, seed=body.seed, stop=tuple(stops(body)), adapter=served.adapter_for(user, body.adapter),
                      tools=served.tools, messages=messages)
    try:
        served.engine.check(request)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    return request


def chunk(cid: str, model: str, delta: dict, finish: str | None = None, extra: dict | None = None) -> str:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **(extra or {})}
    return f"data: {json.dumps(body)}\n\n"


def completion(cid: str, model: str, data: dict) -> dict:
    """A finished request as OpenAI's (non-streamed) chat completion, with the tool calls the server ran."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": data["text"]},
                         "finish_reason": finish_reason(data)}],
            "usage": {**data["usage"], "total_tokens": sum(data["usage"].values())},
            "nanolm": {"tool_calls": data["tool_calls"]}}


def finish_reason(data: dict) -> str:
    return "length" if data["finish_reason"] == "length" else "stop"


def _error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Malformed requests and refused ones answer JSON in OpenAI's error format, and count as errors."""

    @app.exception_handler(RequestValidationError)
    async def _malformed(_, exc: RequestValidationError):
        metrics.errors += 1
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()[:3])
        return JSONResponse({"error": {"message": f"malformed request ({where}): send JSON in OpenAI's "
                                                  "chat completions format", "type": "invalid_request_error"}}, 400)

    @app.exception_handler(BadRequest)
    async def _bad(_, exc: BadRequest):
        metrics.errors += 1
        return JSONResponse({"error": {"message": str(exc), "type": "invalid_request_error"}}, exc.status)


def create_app(served: dict[str, Served], limits: Limits | None = None) -> FastAPI:
    """The FastAPI app serving these models (an engine thread each, started here and stopped at shutdown)."""
    limits = limits or Limits()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        for s in served.values():  # shutdown: stop stepping the engines
            s.worker.stop()

    app = FastAPI(title="nanolm", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.served, app.state.metrics, app.state.limits = served, metrics, limits
    for name, s in served.items():
        s.name = s.name or name
        s.worker = s.worker or EngineThread(s.engine, name)

    _error_handlers(app, metrics)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": sorted(served)}

    @app.get("/metrics")
    async def get_metrics():
        return metrics.summary({n: s.engine for n, s in served.items()})

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "nanolm",
                                            "adapters": s.engine.adapters()} for n, s in served.items()]}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return WEB.read_text("utf-8") if WEB.exists() else "<p>the web page is not installed</p>"

    @app.post("/v1/chat/completions")
    async def completions(body: ChatRequest, http: HTTPRequest):
        check(body, served, limits)
        s = served[body.model]
        request = to_request(body, s, limits, http.headers.get("x-nanolm-user", "server"))
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        handle = s.engine.submit(request, notify=lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        s.worker.wake.set()
        metrics.started()
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        if body.stream:
            return StreamingResponse(_stream(cid, body.model, handle, events, metrics),
                                     media_type="text/event-stream")
        try:
            while (event := await events.get()).kind != "done":
                pass
        finally:
            handle.cancel()  # a no-op when finished; frees the slot if this handler was cancelled
            metrics.ended()
        metrics.finished(handle, event.data)
        return completion(cid, body.model, event.data)

    return app


async def _stream(cid: str, model: str, handle, events: asyncio.Queue, metrics: Metrics):
    """Server-sent events: a role chunk, a chunk per text piece or tool event, the finish chunk, [DONE]."""
    try:
        yield chunk(cid, model, {"role": "assistant", "content": ""})
        while True:
            event: Event = await events.get()
            if event.kind == "text":
                yield chunk(cid, model, {"content": event.text})
            elif event.kind in ("tool_call", "tool_result"):
                yield chunk(cid, model, {}, extra={"nanolm": {event.kind: {**event.data, "output": event.text}}})
            elif event.kind == "done":
                metrics.finished(handle, event.data)
                yield chunk(cid, model, {}, finish_reason(event.data))
                yield "data: [DONE]\n\n"
                return
    finally:
        handle.cancel()  # the client left (or the stream ended): the engine frees the slot
        metrics.ended()


@contextlib.contextmanager
def running(app, host: str = "127.0.0.1", port: int | None = None):
    """Serve `app` with uvicorn in a background thread (a free port unless given); yield its base URL."""
    import socket

    import uvicorn

    if port is None:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, name="uvicorn", daemon=True)
    thread.start()
    for _ in range(1000):
        if srv.started or not thread.is_alive():
            break
        time.sleep(0.01)
    if not srv.started:
        raise RuntimeError(f"the server did not start on {host}:{port}")
    try:
        yield f"http://{host}:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
