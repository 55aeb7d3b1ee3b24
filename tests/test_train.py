"""nanolm.train: schedules vs torch's schedulers, AdamW groups, accumulation, clipping, exact resume,
atomic and verified checkpoints, precision choice and the progress line."""

import copy
import math
import re
from pathlib import Path

import pytest
import tolerances
import torch

from nanolm import train
from nanolm.core import files
from nanolm.model.gpt import GPT, GPTConfig
from nanolm.train import CheckpointError, TrainConfig, Trainer, loop

LINE = re.compile(
    r"^step \d+/\d+ \| loss \d+\.\d\d \| lr \d\.\de[-+]\d\d \| \d+(\.\d+)?[kM]? tok/s"
    r" \| mfu (\d+\.\d%|n/a) \| \d+\.\d s$"
)


class ToySource:
    """Random windows of a fixed token stream; batch i depends only on (seed, i), so its state is one int."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, block_size: int, seed: int = 0):
        self.tokens, self.B, self.T, self.seed, self.position = tokens, batch_size, block_size, seed, 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.position)
        ix = torch.randint(len(self.tokens) - self.T - 1, (self.B,), generator=g)
        x = torch.stack([self.tokens[i : i + self.T] for i in ix])  # (B, T)
        y = torch.stack([self.tokens[i + 1 : i + self.T + 1] for i in ix])  # (B, T)
        self.position += 1
        return x, y

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


class ListSource:
    """Hands out a fixed list of batches in order."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next_batch(self):
        self.i += 1
        return self.batches[self.i - 1]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def stream(n: int = 3000, vocab: int = 32) -> torch.Tensor:
    """A learnable token stream: a repeating pattern with some noise."""
    g = torch.Generator().manual_seed(1)
    base = (torch.arange(n) * 7 % 13) + (torch.arange(n) // 5 % 3)
    noise = torch.randint(vocab, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.1, noise, base % vocab)


def tiny_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    return GPT(GPTConfig(**{**cfg, **kw}))


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=8, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_every=0,
                log_every=2, eval_batches=2, grad_clip=1.0)
    return TrainConfig(**{**base, **kw})


def trainer(model=None, c=None, seed=0, val=False, lines=None, **kw) -> Trainer:
    c = c or cfg()
    vals = {"a": ToySource(stream(), 4, 16, seed=7), "b": ToySource(stream() % 5, 4, 16, seed=8)} if val else None
    return Trainer(model or tiny_gpt(), c, ToySource(stream(), c.batch_size, 16, seed=seed), vals,
                   printer=None if lines is None else lines.append, peak_flops_per_s=1e11, **kw)


# ------------------------------------------------------------------------------ schedules


def torch_lrs(make, steps: int, lr: float) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_equals_torch_linear_then_cosine():
    lr, min_lr, W, N = 6e-4, 6e-5, 10, 100
    S = torch.optim.lr_scheduler
    ref = torch_lrs(lambda o: S.SequentialLR(o, [
        S.LinearLR(o, start_factor=1 / (W + 1), end_factor=1.0, total_iters=W),
        S.CosineAnnealingLR(o, T_max=N - W, eta_min=min_lr)], milestones=[W]), N, lr)
    ours = [train.cosine_lr(s, lr, min_lr, W, N) for s in range(N)]
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64),
                               rtol=1e-9, atol=1e-15)
    assert train.cosine_lr(N, lr, min_lr, W, N) == pytest.approx(min_lr)
    assert train.cosine_lr(10 * N, lr, min_lr, W, N) == pytest.approx(min_lr)  # stays at the floor


def test_wsd_equals_torch_linear_constant_linear():
    lr, min_lr, W, N, frac = 1e-3, 1e-4, 5, 50, 0.2
    D = round(frac * N)
    S = torch.optim.lr_scheduler
    ref = torch_lrs(lambda o: S.SequentialLR(o, [
        S.LinearLR(o, start_factor=1 / (W + 1), end_factor=1.0, total_iters=W),
        S.ConstantLR(o, factor=1.0, total_iters=1),
        S.LinearLR(o, start_factor=1.0, end_factor=min_lr / lr, total_iters=D)], milestones=[W, N - D]), N, lr)
    ours = [train.wsd_lr(s, lr, min_lr, W, N, frac) for s in range(N)]
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64),
                               rtol=1e-9, atol=1e-15)
    assert ours[W : N - D] == [lr] * (N - D - W)  # the stable phase is exactly flat


def test_constant_equals_torch_linear_warmup_and_lr_at_dispatches():
    S = torch.optim.lr_scheduler
    ref = torch_lrs(lambda o: S.LinearLR(o, start_factor=1 / 5, end_factor=1.0, total_iters=4), 20, 0.01)
    ours = [train.constant_lr(s, 0.01, 4) for s in range(20)]
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(ref), rtol=1e-7, atol=0)
    c = cfg(max_steps=40, warmup_steps=4)
    for name, fn in [("cosine", lambda s: train.cosine_lr(s, c.lr, c.min_lr, 4, 40)),
                     ("wsd", lambda s: train.wsd_lr(s, c.lr, c.min_lr, 4, 40, 0.2)),
                     ("constant", lambda s: train.constant_lr(s, c.lr, 4))]:
        c.schedule = name
        assert [train.lr_at(s, c) for s in range(40)] == [fn(s) for s in range(40)]
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")


# ------------------------------------------------------------------------------ optimizer


