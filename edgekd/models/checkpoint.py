"""Loading teachers from the files users actually have, and edgekd's own checkpoint format.

Formats, detected from the file's content (never its name):
- edgekd: torch.save'd dict {"format": "edgekd-checkpoint", arch, state_dict, spec, provenance}
- state_dict: a plain torchvision-style state_dict (optionally wrapped in {"state_dict": ...})
- torchscript: a torch.jit.save'd archive
- pickle: a whole pickled nn.Module; loaded only with trust_pickle=True, since unpickling runs code.
"""

from __future__ import annotations

import math
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
from edgekd.models.logits import as_classifier
from edgekd.models.registry import create_model, get_entry, list_models
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


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


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
        if zipfile.is_zipfile(path) and _is_torchscript(path):
            with warnings.catch_warnings():  # TorchScript is deprecated, but users still have such files
                warnings.simplefilter("ignore", FutureWarning)
                return "torchscript", torch.jit.load(str(path), map_location="cpu")
    except (zipfile.BadZipFile, RuntimeError) as e:
        raise InputFileError(f"{path} is truncated or corrupt ({str(e).splitlines()[0][:80]})") from None
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


def infer_classes_channels(sd: Dict[str, torch.Tensor]) -> Tuple[int, int]:
    """Classes from the last 2-D weight (the classifier), channels from the first 4-D weight (the stem)."""
    mats = [v for k, v in sd.items() if k.endswith("weight") and v.dim() == 2]
    convs = [v for k, v in sd.items() if k.endswith("weight") and v.dim() == 4]
    if not mats or not convs:
        raise ModelError("state_dict has no convolution or linear classifier weights: not an image classifier")
    return int(mats[-1].shape[0]), int(convs[0].shape[1])


def _reference(arch: str, classes: int, channels: int) -> Dict[str, torch.Tensor]:
    """The architecture's state_dict as shapes: meta tensors, no memory or init time."""
    try:
        with torch.device("meta"):
            return create_model(arch, classes, channels).state_dict()
    except NotImplementedError:  # a few torchvision inits (RegNet) copy data and need real tensors
        return create_model(arch, classes, channels).state_dict()


def _is_counter(key: str) -> bool:
    # BatchNorm's num_batches_tracked: absent from checkpoints older than PyTorch 0.4.1 and from many
    # ported ones, and unused in eval mode.
    return key.endswith("num_batches_tracked")


def _shape_mismatch(arch: str, sd: Dict[str, torch.Tensor], classes: int, channels: int) -> Optional[str]:
    """None if `sd` fits `arch` exactly (BatchNorm counters may be missing), else a short reason."""
    ref = _reference(arch, classes, channels)
    missing = [k for k in ref if k not in sd and not _is_counter(k)]
    extra = [k for k in sd if k not in ref]
    if missing or extra:
        return f"missing key {missing[0]}" if missing else f"unexpected key {extra[0]}"
    for k, v in ref.items():
        if k in sd and tuple(v.shape) != tuple(sd[k].shape):
            return f"{k} has shape {tuple(sd[k].shape)}, {arch} needs {tuple(v.shape)}"
    return None


def _with_counters(sd: Dict[str, torch.Tensor], arch: str, classes: int, channels: int) -> Dict[str, torch.Tensor]:
    """`sd` with the BatchNorm counters it lacks set to 0, so load_state_dict can stay strict."""
    ref = _reference(arch, classes, channels)
    return {k: sd[k] if k in sd else torch.zeros((), dtype=torch.long) for k in ref}


def _prefixes_stripped(sd: Dict[str, torch.Tensor]) -> List[Tuple[str, Dict[str, torch.Tensor]]]:
    """`sd` under each common key prefix removed in turn: "module." (DataParallel/DDP), "_orig_mod."
    (torch.compile), "model." (Lightning modules and most training wrappers), and any other."""
    out = []
    prefix = ""
    while True:
        heads = {k.split(".", 1)[0] for k in sd}
        if len(heads) != 1 or not all("." in k for k in sd):
            return out
        head = heads.pop() + "."
        prefix += head
        sd = {k[len(head):]: v for k, v in sd.items()}
        out.append((prefix, sd))


