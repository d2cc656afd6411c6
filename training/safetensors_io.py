"""A small reader and writer for the `.safetensors` format (Debian has no `safetensors` package).

Layout (https://github.com/huggingface/safetensors#format):

    8 bytes       N, unsigned little-endian 64-bit: length of the header
    N bytes       JSON: {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                         "__metadata__": {"<str>": "<str>"}}   (optional; padded with spaces)
    rest          the tensors' raw little-endian C-order bytes; offsets are relative to here

The file is memory-mapped with numpy, so opening a multi-gigabyte shard costs nothing and each
tensor is read from disk only when asked for. numpy has no bfloat16: `numpy()` widens BF16 to
float32 by shifting the 16 bits into the top half of a float32 (exact); `torch()` returns a real
`torch.bfloat16` tensor instead.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

# safetensors dtype -> numpy dtype of the stored elements (BF16 is read as raw uint16)
_NP: Dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    pass


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact: bf16 is the top half of a float32)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 bit patterns, rounding to nearest even (NaN stays NaN)."""
    x = np.array(x, dtype=np.float32, order="C")
    u = x.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded = rounded.copy()
        rounded[nan] = 0x7FC0
    return rounded


class SafetensorsFile:
    """One `.safetensors` file, memory-mapped; tensors are read one at a time."""

    def __init__(self, path: str):
        self.path = str(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise SafetensorsError(f"{self.path}: too short for a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise SafetensorsError(f"{self.path}: header length {n} is not plausible "
                                       f"(file is {size} bytes); not a safetensors file?")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SafetensorsError(f"{self.path}: header is not JSON: {e}") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: header is not a JSON object")
        self.metadata: Dict[str, str] = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        data_len = size - self._data_start
        self._info: Dict[str, Tuple[str, Tuple[int, ...], int, int]] = {}
        for name, d in header.items():
            try:
                dtype, shape, (begin, end) = d["dtype"], tuple(int(s) for s in d["shape"]), d["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError(f"{self.path}: bad header entry for {name!r}: {d!r}") from None
            if dtype not in _NP:
                raise SafetensorsError(f"{self.path}: {name}: unsupported dtype {dtype}")
            want = int(np.prod(shape, dtype=np.int64)) * _NP[dtype].itemsize
            if not (0 <= begin <= end <= data_len) or end - begin != want:
                raise SafetensorsError(f"{self.path}: {name}: data_offsets [{begin}, {end}] do not fit "
                                       f"{dtype}{list(shape)} ({want} bytes) in {data_len} data bytes")
            self._info[name] = (dtype, shape, int(begin), int(end))
        self._mm: Optional[np.memmap] = None

    # -- header ---------------------------------------------------------------------------

    def keys(self) -> List[str]:
        return list(self._info)

    def __contains__(self, name: str) -> bool:
        return name in self._info

    def __len__(self) -> int:
        return len(self._info)

    def dtype(self, name: str) -> str:
        return self._info[name][0]

    def shape(self, name: str) -> Tuple[int, ...]:
        return self._info[name][1]

    def nbytes(self, name: str) -> int:
        _, _, b, e = self._info[name]
        return e - b

    # -- data -----------------------------------------------------------------------------

    def _raw(self, name: str) -> np.ndarray:
        """Read-only view of the stored elements (BF16 as uint16)."""
        dtype, shape, b, e = self._info[name]
        if e == b:
            return np.zeros(shape, dtype=_NP[dtype])
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        buf = self._mm[self._data_start + b: self._data_start + e]
        return buf.view(_NP[dtype]).reshape(shape)

    def numpy(self, name: str) -> np.ndarray:
        """A writable copy; BF16 is widened to float32."""
        raw = self._raw(name)
        if self._info[name][0] == "BF16":
            return bf16_bits_to_float32(raw)
        return np.array(raw, dtype=raw.dtype.newbyteorder("="), copy=True)

    def torch(self, name: str):
        """A torch tensor (a copy) with the stored dtype, BF16 included."""
        import torch

        dtype = self._info[name][0]
        raw = np.array(self._raw(name), copy=True)
        if dtype == "BF16":
            return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
        if dtype in ("U16", "U32", "U64"):
            raise SafetensorsError(f"{self.path}: {name}: torch has no {dtype} tensors")
        return torch.from_numpy(raw)

    def close(self) -> None:
        self._mm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_numpy(path: str) -> Dict[str, np.ndarray]:
    with SafetensorsFile(path) as f:
        return {k: f.numpy(k) for k in f.keys()}


def load_torch(path: str) -> Dict[str, Any]:
    with SafetensorsFile(path) as f:
        return {k: f.torch(k) for k in f.keys()}


def _to_bytes(value: Any) -> Tuple[str, List[int], bytes]:
    """(safetensors dtype, shape, little-endian bytes) of a numpy array or torch tensor."""
    try:
        import torch
    except ImportError:  # pragma: no cover - numpy-only use
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            return "BF16", list(t.shape), t.view(torch.int16).numpy().astype("<i2").tobytes()
        value = t.numpy()
    arr = np.asarray(value)
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    for name, dt in _NP.items():
        if name != "BF16" and arr.dtype.kind == dt.kind and arr.dtype.itemsize == dt.itemsize:
            return name, list(arr.shape), arr.astype(dt, copy=False).tobytes()
    raise SafetensorsError(f"cannot store dtype {arr.dtype}")


def save(path: str, tensors: Mapping[str, Any], metadata: Optional[Mapping[str, str]] = None) -> None:
    """Writes numpy arrays / torch tensors (bf16 kept as BF16) as a `.safetensors` file."""
    header: Dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, value in tensors.items():
        dtype, shape, data = _to_bytes(value)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned, as the reference does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def iter_torch(path: str) -> Iterator[Tuple[str, Any]]:
    with SafetensorsFile(path) as f:
        for k in f.keys():
            yield k, f.torch(k)
