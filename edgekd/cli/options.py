"""Options shared by several commands, so each is spelled one way."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import typer

from edgekd.errors import UsageError
from edgekd.spec import parse_floats, parse_input_size, parse_resize

TEACHER_ARCH = typer.Option(None, "--teacher-arch", help="Architecture of a state_dict teacher (default: inferred from its keys).")
TRUST_PICKLE = typer.Option(False, "--trust-pickle", help="Allow loading a fully pickled nn.Module (runs code from the file: only for files you trust).")
INPUT_SIZE = typer.Option(None, "--input-size", help="Input size, e.g. 224 or 224x160 (default: from the checkpoint, else the architecture's: 224 torchvision, 32 built-ins).")
MEAN = typer.Option(None, "--mean", help="Per-channel mean of the input normalisation, e.g. 0.485,0.456,0.406 (default: ImageNet's for RGB, 0.5 otherwise).")
STD = typer.Option(None, "--std", help="Per-channel std of the input normalisation (default: ImageNet's for RGB, 0.5 otherwise).")
LABELS = typer.Option(None, "--labels", help="Class names: a text file with one per line, or a comma-separated list.")
RESIZE = typer.Option(None, "--resize", help="How images of another size become the input: stretch, pad[:FILL] (centred on a canvas, FILL in [0,1]) or crop[:RATIO] (shorter side to size/RATIO, then the centre). Default: crop:0.875 from 128 px up, else stretch.")
NUM_CLASSES = typer.Option(None, "--num-classes", help="Expected class count; an error if the weights disagree.")


def parse_labels(text: str) -> Tuple[str, ...]:
    path = Path(text)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise UsageError(f"--labels {path} is not a UTF-8 text file: give one class name per line") from None
        return tuple(line.strip() for line in text.splitlines() if line.strip())
    return tuple(v.strip() for v in text.split(","))


def spec_overrides(input_size: Optional[str], mean: Optional[str], std: Optional[str],
                   num_classes: Optional[int] = None, labels: Optional[str] = None,
                   resize: Optional[str] = None) -> Dict[str, Any]:
    out: Dict[str, Any] = parse_resize(resize) if resize else {}
    if labels:
        out["labels"] = parse_labels(labels)
    if input_size:
        out["input_size"] = parse_input_size(input_size)
    if mean:
        out["mean"] = parse_floats(mean)
    if std:
        out["std"] = parse_floats(std)
    if num_classes is not None:
        out["num_classes"] = num_classes
    return out
