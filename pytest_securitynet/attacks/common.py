"""What every attack module shares: devices, seeded generators, uint8 -> float conversion, batched
prediction, entropy, the attack context (eval mode, frozen weights, optionally channels_last,
restored afterwards), bf16 autocast, phase timing, FLOP counting and CUDA-graph replay.

Images are uint8 tensors [N, C, H, W]; models take float images in [0, 1] and return logits.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, fields, is_dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

logger = logging.getLogger(__name__)

DeviceLike = torch.device | str


def resolve_device(device: DeviceLike | None, model: nn.Module | None = None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter, else the CPU."""
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None) if model is not None else None
    return param.device if param is not None else torch.device("cpu")


def seeded_generator(seed: int, device: DeviceLike = "cpu") -> torch.Generator:
    """A generator seeded with ``seed`` on ``device`` (the one way attacks seed their random draws).

    Draws from a CPU generator do not depend on the device the model runs on; a device generator
    keeps draws that feed device-side loops (random starts, shuffles) on the device.
    """
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(int(seed))
    return generator


def check_uint8(images: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``images`` is a uint8 tensor [N, C, H, W]."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"{name} must be a uint8 tensor [N, C, H, W]; got {images.dtype} "
                         f"{tuple(images.shape)}")


def to_float(images_uint8: torch.Tensor, device: DeviceLike = "cpu") -> torch.Tensor:
    """uint8 images [N, C, H, W] -> float in [0, 1] on ``device``."""
    return images_uint8.to(device, non_blocking=True).float().div_(255)


def sample_index(n_total: int, n_wanted: int | None, generator: torch.Generator) -> torch.Tensor:
    """A seeded random subset (without replacement) of ``range(n_total)``, at most ``n_wanted`` long."""
    permutation = torch.randperm(n_total, generator=generator)
    return permutation if n_wanted is None else permutation[: min(n_wanted, n_total)]


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (base 2, as in the STRIP code) of softmax(logits) along the last axis."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1) / torch.log(torch.tensor(2.0, device=logits.device))


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off ``requires_grad`` on the model's parameters for the block, then restore it.

    Attacks need gradients with respect to the input only; frozen weights keep ``.grad`` untouched
    and let autograd skip weight-gradient kernels and the activations they would save.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@contextlib.contextmanager
def attack_mode(model: nn.Module, *, channels_last: bool = False) -> Iterator[nn.Module]:
    """The state every attack runs its model in: eval mode and frozen weights, restored on exit.

    With ``channels_last`` the 4-D weights are also laid out channels-last for the block (faster
    convolutions on CUDA) and given back their own storage on exit.
    """
    was_training = model.training
    layouts = []
    if channels_last:
        for parameter in model.parameters():
            if parameter.ndim == 4:
                layouts.append((parameter, parameter.data))
                parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
    model.eval()
    try:
        with frozen_parameters(model):
            yield model
    finally:
        model.train(was_training)
        for parameter, data in layouts:
            parameter.data = data


def use_fast_path(flag: bool | None, device: torch.device) -> bool:
    """Resolve an on/off option of a CUDA fast path: ``None`` means on for CUDA, off elsewhere."""
    return device.type == "cuda" if flag is None else bool(flag)


