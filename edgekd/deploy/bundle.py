"""`edgekd export`: a run (or checkpoint) -> a deployment bundle directory for one target.

bundle/
  manifest.json        target, precision, ModelSpec, preprocessing, labels, files + sha256, checks, provenance
  student.onnx         FP32 (the TensorRT build makes FP16 from it on the device)
  student.int8.onnx    QDQ INT8 where the target supports INT8
  *.opt.onnx           each ONNX model optimised offline by ONNX Runtime (targets with ort_optimized)
  teacher.onnx         FP32, so `edgekd bench` can compare the two on the device
  calib.npy            calibration batches (float32 NCHW) for a device-side TensorRT INT8 build
  synthetic.npz        held-out generator images + teacher predictions: agreement without any real data
  README.md            the exact commands to run on the device
The directory is assembled under a temporary name and moved into place only when complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from edgekd import __version__
from edgekd.cpu import cpu_summary
from edgekd.data.datasets import check_dataset_fits, load_dataset, prepare_images
from edgekd.deploy.manifest import BUNDLE_FORMAT, load_manifest
from edgekd.deploy.onnx_export import check_parity, export_onnx
from edgekd.deploy.ort_optimize import optimized_name, write_optimized
from edgekd.deploy.quantize import (
    check_calibration_set,
    choose_quantization,
    compare_int8,
    drifting_layers,
    quantize_int8,
)
from edgekd.deploy.targets import Target
from edgekd.errors import EdgekdError, InputFileError, QualityError, UsageError
from edgekd.fileio import atomic_dir, check_replaceable, sha256_file, write_json, write_text
from edgekd.models.checkpoint import LoadedModel, load_model
from edgekd.models.info import count_macs, count_parameters
from edgekd.rundir import RunDir, torchscript_run_id

_CALIB_MAX_BYTES = 128 * 2 ** 20
TRT_SCRIPT = "edgekd_trt.py"


@dataclass
class ExportConfig:
    target: Target
    precision: Optional[str] = None  # default: the target's
    calib_count: int = 512
    calib_data: Optional[str] = None  # real images instead of the generator's
    calibration: str = "minmax"
    eval_data: Optional[str] = None  # labelled data to measure the INT8 accuracy drop
    max_int8_drop: float = 0.02  # accuracy points (0.02 = 2 %) on eval_data
    min_int8_agreement: float = 0.90  # FP32 vs INT8 agreement on held-out synthetic images
    force: bool = False  # write the bundle even past those thresholds (loud warning)
    trust_pickle: bool = False
    vnni: Optional[str] = None  # x86 targets: "detect", "yes", "no" (default: the target's setting)
    # The target's default precision was not asked for by name: where this machine is the device, an
    # INT8 student that measures slower than FP32 here is not shipped (the bundle becomes FP32).
    precision_by_speed: bool = False


@dataclass
class ExportResult:
    bundle_dir: Path
    manifest: Dict[str, Any]
    warnings: List[str] = field(default_factory=list)


@dataclass
class _Source:
    student: LoadedModel
    teacher: Optional[LoadedModel]
    run_dir: Optional[Path]


def _load_source(source: Path, trust_pickle: bool) -> _Source:
    if source.is_dir():
        run = RunDir(source)
        if not (run / RunDir.STUDENT).exists():
            raise InputFileError(f"{source} has no {RunDir.STUDENT}: not a finished distill run "
                                 "(run 'edgekd distill' first, or pass a checkpoint file)")
        student = load_model(run / RunDir.STUDENT)
        teacher_path = run / RunDir.TEACHER
        teacher = load_model(teacher_path, trust_pickle=trust_pickle,
                             spec_overrides={"input_size": student.spec.input_size}) \
            if teacher_path.exists() else None
        if teacher is not None and teacher.format != "edgekd":
            teacher.spec = student.spec.with_(arch=teacher.spec.arch)
        if teacher is not None:
            teacher_id = (teacher.provenance.get("run_id") if teacher.format == "edgekd"
                          else torchscript_run_id(teacher_path))
            run.check_one_run({RunDir.STUDENT: student.provenance.get("run_id"), RunDir.TEACHER: teacher_id})
        return _Source(student, teacher, source)
    return _Source(load_model(source, trust_pickle=trust_pickle), None, None)


def _synthetic_sets(src: _Source, count: int, seed: int) -> Dict[str, np.ndarray]:
    """Calibration and held-out images from the run's generator (different seeds), no real data."""
    from edgekd.distill.generator import Generator
    from edgekd.distill.loop import synthesize

    path = RunDir(src.run_dir) / RunDir.GENERATOR if src.run_dir else None
    if path is None:
        return {}
    if not path.exists():
        return _saved_sets(src, count)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        g = Generator.from_description(state)
        g.load_state_dict(state["state_dict"])
    except Exception as e:  # truncated, foreign or edited: torch raises many kinds
        raise InputFileError(f"{path} is unreadable ({type(e).__name__}): distill the run again, "
                             "or export with --calib-data and --precision fp32") from None
    RunDir(src.run_dir).check_one_run({RunDir.STUDENT: src.student.provenance.get("run_id"),
                                       RunDir.GENERATOR: state.get("run_id")})
    judge = (src.teacher or src.student).model.float().cpu().eval()
    calib = synthesize(g, judge, count, seed)
    held = synthesize(g, judge, 256, seed + 1)
    return {"calib": calib["x"], "held_x": held["x"], "held_pred": held["teacher_logits"].argmax(1)}


