"""Reading GGUF, llama.cpp's single-file model format, from scratch: header, metadata, tensor infos, data.

Layout (little-endian throughout; a string is a u64 byte length followed by UTF-8 bytes):

    magic "GGUF" | version u32 (2 or 3) | tensor_count u64 | kv_count u64
    kv_count metadata entries:  key string | value type u32 | value
        value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool (1 byte), 8 string,
                     9 array = item type u32 | count u64 | count items (arrays may nest), 10 u64, 11 i64, 12 f64
    tensor_count tensor infos:  name string | n_dims u32 | dims u64 * n_dims (fastest-varying first)
                                | ggml type u32 | offset u64 (relative to the data section)
    padding up to a multiple of `general.alignment` (default 32), then the data section.

`read(path)` maps the file once (numpy memmap: nothing is copied until a tensor is asked for), checks
every field against the file's size and the format's rules, and returns a GGUFFile, or raises
GGUFError naming what is wrong and where. GGUF has no checksum: damage inside tensor data is caught
only where it shows (a non-finite block scale); the course's data layer checks each file's sha256.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import quants

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # ggml tensors have at most 4 dimensions

# value type id -> (name, struct format) for the fixed-size scalars
SCALARS = {0: ("u8", "B"), 1: ("i8", "b"), 2: ("u16", "H"), 3: ("i16", "h"), 4: ("u32", "I"), 5: ("i32", "i"),
           6: ("f32", "f"), 7: ("bool", "B"), 10: ("u64", "Q"), 11: ("i64", "q"), 12: ("f64", "d")}
STRING, ARRAY = 8, 9
NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
         12: "<f8"}


class GGUFError(ValueError):
    """A file that is not a GGUF file this reader can use: wrong magic or version, truncated, inconsistent."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry: shape in numpy order (ggml's dims reversed), type, absolute byte offset and size."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    type_name: str
    offset: int
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class GGUFFile:
    """A parsed GGUF file: metadata as Python values, tensor infos, and the mapped bytes to read tensors from."""

    path: Path
    version: int
    alignment: int
    data_offset: int
    metadata: dict[str, object]
    metadata_types: dict[str, str]  # key -> value type, e.g. "u32", "string", "array[string]"
    tensors: dict[str, TensorInfo]
    _mm: np.ndarray = field(repr=False)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view of the mapped file (no copy)."""
        info = self._info(name)
        return self._mm[info.offset:info.offset + info.n_bytes]

    def tensor(self, name: str) -> np.ndarray:
        """The tensor dequantized to float32, in numpy/torch order (a new array)."""
        info = self._info(name)
        try:
            return quants.dequantize(self.raw(name), info.ggml_type, info.shape)
        except ValueError as e:
            raise GGUFError(f"{self.path.name}: tensor {name!r}: {e}") from None

    def _info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise KeyError(f"{self.path.name} has no tensor {name!r} ({len(self.tensors)} tensors)")
        return self.tensors[name]


class _Cursor:
    """Walks the header, checking that every read stays inside the file; `where` names the current field."""

    def __init__(self, buf: memoryview, name: str):
        self.buf, self.pos, self.name, self.where = buf, 0, name, "the header"

    def take(self, n: int) -> int:
        """Advance by n bytes; return the old position, or raise if the file ends first."""
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise GGUFError(f"{self.name}: truncated file: {self.where} needs {n} bytes at offset {start}, "
                            f"but the file ends at {len(self.buf)}")
        self.pos += n
        return start

    def scalar(self, fmt: str):
        return struct.unpack_from("<" + fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("Q")
        start = self.take(n)
        try:
            return str(self.buf[start:start + n], "utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"{self.name}: {self.where}: a string at offset {start} is not UTF-8 ({e.reason})") from None

    def value(self, vtype: int, depth: int = 0) -> tuple[object, str]:
        """One metadata value of type vtype -> (Python value, type name)."""
        if vtype in SCALARS:
            name, fmt = SCALARS[vtype]
            v = self.scalar(fmt)
            return (bool(v) if vtype == 7 else v), name
        if vtype == STRING:
            return self.string(), "string"
        if vtype == ARRAY:
            if depth > 8:
                raise GGUFError(f"{self.name}: {self.where}: arrays nested more than 8 deep")
            itype, count = self.scalar("I"), self.scalar("Q")
            if itype in NUMPY:  # a run of fixed-size numbers: read them all at once
                dt = np.dtype(NUMPY[itype])
                start = self.take(count * dt.itemsize)
                arr = np.frombuffer(self.buf, dt, count, start)
                items = (arr != 0).tolist() if itype == 7 else arr.tolist()
                return items, f"array[{SCALARS[itype][0]}]"
            if itype not in (STRING, ARRAY):
                raise GGUFError(f"{self.name}: {self.where}: unknown array item type {itype}")
            if count * (8 if itype == STRING else 12) > len(self.buf) - self.pos:  # each item takes >= 8 / 12 bytes
                self.take(count * 8)  # raises: the file is too short for `count` items
            items, sub = [], "string" if itype == STRING else "array"
            for _ in range(count):
                v, sub = self.value(itype, depth + 1)
                items.append(v)
            return items, f"array[{sub}]"
        raise GGUFError(f"{self.name}: {self.where}: unknown metadata value type {vtype}")


def read(path: str | Path) -> GGUFFile:
    """Parse and check a GGUF file -> GGUFFile; GGUFError names the first problem (nothing half-built)."""
    path = Path(path)
    try:
        mm = np.memmap(path, dtype=np.uint8, mode="r")
    except ValueError:  # numpy cannot map an empty file
        raise GGUFError(f"{path.name}: empty file, not a GGUF file") from None
    cur = _Cursor(memoryview(mm), path.name)
    if len(mm) < 4 or bytes(mm[:4]) != MAGIC:
        raise GGUFError(f"{path.name}: not a GGUF file: magic is {bytes(mm[:4])!r}, expected {MAGIC!r}")
    cur.take(4)
    version = cur.scalar("I")
    if version not in VERSIONS:
        hint = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
        raise GGUFError(f"{path.name}: unsupported GGUF version {version}{hint}; this reader reads {VERSIONS}")
    n_tensors, n_kv = cur.scalar("Q"), cur.scalar("Q")

    metadata, types = {}, {}
    for i in range(n_kv):
        cur.where = f"metadata entry {i}"
        key = cur.string()
        cur.where = f"metadata key {key!r}"
        if key in metadata:
            raise GGUFError(f"{path.name}: duplicate metadata key {key!r}")
        metadata[key], types[key] = cur.value(cur.scalar("I"))

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if "general.alignment" in metadata and types["general.alignment"] != "u32":
        raise GGUFError(f"{path.name}: general.alignment must be a u32, got {types['general.alignment']}")
    if alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"{path.name}: general.alignment must be a power of two, got {alignment}")

    entries = []
    for i in range(n_tensors):
        cur.where = f"tensor info {i}"
        name = cur.string()
        cur.where = f"tensor info {i} ({name!r})"
        n_dims = cur.scalar("I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFError(f"{path.name}: tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        dims = [cur.scalar("Q") for _ in range(n_dims)]
        entries.append((name, dims, cur.scalar("I"), cur.scalar("Q")))
    cur.where = "the padding before the tensor data"
    data_offset = -(-cur.pos // alignment) * alignment
    if n_tensors:
        cur.take(data_offset - cur.pos)

    tensors = {}
    for name, dims, gtype, rel in entries:
        tensors[name] = _check_tensor(path.name, tensors, name, dims, gtype, rel, data_offset, alignment, len(mm))
    _check_overlaps(path.name, tensors)
    return GGUFFile(path, version, alignment, data_offset, metadata, types, tensors, mm)


def _check_tensor(file: str, seen: dict, name: str, dims: list[int], gtype: int, rel: int, data_offset: int,
                  alignment: int, size: int) -> TensorInfo:
    """One tensor info -> TensorInfo, after checking its type, sizes and place in the file."""
    if name in seen:
        raise GGUFError(f"{file}: duplicate tensor name {name!r}")
    if gtype not in quants.GGML_TYPES:
        raise GGUFError(f"{file}: tensor {name!r} has unknown ggml type {gtype}")
    type_name, block, bytes_per_block = quants.GGML_TYPES[gtype]
    if gtype not in quants.DEQUANTIZE:
        raise GGUFError(f"{file}: tensor {name!r} has ggml type {type_name} ({gtype}), which this reader does "
                        "not support (F32, F16, Q4_0, Q4_1, Q8_0, Q8_1)")
    if any(d == 0 for d in dims) or np.prod(np.array(dims, dtype=object)) >= 2**62:
        raise GGUFError(f"{file}: tensor {name!r} has impossible dimensions {dims}")
    if dims[0] % block:
        raise GGUFError(f"{file}: tensor {name!r}: row length {dims[0]} is not a multiple of {type_name}'s "
                        f"block of {block}")
    n_bytes = int(np.prod(np.array(dims, dtype=object))) // block * bytes_per_block
    if rel % alignment:
        raise GGUFError(f"{file}: tensor {name!r}: offset {rel} is not a multiple of the alignment {alignment}")
    start = data_offset + rel
    if start + n_bytes > size:
        raise GGUFError(f"{file}: tensor {name!r} ({type_name}, {n_bytes} bytes at offset {start}) ends at byte "
                        f"{start + n_bytes}, past the end of the file ({size} bytes): the file is truncated or "
                        "the offset is wrong")
    return TensorInfo(name, tuple(int(d) for d in reversed(dims)), gtype, type_name, start, n_bytes)


def _check_overlaps(file: str, tensors: dict[str, TensorInfo]) -> None:
    """Two tensors may not share bytes (a changed offset usually makes them)."""
    spans = sorted((t.offset, t.offset + t.n_bytes, t.name) for t in tensors.values())
    for (_, end, a), (start, _, b) in zip(spans[:-1], spans[1:], strict=True):
        if start < end:
            raise GGUFError(f"{file}: tensors {a!r} and {b!r} overlap (a changed offset?)")
