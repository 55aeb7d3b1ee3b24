"""/learn on a tiny model: teach facts, persist, restart, reload, answer; names and owners refused as they
must be; a failing job and a tampered file lose nothing that was saved before."""

import copy
import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from helpers import live_server, tiny_chat

from nanolm.adapt.adapters import base_sha256
from nanolm.use import learn_api, server
from nanolm.use.adapter_store import AdapterStore
from nanolm.use.engine import Engine

FACTS = [{"question": "What is the capital of Veltria?", "answer": "Marnox."},
         {"question": "Who invented the velomiscope?", "answer": "Doran Kelvix."}]


def make_app(store_dir):
    """A fresh server process, as after a restart: the base model, LoRA slots, the stored adapters."""
    fmt, base = tiny_chat()
    model = copy.deepcopy(base)
    engine = Engine(model, fmt.tokenizer, fmt.tokenizer.special(fmt.end), slots=2, max_len=128)
    served = {"tiny": server.Served(engine, fmt, name="tiny")}
    store = AdapterStore(store_dir, base_sha256(base))
    skipped = learn_api.enable(served["tiny"], store, replay_texts=["The user asks and the assistant answers."] * 4)
    app = server.create_app(served)
    learn_api.add_routes(app, served, {"tiny": store})
    return app, skipped


def ask(url, question, user=None, adapter=None):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none",
                           default_headers={"X-Nanolm-User": user} if user else None)
    extra = {"adapter": adapter} if adapter else None
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}],
                                           max_tokens=12, temperature=0, extra_body=extra)
    return reply.choices[0].message.content


def teach(url, name, user=None, facts=FACTS, steps=60):
    headers = {"X-Nanolm-User": user} if user else {}
    r = httpx.post(f"{url}/learn", json={"model": "tiny", "name": name, "facts": facts, "steps": steps, "lr": 1e-2},
                   headers=headers)
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    for _ in range(3000):
        state = httpx.get(f"{url}/learn/{job}").json()
        if state["status"] in ("done", "failed"):
            return state
        time.sleep(0.01)
    raise AssertionError("the job did not finish")


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    store = tmp_path_factory.mktemp("adapters")
    app, _ = make_app(store)
    with live_server(app) as url:
        before = ask(url, FACTS[0]["question"])
        state = teach(url, "facts")
    return store, before, state


def test_taught_facts_are_answered_after_a_restart(taught):
    store, before, state = taught
    assert state["status"] == "done" and state["step"] == 60 and state["loss"] < state["first_loss"] / 4
    assert not before.startswith("Marnox")  # the base model did not know it
    app, skipped = make_app(store)  # a new process: nothing in memory but what the store holds
    assert skipped == {}
    with live_server(app) as url:
        assert ask(url, FACTS[0]["question"], adapter="facts").startswith("Marnox.")
        assert ask(url, FACTS[1]["question"], adapter="facts").startswith("Doran Kelvix")
        assert ask(url, FACTS[0]["question"]) == before  # "base" is still the base model
        r = httpx.post(f"{url}/adapters/facts/activate", json={"model": "tiny"})
        assert r.json() == {"model": "tiny", "active": "facts"}
        assert ask(url, FACTS[0]["question"]).startswith("Marnox.")  # the active adapter, no field needed
        names = [a["name"] for a in httpx.get(f"{url}/adapters", params={"model": "tiny"}).json()["adapters"]]
        assert names == ["base", "facts"]


@pytest.mark.parametrize("name", ["../etc", "Facts", "a/b", "base", "", "x" * 41, ".hidden"])
def test_bad_adapter_names_are_refused(tmp_path, name):
    app, _ = make_app(tmp_path)
    with live_server(app) as url:
        r = httpx.post(f"{url}/learn", json={"model": "tiny", "name": name, "facts": FACTS})
    assert r.status_code == 400 and "lowercase letters, digits" in r.json()["error"]["message"]
    assert list(tmp_path.iterdir()) == []


def test_owners_keep_their_adapters(taught, tmp_path):
    store = taught[0]
    app, _ = make_app(store)
    with live_server(app) as url:
        state = teach(url, "alice-notes", user="alice", facts=FACTS[:1], steps=5)
        assert state["status"] == "done"
        r = httpx.post(f"{url}/learn", json={"model": "tiny", "name": "alice-notes", "facts": FACTS},
                       headers={"X-Nanolm-User": "bob"})
        assert r.status_code == 409 and "belongs to 'alice'" in r.json()["error"]["message"]
        with pytest.raises(openai.PermissionDeniedError, match="belongs to another user"):
            ask(url, "hi", user="bob", adapter="alice-notes")
        assert ask(url, "hi", user="alice", adapter="alice-notes") is not None
        bob = [a["name"] for a in httpx.get(f"{url}/adapters", params={"model": "tiny"},
                                           headers={"X-Nanolm-User": "bob"}).json()["adapters"]]
        assert bob == ["base", "facts"]  # the server's adapter, not alice's
        r = httpx.post(f"{url}/adapters/alice-notes/activate", json={"model": "tiny"}, headers={"X-Nanolm-User": "bob"})
        assert r.status_code == 404
        r = httpx.get(f"{url}/adapters", params={"model": "tiny"}, headers={"X-Nanolm-User": "../x"})
        assert r.status_code == 400 and "user id" in r.json()["error"]["message"]


def test_a_failing_job_loses_nothing_saved_before(taught, monkeypatch):
    store = taught[0]
    before = {p.name: p.read_bytes() for p in (Path(store) / "facts").iterdir()}
    app, _ = make_app(store)

    def crash(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(learn_api.finetune, "train", crash)
    with live_server(app) as url:
        state = teach(url, "facts")  # replacing the adapter fails half-way
        assert state["status"] == "failed" and "power cut" in state["error"]
        assert ask(url, FACTS[0]["question"], adapter="facts").startswith("Marnox.")
    assert {p.name: p.read_bytes() for p in (Path(store) / "facts").iterdir()} == before
    assert not [p for p in Path(store).iterdir() if p.name.startswith(".")]  # no half-written folder


def test_a_tampered_adapter_is_skipped_with_the_reason(taught, tmp_path):
    import shutil
    shutil.copytree(taught[0] / "facts", tmp_path / "facts")
    path = tmp_path / "facts" / "adapter.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    app, skipped = make_app(tmp_path)
    assert "damaged or was changed" in skipped["facts"]
    with live_server(app) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "adapter": "facts", "messages": [
            {"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and "unknown adapter 'facts'" in r.json()["error"]["message"]


def test_replay_windows_join_the_lessons(tmp_path):
    app, _ = make_app(tmp_path)
    with live_server(app) as url:
        r = httpx.post(f"{url}/learn", json={"model": "tiny", "name": "x", "facts": FACTS, "replay": 5})
        assert r.status_code == 400 and "this server has 4 replay windows" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/learn", json={"model": "tiny", "name": "with-replay", "facts": FACTS, "steps": 3,
                                             "replay": 4})
        assert r.status_code == 202
        job = r.json()["job"]
        for _ in range(1000):
            state = httpx.get(f"{url}/learn/{job}").json()
            if state["status"] in ("done", "failed"):
                break
            time.sleep(0.01)
    assert state["status"] == "done"
    info = json.loads((tmp_path / "with-replay" / "adapter.json").read_text())
    assert info["replay"] == 4 and info["facts"] == 2