def test_param_groups_decay_matrices_only():
    model = tiny_gpt(bias=True)
    decay, no_decay = train.split_decay(model)
    params = dict(model.named_parameters())
    assert set(decay) | set(no_decay) == set(params) and not set(decay) & set(no_decay)
    assert "tok_emb.weight" in decay and "pos_emb.weight" in decay  # embeddings are decayed (a choice)
    assert "head.weight" not in params  # tied to tok_emb: one tensor, one group
    assert all(params[n].dim() >= 2 for n in decay) and all(params[n].dim() == 1 for n in no_decay)
    assert any(n.endswith("bias") for n in no_decay) and "ln_f.weight" in no_decay
    groups = train.param_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert sum(p.numel() for g in groups for p in g["params"]) == model.num_params()
    opt = train.make_optimizer(model, cfg(weight_decay=0.1), torch.device("cpu"))
    assert opt.param_groups[0]["fused"] and opt.param_groups[1]["weight_decay"] == 0.0


def test_accumulating_4x2_equals_one_batch_of_8():
    data = ToySource(stream(), 8, 16, seed=3)
    big = [data.next_batch() for _ in range(2)]  # two optimizer steps of 8 sequences
    small = [(x[i : i + 2], y[i : i + 2]) for x, y in big for i in range(0, 8, 2)]
    c8, c2 = cfg(max_steps=2, batch_size=8, warmup_steps=0), cfg(max_steps=2, batch_size=2, grad_accum=4,
                                                                  warmup_steps=0)
    t8 = Trainer(tiny_gpt(), c8, ListSource(big), printer=None, peak_flops_per_s=1e11)
    t2 = Trainer(tiny_gpt(), c2, ListSource(small), printer=None, peak_flops_per_s=1e11)
    t8.run(), t2.run()
    # float32 sums in another order: equal to rounding (about 1e-7 relative)
    torch.testing.assert_close(torch.tensor(t2.losses), torch.tensor(t8.losses), rtol=1e-5, atol=1e-6)
    for (n, p8), p2 in zip(t8.model.named_parameters(), t2.model.parameters(), strict=True):
        torch.testing.assert_close(p2, p8, rtol=1e-4, atol=1e-6, msg=n)
    assert t8.tokens_seen == t2.tokens_seen == 2 * 8 * 16


