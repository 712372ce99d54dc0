"""NEO (Udeshi et al., "Model Agnostic Defence against Backdoor Attacks", 2019/2022): trigger blocking.

A trigger dominates the prediction, so covering it flips the output. For each input NEO finds the
dominant colour (largest of 3 k-means clusters over its pixels), covers random blocks with it, and
treats a block whose covering flips the prediction as a candidate trigger: the ORIGINAL content of
that block. The candidate is confirmed when pasting it at the same position on other test images
flips more than 80% of their predictions; a confirmed input is a triggered input and, as in
SecurityNet (§4.3), marks the model as backdoored. SecurityNet uses 2,000 test images, 200 sampled
4x4 blocks (for 32x32 inputs), 3 clusters and the 0.8 threshold. (SecurityNet cites it as IEEE
Transactions on Reliability 2022, ref. [54].)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .common import DeviceLike, predict_labels, sample_index, seeded_generator, to_float

logger = logging.getLogger(__name__)


@dataclass
class NeoResult:
    """Per-input outcome (CPU tensors) and the model verdict."""

    confirmed: torch.Tensor = field(repr=False)
    has_candidate: torch.Tensor = field(repr=False)
    trigger_positions: torch.Tensor = field(repr=False)
    confirmed_fraction: float
    candidate_fraction: float
    n_confirmed: int
    flagged: bool
    n_inputs: int
    n_blocks: int
    block_size: int
    runtime_s: float


def default_block_size(height: int) -> int:
    """SecurityNet's 4x4 block for 32x32 inputs, scaled to the input height: round(4 * H / 32), at least 1."""
    return max(1, round(4 * height / 32))


def dominant_colours(
    images: torch.Tensor,
    *,
    k: int = 3,
    iterations: int = 10,
    restarts: int = 3,
    generator: torch.Generator,
) -> torch.Tensor:
    """Batched k-means over each image's pixels; returns the centre of the most populated cluster [N, C].

    Like scikit-learn's KMeans (used by the NEO and TrojanZoo code): k-means++ seeding, Lloyd
    iterations, several seeded restarts keeping the lowest inertia; an emptied cluster keeps its
    centre. A few iterations suffice for a dominant colour.
    """
    n, channels = images.shape[:2]
    pixels = images.flatten(2).transpose(1, 2).repeat_interleave(restarts, dim=0)  # [N*R, P, C]
    centres = _kmeans_plus_plus(pixels, k, generator)
    for _ in range(iterations):
        centres = _lloyd_step(pixels, centres)
    distances = torch.cdist(pixels, centres)
    assignment = distances.argmin(2)
    inertia = distances.amin(2).square().sum(1).view(n, restarts)
    best = torch.arange(n, device=images.device) * restarts + inertia.argmin(1)
    counts = nn.functional.one_hot(assignment[best], k).sum(1)  # [N, k]
    return centres[best, counts.argmax(1)]


