"""Teachers whose forward is not `x -> logits`: extra arguments, tuple or dict outputs.

DAFL's LeNet has `forward(img, out_feature=False)`; many research models return `(logits, features)`
or `{"logits": ...}`. The loaded model is wrapped once, at load time, in a module whose forward takes
the image alone (other arguments keep their defaults) and returns the logits tensor, so distillation,
ONNX export and the parity check all see one plain classifier. A TorchScript model gets a scripted
wrapper: the ONNX exporter cannot trace into a loaded ScriptModule, and exporting one whose forward
has more than one argument fails inside torch (`param_count_list` assert, torch 2.14).
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from edgekd.errors import ModelError

# Dict keys tried first, in this order, before any other (batch, classes) tensor of the dict.
LOGIT_KEYS = ("logits", "logit", "out", "output", "outputs", "pred", "scores")


class _Bound(nn.Module):
    """forward(x) with every other argument at its default."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Item(nn.Module):
    """forward(x)[index] of a tuple- or list-returning model. Apart from _Key only because TorchScript
    types the index: a constant int for a tuple, a str for a dict."""

    __constants__ = ["index"]

    def __init__(self, model: nn.Module, index: int) -> None:
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.index]


class _Key(nn.Module):
    """forward(x)[key] of a dict-returning model."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.key]


def _is_logits(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and v.dim() == 2


def _extra_arguments(model: nn.Module) -> List[str]:
    """Names of forward's arguments after the image (TorchScript schemas say; eager ones need not)."""
    schema = getattr(getattr(model, "forward", None), "schema", None)
    if schema is None:
        return []
    # The first argument is the module itself, whatever its name (`self` by convention only).
    args = list(schema.arguments)[2:]
    required = [a.name for a in args if not a.has_default_value()]
    if required:
        raise ModelError(f"the model's forward needs {', '.join(required)} besides the image, with no default: "
                         "save a model whose forward takes the image alone")
    return [a.name for a in args]


def _pick(out: Any) -> Tuple[Optional[Union[int, str]], str]:
    """Where the logits are in `out`: None for a plain tensor, an index or a key, and what was decided."""
    if _is_logits(out):
        return None, ""
    if isinstance(out, (tuple, list)):
        for i, v in enumerate(out):
            if _is_logits(v):
                return i, f"forward returns a {type(out).__name__} of {len(out)}: item {i} is taken as the logits"
    if isinstance(out, dict):
        keys = [k for k in LOGIT_KEYS if _is_logits(out.get(k))] + [k for k, v in out.items() if _is_logits(v)]
        if keys and isinstance(keys[0], str):
            return keys[0], f"forward returns a dict: {keys[0]!r} is taken as the logits"
    raise ModelError(f"the model's output ({type(out).__name__}) holds no (batch, classes) tensor of logits: "
                     "save a classifier that returns logits")


def pick_logits(out: Any) -> Tuple[torch.Tensor, str]:
    """The logits in a forward's output, and where they were ("" for a plain tensor, "item 0", "key 'logits'")."""
    where, _ = _pick(out)
    if where is None:
        return out, ""
    return out[where], (f"item {where}" if isinstance(where, int) else f"key {where!r}")


def as_classifier(model: nn.Module, probe: torch.Tensor) -> Tuple[nn.Module, List[str]]:
    """`model` itself when forward(x) returns logits and takes nothing else; otherwise a wrapper
    that does, with notes saying what was bound or picked. `probe` is one valid input."""
    extra = _extra_arguments(model)
    with torch.no_grad():
        out = model.eval()(probe)
    where, note = _pick(out)
    notes = [note] if note else []
    if where is None and not extra:
        return model, notes
    if extra:
        notes.append(f"forward's other arguments ({', '.join(extra)}) keep their defaults")
    wrapper = _Bound(model) if where is None else _Item(model, where) if isinstance(where, int) else _Key(model, where)
    if isinstance(model, torch.jit.ScriptModule):
        wrapper = torch.jit.script(wrapper)
    return wrapper.eval(), notes