def _torch_scheduler(opt, c: TrainConfig):
    """torch's own schedulers set up to the formulas of train.schedules (warmup lr*(s+1)/(W+1), then ...)."""
    S = torch.optim.lr_scheduler
    W, N = c.warmup_steps, c.max_steps
    warm = S.LinearLR(opt, start_factor=1 / (W + 1), end_factor=1.0, total_iters=W)
    if c.schedule == "constant":
        return warm
    if c.schedule == "cosine":
        return S.SequentialLR(opt, [warm, S.CosineAnnealingLR(opt, T_max=N - W, eta_min=c.min_lr)], milestones=[W])
    D = round(c.decay_fraction * N)
    return S.SequentialLR(opt, [warm, S.ConstantLR(opt, factor=1.0, total_iters=1),
                                S.LinearLR(opt, start_factor=1.0, end_factor=c.min_lr / c.lr, total_iters=D)],
                          milestones=[W, N - D])


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_loop_lr_of_every_group_and_update_equal_torch_schedulers(schedule):
    """The whole loop (two AdamW groups, warmup + schedule, grad_accum 3, clipping), float64: every group's lr
    at every optimizer step and the final weights equal a hand loop of torch.optim.AdamW + lr_scheduler."""
    c = cfg(max_steps=12, warmup_steps=3, grad_accum=3, batch_size=2, schedule=schedule, lr=1e-2, min_lr=1e-3,
            weight_decay=0.1, grad_clip=0.5, log_every=100)
    model = tiny_gpt(bias=True).double()
    ref = copy.deepcopy(model)
    t = Trainer(model, c, ToySource(stream(), 2, 16, seed=5), printer=None, peak_flops_per_s=1e11)
    assert len(t.optimizer.param_groups) == 2
    seen, real_step = [], t.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append([g["lr"] for g in t.optimizer.param_groups])
        return real_step(*args, **kwargs)

    t.optimizer.step = recording_step
    t.run()

    opt = torch.optim.AdamW(train.param_groups(ref, c.weight_decay), lr=c.lr, betas=c.betas, eps=c.eps)
    sched = _torch_scheduler(opt, c)
    src, expected = ToySource(stream(), 2, 16, seed=5), []
    for _ in range(c.max_steps):
        for _ in range(c.grad_accum):
            x, y = src.next_batch()
            (ref(x, y)[1] / c.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), c.grad_clip)
        expected.append([g["lr"] for g in opt.param_groups])
        opt.step()
        opt.zero_grad()
        sched.step()
    assert len(seen) == c.max_steps and len({lr for row in expected for lr in row}) >= 4  # the lr really moves
    torch.testing.assert_close(torch.tensor(seen, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                               **tolerances.LR)
    for (name, p), q in zip(t.model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, **tolerances.FLOAT64, msg=name)


@pytest.mark.parametrize("k", [2, 4])
def test_accumulating_k_micro_batches_equals_one_big_batch_float64(k):
    """k micro-batches of B sequences give the update of one batch of k*B: float64, to rounding (no clipping,
    which would hide a missing 1/k; AdamW with eps 1e-3 is not scale-invariant, so a wrong scale shows)."""
    data = ToySource(stream(), 8, 16, seed=3)
    big = [data.next_batch() for _ in range(3)]
    B = 8 // k
    small = [(x[i : i + B], y[i : i + B]) for x, y in big for i in range(0, 8, B)]
    base = dict(max_steps=3, warmup_steps=0, grad_clip=0.0, eps=1e-3, weight_decay=0.1)
    tb = Trainer(tiny_gpt(bias=True).double(), cfg(batch_size=8, **base), ListSource(big), printer=None,
                 peak_flops_per_s=1e11)
    ts = Trainer(tiny_gpt(bias=True).double(), cfg(batch_size=B, grad_accum=k, **base), ListSource(small),
                 printer=None, peak_flops_per_s=1e11)
    tb.run(), ts.run()
    torch.testing.assert_close(torch.tensor(ts.losses), torch.tensor(tb.losses), **tolerances.FLOAT64)
    for (n, pb), ps in zip(tb.model.named_parameters(), ts.model.parameters(), strict=True):
        torch.testing.assert_close(ps, pb, **tolerances.FLOAT64, msg=n)


def test_clipping_reports_preclip_norm_and_matches_manual_adamw():
    c = cfg(max_steps=1, warmup_steps=0, grad_clip=0.05, log_every=1)
    t = trainer(c=c)
    x, y = ToySource(stream(), 4, 16, seed=0).next_batch()  # the batch the trainer will draw
    ref = tiny_gpt()
    _, loss = ref(x, y)
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters()]))
    assert norm > c.grad_clip  # so clipping really acts
    torch.nn.utils.clip_grad_norm_(ref.parameters(), c.grad_clip)
    opt = torch.optim.AdamW(train.param_groups(ref, c.weight_decay), lr=c.lr, betas=c.betas, eps=c.eps)
    opt.step()
    t.run()
    assert t.history[-1]["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
    for p, q in zip(t.model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_clip_grad_norm_equals_torch():
    a, b = tiny_gpt(), tiny_gpt()
    for max_norm, scale in [(0.1, 1.0), (1e3, 1.0), (1.0, 1e-3)]:
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            p.grad = torch.randn_like(p) * scale
            q.grad = p.grad.clone()
        ours = train.clip_grad_norm(a, max_norm)
        ref = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm)
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
    assert train.grad_norm(a) == pytest.approx(min(1.0, ref.item()), rel=1e-5)


# ------------------------------------------------------------------------------ loop, eval, logs


def test_progress_line_format_and_history():
    assert train.progress_line(120, 2000, 1.9234, 6e-4, 18400, 0.123, 3.14) == (
        "step 120/2000 | loss 1.92 | lr 6.0e-04 | 18.4k tok/s | mfu 12.3% | 3.1 s")
    assert LINE.match(train.progress_line(5, 10, 10.5, 3e-5, 950, None, 0.0))
    lines = []
    t = trainer(c=cfg(max_steps=5, log_every=2, grad_clip=0.0), lines=lines)  # norms without clipping too
    hist = t.run()
    assert len(lines) == 3 and all(LINE.match(s) for s in lines), lines  # steps 2, 4 and the last, 5
    assert [h["step"] for h in hist] == [2, 4, 5] and len(t.losses) == 5
    assert hist[0]["loss"] == pytest.approx(sum(t.losses[:2]) / 2)
    assert all(h["tok_per_s"] > 0 and 0 < h["mfu"] and h["grad_norm"] > 0 for h in hist)
    assert t.losses[-1] < t.losses[0]  # it learns


def test_evaluate_per_domain_with_callback_and_tensorboard(tmp_path):
    seen = []
    t = trainer(c=cfg(max_steps=4, eval_every=2), val=True, log_dir=tmp_path / "tb")
    hist = t.run(on_eval=lambda h: seen.append(h[-1]["step"]))
    t.close()
    assert seen == [0, 2, 4]
    evals = [h for h in hist if "val" in h]
    assert [sorted(h["val"]) for h in evals] == [["a", "b"]] * 3
    assert evals[-1]["val"]["a"] < evals[0]["val"]["a"]
    first = t.evaluate()
    assert t.evaluate() == first  # every evaluation sees the same batches
    assert first == evals[-1]["val"] and t.model.training
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_sources_must_follow_the_protocol():
    assert isinstance(ToySource(stream(), 2, 4), train.BatchSource)
    with pytest.raises(TypeError, match="valid is a list, not a BatchSource"):
        Trainer(tiny_gpt(), cfg(), ToySource(stream(), 2, 4), {"valid": []})


def test_precision_auto_is_fp32_on_cpu():
    assert train.resolve_precision("auto", "cpu") == "fp32"
    assert train.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        train.resolve_precision("fp8", "cpu")
    assert trainer().precision == "fp32"
    assert train.autocast("fp32", torch.device("cpu")).__class__.__name__ == "nullcontext"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes_exactly(tmp_path, precision):
    """The autocast paths (and fp16's GradScaler, whose scale is checkpointed) on CPU, where they run too."""
    c = cfg(max_steps=6, precision=precision, grad_clip=0.5)
    full = trainer(tiny_gpt(dropout=0.1), c)
    full.run()
    assert all(math.isfinite(v) for v in full.losses) and full.losses[-1] < full.losses[0]
    assert (full.scaler is not None) == (precision == "fp16")
    stopped = trainer(tiny_gpt(dropout=0.1), c)
    stopped.run(until_step=3)
    stopped.save_checkpoint(tmp_path / "ck")
    resumed = trainer(tiny_gpt(seed=5, dropout=0.1), c)
    resumed.load_checkpoint(tmp_path / "ck")
    resumed.run()
    assert resumed.losses == full.losses
    if precision == "fp16":  # the loss scale travels with the checkpoint
        stopped.scaler.update(1024.0)
        stopped.save_checkpoint(tmp_path / "ck")
        fresh = trainer(tiny_gpt(dropout=0.1), c)
        fresh.load_checkpoint(tmp_path / "ck")
        assert fresh.scaler.state_dict()["scale"] == 1024.0


def test_memory_report_counts_adam_state():
    t = trainer(c=cfg(max_steps=1))
    n = t.model.num_params()
    t.run()
    rep = t.memory_report()
    assert rep["params"] == rep["grads"] == 4 * n
    assert 8 * n <= rep["optimizer"] <= 8 * n + 4 * 64  # exp_avg, exp_avg_sq (+ a step scalar each)
    assert rep["total"] == rep["params"] + rep["grads"] + rep["optimizer"]


# ------------------------------------------------------------------------------ checkpoints


def test_resume_matches_uninterrupted_run_exactly(tmp_path):
    c = cfg(max_steps=8, log_every=3, eval_every=4)  # stop at 5: between log steps
    full = trainer(tiny_gpt(dropout=0.2), c, val=True)
    full.run()
    stopped = trainer(tiny_gpt(dropout=0.2), c, val=True)
    stopped.run(until_step=5)
    stopped.save_checkpoint(tmp_path / "ck")
    resumed = trainer(tiny_gpt(seed=99, dropout=0.2), c, seed=0, val=True)  # other init, fresh source
    assert resumed.load_checkpoint(tmp_path / "ck") == 5
    resumed.run()
    assert resumed.losses == full.losses  # bit for bit, dropout included
    for p, q in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        assert torch.equal(p, q)
    sa, sb = resumed.optimizer.state_dict()["state"], full.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sb)
    assert resumed.train_source.position == full.train_source.position