def infer_arch(sd: Dict[str, torch.Tensor], arch: Optional[str] = None) -> Tuple[str, int, int]:
    """The registered architecture whose state_dict has exactly `sd`'s names and shapes."""
    classes, channels = infer_classes_channels(sd)
    if arch is not None:
        name = get_entry(arch).name
        why = _shape_mismatch(name, sd, classes, channels)
        if why:
            raise ModelError(f"the state_dict does not fit {name}: {why}")
        return name, classes, channels
    for name in list_models():
        if _shape_mismatch(name, sd, classes, channels) is None:
            return name, classes, channels
    raise ModelError("the state_dict fits no registered architecture: name it with --teacher-arch, "
                     "or save the model as TorchScript (torch.jit.script(model).save(path))")


def _by_position(sd: Dict[str, torch.Tensor], classes: int, channels: int,
                 arches: Optional[List[str]] = None) -> Optional[Tuple[str, Dict[str, torch.Tensor]]]:
    """A registered architecture whose state_dict has the same tensors in the same order (names may
    differ, as in DAFL's LeNet-5: conv1..fc2), with `sd` renamed to its keys; None if none fits.
    BatchNorm counters are left out of the comparison and filled in."""
    shapes = [tuple(v.shape) for k, v in sd.items() if not _is_counter(k)]
    for name in arches or list_models():
        try:
            ref = _reference(name, classes, channels)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        keys = [k for k in ref if not _is_counter(k)]
        if [tuple(ref[k].shape) for k in keys] == shapes:
            renamed = dict(zip(keys, (v for k, v in sd.items() if not _is_counter(k))))
            return name, _with_counters(renamed, name, classes, channels)
    return None


