"""Budget defaults that scale with the model's input size and training-set size.

The paper's settings (a ResNet-18 surrogate trained for 30 epochs; Neural Cleanse for 50 epochs)
were chosen for CIFAR-sized and larger inputs. On small images with a small training set (the
embedded 8x8 digits) a ResNet-18 costs minutes of CPU per surrogate and learns nothing a small
CNN does not. The rule, applied wherever a benchmark's budget field is left at 0 or "auto":

| the model's data | surrogate | batch | surrogate epochs | Neural Cleanse epochs | STRIP / NEO inputs |
|---|---|---|---|---|---|
| side <= 16 px and training split <= 20,000 images | small CNN (16/32/64 channels) | 32 | 20 | 20 | 200 |
| anything else (CIFAR, SVHN, MedMNIST, ImageNet ...) | ResNet-18 (the paper's) | `steal`'s default | 30 | 50 | 2,000 |

Small data keeps the paper's learning rate (0.01, not rescaled to the batch) and gets a batch of
32 so an epoch of a few hundred queries still takes a dozen SGD steps; the 8x8 mask of Neural
Cleanse has 16x fewer pixels than CIFAR's and settles in fewer epochs; STRIP and NEO score 200
inputs, about the fifth of a small test split that the paper's 2,000 are of CIFAR-10's 10,000.
Every row records the values used and `scale` ("small" or "paper").
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pytest_securitynet.attacks.surrogates import SURROGATES

SMALL_SIDE = 16
"""Inputs of at most this many pixels per side count as small."""
SMALL_TRAIN = 20_000
"""Training splits of at most this many images count as small."""
PAPER_EPOCHS, SMALL_EPOCHS = 30, 20
PAPER_NC_EPOCHS, SMALL_NC_EPOCHS = 50, 20
PAPER_INPUTS, SMALL_INPUTS = 2000, 200
SMALL_BATCH = 32


def is_small(input_shape: tuple[int, ...], n_train: int) -> bool:
    """True for data the paper's budgets do not fit: small images and a small training split."""
    return max(input_shape[-2:]) <= SMALL_SIDE and n_train <= SMALL_TRAIN


def scale_name(input_shape: tuple[int, ...], n_train: int) -> str:
    """`small` or `paper`: which row of the rule applies (rows record it as `scale`)."""
    return "small" if is_small(input_shape, n_train) else "paper"


class SmallCNN(nn.Sequential):
    """Three 3x3 conv-BN-ReLU layers (16, 32, 64 channels, one 2x2 max-pool), global pooling and a
    linear head. As the surrogate `small-cnn`, `build_surrogate` puts its normalisation in front."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16) -> None:
        layers: list[nn.Module] = []
        channels = in_channels
        for i, out in enumerate((width, 2 * width, 4 * width)):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i == 1:
                layers.append(nn.MaxPool2d(2))
            channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
        super().__init__(*layers)


def small_cnn(num_classes: int, input_size: int, in_channels: int) -> nn.Module:
    """The `small-cnn` surrogate builder (`f(num_classes, input_size, in_channels)`, any input size)."""
    return SmallCNN(num_classes, in_channels)


SURROGATES.setdefault("small-cnn", small_cnn)  # a name `build_surrogate`, recipes and rows can use


def surrogate_choices() -> tuple[str, ...]:
    """What a budget's surrogate field accepts: `auto` (the rule above) or a registered surrogate name."""
    return ("auto", *SURROGATES)


@dataclass(frozen=True)
class SurrogatePlan:
    """What a surrogate is trained with: architecture name, epochs, batch and learning-rate scaling."""

    surrogate: str
    epochs: int
    batch_size: int | None  # None: `steal`'s default (512 on CUDA, 128 elsewhere)
    scale_lr: bool
    scale: str

    def steal_kwargs(self) -> dict:
        """Keyword arguments for `steal`, `train_surrogate` and `run_model_stealing`."""
        return dict(surrogate=self.surrogate, epochs=self.epochs, batch_size=self.batch_size, scale_lr=self.scale_lr)

    def recipe_kwargs(self) -> dict:
        """Keyword arguments for `attacks.surrogate_cache.SurrogateRecipe`."""
        return dict(architecture=self.surrogate, epochs=self.epochs, batch_size=self.batch_size, scale_lr=self.scale_lr)


def surrogate_plan(input_shape: tuple[int, ...], n_train: int, *, surrogate: str = "auto",
                   epochs: int = 0) -> SurrogatePlan:
    """The rule above; `surrogate` other than "auto" and `epochs` other than 0 override it."""
    small = is_small(input_shape, n_train)
    name = surrogate if surrogate != "auto" else ("small-cnn" if small else "resnet18")
    return SurrogatePlan(
        surrogate=name,
        epochs=epochs or (SMALL_EPOCHS if small else PAPER_EPOCHS),
        batch_size=SMALL_BATCH if small else None,
        scale_lr=not small,
        scale="small" if small else "paper",
    )


def nc_epochs(input_shape: tuple[int, ...], n_train: int, requested: int = 0) -> int:
    """Neural Cleanse epochs: `requested`, else the rule above."""
    return requested or (SMALL_NC_EPOCHS if is_small(input_shape, n_train) else PAPER_NC_EPOCHS)


def detector_inputs(input_shape: tuple[int, ...], n_train: int, requested: int = 0) -> int:
    """Inputs STRIP and NEO score: `requested`, else the rule above."""
    return requested or (SMALL_INPUTS if is_small(input_shape, n_train) else PAPER_INPUTS)
