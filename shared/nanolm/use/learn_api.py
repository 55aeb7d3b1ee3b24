"""Continual learning over HTTP: teach the served model new facts as a LoRA adapter, while it keeps serving.

    POST /learn                      {"model", "name", "facts": [{"question", "answer"}], "steps"} -> 202 {"job"}
    GET  /learn/{job}                {"status": queued | running | done | failed, "step", "steps", "loss", ...}
    GET  /adapters?model=M           the adapters this user may use ("base", the server's, their own)
    POST /adapters/{name}/activate   {"model"}: this user's requests without an adapter now use it

Who is asking comes from the X-Nanolm-User header ("server" without one): a user's adapters answer only that
user, the server's answer everyone, and nobody replaces an adapter of another owner. The user or session id
must be a valid name (nanolm.use.adapter_store.NAME).

A job trains on a copy of the model (the served one keeps answering, its LoRA slots untouched), with 12's
fresh adapter start and training loop (nanolm.adapt.learn.fresh_state, nanolm.adapt.finetune.train) on chat
examples rendered by the model's own chat format, loss on the answers only. Each fact is taught as a
conversation: the question as asked, the answer as the assistant's turn. When training ends the adapter is
saved atomically (nanolm.use.adapter_store) and only then offered to requests; a failure leaves everything
saved before untouched. Jobs run one at a time.
"""

from __future__ import annotations

import copy
import random
import threading
import time
import uuid
from collections import deque

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from pydantic import BaseModel, ConfigDict

from ..adapt import finetune
from ..adapt.learn import fresh_state
from ..adapt.library import build as build_library
from ..adapt.lora import apply_lora, load_lora_state, lora_layers, lora_state
from .adapter_store import SERVER, AdapterError, AdapterStore, check_name
from .server import BadRequest, Served

MAX_FACTS, MAX_STEPS, MAX_REPLAY = 64, 400, 200
REPLAY_TOKENS = 64  # about a lesson's length: a batch pads to its longest example, so longer windows set the step's cost


