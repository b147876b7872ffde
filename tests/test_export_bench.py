"""Real exports, real ONNX Runtime sessions, real bundles."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekd.bench.core import BenchConfig, bench_bundles
from edgekd.bench.latency import summarize
from edgekd.cli.app import app
from edgekd.deploy.bundle import ExportConfig, export_bundle
from edgekd.deploy.manifest import load_manifest
from edgekd.deploy.onnx_export import read_metadata
from edgekd.deploy.targets import TARGETS_DIR, get_target
from edgekd.errors import DataError, InputFileError, QualityError, UsageError

runner = CliRunner()
FAST_BENCH = dict(batch_sizes=(1, 4), warmup_s=0.0, duration_s=None, iterations=5, verify_timing=False)


@pytest.fixture(scope="module")
def int8_bundle(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "x86-int8"
    export_bundle(run_dir, ExportConfig(get_target("x86-cpu"), "int8", calib_count=128), out)
    return out


def test_int8_bundle_contents(int8_bundle):
    m = load_manifest(int8_bundle)
    drift = m["checks"]["int8"]["drift"]  # where INT8 departs most from FP32, worst first
    assert len(drift) == 3 and drift[0]["sqnr_db"] <= drift[1]["sqnr_db"] <= drift[2]["sqnr_db"]
    import onnx

    outputs = {o for n in onnx.load(str(int8_bundle / "student.onnx")).graph.node for o in n.output}
    assert all(d["tensor"] in outputs for d in drift)
    assert {e["file"] for e in m["models"]} == {"student.onnx", "teacher.onnx", "student.int8.onnx"}
    assert m["calibration"]["source"] == "generator" and m["calibration"]["count"] == 128
    assert np.load(int8_bundle / "calib.npy").shape == (128, 1, 32, 32)
    assert m["checks"]["student_parity"]["max_abs_diff"] < 1e-3
    assert m["checks"]["int8"]["agreement"] >= 0.9
    assert m["spec"]["arch"] == "lenet5-half" and m["preprocessing"]["mean"] == [0.5]
    assert len(m["labels"]) == 10
    meta = read_metadata(int8_bundle / "student.onnx")
    assert meta["edgekd.spec"]["input_size"] == [32, 32]
    assert meta["edgekd.provenance"]["method"] == "adversarial"
    assert len(meta["edgekd.provenance"]["teacher_sha256"]) == 64
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8_bundle / "student.int8.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # QDQ format
    assert "edgekd bench" in (int8_bundle / "README.md").read_text()


def test_tensorrt_target_bundle_opset_and_trtexec(run_dir, tmp_path):
    out = tmp_path / "nano"
    export_bundle(run_dir, ExportConfig(get_target("jetson-nano"), "fp16", calib_count=32), out)
    import onnx

    model = onnx.load(str(out / "student.onnx"))
    assert model.opset_import[0].version == 13
    readme = (out / "README.md").read_text()
    assert "trtexec --onnx=student.onnx --fp16 --workspace=512" in readme
    assert "--system-site-packages" in readme


def _qdq_arrays(path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    weights = [inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in inits and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim > 1]
    return zero_points, weights


def test_int8_for_orin_is_symmetric(run_dir, tmp_path):
    # Structure only: no quality gate (min agreement 0) so the outcome cannot depend on the CPU.
    out = tmp_path / "orin"
    export_bundle(run_dir, ExportConfig(get_target("jetson-orin-nano"), "int8", calib_count=64,
                                        min_int8_agreement=0.0), out)
    zero_points, weights = _qdq_arrays(out / "student.int8.onnx")
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert weights and max(int(np.abs(w).max()) for w in weights) == 127  # full 8-bit weights for TensorRT
    q = load_manifest(out)["quantization"]
    assert q["activations"] == "int8 symmetric" and not q["reduce_range"] and "TensorRT" in q["reason"]


def test_int8_for_arm_is_s8s8(run_dir, tmp_path):
    """ARM CPU targets: int8 activations (asymmetric: zero points not all 0) with int8 weights."""
    out = tmp_path / "pi5"
    export_bundle(run_dir, ExportConfig(get_target("raspberry-pi-5"), "int8", calib_count=64,
                                        min_int8_agreement=0.0), out)
    zero_points, weights = _qdq_arrays(out / "student.int8.onnx")
    activations = [z for z in zero_points if z.ndim == 0]
    assert activations and all(z.dtype == np.int8 for z in activations) and any(z.any() for z in activations)
    assert all(w.dtype == np.int8 for w in weights)
    q = load_manifest(out)["quantization"]
    assert q["activations"] == "int8 asymmetric" and "S8S8" in q["reason"]
    # Its optimised files are made for ARM: int8-activation groups fused as an ARM onnxruntime fuses them,
    # which an x86 onnxruntime does not do unless told (a file made for x86 differs).
    from edgekd.deploy.ort_optimize import write_optimized

    made = {c["file"]: c for c in load_manifest(out)["checks"]["ort_optimized"]}
    assert made["student.int8.opt.onnx"]["platform"] == "arm"
    write_optimized(out / "student.int8.onnx", tmp_path / "x86.onnx", np.load(out / "calib.npy")[:4], "x86")
    assert (out / "student.int8.opt.onnx").read_bytes() != (tmp_path / "x86.onnx").read_bytes()


@pytest.mark.parametrize("vnni", ["yes", "no"])
def test_x86_int8_follows_the_devices_vnni(run_dir, tmp_path, vnni):
    out = tmp_path / vnni
    export_bundle(run_dir, ExportConfig(get_target("x86-cpu"), "int8", calib_count=64, min_int8_agreement=0.0,
                                        vnni=vnni), out)
    m = load_manifest(out)
    zero_points, weights = _qdq_arrays(out / "student.int8.onnx")
    top = max(int(np.abs(w).max()) for w in weights)
    # 7-bit weights without VNNI keep every u8 x s8 pair sum inside int16 (255 * 64 * 2 < 32768).
    assert (top <= 64) if vnni == "no" else (top == 127)
    assert m["quantization"]["reduce_range"] is (vnni == "no") and "vnni = " + vnni in m["quantization"]["reason"]
    assert m["export_cpu"]["cpu"] and "flags" in m["export_cpu"]
    c = m["checks"]["int8"]
    assert 0 <= c["agreement"] <= 1 and c["kernels_cpu"]
    if vnni == "no" or c["kernels_cpu"] != "none":  # no saturation possible: kernels give the exact arithmetic
        assert abs(c["kernel_agreement"] - c["agreement"]) <= 0.02, c


def test_export_errors(run_dir, tmp_path, demo_teacher_path):
    with pytest.raises(UsageError, match="does not support int8"):
        export_bundle(run_dir, ExportConfig(get_target("jetson-nano"), "int8"), tmp_path / "a")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(InputFileError, match="no student.pt"):
        export_bundle(tmp_path / "empty_run", ExportConfig(get_target("x86-cpu"), "fp32"), tmp_path / "b")
    with pytest.raises(UsageError, match="needs calibration images"):  # a bare checkpoint has no generator
        export_bundle(demo_teacher_path, ExportConfig(get_target("x86-cpu"), "int8"), tmp_path / "c")
    np.savez(tmp_path / "wrong.npz", x=np.zeros((3, 28, 28), np.uint8), y=np.zeros(3))
    with pytest.raises(DataError, match="at least 8"):
        export_bundle(run_dir, ExportConfig(get_target("x86-cpu"), "int8", calib_data=str(tmp_path / "wrong.npz")),
                      tmp_path / "d")
    with pytest.raises(QualityError, match="refusing") as refused:  # an impossible threshold trips the check
        export_bundle(run_dir, ExportConfig(get_target("x86-cpu"), "int8", calib_count=32, min_int8_agreement=1.01),
                      tmp_path / "e")
    # The refusal names the tensors that drift most from FP32 (test_int8_bundle_contents: graph names).
    assert str(refused.value).split("drifting most from FP32: ")[1].split(");")[0].count(" dB)") == 3
    assert not any(p.name.startswith(("a", "b", "c", "d", "e")) for p in tmp_path.iterdir() if p.is_dir()
                   and p.name != "empty_run"), list(tmp_path.iterdir())  # nothing half-written


def test_unwritable_output(run_dir, tmp_path):
    if os.geteuid() == 0:
        target = "/proc/edgekd-bundle"  # even root cannot create directories there
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        target = str(tmp_path / "ro" / "bundle")
    result = runner.invoke(app, ["export", str(run_dir), "--target", "x86-cpu", "--precision", "fp32",
                                 "--out", target])
    assert result.exit_code == 3 and "cannot write" in result.output


def test_bench_with_real_data(int8_bundle, fmnist):
    res = bench_bundles([int8_bundle], BenchConfig(data="fashion-mnist", max_images=1000, **FAST_BENCH))
    models = {r["model"] for r in res.rows}
    assert models == {"teacher fp32", "student fp32", "student int8"}
    teacher = next(r for r in res.rows if r["model"] == "teacher fp32")
    assert teacher["top1"] > 0.85 and teacher["agreement"] == 1.0 and teacher["top5"] > teacher["top1"]
    for r in res.rows:
        assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["runs"] == 5
    assert len(res.verdicts) == 4 and all(v["speedup_p50"] > 0 for v in res.verdicts)
    assert res.evaluation["preprocess_ms_per_image"] > 0


def test_bench_without_data_uses_synthetic_agreement(int8_bundle):
    res = bench_bundles([int8_bundle], BenchConfig(**FAST_BENCH))
    assert res.evaluation["kind"] == "synthetic"
    assert all(r["top1"] is None and r["agreement"] is not None for r in res.rows)
    assert next(r for r in res.rows if r["model"] == "teacher fp32")["agreement"] > 0.99


def test_bench_refuses_tampered_and_incomplete_bundles(int8_bundle, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(int8_bundle, bad)
    with open(bad / "student.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(InputFileError, match="sha256"):
        bench_bundles([bad], BenchConfig(**FAST_BENCH))
    (bad / "student.onnx").unlink()
    with pytest.raises(InputFileError, match="missing"):
        bench_bundles([bad], BenchConfig(**FAST_BENCH))
    with pytest.raises(InputFileError, match="not an edgekd bundle"):
        bench_bundles([tmp_path], BenchConfig(**FAST_BENCH))


def test_offline_optimized_files_compute_the_same_and_fall_back(int8_bundle, tmp_path):
    """x86-cpu bundles carry each model also optimised offline by ONNX Runtime, listed with its sha256 and
    checked against its ONNX file; bench runs it, and runs the plain file where it is unreadable."""
    import shutil

    from edgekd.bench.runners import OrtRunner

    m = load_manifest(int8_bundle)
    opt = {"student.opt.onnx", "teacher.opt.onnx", "student.int8.opt.onnx"}
    assert {e["optimized_file"] for e in m["models"]} == opt and opt <= set(m["files"])
    checks = {c["file"]: c for c in m["checks"]["ort_optimized"]}
    assert checks["student.opt.onnx"]["max_abs_diff"] < 1e-3 and checks["student.int8.opt.onnx"]["argmax_agreement"] >= 0.98
    assert checks["student.opt.onnx"]["platform"] == "x86" and checks["student.opt.onnx"]["load_ms"]["optimized"] > 0
    entry = next(e for e in m["models"] if e["precision"] == "int8")
    x = np.load(int8_bundle / "synthetic.npz")["x"][:8]
    fast, plain = OrtRunner(int8_bundle, entry), OrtRunner(int8_bundle, {**entry, "optimized_file": None})
    assert (fast.path.name, plain.path.name) == ("student.int8.opt.onnx", "student.int8.onnx")
    same = [np.array_equal(fast(x[i:i + 1]).argmax(1), plain(x[i:i + 1]).argmax(1)) for i in range(len(x))]
    assert all(same)
    bad = tmp_path / "bad"
    shutil.copytree(int8_bundle, bad)
    (bad / "student.int8.opt.onnx").write_bytes(b"written by an onnxruntime from the future")
    fallback = OrtRunner(bad, entry)
    assert fallback.path.name == "student.int8.onnx" and "unreadable" in fallback.environment()["note"]
    from edgekd.fileio import sha256_file, write_json

    m2 = load_manifest(bad, verify=False)  # re-hashed, so the bundle verifies: bench runs it, and warns
    m2["files"]["student.int8.opt.onnx"]["sha256"] = sha256_file(bad / "student.int8.opt.onnx")
    write_json(bad / "manifest.json", m2)
    # ONNX Runtime named: export names whichever runtime timed faster here (OpenVINO on some CPUs)
    res = bench_bundles([bad], BenchConfig(runtime="onnxruntime", **FAST_BENCH))
    assert any("student int8" in w and "unreadable" in w for w in res.warnings), res.warnings
    (bad / "student.int8.opt.onnx").write_bytes(b"changed after export")
    with pytest.raises(InputFileError, match="student.int8.opt.onnx does not match its sha256"):
        load_manifest(bad)


def test_target_session_settings_reach_the_runtime(run_dir, tmp_path):
    """A target's [session.onnxruntime] entries are what bench's (and export's) sessions are made with."""
    from edgekd.bench.runners import make_runner

    f = tmp_path / "quiet-x86.toml"
    f.write_text((TARGETS_DIR / "x86-cpu.toml").read_text().replace('name = "x86-cpu"', 'name = "quiet-x86"').replace("[bench]", '[session.onnxruntime]\n'
                 '"session.intra_op.allow_spinning" = "0"\n\n[bench]'))
    out = tmp_path / "b"
    m = export_bundle(run_dir, ExportConfig(get_target(str(f)), "fp32"), out).manifest
    assert m["target"]["session"] == {"onnxruntime": {"session.intra_op.allow_spinning": "0"}}
    entry = m["models"][0]
    r = make_runner("onnxruntime", out, entry, 1, m["target"]["session"])
    assert r.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    plain = make_runner("onnxruntime", out, entry, 1)
    with pytest.raises(RuntimeError, match="does not have configuration"):  # not set without the table
        plain.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    res = bench_bundles([out], BenchConfig(runtime="onnxruntime", **FAST_BENCH))
    assert res.environment["runtimes"]["onnxruntime"]["session_options"] == {"session.intra_op.allow_spinning": "0"}


def test_bench_data_mismatch(int8_bundle, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 28, 28), np.uint8), y=np.array([0, 1, 2, 42]))
    with pytest.raises(DataError, match="labels up to 42"):
        bench_bundles([int8_bundle], BenchConfig(data=str(tmp_path / "d.npz"), **FAST_BENCH))


