"""Device profiles: one TOML file per device under targets/ (data, validated on load)."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edgekd.errors import UsageError
from edgekd.fileio import read_toml

_PACKAGE = Path(__file__).resolve().parent.parent
# An installed wheel carries the profiles as edgekd/targets; a source checkout has them at the top level.
TARGETS_DIR = next((d for d in (_PACKAGE / "targets", _PACKAGE.parent / "targets") if d.is_dir()),
                   _PACKAGE.parent / "targets")
RUNTIMES = ("onnxruntime", "tensorrt")
# Runtimes an ONNX Runtime CPU target may name as alternatives: run on the bundle's ONNX files as they
# are, timed at export where the export machine is the device and they are installed.
ALTERNATIVE_RUNTIMES = ("openvino",)
SESSION_RUNTIMES = ("onnxruntime", "openvino")  # runtimes a target's [session.*] tables may configure
PRECISIONS = ("fp32", "fp16", "int8")
VNNI_CHOICES = ("", "detect", "yes", "no")  # "": not an x86 CPU target
ORT_PLATFORMS = ("x86", "arm")  # ort_optimized: the CPU family an optimised file's fusions are made for


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    runtime: str
    opset: int
    precisions: Tuple[str, ...]
    default_precision: str
    batch_sizes: Tuple[int, ...] = (1,)
    threads: int = 0  # 0: the runtime decides
    memory_mib: int = 0  # device memory budget; TensorRT workspace pool
    workspace_mib: int = 256
    tensorrt_versions: Tuple[str, ...] = ()
    runtimes: Tuple[str, ...] = ()  # alternatives to `runtime` (ALTERNATIVE_RUNTIMES), chosen by measurement
    python: str = ""
    dla: bool = False
    int8_symmetric: bool = False  # TensorRT reads symmetric Q/DQ only
    int8_activations: str = "uint8"  # "int8" on ARM CPUs: S8S8, what ONNX Runtime's ARM64 kernels favour
    # x86 ONNX Runtime targets: does the device have VNNI/AMX ("yes"), not ("no"), or is it the export
    # machine ("detect")? Without them U8S8 products saturate in int16, so INT8 uses 7-bit weights.
    vnni: str = ""
    # ONNX Runtime targets: ship each model also optimised offline by ONNX Runtime for this CPU family
    # ("x86" or "arm"; deploy/ort_optimize.py). "": plain ONNX files only.
    ort_optimized: str = ""
    # Per runtime, settings its sessions are made with on this device: [session.onnxruntime] takes ONNX
    # Runtime session config entries ("session.intra_op.allow_spinning" = "0": idle threads sleep, for
    # battery devices; costs latency), [session.openvino] OpenVINO CPU properties ("NUM_STREAMS" = "1").
    session: Dict[str, Dict[str, str]] = field(default_factory=dict)
    bench: Dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise UsageError(f"target {self.name} does not support {precision}: "
                             f"choose --precision {' or '.join(self.precisions)}, or another target")


# TOML type of each key (and of a list's items): a wrong type is a one-line error, not a crash later.
_KINDS: Dict[str, Tuple[type, Optional[type]]] = {
    "name": (str, None), "description": (str, None), "runtime": (str, None), "opset": (int, None),
    "precisions": (list, str), "default_precision": (str, None), "batch_sizes": (list, int),
    "threads": (int, None), "memory_mib": (int, None), "workspace_mib": (int, None),
    "tensorrt_versions": (list, str), "runtimes": (list, str), "python": (str, None), "dla": (bool, None), "int8_symmetric": (bool, None), "int8_activations": (str, None),
    "vnni": (str, None), "ort_optimized": (str, None), "session": (dict, None), "bench": (dict, None), "notes": (str, None),
}


# Keys earlier versions read, and what replaces them.
_RETIRED = {
    "reduce_range": "is now chosen from the device's CPU: replace it with vnni = \"no\" (device without "
                    "VNNI/AMX), \"yes\" or \"detect\"",
    # A batch-1 graph measured no faster than a dynamic one on ONNX Runtime (AVX2 EPYC, MobileNetV2 INT8:
    # 3.20 vs 3.19 ms); TensorRT engines take their batch sizes from batch_sizes.
    "dynamic_batch": "is gone: every ONNX file takes any batch size and TensorRT builds for batch_sizes; "
                     "remove the line",
}


def _validate(d: Dict[str, Any], source: str) -> Target:
    required = ("name", "description", "runtime", "opset", "precisions", "default_precision")
    missing = [k for k in required if k not in d]
    if missing:
        raise UsageError(f"target file {source} lacks {', '.join(missing)}")
    for key, why in _RETIRED.items():
        if key in d:
            raise UsageError(f"target file {source}: {key} {why}")
    known = set(Target.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise UsageError(f"target file {source} has unknown key {unknown[0]!r}")
    for key, value in d.items():
        kind, item = _KINDS[key]
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if not wrong and item is not None:
            wrong = any(not isinstance(v, item) or isinstance(v, bool) for v in value)
        if wrong:
            what = f"a list of {item.__name__}" if item else kind.__name__
            raise UsageError(f"target file {source}: {key} = {value!r} should be {what}")
    if d["runtime"] not in RUNTIMES:
        raise UsageError(f"target {d['name']}: runtime must be one of {', '.join(RUNTIMES)}")
    bad = [p for p in d["precisions"] if p not in PRECISIONS]
    if bad or not d["precisions"]:
        raise UsageError(f"target {d['name']}: precisions must be among {', '.join(PRECISIONS)}")
    if d["default_precision"] not in d["precisions"]:
        raise UsageError(f"target {d['name']}: default_precision is not one of its precisions")
    if not 7 <= int(d["opset"]) <= 21:
        raise UsageError(f"target {d['name']}: opset {d['opset']} outside 7..21")
    if d.get("vnni", "") not in VNNI_CHOICES:
        raise UsageError(f"target {d['name']}: vnni must be one of {', '.join(repr(c) for c in VNNI_CHOICES[1:])}")
    if d.get("vnni") and d["runtime"] != "onnxruntime":
        raise UsageError(f"target {d['name']}: vnni applies to ONNX Runtime CPU targets only")
    if d.get("ort_optimized") and (d["runtime"] != "onnxruntime" or d["ort_optimized"] not in ORT_PLATFORMS):
        raise UsageError(f"target {d['name']}: ort_optimized must be \"\" or one of {', '.join(ORT_PLATFORMS)}, "
                         "for an onnxruntime target")
    if d.get("int8_activations", "uint8") not in ("uint8", "int8"):
        raise UsageError(f"target {d['name']}: int8_activations must be \"uint8\" or \"int8\"")
    if d.get("runtimes") and (d["runtime"] != "onnxruntime" or set(d["runtimes"]) - set(ALTERNATIVE_RUNTIMES)):
        raise UsageError(f"target {d['name']}: runtimes (alternatives) must be among "
                         f"{', '.join(ALTERNATIVE_RUNTIMES)}, for an onnxruntime target")
    for runtime, options in d.get("session", {}).items():
        if runtime not in SESSION_RUNTIMES or not isinstance(options, dict):
            raise UsageError(f"target {d['name']}: [session.{runtime}] is not a table of session settings for one of "
                             f"{', '.join(SESSION_RUNTIMES)}")
        bad = [k for k, v in options.items() if not isinstance(v, str)]
        if bad:
            raise UsageError(f"target {d['name']}: [session.{runtime}] {bad[0]} must be a string, e.g. \"0\"")
    if d["runtime"] == "tensorrt" and not d.get("tensorrt_versions"):
        raise UsageError(f"target {d['name']}: a TensorRT target must list tensorrt_versions")
    kw = dict(d)
    for key in ("precisions", "batch_sizes", "tensorrt_versions", "runtimes"):
        if key in kw:
            kw[key] = tuple(kw[key])
    return Target(**kw)


def load_target_file(path: Path) -> Target:
    data = read_toml(path, "target file")
    return _validate(data, str(path))


def list_targets() -> List[Target]:
    return [load_target_file(p) for p in sorted(TARGETS_DIR.glob("*.toml"))]


def get_target(name_or_path: str) -> Target:
    """A built-in target by name, or a user's TOML file."""
    if name_or_path.endswith(".toml"):
        return load_target_file(Path(name_or_path))
    path = TARGETS_DIR / f"{name_or_path}.toml"
    if path.exists():
        return load_target_file(path)
    names = [p.stem for p in sorted(TARGETS_DIR.glob("*.toml"))]
    near = difflib.get_close_matches(name_or_path, names, n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    raise UsageError(f"unknown target {name_or_path!r}: {hint}'edgekd targets' lists them ({', '.join(names)})")


def find_target(name: Optional[str]) -> Optional[Target]:
    return get_target(name) if name else None
