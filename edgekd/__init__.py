"""edgekd: data-free knowledge distillation of image classifiers for edge devices."""

__version__ = "0.1.0"