def _saved_sets(src: _Source, count: int) -> Dict[str, np.ndarray]:
    """A run without a generator (DeepInversion's pixels) saved its images: calibration from what the
    student learnt from, held-out from what it never saw (calib.npz's held_x)."""
    path = RunDir(src.run_dir) / RunDir.CALIB
    if not path.exists():
        return {}
    try:
        with np.load(path) as z:
            saved = {k: z[k] for k in z.files}
    except Exception as e:
        raise InputFileError(f"{path} is unreadable ({type(e).__name__}): distill the run again, "
                             "or export with --calib-data and --precision fp32") from None
    if "held_x" not in saved:
        return {}
    RunDir(src.run_dir).check_one_run({RunDir.STUDENT: src.student.provenance.get("run_id"),
                                       RunDir.CALIB: str(saved.get("run_id", ""))})
    return {"calib": saved["x"][:count], "held_x": saved["held_x"][:256], "held_pred": saved["held_pred"][:256],
            "source": "run images (calib.npz)"}


def _limit_calib(x: np.ndarray) -> np.ndarray:
    per = x[0].nbytes if len(x) else 1
    return x[: max(8, _CALIB_MAX_BYTES // per)]


def _is_bundle(path: Path) -> bool:
    try:
        load_manifest(path, verify=False)
    except EdgekdError:
        return False
    return True


def _check_out(source: Path, out: Path) -> None:
    src, dst = source.resolve(), out.resolve()
    if dst == src or dst in src.parents:
        raise UsageError(f"--out {out} would replace {source} itself: choose a new directory for the bundle")
    check_replaceable(out, _is_bundle, "edgekd bundle")


def export_bundle(source: Path, cfg: ExportConfig, out: Path) -> ExportResult:
    """Write a bundle for `cfg.target` at `out` (absent, empty, or an earlier bundle it replaces)."""
    source, out = Path(source), Path(out)
    if cfg.calib_count < 1:
        raise UsageError("--calib must be at least 1 (INT8 wants a few hundred images)")
    _check_out(source, out)
    with RunDir(source).locked(reader=True) if source.is_dir() else contextlib.nullcontext():
        return _export(source, cfg, out)


def _export(source: Path, cfg: ExportConfig, out: Path) -> ExportResult:
    target = cfg.target
    precision = cfg.precision or target.default_precision
    target.check_precision(precision)
    quant = choose_quantization(target, cfg.calibration, cfg.vnni)  # before any work: --vnni may be wrong
    src = _load_source(source, cfg.trust_pickle)
    spec = src.student.spec
    warnings: List[str] = []
    if src.teacher is None:
        warnings.append("no teacher in the source: the bundle holds the student only, so bench cannot compare")

    # Calibration / held-out images: the generator's by default, the user's real images on request.
    synth = _synthetic_sets(src, cfg.calib_count, seed=1234)
    calib_source = "generator"
    if cfg.calib_data:
        ds = load_dataset(cfg.calib_data)
        calib = prepare_images(ds.take(cfg.calib_count).images, spec)
        calib_source = f"real:{ds.source}"
    elif "calib" in synth:
        calib = synth["calib"]
        calib_source = synth.get("source", calib_source)
    elif precision == "int8":
        raise UsageError("INT8 needs calibration images: export a distill run directory (it has a generator) "
                         "or give --calib-data PATH")
    else:
        calib = np.random.default_rng(0).standard_normal((16, *spec.input_shape)).astype(np.float32)
        calib_source = "gaussian noise (parity check only)"
    check_calibration_set(calib, spec.input_shape)
    parity_x = synth.get("held_x", calib[:64])

    eval_x = eval_y = None
    if cfg.eval_data:
        ds = load_dataset(cfg.eval_data)
        check_dataset_fits(ds, spec)
        ds = ds.take(2000)
        eval_x, eval_y = prepare_images(ds.images, spec), ds.labels

    with atomic_dir(out, _is_bundle, "edgekd bundle") as tmp:
        provenance = dict(src.student.provenance)
        provenance.pop("config", None)
        meta = {"provenance": provenance, "target": target.name}
        models: List[Dict[str, Any]] = []
        checks: Dict[str, Any] = {}

        export_onnx(src.student.model, spec, tmp / "student.onnx", target.opset, {**meta, "role": "student"})
        checks["student_parity"] = check_parity(src.student.model, tmp / "student.onnx", parity_x).to_dict()
        models.append(_model_entry("student", "fp32", "student.onnx", src.student, spec))
        teacher_export = _export_teacher(src, target, tmp, meta, parity_x, checks, models)
        if teacher_export.get("error"):
            warnings.append(f"WARNING: the teacher could not be exported ({teacher_export['error']}): the bundle "
                            "holds the student only; bench compares it with the teacher's predictions stored "
                            "in synthetic.npz, and cannot time the teacher")

        if precision == "int8":
            quantize_int8(tmp / "student.onnx", tmp / "student.int8.onnx", calib, quant)
            held = synth.get("held_x", calib)
            report = compare_int8(tmp / "student.onnx", tmp / "student.int8.onnx", held,
                                  "held-out synthetic images" if "held_x" in synth else "calibration images")
            checks["int8"] = report.to_dict()
            if eval_x is not None:
                real = compare_int8(tmp / "student.onnx", tmp / "student.int8.onnx", eval_x, cfg.eval_data, eval_y)
                checks["int8_real"] = real.to_dict()
            checks["int8"]["drift"] = drifting_layers(tmp / "student.onnx", tmp / "student.int8.onnx", held[:16])
            problem = _int8_problem(checks, cfg, quant.kernels_match_device)
            if problem and not cfg.force:
                worst = ", ".join(f"{d['tensor']} ({d['sqnr_db']:g} dB)" for d in checks["int8"]["drift"])
                raise QualityError(f"{problem}: refusing to write the INT8 bundle (drifting most from FP32: {worst}); "
                                   "try --calibration entropy or percentile, more --calib images, --precision fp32, "
                                   "or --force to keep it anyway")
            if problem:
                warnings.append(f"WARNING: {problem} (kept because of --force)")
            models.append(_model_entry("student", "int8", "student.int8.onnx", src.student, spec))
        elif target.runtime == "tensorrt" and precision == "fp16":
            for m in models:
                m["build_precision"] = "fp16"

        runtime = target.runtime
        if quant.kernels_match_device and (cfg.precision_by_speed or target.runtimes):
            precision, runtime = _fastest_here(tmp, models, precision, target, cfg, parity_x,
                                               checks, warnings)
            models = [e for e in models if e["role"] == "teacher" or e["precision"] in ("fp32", precision)]

        if target.ort_optimized:
            checks["ort_optimized"] = []
            for entry in models:
                opt_file = optimized_name(entry["file"])
                checks["ort_optimized"].append(write_optimized(tmp / entry["file"], tmp / opt_file, parity_x[:32],
                                                               target.ort_optimized))
                entry["optimized_file"] = opt_file

        calib_saved = _limit_calib(calib.astype(np.float32))
        np.save(tmp / "calib.npy", calib_saved)
        if "held_x" in synth:
            np.savez_compressed(tmp / "synthetic.npz", x=synth["held_x"], teacher_pred=synth["held_pred"])

        manifest = {
            "format": BUNDLE_FORMAT, "version": 1, "edgekd_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "target": target.to_dict(), "precision": precision, "runtime": runtime,
            "spec": spec.to_dict(), "labels": list(spec.labels) if spec.labels else None,
            "preprocessing": spec.preprocessing(),
            "models": models,
            "calibration": {"file": "calib.npy", "count": int(len(calib_saved)), "source": calib_source,
                            "method": cfg.calibration},
            "synthetic_eval": "synthetic.npz" if "held_x" in synth else None,
            "quantization": quant.describe() if precision == "int8" else None,
            "export_cpu": cpu_summary(), "teacher_export": teacher_export,
            "checks": checks, "warnings": warnings, "provenance": provenance,
        }
        if target.runtime == "tensorrt":  # the standalone device-side builder/runner (Python 3.6+)
            shutil.copyfile(Path(__file__).with_name("trt_device.py"), tmp / TRT_SCRIPT)
        write_text(tmp / "README.md", _device_readme(manifest, out.name))
        manifest["files"] = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                             for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / "manifest.json", manifest)
    return ExportResult(out, manifest, warnings)


def _fastest_here(tmp: Path, models: List[Dict[str, Any]], precision: str, target: Target,
                  cfg: ExportConfig, held: np.ndarray, checks: Dict[str, Any], warnings: List[str]) -> Tuple[str, str]:
    """With the export machine as the device: the student's batch-1 latency under every precision in the
    bundle and every runtime the target allows that is installed here (checks["speed"]); the bundle then
    names the fastest runtime, and, where the precision was not asked for by name, ships INT8 only if
    it is the faster one. Returns (precision, runtime); an INT8 file that is not shipped is deleted."""
    from edgekd.bench.runners import installed

    students = {e["precision"]: e["file"] for e in models if e["role"] == "student"}
    runtimes = [target.runtime] + [r for r in target.runtimes if r != target.runtime and installed(r)]
    allowed = list(students) if cfg.precision_by_speed else [precision]
    p50, agree = _student_p50_here(tmp, {p: students[p] for p in allowed}, held, target, runtimes)
    # Another runtime computes differently (OpenVINO: bf16 outside the INT8 layers): it must agree with the
    # FP32 student as well as the INT8 gate asks, or it is not chosen.
    passing = [(r, p) for r in runtimes for p in allowed
               if r == target.runtime or agree[r][p] >= cfg.min_int8_agreement]
    best_runtime, best_precision = min(passing, key=lambda rp: p50[rp[0]][rp[1]])
    checks["speed"] = {"p50_ms": p50, "agreement_with_fp32": agree, "on": f"{len(held)} held-out images",
                       "batch_size": 1, "cpu": cpu_summary().get("cpu"),
                       "chosen": {"runtime": best_runtime, "precision": best_precision},
                       "not_installed": [r for r in target.runtimes if not installed(r)]}
    if best_precision != precision:
        (tmp / students[precision]).unlink()
        warnings.append(f"INT8 is slower than FP32 on this CPU (student p50 {p50[best_runtime][precision]:.3f} ms vs "
                        f"{p50[best_runtime][best_precision]:.3f} ms at batch 1 on {best_runtime}): the bundle ships "
                        f"{best_precision.upper()}; --precision {precision} keeps it")
    if best_runtime != target.runtime:
        base = p50[target.runtime][best_precision]
        warnings.append(f"{best_runtime} runs the {best_precision.upper()} student {base / p50[best_runtime][best_precision]:.1f}x "
                        f"faster than {target.runtime} on this CPU: the bundle names it (edgekd bench uses it where "
                        f"installed: pip install \"edgekd[{best_runtime}]\"; --runtime {target.runtime} times the other)")
    return best_precision, best_runtime


def _student_p50_here(tmp: Path, files: Dict[str, str], held: np.ndarray, target: Target,
                      runtimes: List[str]) -> Tuple[Dict[str, Dict[str, float]], Dict[str, Dict[str, float]]]:
    """Batch-1 p50 latency of each student file under each runtime, as bench measures it (a short run
    after warm-up, alternated twice so a slow patch of the machine hits every one; the faster of the
    two), and its agreement with the FP32 student on the first runtime, on the held-out images."""
    from edgekd.bench.latency import measure
    from edgekd.bench.runners import make_runner

    runners = {(r, p): make_runner(r, tmp, {"file": f, "precision": p}, target.threads, target.session)
               for r in runtimes for p, f in files.items()}
    reference = make_runner(runtimes[0], tmp, {"file": "student.onnx", "precision": "fp32"}, target.threads,
                            target.session)
    want = np.concatenate([reference(held[i:i + 1]) for i in range(len(held))]).argmax(1)
    agree = {key: float((np.concatenate([run(held[i:i + 1]) for i in range(len(held))]).argmax(1) == want).mean())
             for key, run in runners.items()}
    x = held[:1]
    best: Dict[Tuple[str, str], float] = {}
    for _ in range(2):
        for key, run in runners.items():
            ms = measure(lambda run=run: run(x), 1, warmup_s=0.2, duration_s=0.5).p50_ms
            best[key] = min(ms, best.get(key, float("inf")))
    return ({r: {p: best[(r, p)] for p in files} for r in runtimes},
            {r: {p: agree[(r, p)] for p in files} for r in runtimes})


def _export_teacher(src: _Source, target: Target, tmp: Path, meta: Dict[str, Any], parity_x: np.ndarray,
                    checks: Dict[str, Any], models: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The teacher as ONNX beside the student, for bench to compare with. A teacher the exporter cannot
    take (an operator ONNX lacks, a layout torch.onnx trips on) must not cost the user the student's
    bundle: it is left out, and the entry returned (manifest "teacher_export") says why."""
    if src.teacher is None:
        return {"exported": False, "error": None, "reason": "no teacher in the source"}
    t = src.teacher
    try:
        export_onnx(t.model, t.spec, tmp / "teacher.onnx", target.opset, {**meta, "role": "teacher"})
        checks["teacher_parity"] = check_parity(t.model, tmp / "teacher.onnx", parity_x).to_dict()
    except Exception as e:  # the exporter fails in many ways (UnsupportedOperatorError, asserts, QualityError)
        (tmp / "teacher.onnx").unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        return {"exported": False, "error": f"{type(e).__name__}: {first}", "exporter": "torch.onnx (TorchScript)"}
    models.append(_model_entry("teacher", "fp32", "teacher.onnx", t, t.spec))
    return {"exported": True, "error": None, "exporter": "torch.onnx (TorchScript)"}


def _int8_problem(checks: Dict[str, Any], cfg: ExportConfig, kernels_match_device: bool) -> Optional[str]:
    """The gate reads the exact quantized arithmetic, the same on every export machine; this machine's
    own INT8 kernels count too, but only where they are the device's (same CPU class, ONNX Runtime)."""
    c = checks["int8"]
    worst, how = c["agreement"], ""
    if kernels_match_device and c["kernel_agreement"] < worst:
        worst, how = c["kernel_agreement"], f" with this CPU's INT8 kernels ({c['kernels_cpu']})"
    if worst < cfg.min_int8_agreement:
        return f"INT8 agrees with FP32 on only {worst:.1%} of {c['on']}{how} (threshold {cfg.min_int8_agreement:.0%})"
    real = checks.get("int8_real")
    if real:
        drop = real["accuracy_drop"]
        if kernels_match_device:
            drop = max(drop, real["fp32_accuracy"] - real["kernel_int8_accuracy"])
        if drop > cfg.max_int8_drop:
            return f"INT8 loses {drop:.1%} accuracy on {real['on']} (threshold {cfg.max_int8_drop:.1%})"
    return None


def _model_entry(role: str, precision: str, file: str, loaded: LoadedModel, spec: Any) -> Dict[str, Any]:
    model = loaded.model.float().cpu()
    return {"role": role, "precision": precision, "file": file, "arch": spec.arch,
            "parameters": count_parameters(model), "macs": count_macs(model, spec.input_shape)}


def _preprocessing_words(p: Dict[str, Any]) -> str:
    size = "x".join(map(str, p["input_size"]))
    how = {"stretch": f"resized (bilinear) to {size}",
           "pad": f"centred on a {size} canvas of value {p.get('pad_value')} (scaled down first if larger)",
           "crop": f"shorter side resized (bilinear) to {size.split('x')[0]} / {p.get('crop')}, then the centre "
                   f"{size} cropped"}[p["resize"]]
    return (f"Each image, {p['channels']} channel(s), pixel values / 255, {how}, then (x - mean) / std with "
            f"mean {p['mean']} and std {p['std']}; float32 NCHW. `edgekd bench --data` does exactly this.")


def _device_readme(manifest: Dict[str, Any], name: str) -> str:
    t = manifest["target"]
    lines = [f"# edgekd bundle for {t['name']} ({manifest['precision']})", "",
             f"{t['description']}.", "", "Models: " + ", ".join(f"{m['role']} {m['precision']} ({m['file']}"
                                                         + (f", {m['optimized_file']}" if m.get("optimized_file") else "") + ")"
                                                         for m in manifest["models"]), "",
             "## Input", "", _preprocessing_words(manifest["preprocessing"]), "",
             "## On the device", "", "```"]
    if any(m.get("optimized_file") for m in manifest["models"]):
        lines[-3:-3] = ["The .opt.onnx files are the same models after ONNX Runtime's graph optimisations, done "
                        "at export: a session starts faster from them. ONNX Runtime runs them (edgekd bench does, "
                        "or the plain .onnx file where this onnxruntime cannot read them); other runtimes read "
                        "the plain .onnx files.", ""]
    if t["runtime"] == "onnxruntime":
        extra = {"openvino": '"edgekd[openvino]"'}.get(manifest["runtime"], "edgekd")
        lines += [f"python3 -m venv ~/edgekd-venv && ~/edgekd-venv/bin/pip install {extra}   # the device install: no PyTorch",
                  f"~/edgekd-venv/bin/edgekd bench {name} --json {name}-bench.json"
                  + (f"   # runs on {manifest['runtime']}, measured fastest at export; --runtime all compares"
                     if manifest["runtime"] != t["runtime"] else "")]
    else:
        flag = {"fp16": "--fp16", "int8": "--int8 --fp16", "fp32": ""}[manifest["precision"]]
        # trtexec's workspace flag changed in TensorRT 8.4.
        old = all(tuple(int(p) for p in (v.split(".") + ["0"])[:2]) < (8, 4) for v in t["tensorrt_versions"])
        ws = f"--workspace={t['workspace_mib']}" if old else f"--memPoolSize=workspace:{t['workspace_mib']}"
        onnx_file = "student.int8.onnx" if manifest["precision"] == "int8" else "student.onnx"
        lines += ["# TensorRT's Python bindings come with JetPack: sudo apt-get install python3-libnvinfer python3-pip",
                  "# and pip3 install pycuda. Jetson Nano (Python 3.6): the bundle's standalone script needs nothing else:",
                  f"python3 {name}/{TRT_SCRIPT} build {name}",
                  f"python3 {name}/{TRT_SCRIPT} bench {name}   # + --data labelled.npz for top1",
                  "# Orin (Python 3.8/3.10): edgekd itself, in a venv that sees the system TensorRT:",
                  "python3 -m venv --system-site-packages ~/edgekd-venv && ~/edgekd-venv/bin/pip install \"edgekd[jetson]\"",
                  f"~/edgekd-venv/bin/edgekd build {name} && ~/edgekd-venv/bin/edgekd bench {name} --runtime tensorrt",
                  "# or build by hand with trtexec:",
                  f"/usr/src/tensorrt/bin/trtexec --onnx={onnx_file} {flag} {ws} --saveEngine=student.engine "
                  "--timingCacheFile=timing.cache"]
    lines += ["```", "", "Files and their sha256 are listed in manifest.json; bench refuses a bundle that does not match.", ""]
    return "\n".join(lines)
