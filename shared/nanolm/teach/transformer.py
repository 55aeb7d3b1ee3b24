"""The encoder-decoder transformer of notebook 06, written plainly, and its numerals-to-words task.

Model: token + learned position embeddings, a stack of encoder blocks (self-attention, FFN), a
stack of decoder blocks (causal self-attention, cross-attention to the encoder, FFN), and a linear
head over the target vocabulary. Multi-head attention is written out by hand; `use_sdpa=True`
switches to torch's fused F.scaled_dot_product_attention (same numbers, faster, but it cannot
return the attention weights). Knobs for ablations: pre-norm or post-norm, LayerNorm on/off,
residual connections on/off, number of heads, FFN width.

Task: "47312" -> "forty seven thousand three hundred twelve" for 0..99999, with a seeded
held-out split of numbers never seen in training.

Masks are boolean with True = "may attend" (the convention of F.scaled_dot_product_attention).
Parameter names are stable so notebook 06 can copy the weights into its NumPy version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- the task

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
        "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SRC_VOCAB: list[str] = [PAD, *"0123456789"]
TGT_VOCAB: list[str] = [PAD, BOS, EOS, *ONES, *TENS[2:], "hundred", "thousand"]
SRC_STOI = {s: i for i, s in enumerate(SRC_VOCAB)}
TGT_STOI = {s: i for i, s in enumerate(TGT_VOCAB)}
PAD_ID = 0  # the same id in both vocabularies
BOS_ID, EOS_ID = TGT_STOI[BOS], TGT_STOI[EOS]
MAX_NUMBER = 99_999
MAX_SRC_LEN = len(str(MAX_NUMBER))  # 5 digits
MAX_TGT_LEN = 9  # the longest sentence has 7 words; +1 for <s> or </s>, +1 spare


def _below_thousand(n: int) -> list[str]:
    """Words for 0 < n < 1000 (no 'and', no hyphens)."""
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(TENS[tens])
        if ones:
            words.append(ONES[ones])
    elif rest:
        words.append(ONES[rest])
    return words


def number_to_words(n: int) -> str:
    """English words for 0 <= n <= 99999: 127 -> 'one hundred twenty seven'."""
    if not 0 <= n <= MAX_NUMBER or int(n) != n:
        raise ValueError(f"number_to_words covers integers 0..{MAX_NUMBER}, got {n!r}")
    n = int(n)
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words = (_below_thousand(thousands) + ["thousand"]) if thousands else []
    return " ".join(words + (_below_thousand(rest) if rest else []))


def split_numbers(n_heldout: int, seed: int = 0, max_number: int = MAX_NUMBER) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle 0..max_number with `seed` and cut it into (train, heldout); disjoint, deterministic."""
    perm = np.random.default_rng(seed).permutation(max_number + 1)
    return np.sort(perm[n_heldout:]), np.sort(perm[:n_heldout])


