"""safetensors read and written with plain file I/O, one tensor (or row range) at a time.

Why not `safe_open` / `save_file`: `safe_open` memory-maps each shard, and every page a
tensor read touches stays in the process's resident set (file-backed, but counted by RSS
and by a container's memory limit) until the file is closed: a 1B-parameter import held
2.2 GB of shard pages on top of the parameters. `save_file` wants every tensor of a
shard in one dict, so an export held a whole output shard (up to `--max_shard_size`) in
host memory. Here a read is an `os.preadv` straight into a buffer we own, and a write
streams one tensor after the header; nothing is mapped.

The format (https://github.com/huggingface/safetensors, "Format"): 8 bytes little-endian
header length N, N bytes of JSON `{name: {"dtype", "shape", "data_offsets": [begin,
end]}, "__metadata__": {...}}` (offsets relative to the byte after the header, padded
with spaces to a multiple of 8), then the tensor bytes.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

# safetensors dtype name <-> numpy dtype (the floating dtypes an HF checkpoint may hold).
NP_OF = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16}
NAME_OF = {np.dtype(v): k for k, v in NP_OF.items()}
# A partial-column read goes through a temporary of at most this many bytes of full rows.
ROW_BLOCK_BYTES = 2 << 20


def _pread_into(fd: int, out: np.ndarray, offset: int, where: str) -> None:
    """Fill the C-contiguous `out` with the file's bytes at `offset` (short reads looped)."""
    view = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"{where}: the file ends early (truncated shard); re-copy it.")
        done += n


class TensorSlice:
    """One tensor of a file; `t[rows]` or `t[rows, cols]` reads just that region."""

    def __init__(self, fd: int, begin: int, dtype: np.dtype, shape: tuple[int, ...], where: str):
        self._fd, self._begin, self.dtype, self.shape, self._where = fd, begin, dtype, shape, where

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (len(self.shape) - len(index))
        spans = [s.indices(n) for s, n in zip(index, self.shape, strict=True)]
        if any(step != 1 for _, _, step in spans):
            raise ValueError(f"{self._where}: only contiguous slices are read, got {index}")
        bounds = [(a, max(a, b)) for a, b, _ in spans]
        if not self.shape:
            out = np.empty((), self.dtype)
            _pread_into(self._fd, out, self._begin, self._where)
            return out
        (r0, r1), rest = bounds[0], bounds[1:]
        out = np.empty([r1 - r0, *(b - a for a, b in rest)], self.dtype)
        row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        if all(b == (0, n) for b, n in zip(rest, self.shape[1:], strict=True)):
            _pread_into(self._fd, out, self._begin + r0 * row_bytes, self._where)
            return out
        # Some columns only: full rows a block at a time, then the wanted columns.
        cols = tuple(slice(a, b) for a, b in rest)
        step = max(1, ROW_BLOCK_BYTES // max(1, row_bytes))
        for r in range(r0, r1, step):
            e = min(r1, r + step)
            block = np.empty([e - r, *self.shape[1:]], self.dtype)
            _pread_into(self._fd, block, self._begin + r * row_bytes, self._where)
            out[r - r0 : e - r0] = block[(slice(None), *cols)]
        return out


class SafetensorsReader:
    """A .safetensors file opened for region reads (`get_slice(name)[...]`); no mmap."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self.header = read_header(self._fd, str(self.path))
        except Exception:
            os.close(self._fd)
            raise
        self._data = 8 + self.header.pop("__header_len__")

    def keys(self) -> list[str]:
        return [k for k in self.header if k != "__metadata__"]

    def get_slice(self, name: str) -> TensorSlice:
        h = self.header[name]
        dtype = np.dtype(NP_OF[h["dtype"]])
        begin, _ = h["data_offsets"]
        shape = tuple(int(s) for s in h["shape"])
        return TensorSlice(self._fd, self._data + int(begin), dtype, shape, str(self.path))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_header(fd: int, where: str) -> dict[str, Any]:
    """The JSON header of an open file, plus `__header_len__` (the N of the format)."""
    raw = os.pread(fd, 8, 0)
    if len(raw) < 8:
        raise ValueError(f"{where} is too short to be a safetensors file.")
    (n,) = struct.unpack("<Q", raw)
    header = json.loads(os.pread(fd, n, 8))
    header["__header_len__"] = n
    return header


class SafetensorsWriter:
    """A .safetensors file written one tensor at a time, in any order (`os.pwrite` at its
    offset): the header is laid out from `specs` (name, dtype, shape) up front, so host
    memory holds the tensor being written, never the file. `close()` checks that every
    tensor was written."""

    def __init__(
        self,
        path: str | Path,
        specs: Sequence[tuple[str, np.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
        self._spans: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}
        offset = 0
        for name, dtype, shape in specs:
            dtype = np.dtype(dtype)
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {
                "dtype": NAME_OF[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            self._spans[name] = (dtype, tuple(shape), offset)
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._data = 8 + len(blob)
        self._todo = set(self._spans)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self._fd, struct.pack("<Q", len(blob)) + blob, 0)
        os.ftruncate(self._fd, self._data + offset)

    def write(self, name: str, x: np.ndarray) -> None:
        """Write tensor `name` (its dtype and shape must be the header's)."""
        dtype, shape, offset = self._spans[name]
        if x.dtype != dtype or tuple(x.shape) != shape:
            raise ValueError(f"{self.path}: tensor {name} came as {x.dtype}{x.shape}, not {shape}.")
        view = memoryview(np.ascontiguousarray(x).reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], self._data + offset + done)
        self._todo.discard(name)

    def close(self, check: bool = True) -> None:
        """Close the file; with `check`, raise if a tensor of the header was never written."""
        if self._fd < 0:
            return
        os.close(self._fd)
        self._fd = -1
        if check and self._todo:
            raise ValueError(f"{self.path}: tensors never written: {sorted(self._todo)[:3]}")
