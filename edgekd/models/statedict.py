"""Which registered architecture a state_dict is, as users save them: exact names, a common prefix
(DDP's "module.", torch.compile's "_orig_mod.", Lightning's "model."), or the same tensors in order
with a few keys renamed. Shared by the file loader (checkpoint.py) and the TorchScript rebuild
(rebuild.py)."""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Tuple

import torch

from edgekd.errors import ModelError
from edgekd.models.registry import create_model, get_entry, list_models


def _head_and_stem_keys(sd: Dict[str, torch.Tensor]) -> Tuple[str, str]:
    """The keys of the classifier weight (the last 2-D weight) and the stem weight (the first 4-D one), in
    `sd`'s order."""
    mats = [k for k, v in sd.items() if k.endswith("weight") and v.dim() == 2]
    convs = [k for k, v in sd.items() if k.endswith("weight") and v.dim() == 4]
    if not mats or not convs:
        raise ModelError("state_dict has no convolution or linear classifier weights: not an image classifier")
    return mats[-1], convs[0]


@functools.lru_cache(maxsize=None)
def _arch_head_and_stem(arch: str) -> Tuple[str, str]:
    """`arch`'s own names for its classifier and stem weights (its reference state_dict is in order)."""
    return _head_and_stem_keys(_reference(arch, 10, 3))


def infer_classes_channels(sd: Dict[str, torch.Tensor], arch: Optional[str] = None) -> Tuple[int, int]:
    """Classes from the classifier's weight, channels from the stem's: for `arch`, its own names for them
    where `sd` has those (files that sort their keys, as safetensors does, lose the order); otherwise the
    last 2-D weight and the first 4-D one in `sd`'s order."""
    head = stem = ""
    if arch is not None:
        try:
            head, stem = _arch_head_and_stem(arch)
        except Exception:  # no 2-D classifier (a conv head) or a model meta tensors cannot build: by order
            pass
    if not (head in sd and stem in sd and sd[head].dim() == 2 and sd[stem].dim() == 4):
        head, stem = _head_and_stem_keys(sd)
    return int(sd[head].shape[0]), int(sd[stem].shape[1])


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


def with_counters(sd: Dict[str, torch.Tensor], arch: str, classes: int, channels: int) -> Dict[str, torch.Tensor]:
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
    if arch is not None:
        name = get_entry(arch).name
        classes, channels = infer_classes_channels(sd, name)
        why = _shape_mismatch(name, sd, classes, channels)
        if why:
            raise ModelError(f"the state_dict does not fit {name}: {why}")
        return name, classes, channels
    infer_classes_channels(sd)  # not an image classifier at all: say so rather than "fits nothing"
    for name in list_models():
        classes, channels = infer_classes_channels(sd, name)
        if _shape_mismatch(name, sd, classes, channels) is None:
            return name, classes, channels
    raise ModelError("the state_dict fits no registered architecture: name it with --teacher-arch, "
                     "or save the model as TorchScript (torch.jit.script(model).save(path))")


def by_position(sd: Dict[str, torch.Tensor], classes: int, channels: int,
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
            return name, with_counters(renamed, name, classes, channels)
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
        return name, classes, channels, with_counters(cand, name, classes, channels), _prefix_note(prefix)
    for prefix, cand in tries:
        found = by_position(cand, classes, channels, [get_entry(arch).name] if arch else None)
        renamed = _renamed_few(cand, found[1]) if found else None
        if found and renamed is not None:
            note = (f"state_dict fits {found[0]} in order with {len(renamed)} key(s) renamed "
                    f"({', '.join(renamed[:3])}{', ...' if len(renamed) > 3 else ''})")
            return found[0], classes, channels, found[1], _prefix_note(prefix) + [note]
    assert first_error is not None
    raise first_error
