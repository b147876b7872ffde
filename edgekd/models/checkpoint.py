"""Loading teachers from the files users actually have, and edgekd's own checkpoint format.

Formats, detected from the file's content (never its name):
- edgekd: torch.save'd dict {"format": "edgekd-checkpoint", arch, state_dict, spec, provenance}
- state_dict: a plain torchvision-style state_dict (optionally wrapped in {"state_dict": ...}), saved with
  torch.save or as safetensors (safetensors_file.py)
- torchscript: a torch.jit.save'd archive
- exported: a torch.export.save'd archive (.pt2; exported.py: pickled parts only with trust_pickle)
- pickle: a whole pickled nn.Module; loaded only with trust_pickle=True, since unpickling runs code.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from edgekd.errors import InputFileError, ModelError, UsageError
from edgekd.fileio import PathLike, atomic_path, sha256_file
from edgekd.models.exported import is_exported_program, load_exported
from edgekd.models.logits import as_classifier
from edgekd.models.rebuild import rebuild_eager
from edgekd.models.registry import create_model, get_entry
from edgekd.models.safetensors_file import read_safetensors
from edgekd.models.statedict import fit_state_dict
from edgekd.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

CHECKPOINT_FORMAT = "edgekd-checkpoint"
CHECKPOINT_VERSION = 1
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "student")


@dataclass
class LoadedModel:
    model: nn.Module
    spec: ModelSpec
    format: str
    path: Path
    sha256: str
    provenance: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)  # what loading decided, for the run's summary


def save_checkpoint(path: PathLike, model: nn.Module, spec: ModelSpec,
                    provenance: Optional[Dict[str, Any]] = None) -> None:
    """Write an edgekd checkpoint atomically. Refuses weights that are not finite."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelError(f"refusing to save {path}: non-finite values in {bad[0]}")
    obj = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": spec.arch,
           "state_dict": state, "spec": spec.to_dict(), "provenance": provenance or {}}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _is_torchscript(names: List[str]) -> bool:
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


# What each kind of compiled file is called in notes; both are rebuilt as eager modules where they can be.
_COMPILED = {"torchscript": "TorchScript", "exported": "torch.export"}


def _is_onnx(path: Path) -> bool:
    """Whether the file parses as an ONNX model with a graph (only asked once torch.load has failed)."""
    try:
        import onnx

        return len(onnx.load(str(path), load_external_data=False).graph.node) > 0
    except Exception:  # not ONNX, or onnx not installed (device installs do not distill)
        return False


def _read_object(path: Path, trust_pickle: bool) -> Tuple[str, Any]:
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{path} is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise InputFileError(f"{path} is empty: not a PyTorch checkpoint")
    try:
        names: List[str] = []
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        if is_exported_program(names):
            return "exported", load_exported(path, trust_pickle)
        if _is_torchscript(names):
            with warnings.catch_warnings():  # TorchScript is deprecated, but users still have such files
                warnings.simplefilter("ignore", FutureWarning)
                return "torchscript", torch.jit.load(str(path), map_location="cpu")
    except (zipfile.BadZipFile, RuntimeError) as e:
        raise InputFileError(f"{path} is truncated or corrupt ({str(e).splitlines()[0][:80]})") from None
    tensors = read_safetensors(path)  # a state_dict in Hugging Face's format (timm, the Hub): no pickle
    if tensors is not None:
        return "weights", tensors
    try:
        return "weights", torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler raises KeyError, EOFError, RuntimeError... on junk
        error = e
    if _is_onnx(path):
        raise InputFileError(
            f"{path} is an ONNX model: distillation needs the teacher's gradients, which ONNX files do not "
            "give; pass the PyTorch weights it was exported from (state_dict, TorchScript or checkpoint)")
    if not isinstance(error, pickle.UnpicklingError):
        first = (str(error).splitlines() or [type(error).__name__])[0][:80]
        raise InputFileError(f"{path} is truncated or not a PyTorch checkpoint ({first})")
    if "weights only" not in str(error).lower() and "weights_only" not in str(error).lower():
        raise InputFileError(f"{path} is not a PyTorch checkpoint (or is corrupt)")
    if not trust_pickle:
        raise InputFileError(
            f"{path} holds pickled Python objects (a whole nn.Module?) and unpickling runs code: "
            "pass --trust-pickle only if you trust its source, or save a state_dict instead")
    try:
        return "pickle", torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # arbitrary unpickling can fail in arbitrary ways
        raise InputFileError(f"{path}: the trusted pickle could not be loaded ({type(e).__name__}: {e})") from None


