"""Speed of nanolm.text.bpe: pre-tokenization, the plain and fast trainers, our encoder vs its tiktoken export.

    python ci/bench_bpe.py                       # the full benchmark (about a minute on 2 cores)
    python ci/bench_bpe.py --prefix 20000 --quick   # a quick look

Prints a Markdown table. Targets (issue #04): the fast trainer learns the GPT-4-pattern tokenizer
to vocab 1024 on the full Tiny Shakespeare in under 2 s, with the plain trainer's merges, and
vocab 4096 on the ~10 MB pretraining mix in under 30 s. This is a benchmark, not a test: it
reports, and exits non-zero only when merges differ (a correctness failure), never on time.
"""

from __future__ import annotations

import argparse
import sys
import time

from nanolm.core import data
from nanolm.text import bpe, bpe_train, corpus, pretokenize


def timed(fn, repeats: int = 1):
    """(result, best seconds over `repeats` runs)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefix", type=int, default=100_000, help="characters of Shakespeare for the plain trainer")
    ap.add_argument("--plain-full-merges", type=int, default=20,
                    help="merges the plain trainer learns on the FULL Shakespeare (about 1 s each)")
    ap.add_argument("--quick", action="store_true", help="skip the 10 MB mix")
    args = ap.parse_args(argv)

    rows: list[tuple[str, str, str, str]] = []
    ok = True

    def row(what, inp, seconds, result=""):
        rows.append((what, inp, f"{seconds:.2f}", result))
        print(f"  {what:<44} {inp:<34} {seconds:8.2f} s  {result}", file=sys.stderr, flush=True)

    shakespeare = data.read_text("tinyshakespeare", "input.txt")
    mb = len(shakespeare.encode()) / 1e6
    counts, s = timed(lambda: pretokenize.pretoken_counts(shakespeare, "gpt4"))
    row("pre-tokenize (GPT-4 regex, count)", f"Shakespeare {mb:.1f} MB", s, f"{len(counts):,} unique pre-tokens")

    n1024 = 1024 - 256 - len(bpe.SPECIAL_TOKENS)
    prefix = shakespeare[: args.prefix]
    plain, s_plain = timed(lambda: bpe_train.train_plain(prefix, n1024, "gpt4"))
    row("plain trainer, vocab 1024", f"Shakespeare first {len(prefix):,} chars", s_plain)
    fast, s_fast = timed(lambda: bpe_train.train_fast(prefix, n1024, "gpt4"), repeats=3)
    same = fast == plain
    ok &= same
    row("fast trainer, vocab 1024", f"Shakespeare first {len(prefix):,} chars", s_fast,
        f"merges == plain: {same}; {s_plain / s_fast:.0f}x faster")

    full, s_full = timed(lambda: bpe_train.train_fast(shakespeare, n1024, "gpt4"), repeats=3)
    row("fast trainer, vocab 1024 (target < 2 s)", f"Shakespeare {mb:.1f} MB", s_full,
        f"{'PASS' if s_full < 2 else 'SLOW'}: {len(full)} merges")
    if args.plain_full_merges:
        k = args.plain_full_merges
        head, s_head = timed(lambda: bpe_train.train_plain(shakespeare, k, "gpt4"))
        same = head == full[:k]
        ok &= same
        row(f"plain trainer, first {k} merges", f"Shakespeare {mb:.1f} MB", s_head,
            f"== the fast trainer's first {k}: {same}")
    from_counts, s_counts = timed(lambda: bpe_train.train_fast(counts, n1024, "gpt4"))
    same = from_counts == full
    ok &= same
    row("fast trainer from ready pre-token counts", f"Shakespeare {mb:.1f} MB", s_counts,
        f"merges == from text: {same}")

    tok = bpe.Tokenizer.from_merges(full, "gpt4")
    sample = corpus.pretraining_mix(cap_bytes=300_000)
    text = "\n\n".join(sample.values())
    ours, s_ours = timed(lambda: bpe.Tokenizer.from_merges(full, "gpt4").encode_ordinary(text))
    enc = tok.to_tiktoken()
    theirs, s_tt = timed(lambda: enc.encode_ordinary(text), repeats=3)
    ok &= ours == theirs
    n = len(text)
    row("encode: ours (cold cache)", f"mix sample {n / 1e6:.1f} M chars", s_ours, f"{n / s_ours / 1e6:.2f} M chars/s")
    row("encode: tiktoken export", f"mix sample {n / 1e6:.1f} M chars", s_tt,
        f"{n / s_tt / 1e6:.2f} M chars/s; ids identical: {ours == theirs}")

    if not args.quick:
        mix = corpus.pretraining_mix()
        mb = sum(len(t.encode()) for t in mix.values()) / 1e6
        mcounts, s_pre = timed(lambda: pretokenize.pretoken_counts(mix.values(), "gpt4"))
        row("pre-tokenize (GPT-4 regex, count)", f"pretraining mix {mb:.1f} MB", s_pre,
            f"{len(mcounts):,} unique pre-tokens")
        n4096 = 4096 - 256 - len(bpe.SPECIAL_TOKENS)
        merges, s_train = timed(lambda: bpe_train.train_fast(mix.values(), n4096, "gpt4"))
        row("fast trainer, vocab 4096 (target < 30 s)", f"pretraining mix {mb:.1f} MB", s_train,
            f"{'PASS' if s_train < 30 else 'SLOW'}: {len(merges)} merges (pre-tokenizing included)")

    print("| what | input | seconds | result |")
    print("|---|---|---:|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if not ok:
        print("\nFAILED: merges or ids differ", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
