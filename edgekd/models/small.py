"""Small built-in networks for low-resolution work (MNIST/CIFAR-sized inputs).

LeNet-5 and LeNet-5-half follow DAFL's definitions (ReLU, max-pool, no BN, 32x32 input);
the CIFAR ResNets and WRNs follow the usual CIFAR layouts (3x3 stem, no max-pool).
"""

from __future__ import annotations

from typing import List, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekd.models.registry import register_model

_HALF = (0.5,)


class LeNet5(nn.Module):
    """DAFL's LeNet-5 (width=1) and LeNet-5-half (width=0.5), made for 32x32 inputs. A smaller input
    (a 28x28 MNIST teacher's) is zero-padded to 32x32 in the middle, as LeCun's LeNet-5 read 28x28
    digits centred in a 32x32 field: without it the third 5x5 convolution has nothing to cover."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, f = (int(v * width) for v in (6, 16, 120, 84))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 5), nn.ReLU(inplace=True),
        )
        # Adaptive pooling lets the same net take inputs other than 32x32.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(c3, f)
        self.fc = nn.Linear(f, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = max(0, 32 - x.shape[-2]), max(0, 32 - x.shape[-1])
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        x = self.pool(self.features(x)).flatten(1)
        return self.fc(F.relu(self.fc1(x)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks: List[int], num_classes: int, in_channels: int, block: Type[BasicBlock] = BasicBlock):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for i, (n, cout) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stage = []
            for j in range(n):
                stage.append(block(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            stages += [WideBlock(cin if j == 0 else cout, cout, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]
            cin = cout
        self.blocks = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(widths[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


@register_model("lenet5", "small", 32, "LeNet-5 (DAFL), 32x32, no BN", _HALF, _HALF)
def lenet5(num_classes: int, in_channels: int) -> nn.Module:
    return LeNet5(num_classes, in_channels, 1.0)


@register_model("lenet5-half", "small", 32, "LeNet-5 at half width (DAFL student)", _HALF, _HALF)
def lenet5_half(num_classes: int, in_channels: int) -> nn.Module:
    return LeNet5(num_classes, in_channels, 0.5)


_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@register_model("resnet18-cifar", "small", 32, "ResNet-18, CIFAR stem (3x3, no max-pool)", _CIFAR_MEAN, _CIFAR_STD)
def resnet18_cifar(num_classes: int, in_channels: int) -> nn.Module:
    return CifarResNet([2, 2, 2, 2], num_classes, in_channels)


@register_model("resnet34-cifar", "small", 32, "ResNet-34, CIFAR stem (3x3, no max-pool)", _CIFAR_MEAN, _CIFAR_STD)
def resnet34_cifar(num_classes: int, in_channels: int) -> nn.Module:
    return CifarResNet([3, 4, 6, 3], num_classes, in_channels)


@register_model("wrn16-2", "small", 32, "Wide ResNet 16-2 (CIFAR)", _CIFAR_MEAN, _CIFAR_STD, aliases=("wrn16",))
def wrn16_2(num_classes: int, in_channels: int) -> nn.Module:
    return WideResNet(16, 2, num_classes, in_channels)


@register_model("wrn40-2", "small", 32, "Wide ResNet 40-2 (CIFAR)", _CIFAR_MEAN, _CIFAR_STD, aliases=("wrn40",))
def wrn40_2(num_classes: int, in_channels: int) -> nn.Module:
    return WideResNet(40, 2, num_classes, in_channels)
