"""The tuning behind notebook 07's training recipe: full-length runs too slow for the notebook itself.

    python ci/tune_gpt_char.py --group lr       # 4 runs of the full 10000 steps: peak lr, and no decay (~15 min)
    python ci/tune_gpt_char.py --group shape    # depth x width in the CPU time of the main run (~15 min)
    python ci/tune_gpt_char.py --group batch    # batch and context at an equal number of characters (~5 min)
    python ci/tune_gpt_char.py --group seed     # the recipe at two more seeds: the noise between equal runs (~7 min)
    python ci/tune_gpt_char.py --group lr --only "lr 0.001"   # one run, merged into the group's rows
    python ci/tune_gpt_char.py --group lr --steps 50 --out /tmp/t.json   # a quick look

Every run trains nanolm.model.gpt.GPT on the cpu profile's `shakespeare-char` artifact (run notebook 03 first) with
the notebook's recipe (AdamW betas 0.9/0.99, weight decay 0.1 on matrices, clipping at 1, linear warmup and a
cosine decay to 10% of the peak), on one thread, `--jobs` runs side by side (one per core). The validation loss
is measured on every non-overlapping window of the validation split. Results are merged, by group, into
ci/tune_gpt_char.json, which notebook 07 shows. This measures and reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "ci" / "tune_gpt_char.json"
BASE = dict(n_layer=2, n_head=4, n_embd=128, block_size=64, batch_size=16, steps=10000, lr=4e-3, warmup=100,
            decay=True, dropout=0.0, seed=0)
REFERENCE = dict(n_layer=2, n_head=4, n_embd=128, steps=10000)  # the time budget of the shape group: the main run


def groups(steps: int | None) -> dict[str, list[dict]]:
    """The runs of each group: a label and the changes to BASE."""
    long = steps or BASE["steps"]
    ref = {**REFERENCE, "steps": steps or REFERENCE["steps"]}
    chars = (steps or BASE["steps"] // 3) * 16 * 64
    return {
        # depth and width for the same seconds as the main run (steps set by each shape's measured speed)
        "shape": [{"label": f"{L} x {C}", "n_layer": L, "n_head": C // 32, "n_embd": C, "equal_time": ref}
                  for L, C in ((2, 128), (3, 128), (4, 128), (2, 192))],
        # the peak learning rate over the full run, and the schedule (cosine vs constant after warmup)
        "lr": [{"label": f"lr {lr:g}", "lr": lr, "steps": long} for lr in (1e-3, 2e-3, 4e-3)]
        + [{"label": "lr 0.002, no decay", "lr": 2e-3, "decay": False, "steps": long}],
        # tokens per step and context, at the same number of training characters (a third of the full run)
        "batch": [{"label": f"batch {B}, context {T}", "batch_size": B, "block_size": T, "steps": chars // (B * T)}
                  for B, T in ((8, 64), (16, 64), (32, 64), (8, 128))],
        # the recipe again with other seeds (initialization and batch order): how far apart equal runs end
        "seed": [{"label": f"seed {seed}", "seed": seed, "steps": long} for seed in (1, 2)],
    }


def val_loss(model, val_ids, block_size: int) -> tuple[float, int]:
    """Mean cross-entropy over every non-overlapping window of the validation ids, and the window count."""
    import torch

    n = (len(val_ids) - 1) // block_size
    x = val_ids[: n * block_size].view(n, block_size)
    y = val_ids[1 : n * block_size + 1].view(n, block_size)
    total = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, n, 128):
            total += model(x[i : i + 128], y[i : i + 128])[1].item() * len(x[i : i + 128])
    model.train()
    return total / n, n


def seconds_per_step(run: dict, train_ids) -> float:
    """Measured seconds of one training step of this shape (5 steps after a warm-up)."""
    import torch

    from nanolm.model.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=run["block_size"], n_layer=run["n_layer"],
                          n_head=run["n_head"], n_embd=run["n_embd"]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = train_ids[: run["batch_size"] * run["block_size"]].view(run["batch_size"], -1)
    for i in range(6):
        if i == 1:
            t0 = time.process_time()
        _, loss = model(x, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.process_time() - t0) / 5


def train(run: dict) -> dict:
    """One training run on one thread -> its row (validation loss, seconds, characters per second)."""
    import torch

    from nanolm.model.gpt import GPT, GPTConfig
    from nanolm.text import charset

    torch.set_num_threads(1)
    tok, train_ids, val_ids = charset.load(profile="cpu")
    run = {**BASE, **run}
    ref = run.pop("equal_time", None)
    if ref:  # as many steps as fit in the time the reference shape takes for its steps
        budget = ref["steps"] * seconds_per_step({**run, **ref}, train_ids)
        run["steps"] = max(1, round(budget / seconds_per_step(run, train_ids)))
    torch.manual_seed(run["seed"])
    g = torch.Generator().manual_seed(run["seed"])
    T, B, steps = run["block_size"], run["batch_size"], run["steps"]
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=T, n_layer=run["n_layer"], n_head=run["n_head"],
                          n_embd=run["n_embd"], dropout=run["dropout"]))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=run["lr"], betas=(0.9, 0.99), fused=True)
    arange = torch.arange(T)
    losses = []
    t0 = time.process_time()
    for step in range(steps):
        factor = min(1.0, (step + 1) / run["warmup"])
        if run["decay"]:
            factor *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = run["lr"] * factor
        starts = torch.randint(len(train_ids) - T - 1, (B,), generator=g)
        x, y = train_ids[starts[:, None] + arange], train_ids[starts[:, None] + arange + 1]
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    seconds = time.process_time() - t0
    val, windows = val_loss(model, val_ids, T)
    return {**run, "params": model.num_params(), "tokens": steps * B * T, "val_loss": round(val, 4),
            "val_windows": windows, "train_loss_last100": round(sum(losses[-100:]) / len(losses[-100:]), 4),
            "cpu_seconds": round(seconds, 1), "tokens_per_s": round(steps * B * T / seconds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", choices=["lr", "shape", "batch", "seed"], required=True)
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each")
    ap.add_argument("--steps", type=int, default=None, help="override the step counts (quick looks)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", nargs="+", metavar="LABEL", help="run only these runs of the group; keep its other rows")
    args = ap.parse_args()
    runs = groups(args.steps)[args.group]
    if args.only:
        unknown = set(args.only) - {r["label"] for r in runs}
        if unknown:
            ap.error(f"no run labelled {sorted(unknown)} in group {args.group!r}: {[r['label'] for r in runs]}")
        order = [r["label"] for r in runs]
        runs = [r for r in runs if r["label"] in args.only]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(train, runs))
    for row in rows:
        print(f"{row['label']:28s} {row['params']:>9,} params {row['steps']:>6} steps {row['tokens'] / 1e6:5.2f}M chars "
              f"val {row['val_loss']:.4f} train {row['train_loss_last100']:.4f} "
              f"{row['cpu_seconds']:7.1f} s {row['tokens_per_s'] / 1e3:5.1f}k tok/s", flush=True)
    import torch

    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.only and args.group in old:  # merge: the new rows replace those with the same label
        kept = {r["label"]: r for r in old[args.group]["rows"] if r["label"] not in args.only}
        rows = sorted([*kept.values(), *rows], key=lambda r: order.index(r["label"]) if r["label"] in order else 99)
    old[args.group] = {
        "rows": rows,
        "measured": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()}-core {platform.machine()}, torch {torch.__version__.split('+')[0]}, "
                   f"{args.jobs} runs side by side on one thread each",
    }
    args.out.write_text(json.dumps(old, indent=1) + "\n")
    print(f"wrote group {args.group!r} into {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
