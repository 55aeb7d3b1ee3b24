"""Small helpers several test files share."""

import functools

import torch


def train_briefly(model: torch.nn.Module, ids: torch.Tensor, steps: int = 30, lr: float = 2e-2) -> torch.nn.Module:
    """A few AdamW steps on next-token prediction of `ids`, then eval mode.

    Parity tests use it to move weights and logits well away from their tiny initial values (a fresh model's
    logits are ~0.5), where a near-equivalent activation or a wrong epsilon would hide.
    """
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        model(ids, ids.roll(-1, 1))[1].backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


CHAT_TEXT = ("The user asks and the assistant answers. What is 2+2? It is 4. Ünïcödé 🙂 too. "
             '{"name": "calculator", "arguments": "2+2"} The answer is 84. Hello! ') * 20


@functools.cache
def tiny_chat(seed: int = 0):
    """(chat format, model): a course-format tokenizer trained on a few lines and a tiny float64 Llama with
    weights larger than at init, so greedy continuations vary and do not repeat at once."""
    from nanolm.model.llama import Llama, LlamaConfig
    from nanolm.text import bpe_train, chat

    fmt = chat.course_format(bpe_train.train(CHAT_TEXT, 400))
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(vocab_size=fmt.tokenizer.vocab_size, block_size=128, n_layer=2, n_head=4,
                              n_kv_head=2, n_embd=32)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return fmt, model


def live_server(app):
    """Run an ASGI app with uvicorn on a free loopback port in a thread; yield its base URL."""
    from nanolm.use.server import running

    return running(app)