class Fact(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str
    answer: str


class LearnRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    name: str
    facts: list[Fact]
    steps: int = 40
    lr: float = 2e-3
    batch_size: int = 8
    seed: int = 0
    replay: int = 0  # windows of general text (the server's replay corpus) mixed in, against forgetting


class Activate(BaseModel):
    model: str


def user_of(http: HTTPRequest) -> str:
    """The caller's id from X-Nanolm-User ("server" when absent); an invalid one is a 400."""
    user = http.headers.get("x-nanolm-user", SERVER)
    try:
        return check_name(user, "user id (X-Nanolm-User)")
    except AdapterError as e:
        raise BadRequest(str(e)) from None


def enable(served: Served, store: AdapterStore, *, r: int = 8, alpha: float = 16, seed: int = 0,
           replay_texts: list[str] = ()) -> dict[str, str]:
    """Give a served model LoRA slots (if it has none) and an adapter library, and load the stored adapters.

    replay_texts: general text that jobs may mix in (notebook 12's replay: the model keeps predicting
    ordinary text while it learns the new facts). Returns {name: why} for stored adapters that were skipped.
    Zero B in the slots: "base" is the base model."""
    served.replay_texts = list(replay_texts)
    model = served.engine.model
    if not lora_layers(model):
        apply_lora(model, r=r, alpha=alpha, seed=seed)
        load_lora_state(model, fresh_state(model, seed))
    if served.engine.library is None:
        served.engine.library = build_library(model, {}, base=served.name or "served")
    good, skipped = store.load_all()
    for stored in good:
        served.engine.add_adapter(stored.name, stored.tensors)
        served.owners[stored.name] = stored.owner
    return skipped


class Jobs:
    """Learning jobs, run one at a time by a background thread."""

    def __init__(self):
        self.jobs: dict[str, dict] = {}
        self.queue: deque[tuple[str, Served, AdapterStore, LearnRequest, str]] = deque()
        self.wake = threading.Event()
        threading.Thread(target=self._run, name="learn", daemon=True).start()

    def submit(self, served: Served, store: AdapterStore, body: LearnRequest, owner: str) -> str:
        job = uuid.uuid4().hex[:12]
        self.jobs[job] = {"job": job, "status": "queued", "name": body.name, "owner": owner, "model": body.model,
                          "step": 0, "steps": body.steps, "loss": None, "error": None}
        self.queue.append((job, served, store, body, owner))
        self.wake.set()
        return job

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            while self.queue:
                job, served, store, body, owner = self.queue.popleft()
                state = self.jobs[job]
                state["status"], t0 = "running", time.perf_counter()
                try:
                    tensors = train(served, body, lambda line, s=state: _progress(s, line))
                    store.save(body.name, owner, tensors, {"model": body.model, "facts": len(body.facts),
                                                           "steps": body.steps, "lr": body.lr, "replay": body.replay})
                    served.engine.add_adapter(body.name, tensors)  # offered only once it is on disk
                    served.owners[body.name] = owner
                    state.update(status="done", seconds=round(time.perf_counter() - t0, 1))
                except Exception as e:  # the job fails; what was saved before stays as it was
                    state.update(status="failed", error=f"{type(e).__name__}: {e}")


def _progress(state: dict, line: str) -> None:
    """finetune.train's progress line 'step 12/40 | loss 1.23 | ...' -> the job's step and loss."""
    if line.startswith("step "):
        head = line.split("|")
        state["step"] = int(head[0].split()[1].split("/")[0])
        state["loss"] = float(head[1].split()[1])
        state.setdefault("first_loss", state["loss"])


def examples(served: Served, facts: list[Fact]) -> list:
    """Each fact as a chat example: the question, the answer as the assistant's turn (loss on the answer)."""
    block = served.engine.cache.max_len
    return [served.fmt.to_example([{"role": "user", "content": f.question},
                                   {"role": "assistant", "content": f.answer}], block) for f in facts]


def replay_windows(served: Served, n: int, seed: int) -> list:
    """n windows of the replay corpus as plain language-modelling examples (every next token trained)."""
    texts = random.Random(seed).sample(served.replay_texts, n)
    windows = [served.engine.tokenizer.encode(t)[:REPLAY_TOKENS + 1] for t in texts]
    return [(w[:-1], w[1:]) for w in windows if len(w) > 1]


def train(served: Served, body: LearnRequest, progress) -> dict:
    """Train a fresh adapter on a copy of the served model; return its tensors."""
    student = copy.deepcopy(served.engine.model)  # the served model keeps its LoRA slots for requests
    load_lora_state(student, fresh_state(student, body.seed))
    data = examples(served, body.facts) + replay_windows(served, body.replay, body.seed)
    finetune.train(student, data, steps=body.steps, batch_size=body.batch_size, lr=body.lr, log_every=1,
                   seed=body.seed, print_fn=progress)
    return {k: v.detach().clone() for k, v in lora_state(student).items()}


def add_routes(app: FastAPI, served: dict[str, Served], stores: dict[str, AdapterStore]) -> Jobs:
    jobs = Jobs()

    def learnable(model: str) -> Served:
        if model not in stores:
            raise BadRequest(f"model {model!r} does not learn here; learning models: {sorted(stores)}", 404)
        return served[model]

    @app.post("/learn", status_code=202)
    async def learn(body: LearnRequest, http: HTTPRequest):
        owner, s = user_of(http), learnable(body.model)
        try:
            check_name(body.name)
        except AdapterError as e:
            raise BadRequest(str(e)) from None
        if (current := s.owners.get(body.name)) is not None and current != owner:
            raise BadRequest(f"adapter {body.name!r} belongs to {current!r}: choose another name", 409)
        if not 1 <= len(body.facts) <= MAX_FACTS or not 1 <= body.steps <= MAX_STEPS:
            raise BadRequest(f"send 1-{MAX_FACTS} facts and 1-{MAX_STEPS} steps")
        if not 0 <= body.replay <= min(MAX_REPLAY, len(s.replay_texts)):
            raise BadRequest(f"replay {body.replay}: this server has {len(s.replay_texts)} replay windows "
                             f"(at most {MAX_REPLAY} per job)")
        if any(not f.question.strip() or not f.answer.strip() for f in body.facts):
            raise BadRequest("every fact needs a non-empty question and answer")
        return {"job": jobs.submit(s, stores[body.model], body, owner), "status": "queued"}

    @app.get("/learn/{job}")
    async def job_status(job: str):
        if job not in jobs.jobs:
            raise BadRequest(f"no learning job {job!r}", 404)
        return jobs.jobs[job]

    @app.get("/adapters")
    async def adapters(model: str, http: HTTPRequest):
        owner, s = user_of(http), learnable(model)
        mine = [n for n in s.engine.adapters() if n != "base" and s.owners.get(n, SERVER) in (SERVER, owner)]
        return {"model": model, "active": s.defaults.get(owner, "base"),
                "adapters": [{"name": "base", "owner": SERVER}] + [{"name": n, "owner": s.owners.get(n, SERVER)}
                                                                  for n in mine]}

    @app.post("/adapters/{name}/activate")
    async def activate(name: str, body: Activate, http: HTTPRequest):
        owner, s = user_of(http), learnable(body.model)
        if name != "base" and (name not in s.engine.adapters() or s.owners.get(name, SERVER) not in (SERVER, owner)):
            raise BadRequest(f"no adapter {name!r} for you on {body.model!r}: see GET /adapters?model={body.model}", 404)
        s.defaults[owner] = name
        return {"model": body.model, "active": name}

    return jobs
