"""Architecture builders by name: the code half of a catalog entry (the data half says which one).

A catalog entry names a builder registered here, or a `package.module:function` of the user's own.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from pytest_securitynet.attacks.surrogates import BasicBlock
from pytest_securitynet.errors import CatalogError

BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_builder(name: str) -> Callable:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BUILDERS[name] = fn
        return fn

    return wrap


def build(name: str, **kwargs) -> nn.Module:
    """Build architecture `name` (registered, or `module:function`) with freshly initialised weights."""
    if name in BUILDERS:
        return BUILDERS[name](**kwargs)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)(**kwargs)
        except (ImportError, AttributeError) as exc:
            raise CatalogError(f"builder {name!r} cannot be imported: {exc}") from exc
    raise CatalogError(f"unknown builder {name!r}; registered: {', '.join(sorted(BUILDERS))} (or use module:function)")


class Normalized(nn.Module):
    """Wraps a network so it takes images in [0,1]: resize if needed, then (x - mean) / std."""

    def __init__(self, net: nn.Module, mean, std, input_size: tuple[int, int] | None = None):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.input_size = tuple(input_size) if input_size else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        return self.net((x - self.mean) / self.std)


class _ShortcutA(nn.Module):
    """He et al. option A: subsample by 2 and zero-pad channels, no parameters."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_shortcut = stride != 1 or in_planes != planes
        self.shortcut = _ShortcutA((planes - in_planes) // 2) if needs_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of He et al. 2016 (sec. 4.2), depth 6n+2, in the akamaster parameter layout."""

    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [_BasicBlock(in_planes, planes, stride)]
        layers += [_BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(out.mean(dim=(2, 3)))


@register_builder("cifar_resnet")
def cifar_resnet(depth: int = 20, num_classes: int = 10) -> nn.Module:
    return CifarResNet(depth, num_classes)


@register_builder("demo_cnn")
def demo_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> nn.Module:
    """A small CNN for 8x8 inputs: two conv layers, global pooling, dropout, linear head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(2 * width * 16, num_classes),
    )


class RBFNet(nn.Module):
    """Gaussian RBF network: one kernel per centre, then a linear layer.

    With the centres set to the training images and a narrow kernel it memorises its training set,
    which makes it the demo catalog's deliberately overfit model.
    """

    def __init__(self, num_centers: int, input_dim: int, num_classes: int):
        super().__init__()
        self.centers = nn.Parameter(torch.zeros(num_centers, input_dim))
        self.register_buffer("width", torch.tensor(1.0))
        self.head = nn.Linear(num_centers, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sq_dist = torch.cdist(x.flatten(1), self.centers).pow(2)
        return self.head(torch.exp(-sq_dist / (2 * self.width**2)))


@register_builder("demo_rbf")
def demo_rbf(num_centers: int, input_dim: int, num_classes: int = 10) -> nn.Module:
    return RBFNet(num_centers, input_dim, num_classes)


class SmallInputResNet18(nn.Module):
    """ResNet-18/34 for 32x32 inputs in the layout of the kuangliu/pytorch-cifar code that many
    adversarial-training repositories and pyautoattack's example model use: a 3x3 stem without
    max-pooling, four stages of 64-512 channels, 4x4 average pooling and a `linear` head."""

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int, in_channels: int = 3,
                 widths: tuple[int, int, int, int] = (64, 128, 256, 512), head: str = "linear") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        planes, stages = widths[0], []
        for i, (width, count) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(planes, width, stride)] + [BasicBlock(width, width, 1) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            planes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = head  # the classifier's name in the checkpoints this layout reads
        setattr(self, head, nn.Linear(widths[3], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return getattr(self, self.head)(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_builder("cifar_resnet_basic")
def cifar_resnet_basic(depth: int = 18, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """`SmallInputResNet18` with depth 18 ([2, 2, 2, 2] blocks) or 34 ([3, 4, 6, 3]); `in_channels` 1
    for grayscale inputs (the MedMNIST experiments' 28x28 ResNets have this layout)."""
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
    if depth not in blocks:
        raise CatalogError(f"cifar_resnet_basic: depth {depth} is not one of {', '.join(map(str, blocks))}")
    return SmallInputResNet18(blocks[depth], num_classes, in_channels)


@register_builder("cifar_resnet_width")
def cifar_resnet_width(width: int = 16, num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 32x32 inputs with stages of 4, 8, 16 and 32 times `width` channels and a
    `classifier` head: the layout of AdversaryLossLandscape's CIFAR-10 ResNet (`--width`; 16 gives
    the usual 64-512 channels)."""
    return SmallInputResNet18((2, 2, 2, 2), num_classes, 3, (4 * width, 8 * width, 16 * width, 32 * width), "classifier")