def test_resume_without_rng_restore_differs(tmp_path, monkeypatch):
    """The exact-resume test can fail: skip restoring the RNG and dropout masks change."""
    c = cfg(max_steps=6)
    full = trainer(tiny_gpt(dropout=0.2), c)
    full.run()
    stopped = trainer(tiny_gpt(dropout=0.2), c)
    stopped.run(until_step=3)
    stopped.save_checkpoint(tmp_path / "ck")
    torch.manual_seed(1234)
    resumed = trainer(tiny_gpt(dropout=0.2), c)
    monkeypatch.setattr(loop, "set_rng_state", lambda state: torch.manual_seed(1234))
    resumed.load_checkpoint(tmp_path / "ck")
    resumed.run()
    assert resumed.losses[:3] == full.losses[:3] and resumed.losses[3:] != full.losses[3:]


def test_any_model_with_forward_idx_targets_llama_resumes_exactly(tmp_path):
    """Not tied to GPT: the Llama of notebook 09 (RoPE, RMSNorm, SwiGLU, GQA) trains and resumes bit for bit."""
    from nanolm.model.llama import Llama, LlamaConfig

    def llama(seed=0):
        torch.manual_seed(seed)
        return Llama(LlamaConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=16,
                                 dropout=0.1))

    c = cfg(max_steps=6)
    full = trainer(llama(), c)
    full.run()
    stopped = trainer(llama(), c)
    stopped.run(until_step=3)
    stopped.save_checkpoint(tmp_path / "ck")
    resumed = trainer(llama(seed=3), c)
    resumed.load_checkpoint(tmp_path / "ck")
    resumed.run()
    assert resumed.losses == full.losses and full.history[-1]["mfu"] > 0
    with pytest.raises(CheckpointError, match="holds a Llama, not a GPT"):
        trainer().load_checkpoint(tmp_path / "ck")


def test_periodic_checkpoints_and_no_pickle(tmp_path):
    c = cfg(max_steps=4, checkpoint_every=2, checkpoint_dir=str(tmp_path / "run"))
    trainer(c=c).run()
    ck = tmp_path / "run" / "last"
    assert sorted(p.name for p in ck.iterdir()) == [
        "manifest.json", "model.safetensors", "optimizer.json", "optimizer.safetensors", "trainer.json"]
    info = train.checkpoint_info(ck)
    assert info["step"] == 4 and info["model"]["config"]["n_embd"] == 16
    assert info["model"]["aliases"] == {"head.weight": "tok_emb.weight"}  # the tied head is stored once
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temp leftovers
    assert train.last_checkpoint(tmp_path / "run") == ck and train.last_checkpoint(tmp_path) is None


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    t = trainer(c=cfg(max_steps=4))
    t.run(until_step=2)
    t.save_checkpoint(tmp_path / "ck")
    t.run()
    calls = []

    def dying_writer(path, data):
        if calls:
            raise OSError("killed mid-save")
        calls.append(path)
        return real(path, data)

    real = files.write_bytes_atomic
    monkeypatch.setattr(files, "write_bytes_atomic", dying_writer)
    with pytest.raises(OSError, match="killed"):
        t.save_checkpoint(tmp_path / "ck")
    monkeypatch.undo()
    assert train.checkpoint_info(tmp_path / "ck")["step"] == 2
    fresh = trainer(c=cfg(max_steps=4))
    assert fresh.load_checkpoint(tmp_path / "ck") == 2
    # a crash between the two renames (old moved aside, new not yet in place) is mended on load
    (tmp_path / "ck").rename(tmp_path / ".ck.old-1")
    assert fresh.load_checkpoint(tmp_path / "ck") == 2


def test_corrupt_checkpoint_is_refused(tmp_path):
    t = trainer(c=cfg(max_steps=2))
    t.run()
    ck = t.save_checkpoint(tmp_path / "ck")
    blob = bytearray((ck / "model.safetensors").read_bytes())
    blob[-5] ^= 0x01  # one changed bit in a weight
    (ck / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"model.safetensors.*sha256.*Delete this folder"):
        trainer().load_checkpoint(ck)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        trainer().load_checkpoint(tmp_path / "nothing")


def test_mismatched_checkpoint_is_refused(tmp_path):
    t = trainer(c=cfg(max_steps=1))
    t.run()
    ck = t.save_checkpoint(tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"n_embd=16 \(this model: 32\).*checkpoint's config"):
        trainer(tiny_gpt(n_embd=32)).load_checkpoint(ck)
    with pytest.raises(CheckpointError, match=r"dropout=0.0 \(this model: 0.1\).*strict=False"):
        trainer(tiny_gpt(dropout=0.1)).load_checkpoint(ck)
    assert trainer(tiny_gpt(dropout=0.1)).load_checkpoint(ck, strict=False) == 1


def test_rng_state_round_trips_through_json():
    import json
    import random

    import numpy as np

    state = json.loads(json.dumps(train.get_rng_state()))
    a = (random.random(), np.random.rand(), torch.rand(3))
    train.set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])


