"""Teachers saved with torch.export.save (a .pt2 archive: PyTorch's successor to TorchScript).

torch.export.load unpickles some parts of an archive with weights_only=False (tensor subclasses, custom and
opaque objects, and sample inputs it cannot read otherwise), so the archive is read first and any such part
needs --trust-pickle, as a pickled module does. A plain model's archive has none: its weights are raw
tensors described in JSON, its graph is JSON.

An exported graph is fixed to the batch size it was traced with unless the user marked the batch dynamic;
ExportedTeacher runs any batch through it in chunks of that size, so distillation's batches fit it. The
graph takes no forward hooks and its BatchNorm is already in the mode it was exported in: where its weights
fit a registered architecture, checkpoint.load_model rebuilds the eager network (rebuild.py), as for
TorchScript.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any, List, Optional, Tuple

import torch
import torch.nn as nn

from edgekd.errors import InputFileError
from edgekd.models.script_taps import TappedScript

_CONFIGS = ("data/weights/", "data/constants/")
_SAMPLES = "data/sample_inputs/"
_TENSOR_CONSTANT = "tensor_"  # torch.export.pt2_archive.constants.TENSOR_CONSTANT_FILENAME_PREFIX


def is_exported_program(names: List[str]) -> bool:
    """Whether a zip's member names are a torch.export archive (its `archive_format` file and a model graph)."""
    return any(n.endswith("/archive_format") or n == "archive_format" for n in names) and any(
        "/models/" in n and n.endswith(".json") for n in names)


def read_archive(zf: zipfile.ZipFile) -> Tuple[List[str], Optional[Tuple[int, ...]]]:
    """(the parts torch.export.load would unpickle with code execution allowed, the shape of the first
    positional sample input the program was exported with, if readable). Pickled parts: entries the payload
    configs mark as pickled or custom objects, and any .pt member (sample inputs, legacy constants) that a
    weights-only load refuses (torch falls back to a full unpickle there)."""
    found: List[str] = []
    shape = None
    for name in zf.namelist():
        inside = name.split("/", 1)[-1]
        if inside.startswith(_CONFIGS) and name.endswith("_config.json"):
            try:
                entries = json.loads(zf.read(name)).get("config", {}).items()
            except (ValueError, AttributeError):
                found.append(inside)
                continue
            for fqn, meta in entries:
                if meta.get("use_pickle") or (inside.startswith("data/constants/")
                                              and not str(meta.get("path_name", "")).startswith(_TENSOR_CONSTANT)):
                    found.append(fqn)
        elif name.endswith(".pt"):
            try:
                loaded = torch.load(io.BytesIO(zf.read(name)), map_location="cpu", weights_only=True)
            except Exception:
                found.append(inside)
                continue
            if shape is None and inside.startswith(_SAMPLES):
                shape = _first_shape(loaded)
    return found, shape


def _first_shape(args: Any) -> Optional[Tuple[int, ...]]:
    first = args[0] if isinstance(args, (tuple, list)) and args else None
    while isinstance(first, (tuple, list)) and first:
        first = first[0]
    return tuple(first.shape) if torch.is_tensor(first) else None


class ExportedTeacher(nn.Module):
    """An exported program's module, callable on any batch: chunks of the batch it was exported with
    (`fixed_batch`; None where its batch is dynamic), the last one padded."""

    original_name = "ExportedProgram"

    def __init__(self, graph: nn.Module, fixed_batch: Optional[int]) -> None:
        super().__init__()
        self.graph = graph
        self.fixed_batch = fixed_batch

    def train(self, mode: bool = True) -> ExportedTeacher:
        # An exported graph refuses train()/eval(): its BatchNorm and dropout are in the mode it was
        # exported in, which is the one its outputs are checked in.
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> Any:
        b = self.fixed_batch
        if b is None or len(x) == b:
            return self.graph(x)
        n = len(x)
        pad = -n % b
        if pad:
            x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
        outs = [self.graph(chunk) for chunk in x.split(b)]
        return _cat(outs, n)


def _cat(outs: List[Any], n: int) -> Any:
    first = outs[0]
    if torch.is_tensor(first):
        return torch.cat(outs)[:n]
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([o[i] for o in outs], n) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _cat([o[k] for o in outs], n) for k in first}
    return first  # not per image (a constant): the first chunk's


def load_exported(path: Path, trust_pickle: bool) -> Tuple[ExportedTeacher, Optional[Tuple[int, ...]]]:
    """(the program as a module, the shape of its sample input) from a torch.export archive."""
    with zipfile.ZipFile(path) as zf:
        risky, shape = read_archive(zf)
    if risky and not trust_pickle:
        raise InputFileError(
            f"{path} is a torch.export archive with pickled parts ({', '.join(risky[:3])}) and unpickling runs "
            "code: pass --trust-pickle only if you trust its source, or save a state_dict instead")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # From bytes: torch.export.load takes a path only when it ends in .pt2, and a run directory keeps
            # the file as teacher.pt.
            program = torch.export.load(io.BytesIO(path.read_bytes()))
            graph = program.module()
    except Exception as e:  # a damaged or foreign-version archive fails in many ways
        first = (str(e).splitlines() or [type(e).__name__])[0][:100]
        raise InputFileError(f"{path}: the torch.export archive could not be loaded ({first}); "
                             "save a state_dict of the model instead") from None
    return ExportedTeacher(graph, _fixed_batch(program)), shape


def _fixed_batch(program: torch.export.ExportedProgram) -> Optional[int]:
    """The batch size the graph insists on: its image input's first dimension where that is a number (exported
    without a dynamic batch Dim; a symbol where it has one). Read from the graph, no forward run."""
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            val = node.meta.get("val")
            if torch.is_tensor(val) and val.dim() == 4 and isinstance(val.shape[0], int):
                return int(val.shape[0])
            return None
    return None


def compiled_kind(model: nn.Module) -> Optional[str]:
    """"TorchScript" or "torch.export" for a teacher kept as its file's compiled graph (no forward hooks,
    so no BatchNorm statistics or features to read), None for an eager module."""
    if isinstance(model, (torch.jit.ScriptModule, TappedScript)):
        return "TorchScript"  # as loaded, or run through a copy of its graph (script_taps.TappedScript)
    if any(isinstance(m, ExportedTeacher) for m in model.modules()):
        return "torch.export"
    return None
