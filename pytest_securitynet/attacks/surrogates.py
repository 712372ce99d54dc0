"""Surrogate architectures for model stealing.

SecurityNet (§3.1, §4.1) steals with a ResNet-18 surrogate by default and compares a WRN-50-2
("a larger and more complex surrogate"). Small inputs (CIFAR, SVHN, 8x8 test data) get the CIFAR
variant of ResNet-18 (3x3 stride-1 stem, no max-pool), as is usual for 32x32 images; larger inputs
use torchvision's ImageNet ResNet-18. All models are built without pretrained weights.

Every surrogate from :func:`build_surrogate` follows the project's target convention: it takes
float images in [0, 1] and starts with a fixed normalisation ``(x - 0.5) / 0.5`` (no dataset
statistics are needed, and the network sees zero-centred inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, wide_resnet50_2

SMALL_INPUT_MAX = 64
"""Inputs of at most this many pixels per side get the small-image stem."""


class Normalize(nn.Module):
    """Fixed per-channel ``(x - mean) / std`` so the model accepts [0, 1] images."""

    def __init__(self, mean: float = 0.5, std: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Resize(nn.Module):
    """Bilinear resize to ``size`` x ``size`` (antialiased when shrinking)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        shrink = x.shape[-1] > self.size or x.shape[-2] > self.size
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                             align_corners=False, antialias=shrink)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers plus an identity or 1x1-conv shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class SmallInputResNet(nn.Module):
    """ResNet with basic blocks for small images: 3x3 stride-1 stem, no max-pool."""

    def __init__(self, blocks: tuple[int, ...], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        widths = (64, 128, 256, 512)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_planes = 64
        for i, (width, count) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(in_planes, width, stride)]
            layers += [BasicBlock(width, width, 1) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            in_planes = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def _init_weights(model: nn.Module) -> None:
    """He init for convolutions, unit/zero BatchNorm, as in torchvision's ResNet."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def cifar_resnet18(num_classes: int, in_channels: int = 3) -> SmallInputResNet:
    """CIFAR ResNet-18: stages 64/128/256/512, [2, 2, 2, 2] basic blocks (~11.2M parameters)."""
    return SmallInputResNet((2, 2, 2, 2), num_classes, in_channels)


def _replace_stem(model: nn.Module, in_channels: int, small_input: bool) -> None:
    """Adapt a torchvision ResNet stem: 3x3 stride-1 conv and no max-pool for small inputs
    (a 32x32 image would otherwise shrink to 8x8 before the first stage), and/or a first
    convolution taking ``in_channels`` channels."""
    if small_input:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    else:
        return
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")


def _build_resnet18(num_classes: int, input_size: int, in_channels: int) -> nn.Module:
    if input_size <= SMALL_INPUT_MAX:
        return cifar_resnet18(num_classes, in_channels)
    model = resnet18(weights=None, num_classes=num_classes)
    _replace_stem(model, in_channels, small_input=False)
    return model


def _build_wrn50_2(num_classes: int, input_size: int, in_channels: int) -> nn.Module:
    model = wide_resnet50_2(weights=None, num_classes=num_classes)
    _replace_stem(model, in_channels, small_input=input_size <= SMALL_INPUT_MAX)
    return model


SURROGATES: dict[str, Callable[[int, int, int], nn.Module]] = {
    "resnet18": _build_resnet18,
    "wrn50_2": _build_wrn50_2,
}


def build_surrogate(name: str, num_classes: int, input_size: int, in_channels: int = 3) -> nn.Module:
    """Untrained surrogate ``name`` for ``input_size`` x ``input_size`` images, as
    ``Sequential(Normalize(0.5, 0.5), network)`` taking [0, 1] images.

    ``resnet18``: CIFAR ResNet-18 when ``input_size <= 64``, else torchvision's resnet18.
    ``wrn50_2``: torchvision's wide_resnet50_2 with the small-input stem when ``input_size <= 64``.
    A first convolution for ``in_channels != 3`` is freshly initialised.
    """
    try:
        builder = SURROGATES[name]
    except KeyError:
        raise ValueError(f"unknown surrogate {name!r}; choose from {sorted(SURROGATES)}") from None
    return nn.Sequential(Normalize(0.5, 0.5), builder(num_classes, input_size, in_channels))
