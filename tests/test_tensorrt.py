"""Everything around the TensorRT calls, which cannot run here (no GPU, no TensorRT).
The only fake is a tiny stand-in for the tensorrt module's builder objects."""

import json
import sys
import types

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekd.cli.app import app
from edgekd.deploy import trt_device as T

runner = CliRunner()


@pytest.mark.parametrize("text,want", [("8.2.1.8", (8, 2, 1)), ("10.3.0", (10, 3, 0)), ("8.6", (8, 6, 0)),
                                       ("10.0.1b", (10, 0, 1))])
def test_version_parsing(text, want):
    assert T.version_tuple(text) == want


def test_version_gates():
    assert not T.supports_named_tensors((8, 2, 1)) and T.supports_named_tensors((8, 5, 2))
    assert not T.supports_memory_pool((8, 2, 1)) and T.supports_memory_pool((8, 4, 0))
    assert T.needs_explicit_batch_flag((8, 6, 1)) and not T.needs_explicit_batch_flag((10, 3, 0))
    assert T.implicit_calibration_available((10, 3, 0)) and not T.implicit_calibration_available((11, 0, 0))


def test_build_plans_per_target_and_version():
    nano = T.plan_build((8, 2, 1), "fp16", qdq=False, has_fast_fp16=True, has_fast_int8=False)
    assert nano["flags"] == ["FP16"] and nano["explicit_batch_flag"] and not nano["memory_pool"]
    with pytest.raises(T.TrtError, match="no fast INT8"):
        T.plan_build((8, 2, 1), "int8", qdq=True, has_fast_fp16=True, has_fast_int8=False)
    orin_qdq = T.plan_build((10, 3, 0), "int8", qdq=True, has_fast_fp16=True, has_fast_int8=True)
    assert orin_qdq["flags"] == ["FP16", "INT8"] and not orin_qdq["calibrate"]
    orin_cal = T.plan_build((8, 5, 2), "int8", qdq=False, has_fast_fp16=True, has_fast_int8=True)
    assert orin_cal["calibrate"]
    with pytest.raises(T.TrtError, match="removed implicit INT8"):
        T.plan_build((11, 0, 0), "int8", qdq=False, has_fast_fp16=True, has_fast_int8=True)
    nx = T.plan_build((8, 5, 2), "fp16", qdq=False, has_fast_fp16=True, has_fast_int8=True, dla_core=0)
    assert "GPU_FALLBACK" in nx["flags"] and nx["dla_core"] == 0


def test_calibration_batches_and_cache(tmp_path):
    x = np.arange(20 * 3, dtype=np.float64).reshape(20, 3)
    batches = T.calibration_batches(x, 8)
    assert [b.shape for b in batches] == [(8, 3), (8, 3)] and batches[0].dtype == np.float32
    with pytest.raises(T.TrtError, match="at least 8"):
        T.calibration_batches(x[:5], 8)
    cache = T.CalibrationCache(str(tmp_path / "c.cache"))
    assert cache.read() is None
    cache.write(b"TRT-8205-EntropyCalibration2\ninput: 3c010a14\n")
    assert cache.read().startswith(b"TRT-8205")


def test_engine_mismatch_is_refused():
    entry = {"file": "student.engine", "tensorrt": "8.2.1.8", "device": "NVIDIA Tegra X1"}
    T.check_engine_matches(entry, "8.2.1.8", "NVIDIA Tegra X1")
    with pytest.raises(T.TrtError, match="built with TensorRT 8.2.1.8, this device has 8.5.2"):
        T.check_engine_matches(entry, "8.5.2", "NVIDIA Tegra X1")
    with pytest.raises(T.TrtError, match="built on NVIDIA Tegra X1, this is Orin"):
        T.check_engine_matches(entry, "8.2.1.8", "Orin")


def _fake_tensorrt(version, fast_int8=True):
    """The smallest stand-in for the tensorrt module that build_engine touches; it records calls."""
    calls = {}
    ns = types.SimpleNamespace

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["pool"] = (pool, size)

        def set_flag(self, flag):
            calls.setdefault("flags", []).append(flag)

        def add_optimization_profile(self, profile):
            calls["profile"] = profile.shapes

    class Profile:
        def set_shape(self, name, *shapes):
            self.shapes = (name, shapes)

    class Builder:
        platform_has_fast_fp16, platform_has_fast_int8 = True, fast_int8

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return ns(get_input=lambda i: ns(name="input"))

        def create_builder_config(self):
            calls["config"] = Config()
            return calls["config"]

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"engine-bytes"

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            calls["parsed"] = len(data)
            return True

    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.Logger = type("Logger", (), {"WARNING": 2, "VERBOSE": 0, "__init__": lambda self, level: None})
    mod.Builder, mod.OnnxParser = Builder, Parser
    mod.NetworkDefinitionCreationFlag = ns(EXPLICIT_BATCH=0)
    mod.MemoryPoolType = ns(WORKSPACE="WORKSPACE")
    mod.BuilderFlag = ns(FP16="FP16", INT8="INT8", GPU_FALLBACK="GPU_FALLBACK")
    mod.DeviceType = ns(DLA="DLA")
    return mod, calls


