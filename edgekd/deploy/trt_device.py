"""TensorRT engine build and inference, for the device side.

Standalone on purpose: it imports only the standard library, numpy, tensorrt and pycuda, and is
written for Python 3.6 (Jetson Nano, JetPack 4.6, TensorRT 8.2), so `edgekd export` copies it into
every TensorRT bundle as edgekd_trt.py and a Nano runs it without edgekd installed:

    python3 edgekd_trt.py build  BUNDLE_DIR      # engines next to the ONNX files, manifest updated
    python3 edgekd_trt.py bench  BUNDLE_DIR [--data labelled.npz]   # latency, agreement, top1 (JSON)

Version gates (TensorRT 8.2, 8.5/8.6, 10.x):
- build_serialized_network (8.0+; build_engine is gone in 10)
- set_memory_pool_limit from 8.4, max_workspace_size before
- EXPLICIT_BATCH network flag before 10 (explicit batch is the only mode in 10)
- named tensor I/O (num_io_tensors, set_tensor_address, execute_async_v3) from 8.5, bindings before
- implicit INT8 calibration: deprecated in 10, removed in 11; explicit Q/DQ is preferred
"""

import json
import os
import sys
import tempfile
import time

import numpy as np

ENGINE_FORMAT_VERSION = 1


class TrtError(Exception):
    """One-line, user-facing failure of the device-side TensorRT path."""


# Unlisted files of these kinds look like part of the bundle (a model or data someone could take for
# the real one), so they are refused. Others (a bench.json or plot the user wrote into the bundle)
# are never read and are left alone; so are engines and caches this script writes before it lists
# them, which are used only once the manifest lists them.
PART_OF_A_BUNDLE = (".onnx", ".ort", ".npy", ".npz", ".py", ".trt", ".plan")


def _referenced_files(manifest):
    """Every file the manifest tells a runner to read."""
    names = [f for m in manifest.get("models", []) if isinstance(m, dict) for f in (m.get("file"), m.get("optimized_file"))]
    names += [e.get("file") for e in manifest.get("engines", []) if isinstance(e, dict)]
    names += [(manifest.get("calibration") or {}).get("file"), manifest.get("synthetic_eval")]
    return [n for n in names if n]


