import pytest

from edgekd.deploy.targets import get_target, list_targets, load_target_file
from edgekd.errors import UsageError

REQUIRED = {"x86-cpu", "arm64-cpu", "raspberry-pi-4", "raspberry-pi-5", "jetson-nano", "jetson-orin-nano",
            "jetson-orin-nx"}


def test_all_required_targets_exist_and_validate():
    targets = {t.name: t for t in list_targets()}
    assert REQUIRED <= set(targets)
    for t in targets.values():
        assert t.default_precision in t.precisions


def test_device_facts():
    nano = get_target("jetson-nano")
    assert nano.opset <= 13 and "int8" not in nano.precisions and nano.tensorrt_versions == ("8.2",)
    assert nano.python == "3.6"
    assert get_target("jetson-orin-nx").dla and not get_target("jetson-orin-nano").dla
    assert "int8" in get_target("jetson-orin-nano").precisions


def test_int8_on_nano_names_alternatives():
    with pytest.raises(UsageError, match="does not support int8.*fp32 or fp16"):
        get_target("jetson-nano").check_precision("int8")


def test_unknown_target_suggests():
    with pytest.raises(UsageError, match="did you mean jetson-nano"):
        get_target("jetson-nan")


def test_bad_target_file(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('name = "x"\ndescription = "d"\nruntime = "tflite"\nopset = 13\nprecisions = ["fp32"]\n'
                 'default_precision = "fp32"\n')
    with pytest.raises(UsageError, match="runtime must be one of"):
        load_target_file(f)
    f.write_text('name = "x"\ndescription = "d"\nruntime = "onnxruntime"\nopset = 13\nprecisions = ["fp32"]\n'
                 'default_precision = "fp32"\nthreadz = 3\n')
    with pytest.raises(UsageError, match="unknown key 'threadz'"):
        load_target_file(f)
    f.write_text('name = "x"\ndescription = "d"\nruntime = "onnxruntime"\nopset = 13\nprecisions = ["fp32"]\n'
                 'default_precision = "fp32"\ndynamic_batch = false\n')
    with pytest.raises(UsageError, match="dynamic_batch is gone: .*remove the line"):
        load_target_file(f)
    f.write_text('name = "x"\ndescription = "d"\nruntime = "onnxruntime"\nopset = 13\nprecisions = ["fp32"]\n'
                 'default_precision = "fp32"\nort_optimized = "riscv"\n')
    with pytest.raises(UsageError, match="ort_optimized must be .* x86, arm"):
        load_target_file(f)
    for table, why in (('[session.tensorrt]\nx = "1"\n', "not a table of session settings"),
                       ('[session.onnxruntime]\n"session.intra_op.allow_spinning" = 0\n', "must be a string")):
        f.write_text('name = "x"\ndescription = "d"\nruntime = "onnxruntime"\nopset = 13\nprecisions = ["fp32"]\n'
                     'default_precision = "fp32"\n' + table)
        with pytest.raises(UsageError, match=why):
            load_target_file(f)


def _x86_file(tmp_path, extra):
    f = tmp_path / "t.toml"
    f.write_text('name = "x"\ndescription = "d"\nruntime = "onnxruntime"\nopset = 17\nprecisions = ["fp32", "int8"]\n'
                 'default_precision = "int8"\n' + extra)
    return f


def test_int8_scheme_follows_the_cpu(tmp_path):
    from edgekd.deploy.quantize import choose_quantization

    x86 = get_target("x86-cpu")
    assert x86.vnni == "detect"
    avx2 = choose_quantization(x86, flags=frozenset({"avx2", "fma"}))
    assert avx2.reduce_range and not avx2.symmetric and "saturates" in avx2.reason and avx2.kernels_match_device
    for dot in ("avx512_vnni", "avx_vnni", "amx_int8"):
        q = choose_quantization(x86, flags=frozenset({"avx2", dot}))
        assert not q.reduce_range and dot in q.reason and q.kernels_match_device
    # The device stated against this machine: the scheme follows the device, the kernels here are not its.
    told = choose_quantization(x86, vnni="yes", flags=frozenset({"avx2"}))
    assert not told.reduce_range and not told.kernels_match_device
    told = choose_quantization(x86, vnni="no", flags=frozenset({"avx512_vnni"}))
    assert told.reduce_range and not told.kernels_match_device
    orin = choose_quantization(get_target("jetson-orin-nano"), flags=frozenset({"avx2"}))
    assert orin.symmetric and not orin.reduce_range
    with pytest.raises(UsageError, match="use yes, no or detect"):
        choose_quantization(x86, vnni="maybe")
    with pytest.raises(UsageError, match="--vnni applies to x86"):
        choose_quantization(get_target("jetson-orin-nano"), vnni="no")
    assert not choose_quantization(get_target("arm64-cpu"), flags=frozenset()).reduce_range
    assert load_target_file(_x86_file(tmp_path, 'vnni = "no"\n')).vnni == "no"
    with pytest.raises(UsageError, match="reduce_range is now chosen"):
        load_target_file(_x86_file(tmp_path, "reduce_range = true\n"))
    with pytest.raises(UsageError, match="vnni must be one of"):
        load_target_file(_x86_file(tmp_path, 'vnni = "maybe"\n'))


def test_cpu_flags_honour_isa_caps(monkeypatch):
    from edgekd import cpu
    from edgekd.distill.precision import plan_execution

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}))
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    assert cpu.torch_cpu_flags() == {"avx2", "avx512f", "avx512_vnni"}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu.torch_cpu_flags() == {"avx2"}
    assert plan_execution("cpu").precision == "fp32"  # an AVX2 machine plans fp32, capped or real
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert plan_execution("cpu").precision == "bf16"
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert "avx512_bf16" not in cpu.torch_cpu_flags()
    assert cpu.int8_dot_product(frozenset({"avx2"})) is None
    assert cpu.int8_dot_product(frozenset({"avx2", "avx_vnni"})) == "avx_vnni"


def test_the_wheel_carries_the_top_level_target_profiles(tmp_path):
    """targets/ sits beside edgekd/ in the repository; `pip install` must still bring every profile."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path)
    names = zipfile.ZipFile(next(tmp_path.glob("edgekd-*.whl"))).namelist()
    shipped = {Path(n).name for n in names if n.startswith("edgekd/targets/")}
    assert shipped == {p.name for p in (root / "targets").glob("*.toml")} and "x86-cpu.toml" in shipped
