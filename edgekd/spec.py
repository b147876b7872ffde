"""ModelSpec: what a model expects as input and what its outputs mean.

It travels with every checkpoint, ONNX file and bundle manifest. Torch-free on purpose: the
device side (edgekd bench) reads it with numpy alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from edgekd.errors import UsageError

# How an image of another size becomes the model's input (bench, calibration on real data, the
# distill-time evaluation, the bundle README): stretch (bilinear to the size), pad (centred on a
# canvas of pad_value, scaled down first if larger: small-image teachers trained on 28 -> 32 padding),
# crop (shorter side to size / crop, then the centre: ImageNet's 256 -> 224 at crop 0.875).
RESIZE_MODES = ("stretch", "pad", "crop")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """Input and output contract of a classifier.

    Inputs are float32 NCHW, pixel values in [0, 1] normalised as (x - mean) / std per channel.
    """

    arch: str
    num_classes: int
    in_channels: int = 3
    input_size: Tuple[int, int] = (224, 224)
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    labels: Optional[Tuple[str, ...]] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    resize: str = "auto"  # auto: crop for inputs of 128 px and more (ImageNet-style), stretch below
    crop: float = 0.875
    pad_value: float = 0.0  # in [0, 1] pixel units, before normalisation

    def __post_init__(self) -> None:
        c = self.in_channels
        # A single value broadcasts to every channel; anything else must match the channel count.
        if len(self.mean) == 1 and c > 1:
            object.__setattr__(self, "mean", tuple(self.mean) * c)
        if len(self.std) == 1 and c > 1:
            object.__setattr__(self, "std", tuple(self.std) * c)
        if len(self.mean) != c or len(self.std) != c:
            raise UsageError(
                f"mean/std have {len(self.mean)}/{len(self.std)} values but the model has {c} input "
                f"channels: give one value or {c} values (e.g. --mean 0.5 --std 0.5)"
            )
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise UsageError("mean and std must be finite numbers, e.g. --mean 0.5 --std 0.5")
        if any(s <= 0 for s in self.std):
            raise UsageError("std values must be positive")
        if self.num_classes < 2:
            raise UsageError(f"a classifier needs at least 2 classes, got {self.num_classes}")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise UsageError(
                f"{len(self.labels)} labels given for {self.num_classes} classes: give one label per class"
            )
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        if self.resize not in ("auto", *RESIZE_MODES):
            raise UsageError(f"resize must be one of {', '.join(RESIZE_MODES)}, not {self.resize!r}")
        if not 0 < self.crop <= 1 or not 0 <= self.pad_value <= 1:
            raise UsageError("crop must be in (0, 1] (e.g. crop:0.875) and the pad value in [0, 1] (e.g. pad:0)")

    @property
    def resize_mode(self) -> str:
        """The resize in force: `auto` follows the input size, so a spec whose size is set later
        (--input-size) still gets the right default."""
        if self.resize != "auto":
            return self.resize
        return "crop" if min(self.input_size) >= 128 else "stretch"

    def preprocessing(self) -> Dict[str, Any]:
        """The input contract in words a device-side user can follow without edgekd."""
        out: Dict[str, Any] = {"layout": "NCHW", "dtype": "float32", "scale": 1 / 255, "resize": self.resize_mode,
                               "interpolation": "bilinear", "input_size": list(self.input_size),
                               "channels": self.in_channels, "mean": list(self.mean), "std": list(self.std)}
        if self.resize_mode == "crop":
            out["crop"] = self.crop
        if self.resize_mode == "pad":
            out["pad_value"] = self.pad_value
        return out

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.in_channels, self.input_size[0], self.input_size[1])

    def with_(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["labels"] = list(self.labels) if self.labels is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or not {"arch", "num_classes"} <= set(d):
            raise UsageError("the model spec is incomplete (needs arch and num_classes): re-export the file")
        kw = {k: v for k, v in d.items() if k in known}
        try:
            for key in ("input_size", "mean", "std"):
                if key in kw:
                    kw[key] = tuple(float(v) if key != "input_size" else int(v) for v in kw[key])
            if kw.get("labels") is not None:
                kw["labels"] = tuple(str(v) for v in kw["labels"])
            return cls(**kw)
        except (TypeError, ValueError) as e:
            raise UsageError(f"the model spec is malformed ({e}): re-export the file") from None


def parse_input_size(text: str) -> Tuple[int, int]:
    """'224' -> (224, 224); '224x160' -> (224, 160)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"input size {text!r} is not a number: use 224 or 224x160") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 8:
        raise UsageError(f"input size {text!r} must be one or two numbers of at least 8, e.g. 224 or 224x160")
    return vals  # type: ignore[return-value]


def parse_resize(text: str) -> Dict[str, Any]:
    """'stretch', 'pad', 'pad:0.5' (fill), 'crop', 'crop:0.875' (ratio) -> ModelSpec fields."""
    mode, _, value = text.strip().lower().partition(":")
    if mode not in RESIZE_MODES or (value and mode == "stretch"):
        raise UsageError(f"--resize {text!r}: use stretch, pad[:FILL] or crop[:RATIO], e.g. crop:0.875")
    out: Dict[str, Any] = {"resize": mode}
    if value:
        try:
            out["pad_value" if mode == "pad" else "crop"] = float(value)
        except ValueError:
            raise UsageError(f"--resize {text!r}: {value!r} is not a number") from None
    return out


def parse_floats(text: Optional[str]) -> Optional[Tuple[float, ...]]:
    """'0.5' or '0.485,0.456,0.406' -> tuple of floats."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{text!r} is not a comma-separated list of numbers") from None
