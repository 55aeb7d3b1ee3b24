"""nanolm.core.gguf and nanolm.core.quants against the `gguf` package (llama.cpp's reference reader and writer).

The real file (SmolLM2-135M-Instruct, Q4_1/Q8_0/F32) must read to the same metadata, tensor infos and
bit-identical dequantized tensors as gguf.GGUFReader + gguf.quants.dequantize. Small synthetic files
written with gguf.GGUFWriter cover every metadata value type and tensor type, and byte edits of them
cover the bad files: each must raise GGUFError naming the problem.
"""

from __future__ import annotations

import struct

import gguf as ref
import numpy as np
import pytest
from real_model import smollm2_path

from nanolm.core import data, quants
from nanolm.core import gguf as ours
from nanolm.core.gguf import GGUFError

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"






@pytest.fixture(scope="module")
def real():
    """(our GGUFFile, the reference GGUFReader) of the real model file."""
    path = smollm2_path()
    return ours.read(path), ref.GGUFReader(path)


# ----------------------------------------------------------------------------- the real file


def test_metadata_matches_reference(real):
    f, r = real
    ref_fields = {k: v for k, v in r.fields.items() if not k.startswith("GGUF.")}  # GGUF.*: the header, not keys
    assert list(f.metadata) == list(ref_fields)  # every key, in file order
    assert len(f.metadata) == 33
    for key, field in ref_fields.items():
        assert f.metadata[key] == field.contents(), key
        kind = field.types[0].name.lower()
        if kind == "array":
            assert f.metadata_types[key].startswith("array["), key
    assert f.metadata["general.architecture"] == "llama"
    assert len(f.metadata["tokenizer.ggml.tokens"]) == 49152
    assert len(f.metadata["tokenizer.ggml.merges"]) == 48900
    assert f.metadata_types["tokenizer.ggml.token_type"] == "array[i32]"
    assert f.version == 3 and f.alignment == r.alignment == 32 and f.data_offset == r.data_offset


def test_tensor_infos_match_reference(real):
    f, r = real
    assert list(f.tensors) == [t.name for t in r.tensors]
    for t in r.tensors:
        info = f.tensors[t.name]
        assert info.shape == tuple(reversed(t.shape.tolist()))
        assert info.ggml_type == int(t.tensor_type) and info.type_name == t.tensor_type.name
        assert info.offset == t.data_offset and info.n_bytes == t.n_bytes and info.n_elements == t.n_elements
    kinds = sorted({i.type_name for i in f.tensors.values()})
    assert kinds == ["F32", "Q4_1", "Q8_0"]


def test_every_tensor_dequantizes_bit_exact(real):
    """Every one of the 272 tensors: our NumPy dequantization == gguf.quants.dequantize, no tolerance."""
    f, r = real
    for t in r.tensors:
        mine = f.tensor(t.name)
        theirs = ref.quants.dequantize(t.data, t.tensor_type)
        assert mine.dtype == np.float32 and mine.shape == theirs.shape, t.name
        assert np.array_equal(mine, theirs), t.name
        assert np.array_equal(f.raw(t.name), t.data.reshape(-1).view(np.uint8)), t.name


