"""nanolm.teach.transformer: the numerals-to-words task and the encoder-decoder, pinned against torch.nn layers."""

import numpy as np
import pytest
import tolerances
import torch

from nanolm.teach import transformer as tr


def small(**kw) -> tr.TransformerConfig:
    base = dict(d_model=16, n_heads=4, d_ff=32, n_enc_layers=2, n_dec_layers=2)
    return tr.TransformerConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- the task


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (21, "twenty one"),
    (100, "one hundred"), (105, "one hundred five"), (127, "one hundred twenty seven"),
    (1000, "one thousand"), (1001, "one thousand one"), (10010, "ten thousand ten"),
    (40500, "forty thousand five hundred"), (99999, "ninety nine thousand nine hundred ninety nine"),
])
def test_number_to_words_known_cases(n, words):
    assert tr.number_to_words(n) == words


@pytest.mark.parametrize("bad", [-1, 100_000, 3.5])
def test_number_to_words_rejects_out_of_range(bad):
    with pytest.raises(ValueError):
        tr.number_to_words(bad)


def test_every_number_fits_the_vocabulary_and_lengths():
    lengths = [len(tr.number_to_words(n).split()) for n in range(tr.MAX_NUMBER + 1)]
    assert max(lengths) + 1 < tr.MAX_TGT_LEN  # '<s> words' and 'words </s>' both fit
    words = {w for n in range(tr.MAX_NUMBER + 1) for w in tr.number_to_words(n).split()}
    assert words == set(tr.TGT_VOCAB) - {tr.PAD, tr.BOS, tr.EOS}


def test_split_is_deterministic_disjoint_and_complete():
    train, held = tr.split_numbers(500, seed=3)
    train2, held2 = tr.split_numbers(500, seed=3)
    np.testing.assert_array_equal(held, held2)
    np.testing.assert_array_equal(train, train2)
    assert len(held) == 500 and not set(train) & set(held)
    assert len(train) + len(held) == tr.MAX_NUMBER + 1
    assert not np.array_equal(tr.split_numbers(500, seed=4)[1], held)


def test_batches_round_trip():
    nums = [0, 7, 105, 99999]
    src, tgt_in, tgt_out = tr.make_batch(nums)
    assert src.shape == (4, tr.MAX_SRC_LEN) and tgt_in.shape == tgt_out.shape == (4, tr.MAX_TGT_LEN - 1)
    assert (tgt_in[:, 0] == tr.BOS_ID).all()
    assert torch.equal(tgt_in[:, 1:], tgt_out[:, :-1])  # teacher forcing: the input is the target shifted
    assert [tr.decode_words(t) for t in tgt_out] == [tr.number_to_words(n) for n in nums]
    assert ["".join(tr.SRC_VOCAB[i] for i in row if i != tr.PAD_ID) for row in src.tolist()] == [str(n) for n in nums]


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_shapes_and_both_norms_run(norm):
    torch.manual_seed(0)
    model = tr.Seq2SeqTransformer(small(norm=norm))
    src, tgt_in, tgt_out = tr.make_batch([3, 45, 678, 9012, 34567])
    logits = model(src, tgt_in)
    assert logits.shape == (5, tgt_in.shape[1], len(tr.TGT_VOCAB))
    tr.loss_fn(logits, tgt_out).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("kw", [{}, {"norm": "post"}, {"residual": False}, {"layernorm": False}])
def test_causal_mask_later_targets_never_change_earlier_outputs(kw):
    torch.manual_seed(0)
    model = tr.Seq2SeqTransformer(small(**kw))
    src, tgt_in, _ = tr.make_batch([12345, 678])
    t = 4
    changed = tgt_in.clone()
    changed[:, t:] = torch.randint(3, len(tr.TGT_VOCAB), changed[:, t:].shape)
    a, b = model(src, tgt_in), model(src, changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], **tolerances.FLOAT32)
    if kw.get("residual", True):  # without residuals the words reach the output only through attention weights
        assert (a[:, t:] - b[:, t:]).abs().max() > 1e-3  # the later outputs do see them