def _unwrap_state_dict(obj: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    for key in _WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise InputFileError("the file holds a dict without tensors: not a state_dict or edgekd checkpoint")
    return sd


def _first_conv_channels(model: nn.Module) -> int:
    for p in model.state_dict().values():
        if p.dim() == 4:
            return int(p.shape[1])
    raise ModelError("model has no convolution: not an image classifier")


# Input sizes tried, in order, when a module the file does not describe fails at 224x224 (an fc layer
# fixes the size: pytorch/examples' MNIST Net runs at 28x28 only).
_PROBE_SIZES = (32, 28, 64, 96, 112, 128, 160, 192, 256, 299, 384)


def _runnable(obj: nn.Module, channels: int, size: Optional[Tuple[int, int]],
              path: Path) -> Tuple[nn.Module, List[str], Tuple[int, int]]:
    """(the module as a classifier, notes, its input size): the given size, or 224x224, or the first of
    _PROBE_SIZES it runs on, said in the notes."""
    sizes = [tuple(size)] if size else [(224, 224)] + [(s, s) for s in _PROBE_SIZES]
    first = ""
    for hw in sizes:
        try:
            model, picked = as_classifier(obj, torch.zeros(1, channels, *hw))
        except RuntimeError as e:
            # TorchScript's message starts with "The following operation failed..." and ends with the cause.
            lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
            first = first or lines[-1][:100]
            continue
        if hw != sizes[0]:
            picked = picked + [f"the model does not run on 224x224 but does on {hw[0]}x{hw[1]}: taken as its "
                               "input size (--input-size says otherwise)"]
        return model, picked, hw
    tried = f"a {channels}x{size[0]}x{size[1]} input" if size else f"{channels}-channel inputs of 224 or {', '.join(map(str, _PROBE_SIZES))} px"
    raise ModelError(f"{path} does not run on {tried} ({first}): give its --input-size")


def _probe_classes(model: nn.Module, channels: int, size: Tuple[int, int]) -> int:
    with torch.no_grad():
        out = model(torch.zeros(1, channels, *size))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ModelError("model output is not a (batch, classes) tensor of logits")
    return int(out.shape[1])


def load_model(path: PathLike, arch: Optional[str] = None, trust_pickle: bool = False,
               spec_overrides: Optional[Dict[str, Any]] = None) -> LoadedModel:
    """Load a classifier from any supported file. `spec_overrides` (input_size, mean, std, labels,
    num_classes) fill in what the file does not carry; an override that contradicts the weights is an error."""
    path = Path(path)
    kind, obj = _read_object(path, trust_pickle)
    overrides = dict(spec_overrides or {})
    want_classes = overrides.pop("num_classes", None)
    provenance: Dict[str, Any] = {}
    notes: List[str] = []
    source = None  # where a compiled file's weights are read, when obj wraps them (an exported graph)
    if kind == "exported":
        obj, sample = obj
        source = obj.graph
        if sample and len(sample) == 4 and overrides.get("input_size") is None:
            overrides["input_size"] = tuple(sample[2:])
            notes.append(f"input size {sample[2]}x{sample[3]}: the file's sample input (--input-size says otherwise)")

    if kind == "weights" and isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        fmt = "edgekd"
        if not isinstance(obj.get("spec"), dict) or not isinstance(obj.get("state_dict"), dict):
            raise InputFileError(f"{path} is an edgekd checkpoint without its spec or weights: "
                                 "it is damaged or was written by hand; export or distill it again")
        try:
            spec = ModelSpec.from_dict(obj["spec"])
        except UsageError as e:
            raise InputFileError(f"{path}: {e}") from None
        model = create_model(spec.arch, spec.num_classes, spec.in_channels)
        try:
            model.load_state_dict(obj["state_dict"])
        except RuntimeError as e:
            raise ModelError(f"{path}: weights do not match {spec.arch} ({str(e).splitlines()[0][:100]})") from None
        provenance = dict(obj.get("provenance") or {})
    elif kind == "weights" and isinstance(obj, dict):
        fmt = "state_dict"
        name, classes, channels, weights, notes = fit_state_dict(_unwrap_state_dict(obj), arch)
        entry = get_entry(name)
        model = create_model(name, classes, channels)
        model.load_state_dict(weights)
        spec = ModelSpec(name, classes, channels, entry.default_input_size,
                         _fit(entry.default_mean, channels), _fit(entry.default_std, channels))
    elif kind in _COMPILED and arch is None and (
            rebuilt := rebuild_eager(obj, overrides.get("input_size"), _COMPILED[kind], source))[0]:
        fmt = kind
        eager = rebuilt[0]
        model, channels = eager.model, eager.channels
        notes.append(eager.note)
        entry = get_entry(eager.arch)
        if eager.normalisation is not None:
            # The file's own code normalises: its network, distilled on inputs so normalised, is what a
            # state_dict of it with that mean/std would be; real images get the same normalisation.
            mean, std = eager.normalisation
            given = [overrides.pop(k, None) for k in ("mean", "std")]
            notes.append(f"the file normalises its input itself: mean {_fmt(mean)}, std {_fmt(std)} are the teacher's"
                         + (" (--mean/--std ignored)" if any(v is not None for v in given) else ""))
        else:
            mean, std = _fit(entry.default_mean, channels), _fit(entry.default_std, channels)
        spec = ModelSpec(eager.arch, eager.classes, channels, entry.default_input_size, mean, std)
    elif isinstance(obj, nn.Module):
        fmt = kind if kind in _COMPILED else "pickle"
        if kind in _COMPILED and arch is None:
            notes.append(rebuilt[1])
        channels = _first_conv_channels(obj)
        model, picked, size = _runnable(obj, channels, overrides.get("input_size"), path)
        notes.extend(picked)
        classes = _probe_classes(model, channels, size)
        # A ScriptModule's class is RecursiveScriptModule; original_name is the user's class.
        spec = ModelSpec(arch or getattr(obj, "original_name", type(model).__name__), classes, channels, size,
                         _fit(IMAGENET_MEAN, channels), _fit(IMAGENET_STD, channels))
    else:
        raise InputFileError(f"{path} holds a {type(obj).__name__}, not a model, state_dict or edgekd checkpoint")

    if want_classes is not None and int(want_classes) != spec.num_classes:
        raise ModelError(f"--num-classes {want_classes} does not match the weights, which have {spec.num_classes} classes")
    if overrides:
        spec = spec.with_(**{k: v for k, v in overrides.items() if v is not None})
    model.eval()
    return LoadedModel(model, spec, fmt, path, sha256_file(path), provenance, notes)


def _fit(values: Tuple[float, ...], channels: int) -> Tuple[float, ...]:
    """Registry defaults are per-RGB; a model with other channel counts gets their mean."""
    if len(values) == channels:
        return tuple(values)
    return (sum(values) / len(values),) * channels


def _fmt(values: Tuple[float, ...]) -> str:
    return " / ".join(f"{v:.4g}" for v in values)
