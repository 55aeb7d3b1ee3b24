"""TextStream: pieces are whole characters, join to the full decode, and stop strings never leak."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanolm.use.textstream import TextStream


def byte_tokens(text: str, sizes) -> list[bytes]:
    """Cut text's UTF-8 bytes into tokens of the given sizes (anywhere, also inside a character)."""
    data, out, i = text.encode(), [], 0
    for n in sizes:
        if i >= len(data):
            break
        out.append(data[i:i + n])
        i += n
    if i < len(data):
        out.append(data[i:])
    return out


def run(tokens: list[bytes], stop=()) -> tuple[list[str], TextStream]:
    stream = TextStream(lambda i: tokens[i], stop)
    pieces = [stream.push(i) for i in range(len(tokens))] + [stream.finish()]
    return pieces, stream


def test_a_character_split_over_tokens_is_held_back_until_whole():
    tokens = [b"caf", b"\xc3", b"\xa9 ", b"\xf0\x9f", b"\x99", b"\x82!"]  # "café 🙂!"
    pieces, stream = run(tokens)
    assert pieces == ["caf", "", "é ", "", "", "🙂!", ""]
    assert stream.text == "café 🙂!" and "\ufffd" not in "".join(pieces)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x1FAFF, blacklist_categories=("Cs",)), max_size=40),
       st.lists(st.integers(1, 5), max_size=60))
def test_pieces_join_to_the_whole_decode_and_are_valid(text, sizes):
    pieces, stream = run(byte_tokens(text, sizes))
    assert "".join(pieces) == text == stream.text
    for p in pieces:
        p.encode("utf-8")  # every piece is whole characters (no lone surrogates, no U+FFFD)
    assert all("\ufffd" not in p for p in pieces)


def test_an_unfinished_character_at_the_end_becomes_a_replacement():
    pieces, stream = run([b"ok", b"\xe2\x82"])  # the first two of the euro sign's three bytes
    assert pieces == ["ok", "", "\ufffd"] and stream.text == "ok\ufffd"


def test_stop_string_split_over_tokens_is_never_released():
    tokens = [b"The answer", b" is 4.\nUs", b"er: and", b" more"]
    pieces, stream = run(tokens, stop=["\nUser:"])
    assert "".join(pieces) == "The answer is 4." and stream.stopped
    assert pieces[1] == " is 4."  # "\nUs" held back: it might start the stop string
    assert pieces[3:] == ["", ""]  # after a stop, nothing


def test_a_held_tail_is_released_once_it_cannot_be_a_stop():
    pieces, stream = run([b"a\nU", b"nicode"], stop=["\nUser:"])
    assert pieces == ["a", "\nUnicode", ""] and not stream.stopped


def test_earliest_of_several_stop_strings_wins_and_empty_is_refused():
    pieces, stream = run([b"x</b>y</a>"], stop=["</a>", "</b>"])
    assert "".join(pieces) == "x" and stream.stopped_by == "</b>"
    with pytest.raises(ValueError, match="must not be empty"):
        TextStream(lambda i: b"", stop=[""])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab\nUser:é", max_size=30), st.lists(st.integers(1, 4), max_size=40))
def test_stop_equals_cutting_the_full_text(text, sizes):
    stop = "\nUser:"
    pieces, stream = run(byte_tokens(text, sizes), stop=[stop])
    expected = text.split(stop, 1)[0]
    assert "".join(pieces) == expected and stream.stopped == (stop in text)