def verify_bundle(bundle, manifest):
    """Refuse a bundle that is not exactly what export wrote: every listed file present with its
    sha256, every file the manifest refers to listed, a student model named, no unlisted model or data
    file (PART_OF_A_BUNDLE), no link, no listed name outside the directory. So a model
    copied over another, a dropped entry or a path like ../../etc/passwd is refused, not run."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise TrtError("%s/manifest.json lists no files: the bundle is incomplete, export it again" % bundle)
    for name, info in files.items():
        if not isinstance(name, str) or name != os.path.basename(name) or name in ("", ".", ".."):
            raise TrtError("%s/manifest.json lists %r, which is not a file of the bundle directory: "
                           "the manifest is corrupt or forged, export the bundle again" % (bundle, name))
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
            raise TrtError("%s/manifest.json: the entry for %s has no sha256: export the bundle again" % (bundle, name))
    models = manifest.get("models")
    if not isinstance(models, list) or not any(isinstance(m, dict) and m.get("role") == "student" for m in models):
        raise TrtError("%s/manifest.json names no student model: export the bundle again" % bundle)
    for name in _referenced_files(manifest):
        if name not in files:
            raise TrtError("%s: %s is used but not listed in manifest.json (tampered?): export the bundle again"
                           % (bundle, name))
    for name in sorted(os.listdir(bundle)):
        if os.path.islink(os.path.join(bundle, name)):
            raise TrtError("%s: %s is a link; a bundle holds plain files only: copy it again" % (bundle, name))
        if name not in files and name.endswith(PART_OF_A_BUNDLE):
            raise TrtError("%s: %s is not listed in manifest.json (added or renamed?): remove it, or export "
                           "the bundle again" % (bundle, name))
    for name, info in files.items():
        path = os.path.join(bundle, name)
        if not os.path.isfile(path):
            raise TrtError("%s: %s is missing: copy the whole bundle directory again" % (bundle, name))
        if _sha256(path) != info["sha256"]:
            raise TrtError("%s: %s does not match its sha256 in manifest.json (tampered or corrupt): "
                           "copy or export the bundle again" % (bundle, name))


def read_verified_manifest(bundle):
    path = os.path.join(bundle, "manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        raise TrtError("%s has no readable manifest.json: not an edgekd bundle, export it again" % bundle) from None
    if not isinstance(manifest, dict):
        raise TrtError("%s is not an edgekd bundle manifest" % path)
    verify_bundle(bundle, manifest)
    return manifest


def write_bytes(path, data):
    """Atomic, and never through a link: the temporary file is created exclusively (a planted
    'X.tmp -> ~/.bashrc' is not followed) and renamed over `path` (a link there is replaced, not
    written through)."""
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(data))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise TrtError("TensorRT is not installed: on JetPack 'sudo apt-get install python3-libnvinfer "
                       "python3-libnvinfer-dev' (and 'pip install pycuda'), in a venv made with "
                       "--system-site-packages") from None
    return trt


def version_tuple(text):
    parts = []
    for p in str(text).split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def supports_named_tensors(version):
    return version >= (8, 5, 0)


def supports_memory_pool(version):
    return version >= (8, 4, 0)


def needs_explicit_batch_flag(version):
    return version < (10, 0, 0)


def implicit_calibration_available(version):
    return version < (11, 0, 0)


def onnx_has_qdq(onnx_path):
    """True when the ONNX holds QuantizeLinear/DequantizeLinear nodes (explicit quantization).
    A byte search is enough and avoids needing the onnx package on the device."""
    with open(onnx_path, "rb") as f:
        data = f.read()
    return b"QuantizeLinear" in data and b"DequantizeLinear" in data


def plan_build(version, precision, qdq, has_fast_fp16, has_fast_int8, dla_core=None):
    """Decide builder flags for a precision on a TensorRT version: a plain dict, unit-testable."""
    if precision not in ("fp32", "fp16", "int8"):
        raise TrtError("precision must be fp32, fp16 or int8, not %r" % precision)
    flags = []
    calibrate = False
    if precision in ("fp16", "int8") and has_fast_fp16:
        flags.append("FP16")  # INT8 engines keep FP16 for layers that cannot run in INT8
    if precision == "fp16" and not has_fast_fp16:
        raise TrtError("this GPU has no fast FP16: build with --precision fp32")
    if precision == "int8":
        if not has_fast_int8:
            raise TrtError("this GPU has no fast INT8 (e.g. Jetson Nano's Maxwell): use FP16")
        flags.append("INT8")
        if not qdq:
            if not implicit_calibration_available(version):
                raise TrtError("TensorRT %d.%d removed implicit INT8 calibration: export a Q/DQ ONNX "
                               "(edgekd export --precision int8)" % version[:2])
            calibrate = True
    if dla_core is not None:
        flags.append("GPU_FALLBACK")
    return {"flags": flags, "calibrate": calibrate, "explicit_batch_flag": needs_explicit_batch_flag(version),
            "memory_pool": supports_memory_pool(version), "dla_core": dla_core}


def calibration_batches(x, batch_size):
    """Split calibration images into full batches (TensorRT's calibrator wants a fixed batch size)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = (len(x) // batch_size) * batch_size
    if n == 0:
        raise TrtError("need at least %d calibration images, have %d" % (batch_size, len(x)))
    return [x[i:i + batch_size] for i in range(0, n, batch_size)]


class CalibrationCache(object):
    """Read/write TensorRT's calibration cache file (bytes), so a second build skips calibration."""

    def __init__(self, path):
        self.path = path

    def read(self):
        if self.path and os.path.exists(self.path):
            with open(self.path, "rb") as f:
                return f.read()
        return None

    def write(self, data):
        if not self.path:
            return
        write_bytes(self.path, data)


def make_calibrator(trt, cuda, batches, cache_path, input_name):
    """An IInt8EntropyCalibrator2 fed from numpy batches (pycuda device buffer)."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = batches
            self.index = 0
            self.cache = CalibrationCache(cache_path)
            self.device = cuda.mem_alloc(batches[0].nbytes)

        def get_batch_size(self):
            return len(self.batches[0])

        def get_batch(self, names, p_str=None):
            if self.index >= len(self.batches):
                return None
            cuda.memcpy_htod(self.device, self.batches[self.index])
            self.index += 1
            return [int(self.device)]

        def read_calibration_cache(self):
            return self.cache.read()

        def write_calibration_cache(self, cache):
            self.cache.write(cache)

    return EntropyCalibrator()


def build_engine(onnx_path, engine_path, precision, workspace_mib, input_shape, max_batch,
                 calib_path=None, cache_path=None, timing_cache_path=None, dla_core=None, verbose=False):
    """Parse ONNX, build and serialise an engine. Returns a dict for the manifest."""
    trt = import_tensorrt()
    version = version_tuple(trt.__version__)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if needs_explicit_batch_flag(version):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise TrtError("TensorRT could not parse %s: %s" % (onnx_path, errors))
    plan = plan_build(version, precision, onnx_has_qdq(onnx_path), builder.platform_has_fast_fp16,
                      builder.platform_has_fast_int8, dla_core)
    config = builder.create_builder_config()
    if plan["memory_pool"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    else:
        config.max_workspace_size = int(workspace_mib) << 20
    for name in plan["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
    inp = network.get_input(0)
    c, h, w = input_shape
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, c, h, w), (max_batch, c, h, w), (max_batch, c, h, w))
    config.add_optimization_profile(profile)
    if plan["calibrate"]:
        import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
        import pycuda.driver as cuda

        batches = calibration_batches(np.load(calib_path), 8)
        config.set_calibration_profile(profile)
        config.int8_calibrator = make_calibrator(trt, cuda, batches, cache_path, inp.name)
    timing_cache = None
    if timing_cache_path:
        blob = open(timing_cache_path, "rb").read() if os.path.exists(timing_cache_path) else b""
        timing_cache = config.create_timing_cache(blob)
        config.set_timing_cache(timing_cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtError("TensorRT failed to build %s (see the log above)" % onnx_path)
    write_bytes(engine_path, serialized)
    if timing_cache is not None:
        write_bytes(timing_cache_path, timing_cache.serialize())
    return {"file": os.path.basename(engine_path), "precision": precision, "tensorrt": trt.__version__,
            "device": gpu_name(), "max_batch": max_batch, "flags": plan["flags"],
            "calibrated": plan["calibrate"], "dla_core": dla_core}


def gpu_name():
    try:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda

        return cuda.Device(0).name()
    except Exception:
        return "unknown"


def check_engine_matches(entry, trt_version, device):
    """Engines are tied to one TensorRT version and one GPU: refuse anything else."""
    if entry.get("tensorrt") != trt_version:
        raise TrtError("engine %s was built with TensorRT %s, this device has %s: rebuild it with "
                       "'edgekd build'" % (entry.get("file"), entry.get("tensorrt"), trt_version))
    if entry.get("device") not in (device, "unknown"):
        raise TrtError("engine %s was built on %s, this is %s: rebuild it with 'edgekd build'"
                       % (entry.get("file"), entry.get("device"), device))


class TrtEngineRunner(object):
    """Runs one engine: page-locked host buffers, async copies on one stream, dynamic batch."""

    def __init__(self, engine_path, max_batch):
        trt = import_tensorrt()
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda

        self.trt, self.cuda = trt, cuda
        self.version = version_tuple(trt.__version__)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(engine_path, "rb") as f:
            self.engine = runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise TrtError("could not load engine %s (built for another TensorRT or GPU?)" % engine_path)
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.max_batch = max_batch
        self.names = self._io_names()
        self.in_name, self.out_name = self.names
        self.in_shape = tuple(self._shape(self.in_name))[1:]
        self.out_classes = tuple(self._shape(self.out_name))[-1]
        self.h_in = cuda.pagelocked_empty((max_batch,) + self.in_shape, np.float32)
        self.h_out = cuda.pagelocked_empty((max_batch, self.out_classes), np.float32)
        self.d_in = cuda.mem_alloc(self.h_in.nbytes)
        self.d_out = cuda.mem_alloc(self.h_out.nbytes)

    def _io_names(self):
        if supports_named_tensors(self.version):
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            inputs = [n for n in names if self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT]
            outputs = [n for n in names if n not in inputs]
        else:
            names = [self.engine.get_binding_name(i) for i in range(self.engine.num_bindings)]
            inputs = [n for i, n in enumerate(names) if self.engine.binding_is_input(i)]
            outputs = [n for n in names if n not in inputs]
        return inputs[0], outputs[0]

    def _shape(self, name):
        if supports_named_tensors(self.version):
            return self.engine.get_tensor_shape(name)
        return self.engine.get_binding_shape(self.engine.get_binding_index(name))

    def __call__(self, x):
        n = len(x)
        if n > self.max_batch:
            raise TrtError("batch %d exceeds the engine's profile (max %d)" % (n, self.max_batch))
        self.h_in[:n] = x
        shape = (n,) + self.in_shape
        cuda = self.cuda
        cuda.memcpy_htod_async(self.d_in, self.h_in[:n], self.stream)
        if supports_named_tensors(self.version):
            self.context.set_input_shape(self.in_name, shape)
            self.context.set_tensor_address(self.in_name, int(self.d_in))
            self.context.set_tensor_address(self.out_name, int(self.d_out))
            self.context.execute_async_v3(self.stream.handle)
        else:
            self.context.set_binding_shape(0, shape)
            self.context.execute_async_v2([int(self.d_in), int(self.d_out)], self.stream.handle)
        cuda.memcpy_dtoh_async(self.h_out[:n], self.d_out, self.stream)
        self.stream.synchronize()
        return self.h_out[:n].copy()


def build_bundle(bundle, verbose=False):
    """Build an engine for every model of a TensorRT bundle and record them in its manifest."""
    import_tensorrt()  # fail first, with the install hint, before touching anything
    manifest_path = os.path.join(bundle, "manifest.json")
    manifest = read_verified_manifest(bundle)
    target = manifest["target"]
    input_shape = (manifest["spec"]["in_channels"],) + tuple(manifest["spec"]["input_size"])
    max_batch = max(target.get("batch_sizes") or [1])
    dla = 0 if target.get("dla") else None
    engines = []
    for entry in manifest["models"]:
        precision = entry["precision"]
        if precision == "fp32":
            precision = entry.get("build_precision") or ("fp16" if manifest["precision"] != "fp32" else "fp32")
        stem = os.path.splitext(entry["file"])[0]
        info = build_engine(os.path.join(bundle, entry["file"]), os.path.join(bundle, stem + ".engine"),
                            precision, target["workspace_mib"], input_shape, max_batch,
                            calib_path=os.path.join(bundle, "calib.npy"),
                            cache_path=os.path.join(bundle, stem + ".calib.cache"),
                            timing_cache_path=os.path.join(bundle, "timing.cache"), dla_core=dla, verbose=verbose)
        info.update(role=entry["role"], onnx=entry["file"])
        engines.append(info)
        sys.stderr.write("built %s (%s, TensorRT %s)\n" % (info["file"], precision, info["tensorrt"]))
    manifest["engines"] = engines
    for e in engines:
        path = os.path.join(bundle, e["file"])
        manifest["files"][e["file"]] = {"sha256": _sha256(path), "bytes": os.path.getsize(path)}
    write_bytes(manifest_path, json.dumps(manifest, indent=2).encode())
    return engines


def _sha256(path):
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def evaluation_sets(bundle, manifest, data=None):
    """What the engines are scored on: the bundle's held-out synthetic images with the teacher's
    predictions (agreement), and, given, a labelled .npz (top1) with 'y' and 'x' either float32 NCHW
    already prepared at the model's input or uint8 images (NHWC or NCHW) at the input size, which are
    scaled and normalised here with the manifest's mean/std. Resizing needs edgekd (edgekd bench)."""
    sets = {}
    name = manifest.get("synthetic_eval")
    if name:
        with np.load(os.path.join(bundle, name)) as z:
            sets["synthetic"] = (z["x"].astype(np.float32), np.asarray(z["teacher_pred"]))
    if data:
        try:
            with np.load(data) as z:
                x, y = z["x"], np.asarray(z["y"]).astype(np.int64)
        except (OSError, KeyError, ValueError) as e:
            raise TrtError("%s: need a .npz with arrays 'x' and 'y' (%s)" % (data, e)) from None
        sets["data"] = (_prepared(x, manifest), y)
    return sets


def _prepared(x, manifest):
    spec = manifest["spec"]
    shape = (spec["in_channels"],) + tuple(spec["input_size"])
    if x.dtype == np.uint8:
        if x.ndim == 4 and x.shape[-1] == shape[0] and x.shape[1:3] == shape[1:]:
            x = x.transpose(0, 3, 1, 2)
        if x.shape[1:] != shape:
            raise TrtError("images of shape %s, the model takes %s: resize them first, or bench with edgekd "
                           "(pip install edgekd), which applies the bundle's preprocessing" % (x.shape[1:], shape))
        mean = np.asarray(spec["mean"], np.float32)[:, None, None]
        std = np.asarray(spec["std"], np.float32)[:, None, None]
        return ((x.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
    if x.shape[1:] != shape:
        raise TrtError("float images of shape %s, the model takes %s (NCHW, normalised)" % (x.shape[1:], shape))
    return x.astype(np.float32)


def score(run, max_batch, sets):
    """top1 / agreement of one engine (run: a batch -> logits), in edgekd bench's JSON fields."""
    def predict(x):
        return np.concatenate([np.asarray(run(x[i:i + max_batch])).argmax(1) for i in range(0, len(x), max_batch)])

    out = {}
    if "synthetic" in sets:
        x, teacher_pred = sets["synthetic"]
        out["agreement"] = float((predict(x) == teacher_pred).mean())
    if "data" in sets:
        x, y = sets["data"]
        out["top1"] = float((predict(x) == y).mean())
    return out


def bench_bundle(bundle, batch_sizes=(1,), warmup_s=2.0, duration_s=10.0, data=None):
    """Latency of every engine in the bundle, with agreement with the teacher on the bundle's held-out
    synthetic images and top1 on a labelled .npz when given (for the Nano, where edgekd is not installed)."""
    manifest = read_verified_manifest(bundle)
    trt = import_tensorrt()
    sets = evaluation_sets(bundle, manifest, data)
    rows = []
    for e in manifest.get("engines", []):
        check_engine_matches(e, trt.__version__, gpu_name())
        runner = TrtEngineRunner(os.path.join(bundle, e["file"]), e["max_batch"])
        quality = score(runner, e["max_batch"], sets)
        for bs in batch_sizes:
            x = np.random.RandomState(0).standard_normal((bs,) + runner.in_shape).astype(np.float32)
            end = time.time() + warmup_s
            while time.time() < end:
                runner(x)
            samples = []
            end = time.time() + duration_s
            while time.time() < end or len(samples) < 10:
                t0 = time.perf_counter()
                runner(x)
                samples.append((time.perf_counter() - t0) * 1e3)
            ms = np.asarray(samples)
            rows.append({"model": "%s %s" % (e["role"], e["precision"]), "runtime": "tensorrt", "engine": e["file"],
                         "role": e["role"], "precision": e["precision"], "batch_size": bs, "top1": quality.get("top1"),
                         "agreement": quality.get("agreement"),
                         "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
                         "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
                         "throughput_ips": bs * 1000.0 / float(ms.mean()),
                         "size_mb": os.path.getsize(os.path.join(bundle, e["file"])) / 1e6})
    return rows


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] not in ("build", "bench"):
        sys.stderr.write("usage: edgekd_trt.py build BUNDLE_DIR [--verbose] | bench BUNDLE_DIR [--data LABELLED.npz]\n")
        return 2
    data = argv[argv.index("--data") + 1] if "--data" in argv[:-1] else None
    try:
        if argv[0] == "build":
            build_bundle(argv[1], verbose="--verbose" in argv)
        else:
            print(json.dumps(bench_bundle(argv[1], data=data), indent=2))
    except TrtError as e:
        sys.stderr.write("error: %s\n" % e)
        return 6
    return 0


if __name__ == "__main__":
    sys.exit(main())
