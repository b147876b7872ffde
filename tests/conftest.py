import os

import pytest
import torch

torch.set_num_threads(2)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session", autouse=True)
def _plan_cache(tmp_path_factory):
    """Plans probed by the suite stay in the suite: no user cache read or written."""
    os.environ["EDGEKD_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def demo_teacher_path():
    from edgekd.cli.distill_cmd import demo_teacher_path

    return demo_teacher_path()


@pytest.fixture(scope="session")
def fmnist():
    from edgekd.data.datasets import load_fashion_mnist

    return load_fashion_mnist("test")


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, demo_teacher_path):
    """A short real distill run of the demo teacher, shared by the export and bench tests."""
    from edgekd.distill.config import resolve_config
    from edgekd.distill.loop import distill
    from edgekd.models.checkpoint import load_model

    out = tmp_path_factory.mktemp("run") / "run"
    cfg = resolve_config("adversarial", overrides={"iterations": 30, "calib_images": 64, "eval_every_s": 1e9})
    distill(load_model(demo_teacher_path), cfg, out)
    return out
