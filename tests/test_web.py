"""The web page in headless Chromium (Playwright): send a message and watch it stream, see a calculator call,
teach a fact, switch adapters. A screenshot goes to build/web-page.png.

Chromium comes from the system's packages (`make test` installs it where it can: apt as root); without a
browser that can be started, the test is skipped with the reason printed.
"""

import copy
import shutil
import time

import pytest
import torch
from helpers import live_server, tiny_chat

from nanolm.adapt.adapters import base_sha256
from nanolm.core import paths
from nanolm.use import engine as engine_mod
from nanolm.use import learn_api, server, tools
from nanolm.use.adapter_store import AdapterStore
from nanolm.use.engine import Engine

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)


class Slow(Engine):
    def step(self):
        busy = super().step()
        if busy:
            time.sleep(0.02)  # long enough for the page to show tokens one by one
        return busy


@pytest.fixture
def page_url(tmp_path, monkeypatch):
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine: install it (apt-get install chromium) for the browser test")
    fmt, base = tiny_chat()
    ask = [{"role": "user", "content": "What is 12 times 7?"}]
    call = {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator", "arguments": "12*7"}]}
    before, after = fmt.render(ask, add_generation_prompt=True).ids, fmt.render([*ask, call]).ids
    end = fmt.tokenizer.special(fmt.end)
    script = after[len(before): len(after) - after[::-1].index(end)] + fmt.tokenizer.encode("It is 84.") + [end]
    real = engine_mod.sample_next

    def scripted(*args, **kwargs):  # the first request writes a calculator call; later ones are the model's
        return torch.tensor([[script.pop(0)]]) if script else real(*args, **kwargs)

    monkeypatch.setattr(engine_mod, "sample_next", scripted)
    model = copy.deepcopy(base)
    engine = Slow(model, fmt.tokenizer, end, slots=2, max_len=128, fmt=fmt,
                  toolbox=tools.Toolbox([tools.calculator()]))
    served = {"tiny": server.Served(engine, fmt, tools=True, name="tiny")}
    store = AdapterStore(tmp_path, base_sha256(base))
    learn_api.enable(served["tiny"], store)
    app = server.create_app(served)
    learn_api.add_routes(app, served, {"tiny": store})
    with live_server(app) as url:
        yield url


def test_chat_tools_teach_and_switch_in_a_browser(page_url):
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except Error as e:
            pytest.skip(f"Chromium at {CHROMIUM} does not start here: {str(e).splitlines()[0]}")
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        posted = []
        page.on("request", lambda r: posted.append(r.post_data_json) if r.method == "POST" else None)
        page.goto(page_url)
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        page.evaluate("""() => {  // record (time, length) of the reply each time the page changes it
            window.seen = [];
            new MutationObserver(() => {
                const r = document.querySelector('.msg.assistant:not(.error)');
                if (r) window.seen.push([performance.now(), r.textContent.length]);
            }).observe(document.querySelector('#log'), {subtree: true, childList: true, characterData: true});
        }""")
        page.fill("#input", "What is 12 times 7?")
        page.click("#send")
        page.wait_for_function("document.querySelectorAll('.msg.assistant').length && "
                               "!document.querySelector('#send').disabled")
        seen = page.evaluate("window.seen")
        lengths = sorted({n for _, n in seen})
        assert len(lengths) >= 3 and seen[-1][0] - seen[0][0] > 30, seen  # it grew piece by piece, over time
        tool_lines = page.locator(".tool").all_text_contents()
        assert tool_lines[0] == "tool call: calculator(12*7)" and tool_lines[1] == "result: 84"
        assert page.locator(".msg.assistant").last.text_content() == "It is 84."

        page.fill("#teach-q", "What is the capital of Veltria?")
        page.fill("#teach-a", "Marnox.")
        page.fill("#teach-name", "veltria")
        page.click("#teach")
        page.wait_for_function("document.querySelector('#teach-status').textContent.startsWith('done')",
                               timeout=60_000)
        assert page.eval_on_selector("#progress", "p => p.value === p.max")
        assert page.input_value("#adapter") == "veltria"  # the new adapter, selected

        page.select_option("#adapter", "base")
        page.select_option("#adapter", "veltria")
        page.fill("#input", "What is the capital of Veltria?")
        page.click("#send")
        page.wait_for_function("document.querySelectorAll('.msg.assistant').length >= 2 && "
                               "!document.querySelector('#send').disabled")
        chats = [b for b in posted if b and "messages" in b]
        assert [b["adapter"] for b in chats] == ["base", "veltria"]
        out = paths.ROOT / "build" / "web-page.png"
        out.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    assert out.stat().st_size > 10_000
