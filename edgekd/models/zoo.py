"""torchvision classification models, built for any class and input-channel count (no weights)."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn
import torchvision.models as tvm

from edgekd.models.registry import register_model

_ZOO = {
    "resnet18": "ResNet-18 (torchvision)",
    "resnet34": "ResNet-34 (torchvision)",
    "resnet50": "ResNet-50 (torchvision)",
    "mobilenet_v2": "MobileNetV2 (torchvision)",
    "mobilenet_v3_small": "MobileNetV3-Small (torchvision)",
    "mobilenet_v3_large": "MobileNetV3-Large (torchvision)",
    "shufflenet_v2_x0_5": "ShuffleNetV2 0.5x (torchvision)",
    "shufflenet_v2_x1_0": "ShuffleNetV2 1.0x (torchvision)",
    "efficientnet_b0": "EfficientNet-B0 (torchvision)",
    "mnasnet0_5": "MNASNet 0.5 (torchvision)",
    "regnet_x_400mf": "RegNetX-400MF (torchvision)",
}


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the stem convolution for one with `in_channels` inputs (same geometry)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                new = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride,
                                child.padding, child.dilation, 1, child.bias is not None, child.padding_mode)
                setattr(parent, name, new)
                return
    raise ValueError("model has no Conv2d")


def _make(tv_name: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        model = tvm.get_model(tv_name, weights=None, num_classes=num_classes)
        if in_channels != 3:
            _replace_first_conv(model, in_channels)
        return model

    return build


for _name, _desc in _ZOO.items():
    register_model(_name, "torchvision", 224, _desc)(_make(_name))
