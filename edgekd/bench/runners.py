"""Runtimes that execute one bundle model. A registry, so bench picks by name, never by if/elif."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from edgekd.errors import RuntimeMissingError, UsageError

JETPACK_HINT = ("TensorRT's Python bindings come with JetPack: 'sudo apt-get install python3-libnvinfer' "
                "(plus 'pip install pycuda'), and a venv made with --system-site-packages")


def _shares(totals: Dict[str, float]) -> Dict[str, float]:
    """Each operator type's time as a share of the whole, largest first (what --profile reports)."""
    whole = sum(totals.values()) or 1.0
    return {op: t / whole for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}


class OrtRunner:
    name = "onnxruntime"

    def __init__(self, bundle: Path, entry: Dict[str, Any], threads: int = 0,
                 options: Optional[Dict[str, str]] = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeMissingError("onnxruntime is not installed: pip install onnxruntime "
                                      "(on Jetson: the onnxruntime-gpu wheel for your JetPack)") from None
        self._ort = ort
        self.threads = threads
        self.options = dict(options or {})  # the target's [session.onnxruntime] config entries
        self.note = ""
        self.session = None
        if entry.get("optimized_file"):  # optimised offline at export (deploy/ort_optimize.py): loads faster
            self.path = Path(bundle) / entry["optimized_file"]
            try:
                self.session = self._session()
            except Exception as e:  # an onnxruntime too old for its operators: the plain file still runs
                self.note = (f"{entry['optimized_file']} unreadable by onnxruntime {ort.__version__} "
                             f"({type(e).__name__}): ran {entry['file']}")
        if self.session is None:
            self.path = Path(bundle) / entry["file"]
            self.session = self._session()
        self.input_name = self.session.get_inputs()[0].name
        self.provider = self.session.get_providers()[0]

    def _session(self, profile_prefix: Optional[str] = None) -> Any:
        opts = self._ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        for key, value in self.options.items():
            opts.add_session_config_entry(key, value)
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        return self._ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def _trace(self, x: np.ndarray, runs: int) -> List[Dict[str, Any]]:
        """onnxruntime's profiler events for `runs` runs (after 5 unrecorded ones' worth of warm-up),
        from a separate session with the same options."""
        with tempfile.TemporaryDirectory() as tmp:
            sess = self._session(os.path.join(tmp, "prof"))
            for _ in range(runs + 5):
                sess.run(None, {self.input_name: x})
            trace = sess.end_profiling()
            return json.loads(Path(trace).read_text())

    def profiled_mean_ms(self, x: np.ndarray, runs: int = 50) -> float:
        """Mean per-run time from onnxruntime's own profiler (its 'model_run' events): an independent
        check of our wall-clock timing."""
        runs_us = [e["dur"] for e in self._trace(x, runs) if e.get("name") == "model_run"][5:]
        return float(np.mean(runs_us)) / 1e3

    def operator_profile(self, x: np.ndarray, runs: int = 50) -> Dict[str, float]:
        """Where the time goes: each operator type's share of the kernel time, largest first (onnxruntime's
        per-node 'kernel_time' events; the first 5 runs' left out as warm-up)."""
        events = self._trace(x, runs)
        starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
        after = starts[5] if len(starts) > 5 else 0
        totals: Dict[str, float] = {}
        for e in events:
            if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time") and e["ts"] >= after:
                op = e.get("args", {}).get("op_name", "?")
                totals[op] = totals.get(op, 0.0) + e["dur"]
        return _shares(totals)

    def environment(self) -> Dict[str, Any]:
        return {"runtime": "onnxruntime", "version": self._ort.__version__, "provider": self.provider,
                "threads": self.threads or "default", "file": self.path.name, "session_options": self.options,
                **({"note": self.note} if self.note else {})}


class TensorRTRunner:
    """Runs the engine that `edgekd build` made on this device for one bundle model."""

    name = "tensorrt"

    def __init__(self, bundle: Path, entry: Dict[str, Any], threads: int = 0,
                 options: Optional[Dict[str, str]] = None) -> None:
        from edgekd.deploy import trt_device

        try:
            trt = trt_device.import_tensorrt()
        except trt_device.TrtError:
            raise RuntimeMissingError(f"--runtime tensorrt: TensorRT is not installed. {JETPACK_HINT}") from None
        manifest = json.loads((Path(bundle) / "manifest.json").read_text())
        engine = next((e for e in manifest.get("engines", []) if e.get("onnx") == entry["file"]), None)
        if engine is None:
            raise RuntimeMissingError(f"{bundle} has no TensorRT engine for {entry['file']}: "
                                      f"run 'edgekd build {bundle}' on this device first")
        try:
            trt_device.check_engine_matches(engine, trt.__version__, trt_device.gpu_name())
            self._run = trt_device.TrtEngineRunner(str(Path(bundle) / engine["file"]), engine["max_batch"])
        except trt_device.TrtError as e:
            raise RuntimeMissingError(str(e)) from None
        self.provider = f"TensorRT {trt.__version__} ({engine['precision']})"
        self._version = trt.__version__

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._run(x)

    def environment(self) -> Dict[str, Any]:
        return {"runtime": "tensorrt", "version": self._version, "provider": self.provider}


class OpenVinoRunner:
    """Intel's OpenVINO runtime on the bundle's ONNX file (x86 CPUs; `pip install "edgekd[openvino]"`).
    One compiled model per input shape: its CPU plugin is fastest on static shapes. FP32 models run in
    f32 (OpenVINO would otherwise compute them in bf16 on CPUs that have it, and the row would not be
    the FP32 model). INT8 QDQ models run their quantized layers in INT8 and the rest in the plugin's
    default (bf16 where the CPU has it: 25% faster on MobileNetV2 here); the bench's agreement column
    and the export's gate measure what that costs."""

    name = "openvino"
    PIP = 'pip install "edgekd[openvino]"'

    def __init__(self, bundle: Path, entry: Dict[str, Any], threads: int = 0,
                 options: Optional[Dict[str, str]] = None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise RuntimeMissingError(f"--runtime openvino: OpenVINO is not installed: {self.PIP}") from None
        self._ov = ov
        self.core = ov.Core()
        self.path = Path(bundle) / entry["file"]
        self.config: Dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if entry.get("precision", "fp32") == "fp32":
            self.config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.config.update(options or {})  # the target's [session.openvino] properties
        self.threads = threads
        self.input_name = self.core.read_model(str(self.path)).inputs[0].get_any_name()
        self._requests: Dict[tuple, Any] = {}
        self.provider = "OpenVINO CPU" + (" f32" if "INFERENCE_PRECISION_HINT" in self.config else "")

    def _request(self, shape: tuple, config: Dict[str, Any]) -> Any:
        model = self.core.read_model(str(self.path))
        model.reshape({self.input_name: list(shape)})
        return self.core.compile_model(model, "CPU", config).create_infer_request()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        request = self._requests.get(x.shape)
        if request is None:
            request = self._requests[x.shape] = self._request(x.shape, self.config)
        # Shared buffers skip two copies the copy below makes unneeded (0.05-0.1 ms of a 1.8 ms MobileNetV2
        # INT8 call on a 2-core Xeon); the output view is only valid until the next call, hence np.array.
        return np.array(request.infer({0: x}, share_inputs=True, share_outputs=True)[0])

    def operator_profile(self, x: np.ndarray, runs: int = 50) -> Dict[str, float]:
        """Where the time goes: each layer type's share of the executed layers' time, largest first, summed
        over `runs` runs after 5 of warm-up (OpenVINO's performance counters, PERF_COUNT, on a separately
        compiled model: the counters cost time the timed one must not pay)."""
        request = self._request(x.shape, {**self.config, "PERF_COUNT": True})
        totals: Dict[str, float] = {}
        for i in range(runs + 5):
            request.infer({0: x})
            if i < 5:
                continue
            for layer in request.get_profiling_info():  # per-layer times of the last run
                if layer.status == layer.Status.EXECUTED:
                    totals[layer.node_type] = totals.get(layer.node_type, 0.0) + layer.real_time.total_seconds()
        return _shares(totals)

    def environment(self) -> Dict[str, Any]:
        return {"runtime": "openvino", "version": self._ov.__version__, "provider": self.provider,
                "threads": self.threads or "default", "config": {k: str(v) for k, v in self.config.items()}}


RUNNERS: Dict[str, Callable[..., Any]] = {"onnxruntime": OrtRunner, "openvino": OpenVinoRunner,
                                          "tensorrt": TensorRTRunner}
# Short names for table labels when one bench runs several runtimes (80 columns).
SHORT_NAMES = {"onnxruntime": "ort", "openvino": "ov", "tensorrt": "trt"}
# The Python module each runtime needs: what `--runtime all` looks for.
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}


def runtime_names() -> List[str]:
    return list(RUNNERS)


def installed(runtime: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(_MODULES[runtime]) is not None


def bundle_runtimes(choice: str, manifest: Dict[str, Any]) -> List[str]:
    """The runtimes to bench one bundle with: `auto` (the one its export chose, when installed here),
    `all` (every runtime installed here that can run it), or names, comma-separated."""
    if choice == "auto":
        return [auto_runtime(manifest)]
    if choice == "all":
        engines = bool(manifest.get("engines"))
        return [r for r in RUNNERS if installed(r) and (r != "tensorrt" or engines)]
    names = [n.strip() for n in choice.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNNERS]
    if unknown or not names:
        raise UsageError(f"unknown runtime {', '.join(unknown) or choice!r}: choose {', '.join(RUNNERS)}, "
                         "a comma-separated list of them, all or auto")
    return list(dict.fromkeys(names))


def make_runner(runtime: str, bundle: Path, entry: Dict[str, Any], threads: int = 0,
                session: Optional[Dict[str, Dict[str, str]]] = None) -> Any:
    """`session`: a target's [session.*] tables (targets.Target.session); the runtime's own is applied."""
    if runtime not in RUNNERS:
        raise UsageError(f"unknown runtime {runtime!r}: choose {', '.join(RUNNERS)} or auto")
    return RUNNERS[runtime](bundle, entry, threads, (session or {}).get(runtime))


def auto_runtime(manifest: Dict[str, Any]) -> str:
    """The bundle's runtime (its target's, or the faster one its export measured) when it is installed
    here, else onnxruntime."""
    wanted = manifest.get("runtime", "onnxruntime")
    return wanted if wanted in RUNNERS and installed(wanted) else "onnxruntime"
