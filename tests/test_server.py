"""The server on a real socket, spoken to by the official openai client (sync and async, streamed or not),
plus limits, malformed input, disconnects that free the engine's slot, /health under load and /metrics."""

import asyncio
import re
import threading
import time

import httpx
import openai
import pytest
import torch
from helpers import live_server, tiny_chat

from nanolm.use import server
from nanolm.use.engine import Engine


class SlowEngine(Engine):
    """The tiny model answers in microseconds; a sleep per step makes streams last long enough to watch."""

    delay = 0.0

    def step(self):
        busy = super().step()
        if busy and self.delay:
            time.sleep(self.delay)
        return busy


@pytest.fixture(scope="module")
def live():
    fmt, model = tiny_chat()
    engine = SlowEngine(model, fmt.tokenizer, fmt.tokenizer.special(fmt.end), slots=4, max_len=128)
    app = server.create_app({"tiny": server.Served(engine, fmt)}, server.Limits(max_tokens=100))
    with live_server(app) as url:
        yield url, engine, fmt, model


def greedy(fmt, model, messages, n):
    prompt = fmt.render(messages, add_generation_prompt=True).ids
    end = fmt.tokenizer.special(fmt.end)
    out = model.generate(torch.tensor([prompt]), n, temperature=0.0, stop={end})[0, len(prompt):].tolist()
    return fmt.tokenizer.decode(out[:out.index(end)] if end in out else out)


ASK = [{"role": "user", "content": "What is 2+2?"}]


def test_openai_client_lists_and_completes(live):
    url, _, fmt, model = live
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    assert [m.id for m in client.models.list().data] == ["tiny"]
    reply = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=20, temperature=0)
    assert reply.choices[0].message.content == greedy(fmt, model, ASK, 20)
    assert reply.usage.completion_tokens >= 1 and reply.choices[0].finish_reason in ("stop", "length")
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=20, temperature=0, stream=True) if c.choices]
    assert "".join(pieces) == reply.choices[0].message.content and len([p for p in pieces if p]) > 1


def test_async_openai_client_stream_and_not(live):
    url, _, fmt, model = live

    async def main():
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none")
        whole = await client.chat.completions.create(model="tiny", messages=ASK, max_tokens=15)
        stream = await client.chat.completions.create(model="tiny", messages=ASK, max_tokens=15, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        return whole.choices[0].message.content, text

    whole, streamed = asyncio.run(main())
    assert whole == streamed == greedy(fmt, model, ASK, 15)


@pytest.mark.parametrize("body,status,message", [
    ({"model": "nope", "messages": ASK}, 404, "unknown model 'nope'; this server has \\['tiny'\\]"),
    ({"model": "tiny", "messages": []}, 400, "messages is empty"),
    ({"model": "tiny", "messages": ASK * 65}, 400, "65 messages; at most 64"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x" * 8001}]}, 400, "8001 characters; at most 8000"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x" * 7000}] * 5}, 400, "35000 characters in all"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, "unknown role 'wizard'"),
    ({"model": "tiny", "messages": ASK, "temperature": 3}, 400, "temperature 3.0 is outside \\[0, 2.0\\]"),
    ({"model": "tiny", "messages": ASK, "top_p": 0}, 400, "top_p 0.0 is outside \\(0, 1\\]"),
    ({"model": "tiny", "messages": ASK, "top_k": 0}, 400, "top_k 0 is outside \\[1, "),
    ({"model": "tiny", "messages": ASK, "max_tokens": 101}, 400, "max_tokens 101 is outside \\[1, 100\\]"),
    ({"model": "tiny", "messages": ASK, "adapter": "math"}, 400, "unknown adapter 'math'; available: \\['base'\\]"),
    ({"model": "tiny", "messages": ASK, "stop": [""]}, 400, "non-empty strings"),
    ({"model": "tiny"}, 400, "malformed request \\(messages: Field required\\)"),
])
def test_limits_answer_4xx_saying_what_to_change(live, body, status, message):
    url = live[0]
    r = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert r.status_code == status
    assert re.search(message, r.json()["error"]["message"])


def test_malformed_json_and_the_client_sees_the_message(live):
    url = live[0]
    r = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed request" in r.json()["error"]["message"]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    with pytest.raises(openai.BadRequestError, match="temperature 5.0 is outside"):
        client.chat.completions.create(model="tiny", messages=ASK, temperature=5)


def test_a_client_that_leaves_frees_its_slot(live):
    url, engine, _, _ = live
    engine.delay, end_id = 0.02, engine.end_id
    engine.end_id = -1  # the random tiny model may sample its end token early: only the disconnect may end this one
    cancelled = engine.stats["cancelled"]
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={
                "model": "tiny", "messages": ASK, "max_tokens": 100, "stream": True, "stop": None}) as r:
            lines = r.iter_lines()
            next(lines), next(lines), next(lines)  # the role chunk and some text: generating now
            assert engine.busy_slots() == 1
        for _ in range(100):  # the connection is closed: the slot must free within a second
            if engine.busy_slots() == 0:
                break
            time.sleep(0.01)
        assert engine.busy_slots() == 0 and engine.stats["cancelled"] == cancelled + 1
    finally:
        engine.delay, engine.end_id = 0.0, end_id


def test_health_answers_fast_while_streams_run(live):
    url, engine, _, _ = live
    engine.delay = 0.01
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    results = []

    def one():
        results.append("".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tiny", messages=ASK, max_tokens=100, stream=True, stop=["\n\n\n\n"]) if c.choices))

    threads = [threading.Thread(target=one) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        while engine.busy_slots() < 4:
            time.sleep(0.005)
        latencies = []
        for _ in range(10):
            t0 = time.perf_counter()
            assert httpx.get(f"{url}/health").json()["status"] == "ok"
            latencies.append(time.perf_counter() - t0)
        busy = engine.busy_slots()
        for t in threads:
            t.join()
    finally:
        engine.delay = 0.0
    assert busy >= 1 and len(results) == 4
    assert sorted(latencies)[5] < 0.1, latencies  # the median: the event loop is never blocked by the model


def test_metrics_count_requests_errors_and_latency(live):
    url = live[0]
    before = httpx.get(f"{url}/metrics").json()
    httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": ASK, "max_tokens": 5})
    httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": ASK, "temperature": 9})
    after = httpx.get(f"{url}/metrics").json()
    assert after["requests"] == before["requests"] + 1 and after["errors"] == before["errors"] + 1
    assert after["tokens"] > before["tokens"] and after["ttft"]["p50_ms"] is not None
    assert after["engines"]["tiny"]["slots"] == 4 and after["active"] == 0


def test_eight_concurrent_streams_without_errors(live):
    from nanolm.use import bench

    url, engine, _, _ = live
    body = {"model": "tiny", "stream": True, "max_tokens": 20, "messages": ASK}
    r = bench.load(url, body, clients=8, rounds=2)
    assert r["requests"] == 16 and r["errors"] == 0 and r["chunks_per_s"] > 0
    assert r["ttft_p50_ms"] <= r["ttft_max_ms"] and engine.busy_slots() == 0
