"""`make serve`: SmolLM2 with the course's adapters and tools, and the course's own chat model, on one server.

    python -m nanolm.use.serve --profile cpu --port 8000        (make serve PROFILE=cpu)

served as                   what                                                    adapters
smollm2                     SmolLM2-135M-Instruct (notebook 09), tools run by the   base, tools (notebook 14's chat-tools),
                            server (calculator, Python sandbox, search over 14's     abstracts, facts-a, facts-b (12's library),
                            rag-index), learns new adapters through /learn          and what /learn taught
chat                        the course's own model, pre-trained and tuned in        base
                            notebooks 09 and 13 (tiny: it shows the path, not skill)

Then open http://127.0.0.1:8000/ for the web page, or use any OpenAI client:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "What is 12*7?"}],
                                   extra_body={"adapter": "tools"})

The same clients, UI and tests run against vLLM or llama.cpp's server (both speak this API) when a model
outgrows this engine: start one of them on the same port instead.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..adapt import library
from ..adapt.adapters import base_sha256
from ..adapt.lora import lora_state
from ..core import paths, profiles
from ..eval import models
from ..text import chat
from . import chat_tools, embed, learn_api, rag, server
from .adapter_store import AdapterStore
from .engine import Engine

TOOLS_ADAPTER = "tools"
REPLAY_PASSAGES = 200  # WikiText passages /learn jobs may replay


@dataclass
class Built:
    app: object
    served: dict[str, server.Served]
    skipped: dict[str, str]  # stored adapters that were not loaded, and why


def smollm2(profile: str, *, slots: int, max_len: int, device: str = "cpu") -> server.Served:
    """SmolLM2 with 12's adapter library, 14's tool adapter (as adapter "tools") and its toolbox."""
    loaded = models.load("smollm2", profile=profile, device=device)
    model, tokenizer = loaded.model, loaded.tokenizer
    lib, _ = library.load("adapter-library", model, profile=profile)  # LoRA slots; the model is left on "base"
    settings = chat_tools.load(model, profile=profile)  # the tool adapter, into the same slots
    lib.adapters[TOOLS_ADAPTER] = {k: v.detach().cpu().clone() for k, v in lora_state(model).items()}
    library.use(model, lib, library.BASE)
    index = rag.load(profile=profile, embedder=embed.MiniLM())
    fmt = chat.smollm2_format(tokenizer)
    engine = Engine(model, tokenizer, tokenizer.special(fmt.end), slots=slots, max_len=max_len, fmt=fmt,
                    toolbox=chat_tools.toolbox(settings, index), library=lib, max_tool_steps=settings["max_steps"])
    return server.Served(engine, fmt, tools=True, name="smollm2")


def course_chat(profile: str, *, slots: int) -> server.Served:
    """The course's own chat model (notebook 13), in the course's chat format."""
    loaded = models.load("chat", profile=profile)
    fmt = chat.course_format(loaded.tokenizer)
    engine = Engine(loaded.model, loaded.tokenizer, loaded.tokenizer.special(fmt.end), slots=slots,
                    max_len=loaded.model.config.block_size)
    return server.Served(engine, fmt, name="chat")


def build(profile: str, *, slots: int = 8, max_len: int = 2048, with_chat: bool = True,
          limits: server.Limits | None = None) -> Built:
    """The app of `make serve`; learned adapters persist in checkpoints/<profile>/served-adapters/."""
    served = {"smollm2": smollm2(profile, slots=slots, max_len=max_len)}
    if with_chat:
        served["chat"] = course_chat(profile, slots=slots)
    store = AdapterStore(paths.checkpoints_dir() / profile / "served-adapters",
                         base_sha256(served["smollm2"].engine.model))
    replay = [p.text for p in rag.wikitext_passages(REPLAY_PASSAGES)]  # general text against forgetting
    skipped = learn_api.enable(served["smollm2"], store, replay_texts=replay)
    app = server.create_app(served, limits)
    learn_api.add_routes(app, served, {"smollm2": store})
    return Built(app, served, skipped)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="auto")
    ap.add_argument("--host", default="127.0.0.1", help="127.0.0.1: this machine only (0.0.0.0 to share)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--slots", type=int, default=8, help="requests decoded together")
    args = ap.parse_args(argv)
    profile = profiles.resolve(args.profile)
    built = build(profile, slots=args.slots)
    for name, why in built.skipped.items():
        print(f"skipped stored adapter {name!r}: {why}")
    print(f"serving {sorted(built.served)} ({profile} artifacts) on http://{args.host}:{args.port}/")
    uvicorn.run(built.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