@pytest.mark.parametrize("version", ["8.2.1.8", "8.6.1", "10.3.0"])
def test_build_engine_uses_the_right_api_per_version(tmp_path, monkeypatch, version):
    mod, calls = _fake_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    (tmp_path / "m.onnx").write_bytes(b"fake onnx bytes")
    info = T.build_engine(str(tmp_path / "m.onnx"), str(tmp_path / "m.engine"), "fp16", 512, (3, 32, 32), 8)
    assert (tmp_path / "m.engine").read_bytes() == b"engine-bytes"
    assert info["tensorrt"] == version and info["flags"] == ["FP16"]
    assert calls["flags"] == ["FP16"]
    assert calls["profile"] == ("input", ((1, 3, 32, 32), (8, 3, 32, 32), (8, 3, 32, 32)))
    if version.startswith("8.2"):
        assert calls["network_flags"] == 1 and "pool" not in calls
        assert calls["config"].max_workspace_size == 512 << 20
    else:
        assert calls["pool"] == ("WORKSPACE", 512 << 20)
        assert calls["network_flags"] == (1 if version.startswith("8") else 0)


def test_qdq_detection_on_real_onnx(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    def save(op, path):
        node = helper.make_node(op, ["x", "s", "z"] if op != "Relu" else ["x"], ["y"])
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])]
        graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        onnx.save(helper.make_model(graph), str(path))

    save("Relu", tmp_path / "plain.onnx")
    assert not T.onnx_has_qdq(str(tmp_path / "plain.onnx"))
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "qdq.onnx"))
    assert T.onnx_has_qdq(str(tmp_path / "qdq.onnx"))


def test_build_without_tensorrt_names_jetpack_packages(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "edgekd-bundle", "runtime": "tensorrt",
                                                        "target": {"name": "jetson-nano"}, "files": {}}))
    result = runner.invoke(app, ["build", str(tmp_path)])
    assert result.exit_code == 6 and "python3-libnvinfer" in result.output
    assert T.main(["build", str(tmp_path)]) == 6


def test_device_script_is_python36_syntax():
    """The Nano runs Python 3.6: no walrus, no positional-only params, no future annotations."""
    import ast

    src = open(T.__file__).read()
    tree = ast.parse(src, feature_version=(3, 6))
    imported = {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"json", "os", "sys", "tempfile", "time", "numpy", "tensorrt", "pycuda", "hashlib"}


def test_device_script_scores_engines_as_edgekd_bench_does(run_dir, tmp_path, fmnist):
    """The Nano's standalone bench reports agreement (bundle's synthetic set) and top1 (a labelled .npz)
    in edgekd bench's fields. The engine is the one thing not here: ONNX Runtime on the same student
    stands in for it, so the figures must equal edgekd bench's."""
    import numpy as np

    from edgekd.bench.core import BenchConfig, bench_bundles
    from edgekd.data.datasets import prepare_images
    from edgekd.deploy.bundle import ExportConfig, export_bundle
    from edgekd.deploy.onnx_export import INPUT_NAME, ort_session
    from edgekd.deploy.targets import get_target
    from edgekd.spec import ModelSpec

    bundle = tmp_path / "b"
    export_bundle(run_dir, ExportConfig(get_target("x86-cpu"), "fp32", calib_count=16), bundle)
    manifest = T.read_verified_manifest(str(bundle))
    sub = fmnist.take(300)
    np.savez(tmp_path / "raw.npz", x=sub.images, y=sub.labels)  # 28x28: edgekd bench resizes them
    prepared = prepare_images(sub.images, ModelSpec.from_dict(manifest["spec"]))
    np.savez(tmp_path / "prepared.npz", x=prepared, y=sub.labels)
    session = ort_session(bundle / "student.onnx")
    engine = lambda x: session.run(None, {INPUT_NAME: x})[0]  # noqa: E731  (stands in for TensorRT)

    got = T.score(engine, 8, T.evaluation_sets(str(bundle), manifest, str(tmp_path / "prepared.npz")))
    cfg = dict(batch_sizes=(1,), warmup_s=0.0, duration_s=None, iterations=2, verify_timing=False)
    synthetic = bench_bundles([bundle], BenchConfig(**cfg))
    real = bench_bundles([bundle], BenchConfig(data=str(tmp_path / "raw.npz"), **cfg))
    student = lambda res: next(r for r in res.rows if r["model"] == "student fp32")  # noqa: E731
    assert got["agreement"] == student(synthetic)["agreement"]
    assert abs(got["top1"] - student(real)["top1"]) < 1e-9
    with pytest.raises(T.TrtError, match="resize them first"):
        T.evaluation_sets(str(bundle), manifest, str(tmp_path / "raw.npz"))
