"""The student-side augmentations of replayed images (s_augment): what each keeps and what it changes."""

import torch

from edgekd.distill.augment import AUGMENTS, random_flip, random_mix, random_shift


def _batch(n: int = 16) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, 3, 32, 32)


def test_a_shift_moves_images_without_inventing_pixels():
    x = _batch()
    y = random_shift(x)
    assert y.shape == x.shape
    assert not torch.equal(x, y)
    for a, b in zip(x, y):  # replicated edges: every value of the shifted image is one of the original's
        assert torch.isin(b.flatten(), a.flatten()).all()


def test_a_flip_mirrors_some_images_and_leaves_the_rest():
    x = _batch(64)
    y = random_flip(x)
    mirrored = [torch.equal(b, a.flip(2)) for a, b in zip(x, y)]
    kept = [torch.equal(b, a) for a, b in zip(x, y)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert any(mirrored) and any(kept)


def test_a_mix_blends_pairs_of_images_inside_their_range():
    x = _batch()
    y = random_mix(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(x, y)
    lo, hi = x.min(dim=0).values, x.max(dim=0).values
    assert (y >= lo - 1e-6).all() and (y <= hi + 1e-6).all()  # a convex blend of two images of the batch
    # each output is a blend of its own image and one other: it lies on a line through its own image
    d = (y - x).flatten(1)
    others = (x[None] - x[:, None]).flatten(2)  # [i, j]: x_j - x_i
    cos = torch.nn.functional.cosine_similarity(d[:, None], others, dim=2)
    assert ((cos > 0.9999).any(dim=1) | (d.abs().amax(dim=1) < 1e-6)).all()


def test_every_registered_augment_keeps_shape_and_dtype():
    x = _batch(8).to(torch.bfloat16)
    for name, fn in AUGMENTS.items():
        y = fn(x)
        assert y.shape == x.shape and y.dtype == x.dtype, name