def encode_src(numbers) -> torch.Tensor:
    """Numbers -> digit ids (B, MAX_SRC_LEN), left-aligned, padded with PAD_ID on the right."""
    out = torch.full((len(numbers), MAX_SRC_LEN), PAD_ID, dtype=torch.long)
    for i, n in enumerate(numbers):
        ids = [SRC_STOI[c] for c in str(int(n))]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def encode_tgt(numbers) -> torch.Tensor:
    """Numbers -> word ids '<s> w1 .. wk </s>' (B, MAX_TGT_LEN), padded with PAD_ID."""
    out = torch.full((len(numbers), MAX_TGT_LEN), PAD_ID, dtype=torch.long)
    for i, n in enumerate(numbers):
        ids = [BOS_ID, *(TGT_STOI[w] for w in number_to_words(int(n)).split()), EOS_ID]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def make_batch(numbers) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher forcing: (src (B, S), decoder input (B, T-1), targets (B, T-1)); pad targets are PAD_ID."""
    tgt = encode_tgt(numbers)
    return encode_src(numbers), tgt[:, :-1], tgt[:, 1:]


def decode_words(ids) -> str:
    """Target ids -> the sentence, stopping at </s> and skipping <s>/<pad>."""
    words = []
    for i in (ids.tolist() if torch.is_tensor(ids) else ids):
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            words.append(TGT_VOCAB[i])
    return " ".join(words)


# ----------------------------------------------------------------------------- the model


@dataclass
class TransformerConfig:
    """Sizes and ablation knobs of the encoder-decoder transformer."""

    src_vocab: int = len(SRC_VOCAB)
    tgt_vocab: int = len(TGT_VOCAB)
    max_src_len: int = MAX_SRC_LEN
    max_tgt_len: int = MAX_TGT_LEN
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 256
    n_enc_layers: int = 2
    n_dec_layers: int = 2
    norm: str = "pre"  # "pre": x + f(LN(x)); "post": LN(x + f(x))
    layernorm: bool = True  # False: every LayerNorm becomes the identity
    residual: bool = True  # False: drop the "x +" of every sublayer
    use_sdpa: bool = False  # True: torch's fused attention kernel (no attention weights kept)
    eps: float = 1e-5

    def __post_init__(self):
        if self.norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {self.norm!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")


def causal_mask(T: int, device=None) -> torch.Tensor:
    """(1, 1, T, T) boolean, True on and below the diagonal: position t sees positions <= t."""
    return torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))[None, None]


def padding_mask(src: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, S) boolean, True where the source token is real (not padding)."""
    return (src != PAD_ID)[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """Multi-head attention written out: project, split heads, softmax(QK^T/sqrt(d))V, merge, project."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads, self.use_sdpa = cfg.n_heads, cfg.use_sdpa
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.k = nn.Linear(cfg.d_model, cfg.d_model)
        self.v = nn.Linear(cfg.d_model, cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.keep_attention = False  # set True to keep the last weights in self.attention
        self.attention: torch.Tensor | None = None  # (B, H, Tq, Tk)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, Tq, C) attends to memory (B, Tk, C) (memory is x for self-attention) -> (B, Tq, C)."""
        B, Tq, C = x.shape
        Tk, H = memory.shape[1], self.n_heads
        q = self.q(x).view(B, Tq, H, C // H).transpose(1, 2)  # (B, H, Tq, hs)
        k = self.k(memory).view(B, Tk, H, C // H).transpose(1, 2)  # (B, H, Tk, hs)
        v = self.v(memory).view(B, Tk, H, C // H).transpose(1, 2)  # (B, H, Tk, hs)
        if self.use_sdpa and not self.keep_attention:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # fast path, same math
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(C // H)  # (B, H, Tq, Tk)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)  # each query's weights over the keys sum to 1
            if self.keep_attention:
                self.attention = weights.detach()
            y = weights @ v  # (B, H, Tq, hs)
        y = y.transpose(1, 2).reshape(B, Tq, C)  # merge heads: (B, Tq, C)
        return self.proj(y)


class FeedForward(nn.Module):
    """Position-wise MLP: Linear(C, d_ff) -> ReLU -> Linear(d_ff, C)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.proj(F.relu(self.fc(x)))


def _norm(cfg: TransformerConfig) -> nn.Module:
    return nn.LayerNorm(cfg.d_model, eps=cfg.eps) if cfg.layernorm else nn.Identity()


def sublayer(x: torch.Tensor, f, ln: nn.Module, cfg: TransformerConfig) -> torch.Tensor:
    """One sublayer f with its LayerNorm and residual: pre-norm x + f(LN(x)), post-norm LN(x + f(x))."""
    if cfg.norm == "pre":
        h = f(ln(x))
        return x + h if cfg.residual else h
    h = f(x)
    return ln(x + h if cfg.residual else h)


class EncoderBlock(nn.Module):
    """Self-attention over the source, then the FFN; each wrapped with LayerNorm and residual."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.attn, self.ln1 = MultiHeadAttention(cfg), _norm(cfg)
        self.ffn, self.ln2 = FeedForward(cfg), _norm(cfg)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """x (B, S, C), src_mask (B, 1, 1, S) -> (B, S, C)."""
        x = sublayer(x, lambda h: self.attn(h, h, src_mask), self.ln1, self.cfg)  # tokens look at tokens
        return sublayer(x, self.ffn, self.ln2, self.cfg)  # each token thinks on its own


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, then the FFN."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.self_attn, self.ln1 = MultiHeadAttention(cfg), _norm(cfg)
        self.cross_attn, self.ln2 = MultiHeadAttention(cfg), _norm(cfg)
        self.ffn, self.ln3 = FeedForward(cfg), _norm(cfg)

    def forward(self, y: torch.Tensor, memory: torch.Tensor, tgt_mask: torch.Tensor,
                src_mask: torch.Tensor) -> torch.Tensor:
        """y (B, T, C), memory (B, S, C), tgt_mask (1, 1, T, T), src_mask (B, 1, 1, S) -> (B, T, C)."""
        y = sublayer(y, lambda h: self.self_attn(h, h, tgt_mask), self.ln1, self.cfg)  # earlier words
        y = sublayer(y, lambda h: self.cross_attn(h, memory, src_mask), self.ln2, self.cfg)  # the digits
        return sublayer(y, self.ffn, self.ln3, self.cfg)


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder transformer: logits = model(src (B, S), tgt_in (B, T)) -> (B, T, tgt_vocab)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.d_model
        self.src_tok = nn.Embedding(cfg.src_vocab, C)
        self.src_pos = nn.Embedding(cfg.max_src_len, C)
        self.tgt_tok = nn.Embedding(cfg.tgt_vocab, C)
        self.tgt_pos = nn.Embedding(cfg.max_tgt_len, C)
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_enc_layers))
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_dec_layers))
        # pre-norm leaves the residual stream un-normalized, so it ends with one more LayerNorm
        final = cfg.norm == "pre"
        self.enc_ln = _norm(cfg) if final else nn.Identity()
        self.dec_ln = _norm(cfg) if final else nn.Identity()
        self.head = nn.Linear(C, cfg.tgt_vocab)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1 / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=1.0)

    def num_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """src (B, S) digit ids -> memory (B, S, C)."""
        S = src.shape[1]
        x = self.src_tok(src) + self.src_pos(torch.arange(S, device=src.device))  # (B, S, C)
        mask = padding_mask(src)
        for block in self.encoder:
            x = block(x, mask)
        return self.enc_ln(x)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """tgt_in (B, T) word ids, memory (B, S, C), src (B, S) for its padding -> logits (B, T, V)."""
        T = tgt_in.shape[1]
        y = self.tgt_tok(tgt_in) + self.tgt_pos(torch.arange(T, device=tgt_in.device))  # (B, T, C)
        tmask, smask = causal_mask(T, tgt_in.device), padding_mask(src)
        for block in self.decoder:
            y = block(y, memory, tmask, smask)
        return self.head(self.dec_ln(y))

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """src (B, S), tgt_in (B, T) -> logits (B, T, tgt_vocab)."""
        return self.decode(tgt_in, self.encode(src), src)

    def cross_attention_modules(self) -> list[MultiHeadAttention]:
        """The cross-attention of every decoder block, first to last (set keep_attention to read them)."""
        return [block.cross_attn for block in self.decoder]


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the non-pad target positions: logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=PAD_ID)


