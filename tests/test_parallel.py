"""Every parallel script against one process doing the same work alone (2 gloo processes, float64).

Each script runs once (module fixtures; ~4.5 s per launch here) on a tiny random Llama in float64, so
parallel and single-process results agree to rounding: measured 0.0 difference for DDP, accumulation,
Accelerate, both ZeRO-1s, FSDP2 and both pipeline schedules after 3 AdamW steps, and <= 1.1e-15
relative for tensor parallelism. The reference here is a plain loop written in this file.
"""

import numpy as np
import pytest
import torch
from tolerances import FLOAT64

from nanolm.model.llama import Llama, LlamaConfig
from nanolm.text import bpe_train, shards
from nanolm.train import memory, pretrain
from nanolm.train import parallel as P
from nanolm.train.parallel import common, fsdp, pipeline

SETUP = dict(model="tiny", data="random", steps=3, batch=8, seq=32, dtype="float64")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("parallel")


@pytest.fixture(scope="module")
def setup(out):
    return P.Setup(**SETUP, out=str(out))


@pytest.fixture(scope="module")
def reference(setup):
    """One process, the whole global batch, torch's AdamW with decay on matrices only: the final weights."""
    model = common.build_model(setup)
    opt = torch.optim.AdamW([{"params": [p for p in model.parameters() if p.dim() >= 2]},
                             {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                            lr=setup.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=setup.weight_decay)
    batch_at, losses = common.batches(setup, model.config.vocab_size), []
    for step in range(setup.steps):
        _, loss = model(*batch_at(step))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def launched(setup, script, *extra, launcher="torchrun"):
    P.run(f"nanolm.train.parallel.{script}", setup, *extra, launcher=launcher, timeout_s=180)
    return P.read_results(setup.out, script)


def assert_same_weights(params, ref):
    assert set(params) == set(ref)
    for name, value in ref.items():
        torch.testing.assert_close(params[name], value, **FLOAT64, msg=name)


@pytest.fixture(scope="module")
def ddp(setup):
    return launched(setup, "ddp")


def test_collectives_give_the_textbook_results(setup):
    results = launched(setup, "collectives", "--max_mb", "0.01")
    assert [info["world"] for _, info in results] == [2, 2] and results[0][1]["backend"] == "gloo"
    for rank, (t, info) in enumerate(results):
        assert t["x"].tolist() == [0 + 10 * rank, 1 + 10 * rank, 2 + 10 * rank, 3 + 10 * rank]
        assert t["all_reduce"].tolist() == [10, 12, 14, 16]
        assert t["all_gather"].tolist() == [0, 1, 2, 3, 10, 11, 12, 13]
        assert t["reduce_scatter"].tolist() == [[10, 12], [14, 16]][rank]
        assert t["reduce_scatter_then_all_gather"].tolist() == t["all_reduce"].tolist()
        assert t["broadcast"].tolist() == [0, 1, 2, 3]
        assert [row["bytes"] for row in info["bandwidth"]] == [1024, 8192]
        assert all(row["seconds"] > 0 for row in info["bandwidth"])


def test_ddp_equals_one_process_on_the_global_batch(ddp, reference):
    ref, ref_losses = reference
    for params, info in ddp:  # both copies, equal to each other and to the reference
        assert_same_weights(params, ref)
        np.testing.assert_allclose(info["losses"], ref_losses, rtol=1e-6)  # float32 cross-entropy


def test_accumulation_with_no_sync_equals_the_big_batch(setup, reference):
    for params, info in launched(setup, "ddp", "--accum", "2"):
        assert info["accum"] == 2
        assert_same_weights(params, reference[0])


def test_accelerate_launch_equals_torchrun(setup, ddp, reference):
    results = launched(setup, "accel", launcher="accelerate")
    assert [info["distributed_type"] for _, info in results] == ["DistributedType.MULTI_CPU"] * 2
    for (params, info), (ddp_params, ddp_info) in zip(results, ddp, strict=True):
        assert_same_weights(params, ddp_params)
        assert info["losses"] == pytest.approx(ddp_info["losses"], rel=1e-12)
    assert_same_weights(results[0][0], reference[0])


@pytest.mark.parametrize("which", ["hand", "torch"])
def test_zero1_equals_one_process_with_half_the_optimizer_state(setup, reference, which):
    results = launched(setup, "zero", *(["--torch"] if which == "torch" else []))
    for params, _ in results:
        assert_same_weights(params, reference[0])
    full = results[0][1]["unsharded_state_bytes"]
    states = [info["state_bytes"] for _, info in results]
    assert sum(states) == pytest.approx(full, rel=0.01 if which == "torch" else 0.0001)  # the hand one pads
    assert max(states) <= 0.51 * full  # each rank: about half


def test_fsdp_equals_one_process_and_its_checkpoint_loads_in_one(setup, reference):
    results = launched(setup, "fsdp")
    for params, info in results:
        assert_same_weights(params, reference[0])
        assert info["param_bytes"] * 2 == info["full_param_bytes"] and info["grad_bytes"] * 2 == info["full_param_bytes"]
        assert info["adam_bytes"] == info["full_param_bytes"]  # m and v of half the parameters
    model = common.build_model(setup)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    fsdp.load_checkpoint(model, f"{setup.out}/{fsdp.CHECKPOINT}")  # written by 2 ranks, read by 1
    assert_same_weights(model.state_dict(), reference[0])


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_equals_one_process(setup, reference, schedule):
    results = launched(setup, "pipeline", "--schedule", schedule, "--micro", "4")
    (first, _), (last, info) = results
    torch.testing.assert_close(first["tok_emb.weight"], last["head.weight"], rtol=0, atol=0)  # tied copies agree
    assert not any(k.startswith("head") for k in first) and not any(k.startswith("tok_emb") for k in last)
    assert_same_weights({**first, **last}, reference[0])
    assert info["losses"] == pytest.approx(reference[1], rel=1e-6) and info["stage_layers"] == 2


def test_tensor_parallel_swiglu_by_hand_and_by_torch(setup):
    (t, info), _ = launched(setup, "tensor")
    assert info["local_hidden"] * 2 == info["hidden"] and info["local_param_bytes"] * 2 == info["full_param_bytes"]
    for who in ("hand", "torch"):
        for what in ("y", "dx", "dgate", "dup", "ddown"):
            ref = t[f"ref.{what}"]
            assert (t[f"{who}.{what}"] - ref).abs().max() <= 1e-13 * ref.abs().max(), (who, what)


@pytest.mark.parametrize("stages,micro", [(2, 4), (4, 8), (4, 4), (3, 12)])
def test_pipeline_timeline_has_the_textbook_bubble_and_memory(stages, micro):
    for kind in ("gpipe", "1f1b"):
        rows, bubble, peak = pipeline.timeline(stages, micro, kind)
        assert bubble == pytest.approx((stages - 1) / (micro + stages - 1), abs=1e-12)
        assert peak == (micro if kind == "gpipe" else min(stages, micro))
        for row in rows:  # every stage runs each forward once and each backward (2 units) once
            assert sum(row.count(str(m % 10)) for m in range(min(micro, 10))) >= min(micro, 10)
            assert sum(c.isalpha() for c in row) == 2 * micro


def test_llama_parameter_count_from_sizes_alone():
    for cfg in [LlamaConfig(vocab_size=300, n_layer=3, n_embd=48, n_head=6, n_kv_head=2),
                LlamaConfig(vocab_size=100, n_layer=2, n_embd=32, n_head=4, tie_embeddings=False, ffn_hidden=50)]:
        assert memory.llama_params(cfg) == Llama(cfg).num_params()
    assert memory.llama_params(memory.REFERENCE_MODELS["SmolLM2-135M"]) == 134_515_008  # its GGUF's count


def test_activation_formula_equals_what_autograd_saves():
    cfg = LlamaConfig(vocab_size=300, block_size=16, n_layer=3, n_embd=48, n_head=6, n_kv_head=2)
    model = Llama(cfg).train()
    B, T = 3, 16
    x, y = torch.randint(300, (B, T)), torch.randint(300, (B, T))
    extra = 2 * B * T * 8 + T * cfg.head_dim * 4 + 4  # ids and targets (int64), RoPE cos and sin, the loss
    measured, loss = memory.saved_bytes(model, x, y)
    assert measured == memory.activation_bytes(cfg, B * T) + extra
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with memory.activation_checkpointing(model):
        measured, loss = memory.saved_bytes(model, x, y)
        loss.backward()
    # checkpoint keeps the blocks' inputs by itself: the positions (T int64, one tensor for all blocks)
    # are saved through the hooks, the RoPE table is not
    assert measured == memory.activation_bytes(cfg, B * T, checkpointing=True) + 2 * B * T * 8 + T * 8 + 4
    for n, p in model.named_parameters():  # recomputation changes memory, never the gradients
        torch.testing.assert_close(p.grad, grads[n], rtol=0, atol=0)
    assert "forward" not in vars(model.blocks[0])  # the context restores the blocks


def test_zero_stages_divide_what_they_shard():
    n = 1000
    ddp = memory.state_bytes(n, stage="ddp", world=4)
    assert ddp == {"params": 2000, "grads": 2000, "optimizer": 12000}  # 16 bytes a parameter
    assert memory.state_bytes(n, stage="zero1", world=4)["optimizer"] == 3000
    assert memory.state_bytes(n, stage="zero2", world=4) == {"params": 2000, "grads": 500, "optimizer": 3000}
    assert sum(memory.state_bytes(n, stage="zero3", world=4).values()) == 16000 / 4
    assert sum(memory.state_bytes(n, mixed=False).values()) == 16000
    with pytest.raises(ValueError, match="stage must be one of"):
        memory.state_bytes(n, stage="zero4")


def test_pretrain_script_trains_and_saves_a_sharded_checkpoint(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 400
    tok = bpe_train.train(text, 300)
    ids = shards.encode_documents(tok, [text[:12000], text[12000:]])
    shards.save(shards.ARTIFACT, {"web": {"train": ids, "val": ids[:500]}}, tok, notebook="08_pretraining",
                profile="smoke")
    run = P.run("nanolm.train.pretrain", None, "--size", "tiny", "--profile", "smoke", "--steps", "6",
                "--batch", "2", "--seq", "32", "--accum", "2", "--checkpointing", "--log_every", "3",
                "--out", str(tmp_path), timeout_s=180)
    assert "memory plan per process" in run.output and "step 6/6 | loss" in run.output
    (_, info0), (_, info1) = P.read_results(tmp_path, "pretrain")
    assert info0["losses"] == info1["losses"] and info0["losses"][-1] < info0["losses"][0]
    assert info0["tokens_per_step"] == 2 * 2 * 2 * 32
    model = Llama(LlamaConfig(vocab_size=tok.vocab_size, block_size=32, **pretrain.SIZES["tiny"]))
    fsdp.load_checkpoint(model, str(tmp_path / "checkpoint"))
    assert all(p.abs().sum() > 0 for p in model.parameters())


def test_a_failing_script_raises_with_its_output(setup):
    with pytest.raises(RuntimeError, match="model must be 'tiny' or 'base'"):
        P.run("nanolm.train.parallel.ddp", P.Setup(**{**SETUP, "model": "huge"}, out=setup.out), timeout_s=120)