def test_compare_throughput_runs():
    out = train.compare_throughput(tiny_gpt, lambda: ToySource(stream(), 4, 16), cfg(), steps=3, warmup=1,
                                   repeats=1)
    assert out["trainer_tok_per_s"] > 0 and out["minimal_tok_per_s"] > 0
    assert math.isclose(out["ratio"], out["trainer_tok_per_s"] / out["minimal_tok_per_s"])


TIMINGS = ("tok_per_s", "mfu", "time")  # the only fields a resumed run may log differently


def _records(history):
    return [{k: v for k, v in h.items() if k not in TIMINGS} for h in history]


def test_resume_logs_the_same_history(tmp_path):
    """Stopped at 5 with log_every=3 (and at 7, past the last full window): the same records as one run."""
    c = cfg(max_steps=8, log_every=3, eval_every=4)
    full = trainer(tiny_gpt(dropout=0.2), c, val=True)
    full.run()
    assert [h["step"] for h in full.history] == [0, 3, 4, 6, 8]
    for stop in (5, 7):
        stopped = trainer(tiny_gpt(dropout=0.2), c, val=True)
        stopped.run(until_step=stop)
        assert [h["step"] for h in stopped.history if "loss" in h] == [3] + ([6] if stop == 7 else [])
        stopped.save_checkpoint(tmp_path / "ck")
        resumed = trainer(tiny_gpt(seed=99, dropout=0.2), c, val=True)
        resumed.load_checkpoint(tmp_path / "ck")
        resumed.run()
        assert _records(resumed.history) == _records(full.history)  # the step-6 line averages steps 4..6
        assert resumed.losses == full.losses
    chunked = trainer(tiny_gpt(dropout=0.2), c, val=True)
    for end in (2, 5, 8):  # one trainer run in pieces logs as one run too
        chunked.run(until_step=end)
        assert len(chunked.losses) == end  # every step's loss is read when run returns
    assert _records(chunked.history) == _records(full.history)


def _read_without_window(monkeypatch):
    """Checkpoints read from now on look like ones written before the window was saved."""
    import json

    real = loop.read_checkpoint

    def old_format(path):
        blobs = real(path)
        meta = json.loads(blobs[loop.TRAINER_FILE])
        del meta["window"]
        return {**blobs, loop.TRAINER_FILE: json.dumps(meta).encode()}

    monkeypatch.setattr(loop, "read_checkpoint", old_format)


def test_checkpoint_without_window_still_loads(tmp_path, monkeypatch):
    """A checkpoint written before the window was saved: it loads; the next line averages fewer steps."""

    t = trainer(c=cfg(max_steps=6, log_every=4))
    t.run(until_step=5)
    ck = t.save_checkpoint(tmp_path / "ck")
    _read_without_window(monkeypatch)
    resumed = trainer(c=cfg(max_steps=6, log_every=4))
    assert resumed.load_checkpoint(ck) == 5
    resumed.run()
    assert resumed.history[-1]["loss"] == resumed.losses[-1] and len(resumed.losses) == 6


def test_minimal_loop_needs_a_step():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train.minimal_loop(tiny_gpt(), ToySource(stream(), 4, 16), 0, cfg())


# ------------------------------------------------------------------------------ exact behaviour (mutation tests)


class FakeWriter:
    """Records add_scalar calls in place of TensorBoard's SummaryWriter."""

    def __init__(self):
        self.scalars, self.flushed, self.closed = [], 0, False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushed += 1

    def close(self):
        self.closed = True


def test_human_and_progress_line_exact():
    """Catches off-by-one unit thresholds and wrong number formats in the progress line."""
    assert [loop.human(x) for x in (0, 999, 999.4, 1000, 18_449, 999_999, 1e6, 2.5e6, 1_015_000.5)] == [
        "0", "999", "999", "1.0k", "18.4k", "1000.0k", "1.00M", "2.50M", "1.02M"]
    assert loop.progress_line(3, 9, 2.0, 1e-3, 950, None, 12.34) == (
        "step 3/9 | loss 2.00 | lr 1.0e-03 | 950 tok/s | mfu n/a | 12.3 s")
    assert loop.progress_line(1, 2, 0.123, 3e-5, 2e6, 0.5, 0.0) == (
        "step 1/2 | loss 0.12 | lr 3.0e-05 | 2.00M tok/s | mfu 50.0% | 0.0 s")