@torch.no_grad()
def greedy_decode(model: Seq2SeqTransformer, src: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Pick the most likely next word until </s> (or max_len words): src (B, S) -> ids (B, <=max_len)."""
    max_len = max_len or model.cfg.max_tgt_len - 1
    memory = model.encode(src)
    out = torch.full((src.shape[0], 1), BOS_ID, dtype=torch.long, device=src.device)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        nxt = model.decode(out, memory, src)[:, -1].argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, PAD_ID), nxt)
        out = torch.cat([out, nxt[:, None]], dim=1)
        done |= nxt == EOS_ID
        if done.all():
            break
    return out[:, 1:]


@torch.no_grad()
def exact_match(model: Seq2SeqTransformer, numbers, batch_size: int = 1024) -> float:
    """Fraction of numbers whose greedy translation equals number_to_words exactly."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hits = 0
    for i in range(0, len(numbers), batch_size):
        chunk = numbers[i: i + batch_size]
        pred = greedy_decode(model, encode_src(chunk).to(device)).cpu()
        hits += sum(decode_words(p) == number_to_words(int(n)) for p, n in zip(pred, chunk, strict=True))
    model.train(was_training)
    return hits / len(numbers)


# ----------------------------------------------------------------------------- torch's own layers


def _copy_attention(theirs: nn.MultiheadAttention, ours: MultiHeadAttention) -> None:
    """Copy our q/k/v/proj into torch's packed in_proj (3C, C) and out_proj."""
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.k.weight, ours.v.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.k.bias, ours.v.bias]))
        theirs.out_proj.weight.copy_(ours.proj.weight)
        theirs.out_proj.bias.copy_(ours.proj.bias)


def _torch_layer_kwargs(cfg: TransformerConfig) -> dict:
    if not (cfg.layernorm and cfg.residual):
        raise ValueError("torch's layers always have LayerNorm and residuals; compare only such blocks")
    return dict(d_model=cfg.d_model, nhead=cfg.n_heads, dim_feedforward=cfg.d_ff, dropout=0.0,
                activation="relu", layer_norm_eps=cfg.eps, batch_first=True, norm_first=cfg.norm == "pre")


def torch_encoder_layer(block: EncoderBlock) -> nn.TransformerEncoderLayer:
    """torch.nn.TransformerEncoderLayer holding the same weights as our EncoderBlock."""
    ref = nn.TransformerEncoderLayer(**_torch_layer_kwargs(block.cfg))
    ref = ref.to(block.ffn.fc.weight.dtype)
    _copy_attention(ref.self_attn, block.attn)
    ref.linear1.load_state_dict(block.ffn.fc.state_dict())
    ref.linear2.load_state_dict(block.ffn.proj.state_dict())
    ref.norm1.load_state_dict(block.ln1.state_dict())
    ref.norm2.load_state_dict(block.ln2.state_dict())
    return ref


def torch_decoder_layer(block: DecoderBlock) -> nn.TransformerDecoderLayer:
    """torch.nn.TransformerDecoderLayer holding the same weights as our DecoderBlock."""
    ref = nn.TransformerDecoderLayer(**_torch_layer_kwargs(block.cfg))
    ref = ref.to(block.ffn.fc.weight.dtype)
    _copy_attention(ref.self_attn, block.self_attn)
    _copy_attention(ref.multihead_attn, block.cross_attn)
    ref.linear1.load_state_dict(block.ffn.fc.state_dict())
    ref.linear2.load_state_dict(block.ffn.proj.state_dict())
    for theirs, ours in ((ref.norm1, block.ln1), (ref.norm2, block.ln2), (ref.norm3, block.ln3)):
        theirs.load_state_dict(ours.state_dict())
    return ref
