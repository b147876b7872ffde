"""Evaluation datasets (for measuring only, never for training the student). Torch-free."""

from edgekd.data.datasets import LabelledImages, load_dataset, prepare_images

__all__ = ["LabelledImages", "load_dataset", "prepare_images"]
