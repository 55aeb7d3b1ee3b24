"""nanolm.text.charset: the character vocabulary and the `shakespeare-char` artifact."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nanolm.core import artifacts
from nanolm.text import charset

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def test_from_text_is_sorted_and_unique():
    tok = charset.CharTokenizer.from_text(TEXT)
    assert tok.chars == sorted(set(TEXT))
    assert tok.vocab_size == len(set(TEXT)) == len(tok)


def test_round_trip():
    tok = charset.CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == TEXT
    assert tok.decode(tok.encode_tensor(TEXT)) == TEXT
    assert tok.encode_tensor(TEXT).dtype == torch.long


@given(st.text(min_size=1, max_size=200))
def test_round_trip_any_text(text):
    tok = charset.CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode(text) == [tok.chars.index(c) for c in text]


def test_unknown_character_message():
    tok = charset.CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"unknown character\(s\) 'xz' \(first at position 1\)") as e:
        tok.encode("axbz")
    assert "3 characters" in str(e.value)


def test_bad_ids_and_bad_vocabularies():
    tok = charset.CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="duplicate"):
        charset.CharTokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match="single characters"):
        charset.CharTokenizer(["ab"])
    with pytest.raises(ValueError, match="empty"):
        charset.CharTokenizer([])


def test_json_round_trip():
    tok = charset.CharTokenizer.from_text(TEXT)
    assert charset.CharTokenizer.from_json(tok.to_json()) == tok
    assert charset.CharTokenizer.from_json(json.dumps(tok.to_json())) == tok


def test_split_ids():
    ids = torch.arange(100)
    train, val = charset.split_ids(ids, 0.9)
    assert len(train) == 90 and len(val) == 10
    assert torch.equal(torch.cat([train, val]), ids)
    with pytest.raises(ValueError):
        charset.split_ids(ids, 1.0)


def test_artifact_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLM_CHECKPOINTS", str(tmp_path))
    tok = charset.CharTokenizer.from_text(TEXT)
    train, val = charset.split_ids(tok.encode_tensor(TEXT))
    charset.save("shakespeare-char", tok, train, val, notebook="03_sequence_models", profile="smoke",
                                  config={"split": 0.9})
    assert (tmp_path / "smoke" / "shakespeare-char" / "manifest.json").exists()
    tok2, train2, val2 = charset.load(profile="smoke")
    assert tok2 == tok
    assert train2.dtype == val2.dtype == torch.long
    assert torch.equal(train2, train) and torch.equal(val2, val)
    art = artifacts.load("shakespeare-char", profile="smoke")
    assert art.config["vocab_size"] == tok.vocab_size and art.config["split"] == 0.9
    assert art.json("vocab.json") == tok.chars
    # another profile has no artifact: the error names the notebook to run
    with pytest.raises(artifacts.ArtifactError, match="03_sequence_models"):
        charset.load(profile="cpu")


def test_artifact_with_ids_outside_vocab_is_refused(tmp_path):
    tok = charset.CharTokenizer.from_text("ab")
    bad = torch.tensor([0, 1, 5])
    charset.save("shakespeare-char", tok, bad, bad, notebook="03_sequence_models", profile="smoke", root=tmp_path)
    with pytest.raises(artifacts.ArtifactError, match="do not fit"):
        charset.load(profile="smoke", root=tmp_path)


def test_decode_bytes_is_the_utf8_of_decode():
    tok = charset.CharTokenizer.from_text("naïve café")
    ids = tok.encode("café naïve")
    assert tok.decode_bytes(ids) == "café naïve".encode()