def test_log_records_exact_values():
    """Catches a wrong loss mean, lr step, token count, mfu formula or grad norm in the logged records."""
    from nanolm.train.flops import model_flops_per_token
    from nanolm.train.schedules import lr_at

    lines = []
    c = cfg(max_steps=5, log_every=2, grad_clip=0.0)
    t = trainer(c=c, lines=lines)
    hist = t.run(until_step=9)  # until_step past max_steps stops at max_steps
    assert t.step == 5 and [h["step"] for h in hist] == [2, 4, 5]
    fpt = model_flops_per_token(t.model, 16)
    for h, losses, n in zip(hist, (t.losses[0:2], t.losses[2:4], t.losses[4:5]), (2, 4, 5), strict=True):
        assert h["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-12)
        assert h["lr"] == lr_at(n - 1, c) and h["tokens"] == n * 4 * 16
        assert h["mfu"] == pytest.approx(h["tok_per_s"] * fpt / 1e11, rel=1e-9)
        assert set(h) == {"step", "loss", "lr", "tok_per_s", "mfu", "time", "tokens", "grad_norm"}
    assert hist[0]["time"] < hist[1]["time"] < hist[2]["time"] == t.elapsed
    assert lines[2].startswith(f"step 5/5 | loss {hist[2]['loss']:.2f} | lr {hist[2]['lr']:.1e} | ")
    assert all(p.grad is None for p in t.model.parameters())  # zero_grad(set_to_none=True)


def test_grad_norm_of_a_log_step_equals_a_hand_computed_one():
    """Catches the unclipped path reporting no norm, or the norm of another step, in the log record."""
    c = cfg(max_steps=1, warmup_steps=0, grad_clip=0.0, log_every=1)
    t = trainer(c=c)
    x, y = ToySource(stream(), 4, 16, seed=0).next_batch()
    ref = tiny_gpt()
    ref(x, y)[1].backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters()]))
    t.run()
    assert t.history[-1]["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)


def test_no_norm_is_computed_between_log_steps_without_clipping(monkeypatch):
    """Catches computing a grad norm (a device sync) on steps that do not log, when nothing is clipped."""
    calls = []
    real = loop.grad_norm
    monkeypatch.setattr(loop, "grad_norm", lambda m: calls.append(1) or real(m))
    trainer(c=cfg(max_steps=4, log_every=2, grad_clip=0.0)).run()
    assert len(calls) == 2


def test_mfu_measures_peak_for_the_precision_once(monkeypatch):
    """Catches a wrong dtype for the peak lookup, a lookup on every line, or mfu without FLOPs per token."""
    asked = []
    monkeypatch.setattr(loop, "peak_flops", lambda device, dtype: asked.append((str(device), dtype)) or (2e10, "m"))
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        asked.clear()
        t = Trainer(tiny_gpt(), cfg(max_steps=4, precision=precision), ToySource(stream(), 4, 16), printer=None)
        t.run()
        assert asked == [("cpu", dtype)] and t._peak == 2e10
        h = t.history[-1]
        assert h["mfu"] == pytest.approx(h["tok_per_s"] * t._fpt / 2e10, rel=1e-9)
    t = trainer(c=cfg(max_steps=2))
    t._fpt = 0.0
    assert t._mfu(100.0) is None


def _fake_step_time(t: Trainer, clock: list, seconds: float) -> None:
    """Make each of t's training steps advance the fake clock by `seconds`."""
    real = t._train_step

    def step(want_norm=True):
        clock[0] += seconds
        real(want_norm)

    t._train_step = step


def test_time_counts_training_only(monkeypatch):
    """Catches evaluation or checkpoint time counted as training time, or a window's seconds lost."""
    clock = [0.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])
    lines = []
    c = cfg(max_steps=4, log_every=2, eval_every=1)  # an evaluation between two progress lines too
    t = trainer(c=c, val=True, lines=lines)
    real_eval = t.evaluate

    def evaluate(batches=None):
        clock[0] += 100.0  # evaluation takes 100 s, not training time
        return real_eval(batches)

    _fake_step_time(t, clock, 0.25)
    t.evaluate = evaluate
    hist = t.run()
    assert [h["time"] for h in hist if "loss" in h] == [0.5, 1.0] and t.elapsed == 1.0
    assert [h["tok_per_s"] for h in hist if "loss" in h] == [2 * 4 * 16 / 0.5] * 2
    progress = [s for s in lines if "tok/s" in s]
    assert progress[0].endswith(" | 256 tok/s | mfu " + f"{100 * hist[2]['mfu']:.1f}% | 0.5 s")
    assert progress[1].endswith(" | 1.0 s")
    chunked = trainer(c=cfg(max_steps=4, log_every=4))
    _fake_step_time(chunked, clock, 0.25)
    chunked.run(until_step=3)  # the end of a call closes the window's time too
    clock[0] += 100.0  # time between the two calls is not training time
    chunked.run()
    assert chunked.history[-1]["time"] == 1.0 and chunked.elapsed == 1.0


def test_default_printer_prints_and_models_without_config_have_no_mfu(capsys):
    """Catches a wrong default printer, or an mfu made up for a model whose FLOPs per token are unknown."""

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_gpt()

        def forward(self, idx, targets=None):
            return self.inner(idx, targets)

    t = Trainer(Wrapped(), cfg(max_steps=2, log_every=2), ToySource(stream(), 4, 16), peak_flops_per_s=1e11)
    t.run()
    assert t.history[-1]["mfu"] is None and t._fpt == 0.0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and LINE.match(out[0]) and " | mfu n/a | " in out[0]


def test_eval_at_step_zero_the_last_step_and_exact_values():
    """Catches a missing first/last evaluation, a wrong mean over batches, or a source not rewound."""
    lines, seen = [], []
    c = cfg(max_steps=5, eval_every=3, eval_batches=2, log_every=100)
    t = trainer(c=c, val=True, lines=lines)
    hist = t.run(on_eval=lambda h: seen.append(len(h)))
    assert [h["step"] for h in hist if "val" in h] == [0, 3, 5] and seen == [1, 2, 3]
    assert lines[0] == f"step 0/5 | val a {hist[0]['val']['a']:.3f} | b {hist[0]['val']['b']:.3f}"
    assert hist[-1]["step"] == 5 and "loss" in hist[-1] and "val" in hist[-1]  # merged into one record
    src = t.val_sources["a"]
    pos = src.position
    ref = ToySource(stream(), 4, 16, seed=7)
    ref.position = pos
    with torch.no_grad():
        t.model.eval()
        want = sum(t.model(*ref.next_batch())[1].item() for _ in range(3)) / 3
    t.model.train()
    got = t.evaluate(batches=3)
    assert got["a"] == pytest.approx(want, rel=1e-6) and src.position == pos and t.model.training
    t.model.eval()
    t.evaluate()
    assert not t.model.training  # the mode is restored, not forced to train


def test_run_with_eval_every_but_no_val_sources_and_no_printer():
    """Catches evaluating (or crashing) without validation sources."""
    t = trainer(c=cfg(max_steps=3, eval_every=1, log_every=100))
    assert [h["step"] for h in t.run()] == [3] and "val" not in t.history[-1]


