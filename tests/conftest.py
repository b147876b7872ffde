import os

import pytest
import torch

torch.set_num_threads(2)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def demo_teacher_path():
    from edgekd.cli.distill_cmd import demo_teacher_path

    return demo_teacher_path()


@pytest.fixture(scope="session")
def fmnist():
    from edgekd.data.datasets import load_fashion_mnist

    return load_fashion_mnist("test")