def test_bench_cli_outputs_and_tensorrt_missing(int8_bundle, tmp_path):
    result = runner.invoke(app, ["bench", str(int8_bundle), "--iterations", "3", "--warmup", "0", "--runtime",
                                 "onnxruntime", "--batch-sizes", "1", "--json", str(tmp_path / "r.json"),
                                 "--markdown", str(tmp_path / "r.md"), "--plot", str(tmp_path / "r.png")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["environment"]["runtimes"]["onnxruntime"]["provider"] == "CPUExecutionProvider"
    # each row names the file its model ran from (the offline-optimised one x86-cpu ships), not the last model's
    assert {(r["model"], r["file"]) for r in data["rows"]} == {("teacher fp32", "teacher.opt.onnx"),
                                                                ("student fp32", "student.opt.onnx"),
                                                                ("student int8", "student.int8.opt.onnx")}
    assert "file" not in data["environment"]["runtimes"]["onnxruntime"]
    assert data["timing_check"] and "loop_mean_ms" in data["timing_check"][0]
    assert "| student int8 |" in (tmp_path / "r.md").read_text().replace("| x86-int8 ", "")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    result = runner.invoke(app, ["bench", str(int8_bundle), "--runtime", "tensorrt"])
    assert result.exit_code == 6 and "python3-libnvinfer" in result.output


def test_bench_path_never_imports_torch(int8_bundle):
    """Block torch entirely (as on a device without it) and run the real CLI."""
    code = ("import sys; sys.modules['torch'] = None; from edgekd.cli.app import main; "
            f"sys.argv = ['edgekd', 'bench', {str(int8_bundle)!r}, '--iterations', '2', '--warmup', '0', "
            "'--batch-sizes', '1', '--no-timing-check']; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "student int8" in proc.stdout


def test_latency_summary_percentiles():
    stats = summarize([0.001 * i for i in range(1, 101)], batch_size=4)
    assert abs(stats.p50_ms - 50.5) < 1e-9 and abs(stats.mean_ms - 50.5) < 1e-9
    assert stats.p90_ms == pytest.approx(90.1) and stats.p99_ms == pytest.approx(99.01)
    assert stats.throughput_ips == pytest.approx(4 / 0.0505)


def test_bench_table_shows_every_value_whole_in_80_columns(int8_bundle, tmp_path, monkeypatch):
    """Device benches are read over ssh and in CI logs: no value cut to an ellipsis, no line past 80."""
    import shutil

    from edgekd.bench.report import TERMINAL_COLUMNS, fmt
    from edgekd.cli.app import console

    long = tmp_path / "fmnist_resnet34-mobilenet_v2-adversarial-x86-cpu-int8-with-a-very-long-name-indeed"
    shutil.copytree(int8_bundle, long)
    monkeypatch.setattr(console, "width", 80)
    result = runner.invoke(app, ["bench", str(long), "--data", "fashion-mnist", "--max-images", "300",
                                 "--iterations", "3", "--warmup", "0", "--batch-sizes", "1,8",
                                 "--no-timing-check", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in result.output, result.output
    flat = "".join(result.output.split())
    assert long.name in flat  # the bundle's name, perhaps wrapped, whole
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    for r in rows:
        values = [fmt(c, r.get(c)) for c in TERMINAL_COLUMNS]
        assert any(all(v in line for v in values) for line in lines), (values, result.output)


def test_default_int8_ships_only_where_it_is_faster_here(run_dir, tmp_path):
    """x86-cpu defaults to INT8; with the export machine as the device, an INT8 student slower than FP32
    here is not shipped. Asked for by name (--precision int8), INT8 is kept whatever it measures."""
    result = runner.invoke(app, ["export", str(run_dir), "--target", "x86-cpu", "--calib", "64",
                                 "--out", str(tmp_path / "auto")])
    assert result.exit_code == 0, result.output
    m = load_manifest(tmp_path / "auto")
    speed = m["checks"]["speed"]
    p50 = speed["p50_ms"]
    files = {e["file"] for e in m["models"]}
    # The shipped (runtime, precision) is the fastest measured one that agrees with the FP32 student.
    agree = speed["agreement_with_fp32"]
    assert agree["onnxruntime"]["fp32"] == 1.0 and agree["openvino"]["fp32"] >= 0.98
    fastest = min(((r, p) for r in p50 for p in p50[r] if r == "onnxruntime" or agree[r][p] >= ExportConfig.min_int8_agreement),
                  key=lambda rp: p50[rp[0]][rp[1]])
    assert (m["runtime"], m["precision"]) == fastest == tuple(speed["chosen"].values())
    if m["precision"] == "fp32":
        assert "student.int8.onnx" not in files and "slower than FP32" in result.output
    else:
        assert "student.int8.onnx" in files
    assert set(p50) == {"onnxruntime", "openvino"}  # the dev install brings OpenVINO: both timed
    named = export_bundle(run_dir, ExportConfig(get_target("x86-cpu"), "int8", calib_count=64), tmp_path / "named")
    assert named.manifest["precision"] == "int8" and set(named.manifest["checks"]["speed"]["p50_ms"]["openvino"]) == {"int8"}


@pytest.mark.parametrize("resize", ["pad", "crop:0.875"])
def test_bench_measures_the_teacher_under_its_own_preprocessing(demo_teacher_path, fmnist, tmp_path, resize):
    """The spec's resize travels distill -> checkpoint -> manifest -> bench: the teacher's accuracy in the
    bench equals its accuracy on images prepared by an independent (torchvision) implementation."""
    import torch
    from test_data import _reference

    from edgekd.distill.config import resolve_config
    from edgekd.distill.loop import distill
    from edgekd.models.checkpoint import load_model
    from edgekd.spec import parse_resize

    teacher = load_model(demo_teacher_path, spec_overrides=parse_resize(resize))
    cfg = resolve_config("adversarial", overrides=dict(iterations=1, batch_size=16, calib_images=8, eval_every_s=1e9))
    distill(teacher, cfg, tmp_path / "run")
    result = export_bundle(tmp_path / "run", ExportConfig(get_target("x86-cpu"), "fp32", calib_count=16), tmp_path / "b")
    assert result.manifest["preprocessing"]["resize"] == resize.split(":")[0]
    assert ("centred on a 32x32 canvas" if resize == "pad" else "then the centre 32x32 cropped") in \
        (tmp_path / "b" / "README.md").read_text()
    res = bench_bundles([tmp_path / "b"], BenchConfig(data="fashion-mnist", max_images=500, **FAST_BENCH))
    bench_top1 = next(r for r in res.rows if r["model"] == "teacher fp32" and r["batch_size"] == 1)["top1"]
    sub = fmnist.take(500)
    x = torch.from_numpy(_reference(sub.images, 32, resize.split(":")[0]))
    with torch.no_grad():
        own = float((teacher.model.float()(x).argmax(1).numpy() == sub.labels).mean())
    assert abs(bench_top1 - own) < 1e-9, (bench_top1, own)


def test_bench_runs_every_runtime_side_by_side(int8_bundle, fmnist):
    """OpenVINO on the same ONNX files as ONNX Runtime: the same FP32 predictions, INT8 close to them."""
    res = bench_bundles([int8_bundle], BenchConfig(data="fashion-mnist", max_images=1000, runtime="all", **FAST_BENCH))
    by = {(r["runtime"], r["model"].rsplit(" ", 1)[0], r["batch_size"]): r for r in res.rows}
    assert {k[0] for k in by} == {"onnxruntime", "openvino"}
    assert res.environment["runtimes"]["openvino"]["version"]
    for model in ("teacher fp32", "student fp32"):
        assert abs(by[("openvino", model, 1)]["top1"] - by[("onnxruntime", model, 1)]["top1"]) <= 0.002
        assert abs(by[("openvino", model, 1)]["agreement"] - by[("onnxruntime", model, 1)]["agreement"]) <= 0.002
    assert abs(by[("openvino", "student int8", 4)]["top1"] - by[("onnxruntime", "student int8", 4)]["top1"]) <= 0.02
    # Every student is compared with the first runtime's teacher.
    teacher = by[("onnxruntime", "teacher fp32", 1)]
    v = next(v for v in res.verdicts if v["model"] == "student int8 ov" and v["batch_size"] == 1)
    assert v["speedup_p50"] == pytest.approx(teacher["p50_ms"] / by[("openvino", "student int8", 1)]["p50_ms"])


@pytest.mark.parametrize("choice,want", [("onnxruntime", ["onnxruntime"]), ("openvino, onnxruntime", ["openvino", "onnxruntime"]),
                                         ("auto", ["onnxruntime"]), ("all", ["onnxruntime", "openvino"])])
def test_runtime_choice(choice, want):
    from edgekd.bench.runners import bundle_runtimes

    assert bundle_runtimes(choice, {"runtime": "onnxruntime"}) == want


def test_unknown_runtime_is_one_line():
    from edgekd.bench.runners import bundle_runtimes

    with pytest.raises(UsageError, match="choose onnxruntime, openvino, tensorrt"):
        bundle_runtimes("onnx", {})


# Each runtime's own operator names: ONNX Runtime's ONNX ops (INT8 kernels in the INT8 model); OpenVINO's
# layer types from its performance counters (--profile used to come back empty on OpenVINO, silently).
@pytest.mark.parametrize("runtime,expected", [
    ("onnxruntime", {"teacher fp32": "Conv", "student int8": "QLinearConv"}),
    ("openvino", {"teacher fp32": "Convolution", "student fp32": "Convolution", "student int8": "Convolution"}),
])
def test_bench_profile_says_where_the_time_goes(int8_bundle, tmp_path, runtime, expected):
    result = runner.invoke(app, ["bench", str(int8_bundle), "--iterations", "3", "--warmup", "0", "--batch-sizes", "1",
                                 "--runtime", runtime, "--no-timing-check", "--profile", "--json", str(tmp_path / "r.json"),
                                 "--markdown", str(tmp_path / "r.md")])
    assert result.exit_code == 0, result.output
    profiles = json.loads((tmp_path / "r.json").read_text())["operator_profiles"]
    assert [p["model"] for p in profiles] == ["teacher fp32", "student fp32", "student int8"]
    for p in profiles:
        assert abs(sum(p["shares"].values()) - 1.0) < 1e-6
        assert list(p["shares"].values()) == sorted(p["shares"].values(), reverse=True)
        if p["model"] in expected:
            assert expected[p["model"]] in p["shares"], p["shares"]
    assert "time by operator, x86-int8 teacher fp32" in result.output and "time by operator type" in (tmp_path / "r.md").read_text()