def test_tensorboard_scalars_exact():
    """Catches wrong TensorBoard tags, steps, skipped None values, a missing flush or close."""
    t = trainer(c=cfg(max_steps=2, log_every=2, eval_every=2, eval_batches=1), val=True)
    fake = FakeWriter()
    t.log_dir, t._writer = "unused", fake
    hist = t.run()
    tags = [(tag, step) for tag, _, step in fake.scalars]
    assert tags[:2] == [("val/a", 0), ("val/b", 0)]
    assert sorted(tags[2:]) == sorted([(f"train/{k}", 2) for k in ("loss", "lr", "tok_per_s", "mfu", "time", "tokens",
                                                                   "grad_norm")] + [("val/a", 2), ("val/b", 2)])
    assert dict((tag, v) for tag, v, _ in fake.scalars[2:])["train/loss"] == hist[-1]["loss"]
    assert fake.flushed == 1
    t._fpt = 0.0
    t._record({"step": 3, "mfu": None, "loss": 1.5})
    assert fake.scalars[-1] == ("train/loss", 1.5, 3)
    t.close()
    assert fake.closed and t._writer is None
    t.close()  # a second close is a no-op
    assert trainer()._tb() is None


def test_periodic_and_end_of_call_checkpoints(tmp_path, monkeypatch):
    """Catches checkpoints written at the wrong steps: every checkpoint_every steps and at the end of each call."""
    saved = []
    c = cfg(max_steps=5, checkpoint_every=2, checkpoint_dir=str(tmp_path / "run"))
    t = trainer(c=c)
    monkeypatch.setattr(t, "save_checkpoint", lambda path: saved.append((t.step, Path(path))))
    t.run(until_step=3)
    t.run()
    assert saved == [(2, tmp_path / "run" / "last"), (3, tmp_path / "run" / "last"),
                     (4, tmp_path / "run" / "last"), (5, tmp_path / "run" / "last")]
    none = trainer(c=cfg(max_steps=3))
    monkeypatch.setattr(none, "save_checkpoint", lambda path: saved.append(path))
    none.run()
    assert len(saved) == 4  # checkpoint_every 0: never


def test_checkpoint_meta_and_restored_state(tmp_path):
    """Catches wrong trainer.json fields and an elapsed time counted twice after a resume."""
    import json

    c = cfg(max_steps=6, log_every=4)
    t = trainer(c=c)
    t.run(until_step=3)
    t.elapsed, t._window.seconds = 10.0, 2.5
    ck = t.save_checkpoint(tmp_path / "ck")
    meta = json.loads((ck / "trainer.json").read_text())
    assert (meta["step"], meta["tokens_seen"], meta["elapsed"], meta["precision"]) == (3, 3 * 64, 12.5, "fp32")
    assert meta["window"] == {"losses": t.losses, "tokens": 3 * 64, "seconds": 2.5} and meta["scaler"] is None
    assert meta["data"] == {"position": 3} and meta["train_config"]["max_steps"] == 6
    assert meta["history"] == [] and meta["losses"] == t.losses
    assert (meta["format"], meta["version"]) == (loop.FORMAT, loop.VERSION)
    r = trainer(c=c)
    assert r.load_checkpoint(ck) == 3
    assert (r.tokens_seen, r.elapsed, r._window.seconds, r._window.tokens) == (3 * 64, 10.0, 2.5, 3 * 64)
    assert r._window.losses == t.losses and r._window.pending == [] and r.train_source.position == 3


def test_checkpoint_without_window_starts_an_empty_window(tmp_path, monkeypatch):
    """Catches made-up defaults for a checkpoint that has no window (tokens 0, seconds 0, no losses)."""

    t = trainer(c=cfg(max_steps=6, log_every=4))
    t.run(until_step=3)
    t.elapsed, t._window.seconds = 10.0, 2.5
    ck = t.save_checkpoint(tmp_path / "ck")
    _read_without_window(monkeypatch)
    r = trainer(c=cfg(max_steps=6, log_every=4))
    r.load_checkpoint(ck)
    assert (r._window.losses, r._window.tokens, r._window.seconds, r.elapsed) == ([], 0, 0.0, 12.5)


def test_load_keeps_this_machines_optimizer_kernels(tmp_path):
    """Catches the checkpoint's fused/foreach choice overriding the loading machine's."""
    t = trainer(c=cfg(max_steps=1))
    t.run()
    ck = t.save_checkpoint(tmp_path / "ck")
    r = trainer(c=cfg(max_steps=1))
    for g in r.optimizer.param_groups:
        g["fused"], g["foreach"] = None, False
    r.load_checkpoint(ck)
    assert all(g["fused"] is None and g["foreach"] is False for g in r.optimizer.param_groups)
    assert t.optimizer.param_groups[0]["fused"]


def test_memory_report_skips_frozen_gradients():
    """Catches gradients counted for parameters that do not require them."""
    model = tiny_gpt()
    model.pos_emb.weight.requires_grad_(False)
    t = trainer(model, c=cfg(max_steps=1))
    rep = t.memory_report()
    n, frozen = model.num_params(), model.pos_emb.weight.numel()
    assert rep == {"params": 4 * n, "grads": 4 * (n - frozen), "optimizer": 0, "total": 4 * (2 * n - frozen)}


def test_seed_none_leaves_the_rng_alone():
    """Catches the Trainer seeding the RNG when cfg.seed is None, or not seeding it when it is set."""
    model = tiny_gpt()
    torch.manual_seed(123)
    Trainer(model, cfg(seed=None), ToySource(stream(), 4, 16), printer=None)
    a = torch.rand(1)
    torch.manual_seed(123)
    b = torch.rand(1)
    assert torch.equal(a, b)
    torch.manual_seed(123)
    Trainer(model, cfg(seed=5), ToySource(stream(), 4, 16), printer=None)
    torch.manual_seed(5)
    c = torch.rand(1)
    torch.manual_seed(123)
    Trainer(model, cfg(seed=5), ToySource(stream(), 4, 16), printer=None)
    assert torch.equal(torch.rand(1), c)