def _kmeans_plus_plus(pixels: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding, batched: each next centre is a pixel drawn with probability ~ D^2."""
    m, n_pixels, _ = pixels.shape
    rows = torch.arange(m, device=pixels.device)
    first = torch.randint(n_pixels, (m,), generator=generator).to(pixels.device)
    centres = [pixels[rows, first]]
    nearest = (pixels - centres[0].unsqueeze(1)).square().sum(2)  # [M, P] squared distance
    for _ in range(1, k):
        cdf = nearest.cumsum(1)
        draw = torch.rand(m, 1, generator=generator).to(pixels.device) * cdf[:, -1:]
        chosen = torch.searchsorted(cdf, draw).squeeze(1).clamp(max=n_pixels - 1)
        centres.append(pixels[rows, chosen])
        nearest = torch.minimum(nearest, (pixels - centres[-1].unsqueeze(1)).square().sum(2))
    return torch.stack(centres, dim=1)


def _lloyd_step(pixels: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    k = centres.shape[1]
    assignment = torch.cdist(pixels, centres).argmin(2)
    one_hot = nn.functional.one_hot(assignment, k).to(pixels.dtype)  # [M, P, k]
    counts = one_hot.sum(1)
    updated = (one_hot.transpose(1, 2) @ pixels) / counts.clamp(min=1).unsqueeze(-1)
    return torch.where(counts.unsqueeze(-1) > 0, updated, centres)


def _sample_positions(
    n: int, n_blocks: int, height: int, width: int, block: int, generator: torch.Generator
) -> torch.Tensor:
    """Top-left corners [n, K, 2] of K distinct random blocks per input (all of them if K >= #positions)."""
    n_rows, n_cols = height - block + 1, width - block + 1
    n_positions = n_rows * n_cols
    if n_blocks >= n_positions:
        flat = torch.arange(n_positions).expand(n, n_positions)
    else:
        flat = torch.rand(n, n_positions, generator=generator).argsort(1)[:, :n_blocks]
    return torch.stack([flat // n_cols, flat % n_cols], dim=-1)


def _block_masks(positions: torch.Tensor, block: int, height: int, width: int) -> torch.Tensor:
    """Boolean masks [..., 1, H, W] of the blocks whose top-left corners are ``positions`` [..., 2]."""
    rows = torch.arange(height, device=positions.device)
    cols = torch.arange(width, device=positions.device)
    r0, c0 = positions[..., 0:1], positions[..., 1:2]
    in_rows = (rows >= r0) & (rows < r0 + block)
    in_cols = (cols >= c0) & (cols < c0 + block)
    return (in_rows.unsqueeze(-1) & in_cols.unsqueeze(-2)).unsqueeze(-3)


@torch.no_grad()
def _search_candidates(
    model: nn.Module,
    images: torch.Tensor,
    positions: torch.Tensor,
    block: int,
    max_candidates: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cover each sampled block with the dominant colour; returns original predictions, candidate
    positions [n, M, 2] ranked by the drop in the original class's probability, and their validity."""
    height, width = images.shape[-2:]
    colours = dominant_colours(images, generator=generator)
    probs = model(images).softmax(1)
    predictions = probs.argmax(1)
    masks = _block_masks(positions, block, height, width)  # [n, K, 1, H, W]
    covered = torch.where(masks, colours[:, None, :, None, None], images.unsqueeze(1))
    n, k = masks.shape[:2]
    covered_probs = model(covered.flatten(0, 1)).softmax(1).view(n, k, -1)
    flips = covered_probs.argmax(2) != predictions.unsqueeze(1)
    drop = probs.gather(1, predictions[:, None]) - covered_probs.gather(
        2, predictions[:, None, None].expand(n, k, 1)
    ).squeeze(2)
    score = torch.where(flips, drop, torch.full_like(drop, -torch.inf))
    top = score.topk(min(max_candidates, k), dim=1)
    candidates = positions.gather(1, top.indices.unsqueeze(-1).expand(-1, -1, 2))
    return predictions, candidates, torch.isfinite(top.values)


@torch.no_grad()
def _confirm(
    model: nn.Module,
    images: torch.Tensor,
    predictions: torch.Tensor,
    positions: torch.Tensor,
    pool: tuple[torch.Tensor, torch.Tensor],
    excluded: torch.Tensor,
    *,
    block: int,
    n_confirm: int,
    flip_threshold: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Paste each input's block (original content, same position) on ``n_confirm`` random pool images
    whose prediction differs from the input's, and test whether > ``flip_threshold`` of them flip."""
    pool_images, pool_predictions = pool
    device = images.device
    eligible = pool_predictions.unsqueeze(0) != predictions.cpu().unsqueeze(1)  # [m, P]
    own = torch.nonzero(excluded >= 0).flatten()
    eligible[own, excluded[own]] = False  # never confirm an input on itself
    score = torch.rand(eligible.shape, generator=generator).masked_fill_(~eligible, -1.0)
    picked = score.topk(min(n_confirm, score.shape[1]), dim=1)
    valid = (picked.values >= 0).to(device)
    others = to_float(pool_images[picked.indices], device)  # [m, n_confirm, C, H, W]
    masks = _block_masks(positions.to(device), block, *images.shape[-2:]).unsqueeze(1)
    pasted = torch.where(masks, images.unsqueeze(1), others)
    new = model(pasted.flatten(0, 1)).argmax(1).view(valid.shape)
    flipped = (new != pool_predictions[picked.indices].to(device)) & valid
    rate = flipped.sum(1) / valid.sum(1).clamp(min=1)
    return (rate > flip_threshold) & valid.any(1)


def neo(
    model: nn.Module,
    test_images_uint8: torch.Tensor,
    *,
    n_inputs: int = 2000,
    n_blocks: int = 200,
    block_size: int | None = None,
    flip_threshold: float = 0.8,
    n_confirm: int = 100,
    max_candidates: int = 3,
    min_confirmed: int = 1,
    device: DeviceLike,
    seed: int = 0,
    inputs_to_score: torch.Tensor | None = None,
    batch_size: int = 2048,
) -> NeoResult:
    """NEO (Udeshi et al., 2022) with SecurityNet's settings: 2,000 inputs, 200 blocks, 3 clusters, 0.8.

    Scores ``n_inputs`` seeded test images (or ``inputs_to_score``, e.g. triggered ones); candidate
    triggers are confirmed on ``n_confirm`` random test images whose prediction differs from the
    input's (images already predicted as the would-be target cannot flip to it). To bound the cost,
    only the ``max_candidates`` flipping blocks with the largest confidence drop are confirmed per
    input, best first. The model is flagged when at least ``min_confirmed`` inputs (default 1, the
    SecurityNet rule) have a confirmed trigger. Block size defaults to round(4 * H / 32). A forward
    pass holds about ``batch_size`` images.
    """
    start = time.perf_counter()
    generator = seeded_generator(seed)
    height, width = test_images_uint8.shape[-2:]
    block = block_size or default_block_size(height)
    source = test_images_uint8 if inputs_to_score is None else inputs_to_score
    index = sample_index(len(source), n_inputs, generator)
    excluded = index if inputs_to_score is None else torch.full_like(index, -1)
    model.eval()
    pool = (test_images_uint8, predict_labels(model, test_images_uint8, device=device))
    positions = _sample_positions(len(index), n_blocks, height, width, block, generator)
    per_chunk = max(1, batch_size // max(positions.shape[1], n_confirm))
    outcome = []
    for rows in torch.arange(len(index)).split(per_chunk):
        outcome.append(_score_chunk(
            model, to_float(source[index[rows]], device), positions[rows], pool, excluded[rows],
            block=block, n_confirm=n_confirm, max_candidates=max_candidates,
            flip_threshold=flip_threshold, generator=generator,
        ))
    confirmed, has_candidate, trigger_positions = (torch.cat(parts) for parts in zip(*outcome))
    return _neo_result(
        confirmed, has_candidate, trigger_positions, min_confirmed=min_confirmed,
        n_blocks=positions.shape[1], block=block, runtime_s=time.perf_counter() - start,
    )


def _score_chunk(
    model: nn.Module,
    images: torch.Tensor,
    positions: torch.Tensor,
    pool: tuple[torch.Tensor, torch.Tensor],
    excluded: torch.Tensor,
    *,
    block: int,
    n_confirm: int,
    max_candidates: int,
    flip_threshold: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidate search then confirmation, rank by rank, for the inputs not confirmed yet."""
    predictions, candidates, valid = _search_candidates(
        model, images, positions.to(images.device), block, max_candidates, generator
    )
    candidates, valid = candidates.cpu(), valid.cpu()
    confirmed = torch.zeros(len(images), dtype=torch.bool)
    found_at = torch.full((len(images), 2), -1, dtype=torch.long)
    for rank in range(candidates.shape[1]):
        todo = torch.nonzero(valid[:, rank] & ~confirmed).flatten()
        if todo.numel() == 0:
            continue
        ok = _confirm(
            model, images[todo.to(images.device)], predictions[todo.to(images.device)],
            candidates[todo, rank], pool, excluded[todo], block=block, n_confirm=n_confirm,
            flip_threshold=flip_threshold, generator=generator,
        ).cpu()
        confirmed[todo[ok]] = True
        found_at[todo[ok]] = candidates[todo[ok], rank]
    return confirmed, valid.any(1), found_at


def _neo_result(
    confirmed: torch.Tensor,
    has_candidate: torch.Tensor,
    trigger_positions: torch.Tensor,
    *,
    min_confirmed: int,
    n_blocks: int,
    block: int,
    runtime_s: float,
) -> NeoResult:
    n_confirmed = int(confirmed.sum())
    result = NeoResult(
        confirmed=confirmed, has_candidate=has_candidate, trigger_positions=trigger_positions,
        confirmed_fraction=n_confirmed / max(1, len(confirmed)),
        candidate_fraction=has_candidate.float().mean().item() if len(has_candidate) else 0.0,
        n_confirmed=n_confirmed, flagged=n_confirmed >= min_confirmed, n_inputs=len(confirmed),
        n_blocks=n_blocks, block_size=block, runtime_s=runtime_s,
    )
    logger.info(
        "neo: %d of %d inputs confirmed (candidates on %.3f), flagged=%s, %.1fs",
        n_confirmed, result.n_inputs, result.candidate_fraction, result.flagged, runtime_s,
    )
    return result
