"""Recurrent networks from scratch: LSTM and GRU cells and layers, and a seq2seq reversal task.

The cells and layers use torch's parameter names and gate order, so weights copy both
ways with load_state_dict():
  LSTM: weight_ih (4H, I) = [W_ii | W_if | W_ig | W_io] stacked by rows (gates i, f, g, o)
  GRU:  weight_ih (3H, I) = [W_ir | W_iz | W_in]                         (gates r, z, n)
and likewise weight_hh, bias_ih, bias_hh. Layers are named weight_ih_l{k} etc. as in
torch.nn.LSTM / torch.nn.GRU.

The seq2seq pieces (reversal_batch, Encoder, Decoder, Seq2Seq, train_reversal,
reversal_accuracy) are the baseline that notebook 05 extends with attention: a decoder
receives the encoder's outputs as `memory`, which this plain decoder ignores.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------- cells (functional)


def lstm_cell(
    x: torch.Tensor,
    state: State,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor | None = None,
    b_hh: torch.Tensor | None = None,
) -> State:
    """One LSTM step: x (B, I), state (h, c) each (B, H) -> new (h, c); gates in torch's order i, f, g, o."""
    h, c = state
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # keep some memory, write some new
    h = torch.sigmoid(o) * torch.tanh(c)  # expose part of the memory
    return h, c


def gru_cell(
    x: torch.Tensor,
    h: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor | None = None,
    b_hh: torch.Tensor | None = None,
) -> torch.Tensor:
    """One GRU step: x (B, I), h (B, H) -> new h (B, H); gates in torch's order r, z, n."""
    gi = F.linear(x, w_ih, b_ih)  # (B, 3H)
    gh = F.linear(h, w_hh, b_hh)  # (B, 3H)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)  # reset: how much of the old state feeds the candidate
    z = torch.sigmoid(i_z + h_z)  # update: how much of the old state to keep
    n = torch.tanh(i_n + r * h_n)  # candidate (torch applies r after the hidden bias)
    return (1 - z) * n + z * h


def _init_uniform(module: nn.Module, hidden_size: int) -> None:
    """torch's default RNN init: every weight and bias uniform in [-1/sqrt(H), 1/sqrt(H)]."""
    k = 1.0 / math.sqrt(hidden_size)
    for p in module.parameters():
        nn.init.uniform_(p, -k, k)


# ----------------------------------------------------------------------------- cell modules