def test_data_layer_catches_changed_bytes():
    """GGUF has no checksum: one changed byte of tensor data reads fine, but the manifest's sha256 refuses it."""
    path = smollm2_path()
    meta = data.registry()["smollm2"]["files"][FILE]
    raw = bytearray(path.read_bytes())
    assert data.matches(bytes(raw), meta)
    raw[len(raw) // 2] ^= 0x01
    assert not data.matches(bytes(raw), meta)


def test_type_table_matches_reference():
    for gid, (name, block, size) in quants.GGML_TYPES.items():
        qt = ref.GGMLQuantizationType(gid)
        assert qt.name == name and ref.GGML_QUANT_SIZES[qt] == (block, size)


# ----------------------------------------------------------------------------- synthetic files

METADATA = {
    "t.u8": (255, ref.GGUFValueType.UINT8), "t.i8": (-128, ref.GGUFValueType.INT8),
    "t.u16": (65535, ref.GGUFValueType.UINT16), "t.i16": (-32768, ref.GGUFValueType.INT16),
    "t.u32": (2**32 - 1, ref.GGUFValueType.UINT32), "t.i32": (-(2**31), ref.GGUFValueType.INT32),
    "t.f32": (0.1, ref.GGUFValueType.FLOAT32), "t.bool": (True, ref.GGUFValueType.BOOL),
    "t.false": (False, ref.GGUFValueType.BOOL), "t.str": ("héllo ✓ 𝄞", ref.GGUFValueType.STRING),
    "t.empty": ("", ref.GGUFValueType.STRING), "t.u64": (2**64 - 1, ref.GGUFValueType.UINT64),
    "t.i64": (-(2**63), ref.GGUFValueType.INT64), "t.f64": (1 / 3, ref.GGUFValueType.FLOAT64),
}
ARRAYS = {
    "a.strings": ["a", "", "Ġthe", "<|im_start|>"], "a.ints": [1, -2, 3], "a.floats": [0.5, -1.25],
    "a.bools": [True, False, True], "a.nested": [[1, 2], [3, 4, 5]], "a.nested_str": [["x", "y"], ["z"]],
}


def _tensors(rng):
    """name -> (values float32 in numpy order, ggml type); rows are multiples of 32 for the block types."""
    return {
        "f32": (rng.standard_normal((3, 5)).astype(np.float32), ref.GGMLQuantizationType.F32),
        "f16": (rng.standard_normal((2, 7)).astype(np.float32), ref.GGMLQuantizationType.F16),
        "q4_0": (rng.standard_normal((4, 64)).astype(np.float32), ref.GGMLQuantizationType.Q4_0),
        "q4_1": (rng.standard_normal((2, 3, 64)).astype(np.float32), ref.GGMLQuantizationType.Q4_1),
        "q8_0": (rng.standard_normal((5, 32)).astype(np.float32), ref.GGMLQuantizationType.Q8_0),
        "vec": (rng.standard_normal(96).astype(np.float32), ref.GGMLQuantizationType.Q8_0),
    }


def write_file(path, alignment=None, tensors=True):
    """A small GGUF file written by the reference writer; returns its bytes."""
    w = ref.GGUFWriter(path, arch="test")
    if alignment:
        w.add_custom_alignment(alignment)
    for key, (val, vtype) in METADATA.items():
        w.add_key_value(key, val, vtype)
    for key, val in ARRAYS.items():
        w.add_array(key, val)
    if tensors:
        for name, (x, qt) in _tensors(np.random.default_rng(0)).items():
            if qt == ref.GGMLQuantizationType.F32:
                w.add_tensor(name, x)
            elif qt == ref.GGMLQuantizationType.F16:
                w.add_tensor(name, x.astype(np.float16))
            else:
                w.add_tensor(name, ref.quants.quantize(x, qt), raw_dtype=qt)  # bytes (..., row bytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.gguf"
    return path, write_file(path)


@pytest.mark.parametrize("alignment", [None, 64])
def test_synthetic_file_round_trips(tmp_path, alignment):
    path = tmp_path / "s.gguf"
    write_file(path, alignment)
    f, r = ours.read(path), ref.GGUFReader(path)
    assert f.alignment == (alignment or 32) and f.data_offset == r.data_offset
    for key, (val, vtype) in METADATA.items():
        assert f.metadata[key] == r.fields[key].contents(), key
        want = np.float32(val).item() if vtype == ref.GGUFValueType.FLOAT32 else val
        assert f.metadata[key] == want and type(f.metadata[key]) is type(val), key
    for key, val in ARRAYS.items():
        assert f.metadata[key] == val, key  # nested arrays stay nested (the reference flattens them)
    assert f.metadata_types["a.nested"] == "array[array[i32]]"
    assert f.metadata_types["a.strings"] == "array[string]" and f.metadata_types["t.u64"] == "u64"
    for t in r.tensors:
        assert f.tensors[t.name].offset == t.data_offset
        assert np.array_equal(f.tensor(t.name), ref.quants.dequantize(t.data, t.tensor_type)), t.name


def test_metadata_only_file(tmp_path):
    path = tmp_path / "meta.gguf"
    write_file(path, tensors=False)
    f = ours.read(path)
    assert f.tensors == {} and f.metadata["general.architecture"] == "test"


def test_q8_1_and_q4_0_blocks_by_hand():
    """Q8_1 (no reference dequantizer): d fp32 | s fp32 | 32 int8, x = d * q. Q4_0: d fp16 | nibbles, x = d(q - 8)."""
    q = np.arange(-16, 16, dtype=np.int8)
    block = np.frombuffer(struct.pack("<ff", 0.5, 0.5 * q.sum()) + q.tobytes(), np.uint8)
    assert np.array_equal(quants.dequantize(block, 9, (32,)), 0.5 * q.astype(np.float32))
    nibbles = np.arange(32, dtype=np.uint8) % 16  # element j: low nibble of byte j (j < 16), else high nibble
    qs = nibbles[:16] | (nibbles[16:] << 4)
    block = np.concatenate([np.frombuffer(np.float16(2.0).tobytes(), np.uint8), qs])
    assert np.array_equal(quants.dequantize(block, 2, (32,)), 2.0 * (nibbles.astype(np.float32) - 8))


# ----------------------------------------------------------------------------- bad files


def _tensor_info_at(raw: bytes, name: str) -> tuple[int, int]:
    """Byte positions of a tensor info's type (u32) and offset (u64) fields."""
    key = struct.pack("<Q", len(name)) + name.encode()
    pos = raw.index(key) + len(key)
    n_dims = struct.unpack_from("<I", raw, pos)[0]
    type_pos = pos + 4 + 8 * n_dims
    return type_pos, type_pos + 4


def _bad(tmp_path, raw: bytes, match: str):
    path = tmp_path / "bad.gguf"
    path.write_bytes(raw)
    with pytest.raises(GGUFError, match=match):
        ours.read(path)


def test_wrong_magic(tmp_path, small):
    _, raw = small
    _bad(tmp_path, b"GGML" + raw[4:], "not a GGUF file: magic")
    _bad(tmp_path, b"", "empty file")
    _bad(tmp_path, b"GG", "not a GGUF file")


@pytest.mark.parametrize("version,match", [(1, "unsupported GGUF version 1"), (4, "unsupported GGUF version 4"),
                                           (3 << 24, "big-endian")])
def test_unsupported_version(tmp_path, small, version, match):
    _, raw = small
    _bad(tmp_path, raw[:4] + struct.pack("<I", version) + raw[8:], match)


def test_truncated_anywhere(tmp_path, small):
    _, raw = small
    r = ref.GGUFReader(small[0])
    first_key = r.fields["t.str"].offset  # a metadata entry
    info = raw.index(struct.pack("<Q", 4) + b"q4_1")  # a tensor info
    _bad(tmp_path, raw[:12], "truncated file: the header needs 8 bytes at offset 8")
    _bad(tmp_path, raw[:first_key + 20], "truncated file: metadata key 't.str'")
    _bad(tmp_path, raw[:r.fields["a.strings"].offset + 40], "truncated file: metadata key 'a.strings'")
    _bad(tmp_path, raw[:info + 14], r"truncated file: tensor info \d+ \('q4_1'\)")
    _bad(tmp_path, raw[:r.data_offset - 3], "truncated file: the padding before the tensor data")
    last = max(r.tensors, key=lambda t: t.data_offset)
    end = last.data_offset + last.n_bytes
    _bad(tmp_path, raw[:end - 1], f"tensor '{last.name}' .* past the end of the file .* truncated")
    for cut in range(0, end, 97):  # every cut short of the data's end is refused, never half-read
        path = tmp_path / "cut.gguf"
        path.write_bytes(raw[:cut])
        with pytest.raises(GGUFError):
            ours.read(path)


def test_offset_past_the_end(tmp_path, small):
    _, raw = small
    _, off = _tensor_info_at(raw, "f16")
    bad = raw[:off] + struct.pack("<Q", 1 << 40) + raw[off + 8:]
    _bad(tmp_path, bad, "tensor 'f16' .* past the end of the file")


def test_misaligned_and_overlapping_offsets(tmp_path, small):
    _, raw = small
    _, off = _tensor_info_at(raw, "q8_0")
    rel = struct.unpack_from("<Q", raw, off)[0]
    _bad(tmp_path, raw[:off] + struct.pack("<Q", rel + 4) + raw[off + 8:], "not a multiple of the alignment 32")
    _bad(tmp_path, raw[:off] + struct.pack("<Q", 0) + raw[off + 8:], "overlap")


@pytest.mark.parametrize("gtype,match", [(12, r"ggml type Q4_K \(12\), which this reader does not support"), (99, "unknown ggml type 99")])
def test_unsupported_tensor_type(tmp_path, small, gtype, match):
    _, raw = small
    t, _ = _tensor_info_at(raw, "q4_1")
    _bad(tmp_path, raw[:t] + struct.pack("<I", gtype) + raw[t + 4:], f"tensor 'q4_1' has {match}")


def test_broken_metadata(tmp_path, small):
    _, raw = small
    pos = raw.index(b"t.u8") + 4  # the value type of t.u8
    _bad(tmp_path, raw[:pos] + struct.pack("<I", 13) + raw[pos + 4:], "metadata key 't.u8': unknown metadata value type 13")
    pos = raw.index("héllo".encode())
    _bad(tmp_path, raw[:pos] + b"\xff" + raw[pos + 1:], "metadata key 't.str': a string at offset .* is not UTF-8")
    dup = raw.replace(b"t.i8", b"t.u8", 1)
    _bad(tmp_path, dup, "duplicate metadata key 't.u8'")
    name = raw.index(struct.pack("<Q", 3) + b"f16")
    _bad(tmp_path, raw[:name + 8] + b"f32" + raw[name + 11:], "duplicate tensor name 'f32'")


def test_bad_alignment(tmp_path):
    path = tmp_path / "a.gguf"
    raw = write_file(path, alignment=64)
    pos = raw.index(b"general.alignment") + len("general.alignment") + 4
    _bad(tmp_path, raw[:pos] + struct.pack("<I", 48) + raw[pos + 4:], "alignment must be a power of two, got 48")


def test_damaged_block_scale(tmp_path, small):
    """A scale changed to inf or NaN is the damage a block shows: tensor() refuses it, naming the tensor."""
    path, raw = small
    info = ours.read(path).tensors["q4_1"]
    for fp16 in (b"\x00\x7c", b"\x00\x7e"):  # +inf, NaN
        bad = tmp_path / "scale.gguf"
        bad.write_bytes(raw[:info.offset + 20] + fp16 + raw[info.offset + 22:])  # block 1's d
        f = ours.read(bad)
        with pytest.raises(GGUFError, match="tensor 'q4_1': Q4_1 block 1 has a non-finite scale"):
            f.tensor("q4_1")
        assert np.isfinite(f.tensor("q8_0")).all()  # the other tensors still read
