"""safetensors files read and written one tensor at a time, so memory stays bounded by a tensor, not a file.

The format: an 8-byte little-endian header length, a JSON header `{name: {dtype, shape, data_offsets}}`
(plus an optional `__metadata__`), then the raw little-endian bytes. `read_header` checks a header against
its file's size, so a truncated or corrupt file is reported by file and tensor name before anything is
loaded (`safetensors` itself only says the buffer is incomplete). Tensors are then read by
`safetensors.safe_open`, opened for one tensor at a time: its memory map, whose touched pages count as
resident while it is open, never outlives the read. The writer streams: `safetensors` can only write a
file whose tensors are all in memory at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

from devstral_jax.errors import SafetensorsError

DTYPES = {
    "BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16), "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "I32": np.dtype(np.int32),
    "I64": np.dtype(np.int64), "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_ALIGNMENT = 8  # the header is padded with spaces so the data starts 8-byte aligned


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of a file: its name there, dtype, shape and size."""

    name: str
    file: str
    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Every tensor of a safetensors file, checked against the file's size (a truncated file fails here)."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            header_len = int.from_bytes(prefix, "little") if len(prefix) == 8 else None
            if header_len is None or 8 + header_len > size:
                raise SafetensorsError(f"{path} is truncated or not a safetensors file: its header does not fit "
                                       f"in its {size} bytes.")
            header = json.loads(f.read(header_len))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"Cannot read the safetensors header of {path}: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the safetensors header is not a JSON object.")
    data_start = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = DTYPES[entry["dtype"]], tuple(int(d) for d in entry["shape"]), \
                entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: tensor {name} has a malformed header entry {entry!r} (dtypes "
                                   f"understood: {sorted(DTYPES)}).") from None
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes or begin < 0:
            raise SafetensorsError(f"{path}: tensor {name} ({entry['dtype']} {list(shape)}) should take {nbytes} "
                                   f"bytes but its data_offsets span {end - begin}.")
        if data_start + end > size:
            raise SafetensorsError(f"{path} is truncated: tensor {name} ends at byte {data_start + end} but the file "
                                   f"has {size} bytes.")
        tensors[name] = TensorInfo(name, path, dtype, shape, nbytes)
    return tensors


def read_tensor(info: TensorInfo) -> np.ndarray:
    """The tensor's values in a freshly allocated array (nothing else of the file is read or kept)."""
    try:
        with safe_open(info.file, framework="numpy") as f:
            return f.get_tensor(info.name)
    except (OSError, SafetensorError) as e:  # the file changed since its header was read
        raise SafetensorsError(f"Cannot read tensor {info.name} from {info.file}: {e}") from None


class SafetensorsWriter:
    """Writes a file whose tensors (names, shapes, dtypes) are known up front, one tensor at a time, in order."""

    def __init__(self, path: str | os.PathLike, specs: list[tuple[str, tuple[int, ...], np.dtype]],
                 metadata: dict[str, str] | None = None):
        header: dict[str, Any] = {"__metadata__": metadata or {}}
        offset = 0
        for name, shape, dtype in specs:
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-(8 + len(encoded)) % _ALIGNMENT)
        self._pending = [(name, tuple(shape), np.dtype(dtype)) for name, shape, dtype in specs]
        self._file = open(path, "wb")
        self._file.write(len(encoded).to_bytes(8, "little") + encoded)

    def write(self, name: str, array: np.ndarray) -> None:
        """Appends the next tensor; it must be the next one of `specs` (name, shape and dtype)."""
        expected = self._pending.pop(0) if self._pending else None
        if expected != (name, tuple(array.shape), array.dtype):
            raise SafetensorsError(f"Writing {name} {array.dtype} {tuple(array.shape)} to {self._file.name}, "
                                   f"whose next tensor is {expected}.")
        np.ascontiguousarray(array).tofile(self._file)

    def close(self) -> None:
        self._file.close()
        if self._pending:
            raise SafetensorsError(f"{self._file.name} closed with {len(self._pending)} tensor(s) unwritten, "
                                   f"the first {self._pending[0][0]}.")

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._file.close()