def test_error_messages_exact(tmp_path):
    """Catches a garbled error message: a source without the protocol, a data state that is not JSON."""
    with pytest.raises(TypeError, match=r"^train_source is a list, not a BatchSource"):
        Trainer(tiny_gpt(), cfg(), [])
    with pytest.raises(TypeError, match=r"^valid is a list, not a BatchSource: it needs next_batch\(\), "
                                        r"state_dict\(\) and load_state_dict\(\)$"):
        Trainer(tiny_gpt(), cfg(), ToySource(stream(), 2, 4), {"valid": []})
    t = trainer(c=cfg(max_steps=1))
    t.train_source.state_dict = lambda: {"position": object()}
    with pytest.raises(TypeError, match=r"^cannot write the trainer state \(is the data source's state_dict JSON\?\) "
                                        "as JSON: "):
        t.save_checkpoint(tmp_path / "ck")


def test_direct_steps_count_and_report_a_norm():
    """Catches a step counter that does not advance by one per optimizer step, or no norm by default."""
    t = trainer(c=cfg(max_steps=4, grad_clip=0.0))
    t._train_step()
    assert (t.step, t.tokens_seen, len(t._window.pending)) == (1, 64, 1) and t._grad_norm is not None
    t._train_step()
    assert (t.step, t.tokens_seen, len(t._window.pending)) == (2, 128, 2)


def test_everything_moves_to_the_trainers_device():
    """Catches the model, a batch or the loss left on the CPU (the meta device stands in for a GPU here)."""
    t = Trainer(tiny_gpt(), cfg(max_steps=2, grad_clip=0.0), ToySource(stream(), 4, 16), device="meta", printer=None)
    assert all(p.device.type == "meta" for p in t.model.parameters())
    seen = []
    t.forward = lambda x, y: (seen.append((x.device.type, y.device.type)), t.model(x, y))[1]
    t._train_step(want_norm=False)
    assert seen == [("meta", "meta")] and t._window.pending[0].device.type == "meta" and t.step == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing torch._dynamo warns about torch.jit
def test_compile_wraps_the_model_only_when_asked():
    """Catches torch.compile applied when cfg.compile is off, or not applied when it is on."""
    plain = trainer(c=cfg(compile=False))
    assert plain.forward is plain.model
    compiled = trainer(c=cfg(compile=True))  # torch.compile is lazy: nothing compiles until a call
    assert compiled.forward is not compiled.model and compiled.forward._orig_mod is compiled.model


def test_fp16_scaler_is_enabled_and_checkpoints_cross_precisions(tmp_path):
    """Catches a GradScaler made for another device than the trainer's, or a scaler state loaded where none is."""
    fp16 = trainer(c=cfg(max_steps=2, precision="fp16"))
    assert fp16.scaler.is_enabled()
    fp16.run()
    fp16.scaler.update(torch.tensor(512.0))  # a tensor scale must be on the scaler's device
    assert fp16.scaler.get_scale() == 512.0
    ck16 = fp16.save_checkpoint(tmp_path / "fp16")
    fp32 = trainer(c=cfg(max_steps=2))
    assert fp32.load_checkpoint(ck16) == 2 and fp32.scaler is None
    ck32 = fp32.save_checkpoint(tmp_path / "fp32")
    fresh16 = trainer(c=cfg(max_steps=2, precision="fp16"))
    assert fresh16.load_checkpoint(ck32) == 2 and fresh16.scaler.get_scale() == 65536.0


def test_refusal_names_the_checkpoint_path(tmp_path):
    """Catches a refusal message that does not say which checkpoint does not fit."""
    t = trainer(c=cfg(max_steps=1))
    ck = t.save_checkpoint(tmp_path / "ck")
    with pytest.raises(CheckpointError, match=f"^checkpoint {re.escape(str(ck))} does not fit this model"):
        trainer(tiny_gpt(n_embd=32)).load_checkpoint(ck)


# ----------------------------------------------------------------------------- schedule edges (mutation tests)


def test_schedules_at_their_edges_by_hand():
    """Values worked out by hand where an off-by-one would show: one decay step, steps past the end."""
    from nanolm.train import schedules as S

    # cosine: warmup 2, max 3 -> one decay step; at step 3 the decay is complete, past it lr stays min_lr
    assert [S.cosine_lr(s, 1.0, 0.0, 2, 3) for s in (2, 3, 4)] == [1.0, 0.0, 0.0]
    # wsd, max 4, decay 0.2 of it -> round(0.8) = 1 step, starting at step 3
    assert [S.wsd_lr(s, 1.0, 0.0, 0, 4) for s in range(6)] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    # the default decay fraction is 0.2
    assert [S.wsd_lr(s, 1.0, 0.0, 1, 10) for s in range(12)] == [S.wsd_lr(s, 1.0, 0.0, 1, 10, 0.2) for s in range(12)]
    assert S.wsd_lr(8, 1.0, 0.0, 0, 10) == 1.0 and S.wsd_lr(9, 1.0, 0.0, 0, 10) == 0.5  # decay over steps 8..10
    # lr_at passes the config's own decay fraction on
    c = cfg(schedule="wsd", decay_fraction=0.5, max_steps=10, warmup_steps=0, lr=1.0, min_lr=0.0)
    assert [S.lr_at(s, c) for s in range(11)] == [S.wsd_lr(s, 1.0, 0.0, 0, 10, 0.5) for s in range(11)]
    assert S.lr_at(5, c) == 1.0 and S.lr_at(6, c) == 0.8


def test_make_optimizer_uses_the_configured_learning_rate():
    opt = train.make_optimizer(tiny_gpt(), cfg(lr=0.0123), torch.device("cpu"))
    assert [g["lr"] for g in opt.param_groups] == [0.0123, 0.0123]


def test_grad_norm_without_gradients_is_a_zero_scalar():
    norm = train.grad_norm(tiny_gpt())  # no backward yet: no parameter has a gradient
    assert norm.shape == () and float(norm) == 0.0
