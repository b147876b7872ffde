"""State dicts saved as safetensors (Hugging Face's format, what timm and the Hub ship), read without pickle.

The layout (github.com/huggingface/safetensors): an 8-byte little-endian header length N, N bytes of JSON
mapping each tensor's name to its dtype, shape and [begin, end) byte offsets in the data that follows
(plus an optional "__metadata__" of strings), then the raw little-endian data. Read here directly, so no
package is needed and nothing in the file can run code.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from edgekd.errors import InputFileError

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_MAX_HEADER = 100 * 2 ** 20  # the format's own limit on the JSON header


def _header(path: Path) -> Optional[Dict[str, Any]]:
    """The JSON header when the file is laid out as safetensors, else None."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        (n,) = struct.unpack("<Q", head)
        if not 2 <= n <= min(_MAX_HEADER, size - 8):
            return None
        first = f.read(1)
        if first != b"{":
            return None
        try:
            header = json.loads(first + f.read(n - 1))
        except (UnicodeDecodeError, ValueError):
            return None
    if not isinstance(header, dict):
        return None
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if not all(isinstance(v, dict) and {"dtype", "shape", "data_offsets"} <= set(v) for v in entries.values()):
        return None
    return header


def is_safetensors(path: Path) -> bool:
    return _header(path) is not None


def read_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    """Every tensor in the file, by name, checked against the file's size and its dtype's width."""
    header = _header(path)
    if header is None:
        raise InputFileError(f"{path} is not a safetensors file")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        data = f.read()
    out: Dict[str, torch.Tensor] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(meta["dtype"])
        if dtype is None:
            raise InputFileError(f"{path}: tensor {name!r} has dtype {meta['dtype']}, which edgekd does not read; "
                                 "save it as float32 or float16")
        begin, end = (int(v) for v in meta["data_offsets"])
        shape = [int(v) for v in meta["shape"]]
        width = torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= len(data) or end - begin != math.prod(shape) * width:
            raise InputFileError(f"{path}: tensor {name!r} lies outside the file or has the wrong length: "
                                 "the file is truncated or corrupt")
        raw = bytearray(data[begin:end])  # a copy: the tensor owns its memory
        out[name] = (torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)).reshape(shape)
    return out