class LSTMCell(nn.Module):
    """An LSTM cell with torch.nn.LSTMCell's parameters: x (B, I), (h, c) -> (h, c)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        _init_uniform(self, hidden_size)

    def forward(self, x: torch.Tensor, state: State | None = None) -> State:
        if state is None:
            z = x.new_zeros(x.shape[0], self.hidden_size)
            state = (z, z)
        return lstm_cell(x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class GRUCell(nn.Module):
    """A GRU cell with torch.nn.GRUCell's parameters: x (B, I), h (B, H) -> h (B, H)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size)) if bias else None
        _init_uniform(self, hidden_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        return gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


# ----------------------------------------------------------------------------- layers


class _StackedRNN(nn.Module):
    """Shared plumbing of LSTM and GRU: per-layer parameters named like torch's, a loop over time."""

    gates = 0

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True, batch_first: bool = False
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        g = self.gates * hidden_size
        for k in range(num_layers):
            n_in = input_size if k == 0 else hidden_size
            setattr(self, f"weight_ih_l{k}", nn.Parameter(torch.empty(g, n_in)))
            setattr(self, f"weight_hh_l{k}", nn.Parameter(torch.empty(g, hidden_size)))
            if bias:
                setattr(self, f"bias_ih_l{k}", nn.Parameter(torch.empty(g)))
                setattr(self, f"bias_hh_l{k}", nn.Parameter(torch.empty(g)))
        _init_uniform(self, hidden_size)

    def layer_weights(self, k: int) -> tuple[torch.Tensor, ...]:
        """(w_ih, w_hh, b_ih, b_hh) of layer k; biases are None when bias=False."""
        get = lambda n: getattr(self, f"{n}_l{k}", None)
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.input_size:
            want = "(B, T, I)" if self.batch_first else "(T, B, I)"
            raise ValueError(f"expected input {want} with I={self.input_size}, got shape {tuple(x.shape)}")
        return x if not self.batch_first else x.transpose(0, 1)  # -> (T, B, I)


class LSTM(_StackedRNN):
    """A multi-layer LSTM with torch.nn.LSTM's interface: x, (h0, c0) -> output, (h_n, c_n)."""

    gates = 4

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        xs = self._check_input(x)  # (T, B, I)
        T, B, _ = xs.shape
        if state is None:
            z = xs.new_zeros(self.num_layers, B, self.hidden_size)
            state = (z, z)
        h0, c0 = state  # each (L, B, H)
        hs, cs = [], []
        layer_in = xs
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self.layer_weights(k)
            # The input projection does not depend on the recurrence: do all time steps at once.
            pre = F.linear(layer_in, w_ih, b_ih)  # (T, B, 4H)
            h, c = h0[k], c0[k]
            outs = []
            for t in range(T):
                h, c = _lstm_step(pre[t], h, c, w_hh, b_hh)
                outs.append(h)
            layer_in = torch.stack(outs)  # (T, B, H)
            hs.append(h)
            cs.append(c)
        out = layer_in.transpose(0, 1) if self.batch_first else layer_in
        return out, (torch.stack(hs), torch.stack(cs))


class GRU(_StackedRNN):
    """A multi-layer GRU with torch.nn.GRU's interface: x, h0 -> output, h_n."""

    gates = 3

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        xs = self._check_input(x)  # (T, B, I)
        T, B, _ = xs.shape
        if h0 is None:
            h0 = xs.new_zeros(self.num_layers, B, self.hidden_size)
        hs = []
        layer_in = xs
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self.layer_weights(k)
            pre = F.linear(layer_in, w_ih, b_ih)  # (T, B, 3H), all time steps at once
            h = h0[k]
            outs = []
            for t in range(T):
                h = _gru_step(pre[t], h, w_hh, b_hh)
                outs.append(h)
            layer_in = torch.stack(outs)
            hs.append(h)
        out = layer_in.transpose(0, 1) if self.batch_first else layer_in
        return out, torch.stack(hs)


def _lstm_step(pre: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_hh, b_hh) -> State:
    """lstm_cell with the input projection `pre` (B, 4H) already computed."""
    i, f, g, o = (pre + F.linear(h, w_hh, b_hh)).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_step(pre: torch.Tensor, h: torch.Tensor, w_hh, b_hh) -> torch.Tensor:
    """gru_cell with the input projection `pre` (B, 3H) already computed."""
    i_r, i_z, i_n = pre.chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


# ----------------------------------------------------------------------------- seq2seq: digit reversal

REV_DIGITS = 10  # tokens 0..9 are digits
REV_BOS = 10  # the decoder's start token
REV_VOCAB = 11


def reversal_batch(
    batch_size: int,
    length: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of the reversal task: (src, tgt_in, tgt_out), each (B, length) int64.

    src holds random digits, tgt_out = src reversed, and tgt_in = [BOS, tgt_out[:, :-1]]
    (the decoder's input under teacher forcing: the right answer so far, shifted by one).
    """
    if length < 1 or batch_size < 1:
        raise ValueError(f"batch_size and length must be positive, got {batch_size}, {length}")
    src = torch.randint(0, REV_DIGITS, (batch_size, length), generator=generator)
    tgt_out = src.flip(1)
    bos = torch.full((batch_size, 1), REV_BOS, dtype=torch.long)
    tgt_in = torch.cat([bos, tgt_out[:, :-1]], dim=1)
    return src.to(device), tgt_in.to(device), tgt_out.to(device)


class Encoder(nn.Module):
    """Embedding + LSTM: src (B, S) -> outputs (B, S, H) and final state (h, c), each (layers, B, H)."""

    def __init__(self, vocab_size: int = REV_VOCAB, emb_dim: int = 32, hidden: int = 64, num_layers: int = 1):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, emb_dim)
        self.rnn = nn.LSTM(emb_dim, hidden, num_layers, batch_first=True)

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, State]:
        return self.rnn(self.emb(src))


class Decoder(nn.Module):
    """Embedding + LSTM + linear head: tgt_in (B, T), state -> logits (B, T, V), state.

    `memory` (the encoder's outputs, (B, S, H)) is accepted and ignored: everything the
    decoder knows about the source must pass through the state, which is the bottleneck.
    """

    def __init__(self, vocab_size: int = REV_VOCAB, emb_dim: int = 32, hidden: int = 64, num_layers: int = 1):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, emb_dim)
        self.rnn = nn.LSTM(emb_dim, hidden, num_layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(
        self, tgt_in: torch.Tensor, state: State, memory: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        out, state = self.rnn(self.emb(tgt_in), state)  # (B, T, H)
        return self.head(out), state


class Seq2Seq(nn.Module):
    """An encoder-decoder: teacher-forced logits with forward(), greedy decoding with generate()."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, bos: int = REV_BOS):
        super().__init__()
        self.encoder, self.decoder, self.bos = encoder, decoder, bos

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for every target position, given the right previous tokens."""
        memory, state = self.encoder(src)
        logits, _ = self.decoder(tgt_in, state, memory)
        return logits

    @torch.no_grad()
    def generate(self, src: torch.Tensor, steps: int) -> torch.Tensor:
        """Greedy decoding: (B, steps) token ids, each step fed the model's own previous guess."""
        memory, state = self.encoder(src)
        tok = torch.full((src.shape[0], 1), self.bos, dtype=torch.long, device=src.device)
        out = []
        for _ in range(steps):
            logits, state = self.decoder(tok, state, memory)  # (B, 1, V)
            tok = logits.argmax(-1)
            out.append(tok)
        return torch.cat(out, dim=1)


def make_reversal_model(hidden: int = 64, emb_dim: int = 32, num_layers: int = 1) -> Seq2Seq:
    """The plain LSTM encoder-decoder for digit reversal."""
    return Seq2Seq(
        Encoder(REV_VOCAB, emb_dim, hidden, num_layers), Decoder(REV_VOCAB, emb_dim, hidden, num_layers)
    )


def train_reversal(
    model: nn.Module,
    *,
    steps: int,
    batch_size: int = 64,
    lengths: tuple[int, int] = (1, 16),
    lr: float = 3e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict:
    """Train on reversal with teacher forcing (Adam, clipping at 1); each batch has one length in `lengths`.

    Returns {"loss": [per-step loss], "seconds": wall time}.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="seq2seq", leave=False)
    t0 = time.perf_counter()
    for _ in it:
        n = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=gen))
        src, tgt_in, tgt_out = reversal_batch(batch_size, n, generator=gen, device=device)
        logits = model(src, tgt_in)  # (B, n, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return {"loss": losses, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def reversal_accuracy(
    model: Seq2Seq, length: int, *, n: int = 512, seed: int = 1234, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """(token accuracy, whole-sequence accuracy) of greedy decoding on n fresh sequences of `length`."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    src, _, tgt_out = reversal_batch(n, length, generator=gen, device=device)
    pred = model.generate(src, length)
    model.train(was_training)
    right = pred == tgt_out
    return right.float().mean().item(), right.all(dim=1).float().mean().item()