def autocast_dtype(amp: bool | None, device: torch.device) -> torch.dtype | None:
    """bf16 when ``amp`` is True, or None (automatic) on CUDA; None (plain fp32) otherwise.

    ``amp=True`` also runs bf16 autocast on the CPU, which is how the CPU tests compare the bf16
    path with the fp32 reference.
    """
    return torch.bfloat16 if use_fast_path(amp, device) else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` (no weight cache, so it may be captured in a CUDA graph),
    or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def cudnn_autotune(device: torch.device) -> contextlib.AbstractContextManager:
    """cuDNN autotuning for the block on CUDA (fixed shapes repeat thousands of times)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.backends.cudnn.flags(enabled=True, benchmark=True)


_PIXELS_PER_FORWARD = {"cuda": 16384 * 32 * 32}
_PIXELS_PER_FORWARD_DEFAULT = 2048 * 32 * 32


def images_per_forward(requested: int | None, device: torch.device, image_shape: tuple[int, ...]) -> int:
    """Images in one inference pass: ``requested``, or as many as 16384 (CUDA) / 2048 (elsewhere)
    32x32 images hold in pixels, so larger inputs get proportionally smaller passes."""
    if requested is not None:
        return max(1, int(requested))
    pixels = _PIXELS_PER_FORWARD.get(device.type, _PIXELS_PER_FORWARD_DEFAULT)
    return max(1, pixels // (image_shape[-1] * image_shape[-2]))


@torch.no_grad()
def logits_in_chunks(
    model: nn.Module,
    images: torch.Tensor,
    *,
    chunk: int,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """float32 logits of ``images`` (uint8, or float in [0, 1]) on their device, ``chunk`` images per pass."""
    outputs = []
    for part in images.split(chunk):
        x = part.float().div_(255) if part.dtype == torch.uint8 else part
        with autocast(part.device, amp):
            outputs.append(model(x.contiguous(memory_format=memory_format(channels_last))).float())
    return torch.cat(outputs)


class PhaseTimer:
    """Wall seconds per named phase (``with timer.phase("attack"): ...``), summed over entries.

    On CUDA the device is synchronised when a phase ends, so a phase owns the kernels it queued;
    phases are meant to be coarse (a handful per run), never entered inside a step loop.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.phases.values())


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device (no memory, no compute) without the caller's hooks,
    for counting FLOPs."""
    probe = copy.deepcopy(model).to("meta")
    for module in probe.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks):
            hooks.clear()
    return probe


def pass_flops(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[float, float] | None:
    """FLOPs per image of one forward pass and of the backward pass to the input (weights frozen).

    Counted with ``FlopCounterMode`` on a meta-device copy of the model (no compute); matmuls and
    convolutions only, so TFLOP/s derived from it are conservative. Returns None when the model
    cannot be copied to the meta device.
    """
    try:
        probe = meta_copy(model).eval().requires_grad_(False)
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        logger.debug("no FLOP count for %s: %s", type(model).__name__, exc)
        return None
    x = torch.empty((2, *input_shape), device="meta", requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = probe(x)
    forward = counter.get_total_flops() / 2
    with FlopCounterMode(display=False) as counter:
        out.float().sum().backward()
    return forward, counter.get_total_flops() / 2


def tflop_per_s(flops: float | None, seconds: float) -> float | None:
    """Achieved TFLOP/s, or None when the work was not counted or took no time."""
    return flops / 1e12 / seconds if flops is not None and seconds > 0 else None


class GraphedStep:
    """Replays ``step()`` from a CUDA graph: the first ``warmup`` calls run eagerly on a side stream
    (cuDNN autotuning, lazy allocations), the next one is captured and every later call replays it.

    ``step`` must read its inputs from and write its outputs to tensors that stay alive and in place
    (copy new inputs into them before calling); Python values it uses are frozen at capture. When
    ``enabled`` is False (CPU, or graphs turned off) ``step()`` simply runs. If capture fails the
    step keeps running eagerly, with a warning.
    """

    def __init__(self, step: Callable[[], None], *, enabled: bool, warmup: int = 3) -> None:
        self.step = step
        self.enabled = enabled
        self.warmup = warmup
        self.calls = 0
        self.graph: Any = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self) -> None:
        if not self.enabled:
            self.step()
            return
        if self.graph is not None:
            self.graph.replay()
            return
        if self.calls < self.warmup:
            self.calls += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step()
            torch.cuda.current_stream().wait_stream(side)
            return
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.step()
        except RuntimeError as exc:
            logger.warning("CUDA graph capture failed, running eagerly: %s", exc)
            self.enabled = False
            self.step()
            return
        self.graph = graph
        graph.replay()


class ResultRecord:
    """Mixin for result dataclasses: ``as_record()`` gives the JSON-ready fields (tensors left out)."""

    def as_record(self) -> dict[str, Any]:
        """Every field shown in the dataclass's repr (tensor fields are declared ``repr=False``),
        nested dataclasses as dicts: what a benchmark row records."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.repr}


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return value


@torch.no_grad()
def predict_labels(
    model: nn.Module, images_uint8: torch.Tensor, *, device: DeviceLike, batch_size: int = 1024
) -> torch.Tensor:
    """Predicted labels (CPU, int64) for uint8 images, converted batch by batch on ``device``."""
    with attack_mode(model):
        predictions = [
            model(to_float(chunk, device)).argmax(1).cpu() for chunk in images_uint8.split(batch_size)
        ]
    return torch.cat(predictions)
