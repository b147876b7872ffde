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
from typing import Any, BinaryIO, Dict, Optional, Tuple

import torch

from edgekd.errors import InputFileError

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_MAX_HEADER = 100 * 2 ** 20  # the format's own limit on the JSON header


def _header(f: BinaryIO, size: int) -> Optional[Tuple[int, Dict[str, Any]]]:
    """(header length, JSON header) when the open file is laid out as safetensors, else None."""
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
    return n, header


def read_safetensors(path: Path) -> Optional[Dict[str, torch.Tensor]]:
    """Every tensor in the file, by name, checked against the file's size and its dtype's width; None when
    the file is not safetensors (the header is read once: only a file that has one is read further)."""
    with open(path, "rb") as f:
        found = _header(f, path.stat().st_size)
        if found is None:
            return None
        n, header = found
        data = f.read()  # the header's n bytes are read: the data follows
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
