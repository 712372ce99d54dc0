"""STRIP (Gao et al., ACSAC 2019): input filtering by prediction entropy under strong perturbation.

Each input is superimposed with ``n_overlays`` random clean images; a triggered input keeps being
classified as the target whatever is blended in, so its prediction entropy stays low, while a clean
input's prediction scatters. The decision boundary is the ``frr``-quantile of the entropies of
held-out clean inputs: an input below it is flagged. SecurityNet (§4.3) scores 2,000 test images
with the default 10 overlays. Entropy is in bits and averaged over the overlays, as in the STRIP code.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .common import (
    DeviceLike,
    PhaseTimer,
    ResultRecord,
    attack_mode,
    autocast,
    autocast_dtype,
    entropy_bits,
    images_per_forward,
    memory_format,
    pass_flops,
    resolve_device,
    sample_index,
    seeded_generator,
    tflop_per_s,
    use_fast_path,
)

logger = logging.getLogger(__name__)

# One-sided margin, in standard errors, that the flagged fraction must clear above the expected
# false-rejection rate before the model itself is called backdoored (see ``strip_verdict``).
VERDICT_SIGMAS = 3.0


@dataclass
class StripResult(ResultRecord):
    """Entropies (CPU) of the scored and the held-out clean inputs, the boundary, the verdicts, the
    settings used and the work done (all inputs x overlays in one batched pass)."""

    entropies: torch.Tensor = field(repr=False)
    clean_entropies: torch.Tensor = field(repr=False)
    boundary: float
    flagged_inputs: torch.Tensor = field(repr=False)
    flagged_fraction: float
    expected_frr: float
    verdict_threshold: float
    flagged: bool
    n_inputs: int
    n_overlays: int
    runtime_s: float
    n_calibration: int
    blend: str
    seed: int
    images_per_forward: int
    amp: str | None
    channels_last: bool
    images_forwarded: int
    phases: dict[str, float]
    flops: float | None
    tflop_per_s: float | None


BLENDS = ("add", "average")


def superimpose(inputs: torch.Tensor, overlays: torch.Tensor, blend: str = "add") -> torch.Tensor:
    """Superimpose float images [N, C, H, W] with overlays [N, K, C, H, W] -> [N, K, C, H, W].

    ``"add"`` is the STRIP authors' blend, cv2.addWeighted(input, 1, overlay, 1, 0) on uint8, i.e.
    the saturated sum min(input + overlay, 1): a trigger's saturated pixels survive any overlay.
    ``"average"`` is 0.5 * input + 0.5 * overlay (TrojanZoo's alpha = 0.5); it halves the trigger's
    contrast, which can switch a patch trigger off (on our digits BadNets model a 2x2 white patch at
    half intensity fires on 2% of inputs, so triggered inputs looked *less* certain than clean ones).
    """
    if blend == "add":
        return (inputs.unsqueeze(1) + overlays).clamp_(max=1.0)
    if blend == "average":
        return 0.5 * inputs.unsqueeze(1) + 0.5 * overlays
    raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")


@torch.no_grad()
def _entropies(
    model: nn.Module,
    inputs_uint8: torch.Tensor,
    overlays_uint8: torch.Tensor,
    overlay_index: torch.Tensor,
    *,
    blend: str,
    chunk: int,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Mean (over overlays) base-2 entropy of each input blended with its overlays ``overlay_index``
    [N, K]; everything on the inputs' device, ``chunk`` blended images per forward pass."""
    n_overlays = overlay_index.shape[1]
    entropies = []
    for rows in torch.arange(len(inputs_uint8), device=inputs_uint8.device).split(max(1, chunk // n_overlays)):
        overlays = overlays_uint8[overlay_index[rows]].float().div_(255)
        blended = superimpose(inputs_uint8[rows].float().div_(255), overlays, blend)
        x = blended.flatten(0, 1).contiguous(memory_format=memory_format(channels_last))
        with autocast(x.device, amp):
            logits = model(x)
        entropies.append(entropy_bits(logits.float().view(len(rows), n_overlays, -1)).mean(1))
    return torch.cat(entropies)


def strip_entropies(
    model: nn.Module,
    inputs_uint8: torch.Tensor,
    overlay_pool_uint8: torch.Tensor,
    *,
    n_overlays: int,
    blend: str,
    generator: torch.Generator,
    device: DeviceLike,
    batch_size: int,
) -> torch.Tensor:
    """Mean (over overlays) base-2 prediction entropy (CPU) of each input superimposed with
    ``n_overlays`` random clean images of the pool (drawn with ``generator``)."""
    overlay_index = torch.randint(
        len(overlay_pool_uint8), (len(inputs_uint8), n_overlays), generator=generator
    )
    device = resolve_device(device)
    return _entropies(model, inputs_uint8.to(device), overlay_pool_uint8.to(device), overlay_index.to(device),
                      blend=blend, chunk=batch_size).cpu()


def strip_verdict(flagged_fraction: float, frr: float, n_scored: int, n_clean: int) -> tuple[bool, float]:
    """Model-level verdict: flagged fraction above ``frr`` + max(frr, 3 standard errors).

    Under "no trigger" the scored inputs are rejected at about the rate ``frr`` the boundary was set
    for; the standard error combines the binomial noise of the scored fraction and of the quantile
    estimated on ``n_clean`` inputs. Requiring at least twice ``frr`` as well keeps small runs from
    flagging on a handful of inputs. Returns (flagged, threshold on the fraction).
    """
    stderr = math.sqrt(frr * (1 - frr) * (1 / n_scored + 1 / n_clean))
    threshold = frr + max(frr, VERDICT_SIGMAS * stderr)
    return flagged_fraction > threshold, threshold


def _split_clean_pool(
    clean_pool_uint8: torch.Tensor, n_calibration: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint held-out clean inputs (for the boundary) and overlay images, drawn from the pool."""
    order = sample_index(len(clean_pool_uint8), None, generator)
    n_calibration = min(n_calibration, len(clean_pool_uint8) // 2)
    if n_calibration < 1:
        raise ValueError("clean_pool_uint8 needs at least 2 images")
    return clean_pool_uint8[order[:n_calibration]], clean_pool_uint8[order[n_calibration:]]


def strip(
    model: nn.Module,
    test_images_uint8: torch.Tensor,
    clean_pool_uint8: torch.Tensor,
    *,
    n_inputs: int = 2000,
    n_overlays: int = 10,
    frr: float = 0.01,
    device: DeviceLike,
    seed: int = 0,
    inputs_to_score: torch.Tensor | None = None,
    n_calibration: int | None = None,
    blend: str = "add",
    batch_size: int | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
) -> StripResult:
    """STRIP (Gao et al., ACSAC 2019): 2,000 inputs, 10 overlays, 1% false-rejection rate by default.

    Scores ``n_inputs`` seeded test images (or ``inputs_to_score``, e.g. triggered ones).
    ``clean_pool_uint8`` must be disjoint from the scored inputs; it is split into held-out clean
    inputs (``n_calibration``, default ``n_inputs``, at most half the pool) whose entropies give the
    ``frr``-quantile boundary, and the overlay images. Overlays are blended with the authors'
    saturated sum (``blend="add"``, see :func:`superimpose`). An input is flagged when its entropy is
    below the boundary; the model is flagged when the flagged fraction clears :func:`strip_verdict`.

    Calibration and scored inputs x overlays run as one batched pass with the data on the device,
    ``batch_size`` blended images per forward (default: 2048 32x32 images on the CPU, 16384 on
    CUDA, fewer for larger inputs); ``amp`` (bf16 autocast) and ``channels_last`` default to on for
    CUDA only.
    """
    device = resolve_device(device)
    timer = PhaseTimer(device)
    fast_layout = use_fast_path(channels_last, device)
    amp_dtype = autocast_dtype(amp, device)
    with timer.phase("setup"):
        generator = seeded_generator(seed)
        source = test_images_uint8 if inputs_to_score is None else inputs_to_score
        scored = source[sample_index(len(source), n_inputs, generator)]
        calibration, overlay_pool = _split_clean_pool(clean_pool_uint8, n_calibration or n_inputs, generator)
        # Drawn in the order of two separate passes (calibration, then scored) and run as one.
        overlay_index = torch.cat([
            torch.randint(len(overlay_pool), (len(part), n_overlays), generator=generator)
            for part in (calibration, scored)
        ])
        inputs = torch.cat([calibration, scored]).to(device)
        pool = overlay_pool.to(device)
        chunk = images_per_forward(batch_size, device, tuple(inputs.shape[1:]))
    with timer.phase("attack"), attack_mode(model, channels_last=fast_layout):
        all_entropies = _entropies(model, inputs, pool, overlay_index.to(device), blend=blend, chunk=chunk,
                                   amp=amp_dtype, channels_last=fast_layout).cpu()
    with timer.phase("evaluation"):
        clean_entropies, entropies = all_entropies[: len(calibration)], all_entropies[len(calibration):]
        boundary = torch.quantile(clean_entropies.double(), frr).item()
        flagged_inputs = entropies < boundary
        fraction = flagged_inputs.float().mean().item()
        flagged, threshold = strip_verdict(fraction, frr, len(scored), len(calibration))
    forwarded = overlay_index.numel()
    flops_per_image = pass_flops(model, tuple(inputs.shape[1:]))
    flops = None if flops_per_image is None else forwarded * flops_per_image[0]
    result = StripResult(
        entropies=entropies, clean_entropies=clean_entropies, boundary=boundary,
        flagged_inputs=flagged_inputs, flagged_fraction=fraction, expected_frr=frr,
        verdict_threshold=threshold, flagged=flagged, n_inputs=len(scored),
        n_overlays=n_overlays, runtime_s=timer.total, n_calibration=len(calibration), blend=blend,
        seed=seed, images_per_forward=chunk, amp=None if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
        channels_last=fast_layout, images_forwarded=forwarded, phases=dict(timer.phases), flops=flops,
        tflop_per_s=tflop_per_s(flops, timer.phases["attack"]),
    )
    logger.info(
        "strip: boundary %.4f, flagged %.3f of %d inputs (threshold %.3f), flagged=%s, %.1fs",
        boundary, fraction, len(scored), threshold, flagged, result.runtime_s,
    )
    return result
