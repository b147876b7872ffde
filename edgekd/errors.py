"""One exception family for everything a user can get wrong.

The CLI maps these to a one-line message and the exit code below (edgekd/cli/app.py); the
library raises them and never prints.
"""

from __future__ import annotations


class EdgekdError(Exception):
    """Base of every expected failure. The message is one line: what is wrong, what to do."""

    exit_code = 1


class UsageError(EdgekdError):
    """Bad option values or combinations."""

    exit_code = 2


class InputFileError(EdgekdError):
    """A file is missing, truncated, of the wrong kind or not trusted."""

    exit_code = 3


class ModelError(EdgekdError):
    """Unknown architecture, a state_dict that fits nothing, mismatched classes."""

    exit_code = 4


class DataError(EdgekdError):
    """An evaluation or calibration dataset that cannot be read or does not fit the model."""

    exit_code = 5


class RuntimeMissingError(EdgekdError):
    """An optional runtime (TensorRT, pycuda, torch on the device side) is not installed."""

    exit_code = 6


class TrainingError(EdgekdError):
    """Distillation failed in a way recovery could not fix (repeated NaN, collapse)."""

    exit_code = 7


class QualityError(EdgekdError):
    """A result is outside a stated tolerance (ONNX parity, INT8 accuracy drop)."""

    exit_code = 8


class Interrupted(EdgekdError):
    """The user pressed Ctrl-C; state was saved."""

    exit_code = 130