def _renamed_few(sd: Dict[str, torch.Tensor], weights: Dict[str, torch.Tensor]) -> Optional[List[str]]:
    """The keys of `sd` that a by-position fit renamed, if they are few (<= 10%, at most 8) and each keeps
    its last part (weight, bias, running_mean...): a head replaced by nn.Sequential(Dropout, Linear)
    when fine-tuning (fc.1.weight for fc.weight). None when more differ: without a reference forward to
    compare with (a state_dict has none), tensors of equal shapes could belong to another network."""
    old = [k for k in sd if not _is_counter(k)]
    new = [k for k in weights if not _is_counter(k)]
    renamed = [(a, b) for a, b in zip(old, new) if a != b]
    if len(renamed) > min(8, len(old) // 10) or any(a.rsplit(".", 1)[-1] != b.rsplit(".", 1)[-1] for a, b in renamed):
        return None
    return [f"{a} -> {b}" for a, b in renamed]


def _prefix_note(prefix: str) -> List[str]:
    """What removing `prefix` is worth saying: DDP's "module." goes without a word, as it always has."""
    return [f"state_dict keys under {prefix!r} read without it"] if prefix and prefix != "module." else []


def fit_state_dict(sd: Dict[str, torch.Tensor], arch: Optional[str] = None
                   ) -> Tuple[str, int, int, Dict[str, torch.Tensor], List[str]]:
    """(architecture, classes, channels, weights under its keys, notes) for a state_dict as users save
    them: exact names first, then with a common prefix removed, then in order with a few keys renamed."""
    classes, channels = infer_classes_channels(sd)
    tries = [("", sd)] + _prefixes_stripped(sd)
    first_error: Optional[ModelError] = None
    for prefix, cand in tries:
        try:
            name, classes, channels = infer_arch(cand, arch)
        except ModelError as e:
            first_error = first_error or e
            continue
        return name, classes, channels, _with_counters(cand, name, classes, channels), _prefix_note(prefix)
    for prefix, cand in tries:
        found = _by_position(cand, classes, channels, [get_entry(arch).name] if arch else None)
        renamed = _renamed_few(cand, found[1]) if found else None
        if found and renamed is not None:
            note = (f"state_dict fits {found[0]} in order with {len(renamed)} key(s) renamed "
                    f"({', '.join(renamed[:3])}{', ...' if len(renamed) > 3 else ''})")
            return found[0], classes, channels, found[1], _prefix_note(prefix) + [note]
    assert first_error is not None
    raise first_error


def _inner_network(scripted: nn.Module) -> str:
    """Advice for a wrapper (normalisation, a second output...) around a registered network: the
    wrapper's own code keeps the file TorchScript, without hooks, but the inner network's state_dict
    would load as an eager module with its BatchNorm prior. "" when no submodule fits."""
    for path, sub in scripted.named_modules():
        if not path or not isinstance(sub, torch.jit.ScriptModule):
            continue
        try:
            name = infer_arch(dict(sub.state_dict()))[0]
        except ModelError:
            continue
        has_bn = any(k.endswith("running_mean") for k in sub.state_dict())
        return (f" (its submodule {path!r} is a {name}, the rest of its forward the file's own code: "
                f"`torch.save(model.{path}.state_dict(), f)` would load as {name}"
                + (" with hooks, so the BatchNorm prior works" if has_bn else "") + ")")
    return ""


def _rebuild_eager(scripted: nn.Module, size: Optional[Tuple[int, int]]) -> Tuple[Optional[nn.Module], str, str]:
    """The eager module of a TorchScript file whose weights fit a registered architecture, kept only if
    its outputs equal the TorchScript ones on random inputs: eager modules take forward hooks, so the
    BN-statistics prior and feature losses work. Returns (model or None, arch, note)."""
    sd = dict(scripted.state_dict())
    try:
        name, classes, channels = infer_arch(sd)
        weights = _with_counters(sd, name, classes, channels)
    except ModelError:  # no fit by name (or not a classifier's weights): try by position
        found = None
        try:
            classes, channels = infer_classes_channels(sd)
            found = _by_position(sd, classes, channels)
        except ModelError:
            pass
        if found is None:
            return None, "", ("TorchScript teacher: its weights fit no registered architecture; kept as TorchScript"
                              + _inner_network(scripted))
        name, weights = found
    eager = create_model(name, classes, channels)
    eager.load_state_dict(weights)
    eager.eval()
    scripted.eval()
    x = torch.randn(4, channels, *(size or get_entry(name).default_input_size), generator=torch.Generator().manual_seed(0))
    diff, tol = math.inf, 0.0
    try:
        with torch.no_grad():
            ref, got = scripted(x), eager(x)
        if isinstance(ref, torch.Tensor) and ref.shape == got.shape:
            diff, tol = float((ref - got).abs().max()), 1e-4 * (1 + float(ref.abs().max()))
    except RuntimeError:  # e.g. a trace fixed to another batch size
        pass
    if not diff <= tol:
        return None, name, (f"TorchScript teacher: its weights fit {name} but its outputs differ from it "
                            f"(max |diff| {diff:.2g}); kept as TorchScript, so no forward hooks")
    return eager, name, (f"TorchScript teacher rebuilt as eager {name} (outputs equal on 4 random inputs, "
                         f"max |diff| {diff:.1e}): forward hooks available")


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
    elif kind == "torchscript" and arch is None and (rebuilt := _rebuild_eager(obj, overrides.get("input_size")))[0]:
        fmt = "torchscript"
        model, name, note = rebuilt
        notes.append(note)
        entry = get_entry(name)
        classes, channels = infer_classes_channels(model.state_dict())
        spec = ModelSpec(name, classes, channels, entry.default_input_size,
                         _fit(entry.default_mean, channels), _fit(entry.default_std, channels))
    elif isinstance(obj, nn.Module):
        fmt = "torchscript" if kind == "torchscript" else "pickle"
        if kind == "torchscript" and arch is None:
            notes.append(rebuilt[2])
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
