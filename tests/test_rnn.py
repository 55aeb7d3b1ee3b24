"""nanolm.teach.rnn: LSTM/GRU from scratch against torch.nn, and the seq2seq reversal pieces.

Parity is checked at tests/tolerances.py's FLOAT64 (1e-12; the same arithmetic in a different order
differs by ~1e-16, measured 2.8e-16) and FLOAT32 (1e-6; measured 6e-8).
"""

import pytest
import tolerances
import torch

from nanolm.teach import rnn

F64 = tolerances.FLOAT64
F32 = tolerances.FLOAT32


SHAPES = [  # (input_size, hidden_size, num_layers, seq_len, batch, batch_first, bias)
    (3, 4, 1, 5, 2, False, True),
    (5, 7, 2, 6, 3, True, True),
    (8, 16, 3, 4, 1, False, True),
    (6, 5, 2, 7, 4, True, False),
    (2, 3, 1, 1, 1, True, True),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_layer_matches_torch(kind, shape):
    I, H, L, T, B, batch_first, bias = shape
    torch.manual_seed(SHAPES.index(shape) + (100 if kind == "GRU" else 0))
    ref = getattr(torch.nn, kind)(I, H, L, bias=bias, batch_first=batch_first).double()
    mine = getattr(rnn, kind)(I, H, L, bias=bias, batch_first=batch_first).double()
    mine.load_state_dict(ref.state_dict())  # same names, same gate order
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.double, requires_grad=True)
    h0 = torch.randn(L, B, H, dtype=torch.double)
    if kind == "LSTM":
        state = (h0, torch.randn(L, B, H, dtype=torch.double))
        out_r, (h_r, c_r) = ref(x, state)
        out_m, (h_m, c_m) = mine(x, state)
        torch.testing.assert_close(c_m, c_r, **F64)
    else:
        out_r, h_r = ref(x, h0)
        out_m, h_m = mine(x, h0)
    torch.testing.assert_close(out_m, out_r, **F64)
    torch.testing.assert_close(h_m, h_r, **F64)
    # gradients flow the same way too
    g_r, = torch.autograd.grad(out_r.sum() + h_r.pow(2).sum(), x)
    g_m, = torch.autograd.grad(out_m.sum() + h_m.pow(2).sum(), x)
    torch.testing.assert_close(g_m, g_r, **F64)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_layer_float32_and_default_state(kind):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(10, 32, 2, batch_first=True)
    mine = getattr(rnn, kind)(10, 32, 2, batch_first=True)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(4, 20, 10)
    torch.testing.assert_close(mine(x)[0], ref(x)[0], **F32)


def test_cells_match_torch():
    torch.manual_seed(1)
    x = torch.randn(3, 5, dtype=torch.double)
    h = torch.randn(3, 7, dtype=torch.double)
    c = torch.randn(3, 7, dtype=torch.double)
    ref = torch.nn.LSTMCell(5, 7).double()
    mine = rnn.LSTMCell(5, 7).double()
    mine.load_state_dict(ref.state_dict())
    for a, b in zip(mine(x, (h, c)), ref(x, (h, c)), strict=True):
        torch.testing.assert_close(a, b, **F64)
    torch.testing.assert_close(mine(x)[0], ref(x)[0], **F64)
    ref = torch.nn.GRUCell(5, 7).double()
    mine = rnn.GRUCell(5, 7).double()
    mine.load_state_dict(ref.state_dict())
    torch.testing.assert_close(mine(x, h), ref(x, h), **F64)
    torch.testing.assert_close(mine(x), ref(x), **F64)


def test_gate_order_is_torchs():
    """Only the forget gate open (bias +50 on chunk 1, -50 elsewhere): c stays, h = o*tanh(c) ~ 0."""
    H = 4
    cell = rnn.LSTMCell(2, H).double()
    with torch.no_grad():
        cell.weight_ih.zero_()
        cell.weight_hh.zero_()
        cell.bias_hh.zero_()
        cell.bias_ih.fill_(-50.0)
        cell.bias_ih[H:2 * H] = 50.0  # torch's order i, f, g, o: chunk 1 is the forget gate
    c0 = torch.randn(1, H, dtype=torch.double)
    h, c = cell(torch.zeros(1, 2, dtype=torch.double), (torch.zeros(1, H, dtype=torch.double), c0))
    torch.testing.assert_close(c, c0, **F64)
    assert h.abs().max() < 1e-10


def test_bad_input_shape():
    with pytest.raises(ValueError, match="expected input"):
        rnn.LSTM(3, 4)(torch.randn(5, 2, 6))
    with pytest.raises(ValueError, match="num_layers"):
        rnn.GRU(3, 4, num_layers=0)


def test_reversal_batch_properties():
    gen = torch.Generator().manual_seed(0)
    src, tgt_in, tgt_out = rnn.reversal_batch(32, 9, generator=gen)
    assert src.shape == tgt_in.shape == tgt_out.shape == (32, 9)
    assert src.dtype == torch.long
    assert int(src.min()) >= 0 and int(src.max()) < rnn.REV_DIGITS
    assert torch.equal(tgt_out, src.flip(1))
    assert torch.equal(tgt_out.flip(1), src)
    assert (tgt_in[:, 0] == rnn.REV_BOS).all()
    assert torch.equal(tgt_in[:, 1:], tgt_out[:, :-1])
    # seeded: the same generator state gives the same batch, another seed another batch
    again = rnn.reversal_batch(32, 9, generator=torch.Generator().manual_seed(0))[0]
    other = rnn.reversal_batch(32, 9, generator=torch.Generator().manual_seed(1))[0]
    assert torch.equal(src, again) and not torch.equal(src, other)
    with pytest.raises(ValueError):
        rnn.reversal_batch(4, 0)


def test_seq2seq_shapes_and_teacher_forcing_consistency():
    torch.manual_seed(0)
    model = rnn.make_reversal_model(hidden=16, emb_dim=8).eval()
    src, tgt_in, tgt_out = rnn.reversal_batch(5, 6, generator=torch.Generator().manual_seed(0))
    logits = model(src, tgt_in)
    assert logits.shape == (5, 6, rnn.REV_VOCAB)
    # greedy decoding fed its own guesses equals teacher forcing fed those same guesses
    pred = model.generate(src, 6)
    assert pred.shape == (5, 6)
    forced_in = torch.cat([tgt_in[:, :1], pred[:, :-1]], dim=1)
    torch.testing.assert_close(model(src, forced_in).argmax(-1), pred)


def test_seq2seq_learns_short_reversal():
    torch.manual_seed(0)
    model = rnn.make_reversal_model(hidden=32, emb_dim=16)
    hist = rnn.train_reversal(model, steps=150, batch_size=64, lengths=(1, 3), lr=1e-2, seed=0)
    assert hist["loss"][-1] < hist["loss"][0] / 3
    token_acc, seq_acc = rnn.reversal_accuracy(model, 3, n=256)
    assert token_acc > 0.9 and 0.0 <= seq_acc <= token_acc
