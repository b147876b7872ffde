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