def test_source_padding_is_ignored():
    torch.manual_seed(0)
    model = tr.Seq2SeqTransformer(small(max_src_len=8))
    src, tgt_in, _ = tr.make_batch([7, 1234])
    longer = torch.cat([src, torch.full((2, 3), tr.PAD_ID)], dim=1)  # more padding on the right
    torch.testing.assert_close(model(src, tgt_in), model(longer, tgt_in), **tolerances.FLOAT32)


def test_sdpa_fast_path_equals_the_written_out_attention():
    torch.manual_seed(0)
    slow = tr.Seq2SeqTransformer(small())
    fast = tr.Seq2SeqTransformer(small(use_sdpa=True))
    fast.load_state_dict(slow.state_dict())
    src, tgt_in, _ = tr.make_batch([5, 60, 708, 9999, 12345])
    torch.testing.assert_close(fast(src, tgt_in), slow(src, tgt_in), **tolerances.FLOAT32_MODEL)


def test_attention_weights_are_kept_on_request():
    torch.manual_seed(0)
    model = tr.Seq2SeqTransformer(small())
    src, tgt_in, _ = tr.make_batch([42, 31337])
    for m in model.cross_attention_modules():
        m.keep_attention = True
    model(src, tgt_in)
    w = model.cross_attention_modules()[-1].attention
    assert w.shape == (2, 4, tgt_in.shape[1], tr.MAX_SRC_LEN)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    assert (w[0, :, :, 2:] == 0).all()  # '42' has two digits: padding gets no attention


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_blocks_equal_torch_transformer_layers(norm):
    """Our blocks against torch.nn.TransformerEncoderLayer / DecoderLayer with the same weights (float64)."""
    torch.manual_seed(0)
    cfg = small(norm=norm)
    enc, dec = tr.EncoderBlock(cfg).double(), tr.DecoderBlock(cfg).double()
    for p in [*enc.parameters(), *dec.parameters()]:  # move LayerNorm off its trivial init
        torch.nn.init.normal_(p, std=0.3)
    ref_enc, ref_dec = tr.torch_encoder_layer(enc), tr.torch_decoder_layer(dec)
    src = tr.encode_src([7, 1234, 99999])
    x = torch.randn(3, tr.MAX_SRC_LEN, cfg.d_model, dtype=torch.float64)
    y = torch.randn(3, 6, cfg.d_model, dtype=torch.float64)
    ours_mem = enc(x, tr.padding_mask(src))
    theirs_mem = ref_enc(x, src_key_padding_mask=src == tr.PAD_ID)
    keep = (src != tr.PAD_ID)[..., None]  # torch may leave anything at padded positions
    torch.testing.assert_close(ours_mem * keep, theirs_mem * keep, **tolerances.FLOAT64)
    ours = dec(y, ours_mem, tr.causal_mask(6), tr.padding_mask(src))
    theirs = ref_dec(y, ours_mem, tgt_mask=~tr.causal_mask(6)[0, 0], memory_key_padding_mask=src == tr.PAD_ID)
    torch.testing.assert_close(ours, theirs, **tolerances.FLOAT64)


def test_torch_layers_refuse_ablated_blocks():
    with pytest.raises(ValueError):
        tr.torch_encoder_layer(tr.EncoderBlock(small(residual=False)))


def test_bad_configs_raise():
    with pytest.raises(ValueError):
        small(n_heads=3)
    with pytest.raises(ValueError):
        small(norm="sandwich")


def test_tiny_model_overfits_a_handful_of_examples():
    torch.manual_seed(0)
    model = tr.Seq2SeqTransformer(small(d_model=32, d_ff=64, n_enc_layers=1, n_dec_layers=1))
    nums = [0, 13, 105, 2024, 77777, 99999]
    src, tgt_in, tgt_out = tr.make_batch(nums)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = tr.loss_fn(model(src, tgt_in), tgt_out)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first
    assert tr.exact_match(model, nums) == 1.0
    assert [tr.decode_words(p) for p in tr.greedy_decode(model, src)] == [tr.number_to_words(n) for n in nums]
