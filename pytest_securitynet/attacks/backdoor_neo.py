"""NEO (Udeshi et al., "Model Agnostic Defence against Backdoor Attacks", 2019/2022): trigger blocking.

A trigger dominates the prediction, so covering it flips the output. For each input NEO finds the
dominant colour (largest of 3 k-means clusters over its pixels), covers random blocks with it, and
treats a block whose covering flips the prediction as a candidate trigger: the ORIGINAL content of
that block. The candidate is confirmed when pasting it at the same position on other test images
flips more than 80% of their predictions; a confirmed input is a triggered input and, as in
SecurityNet (§4.3), marks the model as backdoored. SecurityNet uses 2,000 test images, 200 sampled
4x4 blocks (for 32x32 inputs), 3 clusters and the 0.8 threshold. (SecurityNet cites it as IEEE
Transactions on Reliability 2022, ref. [54].)

Search: blocks are probed in rounds of ``blocks_per_round`` for all inputs still searching at once
(a few large forward passes per round); after each round the flipping blocks are confirmed, largest
confidence drop first, and an input stops once one is confirmed or it has used its
``max_candidates`` confirmations. One block per round with an unbounded budget is the authors'
search (confirm each flip as found, stop at the first confirmed); all blocks in one round is the
exhaustive reference (the ``max_candidates`` largest drops over all blocks). Everything stays on the
device except the seeded draws of the confirmation images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .backdoor_kmeans import dominant_colours
from .common import (
    DeviceLike,
    PhaseTimer,
    ResultRecord,
    attack_mode,
    autocast,
    autocast_dtype,
    images_per_forward,
    logits_in_chunks,
    memory_format,
    pass_flops,
    resolve_device,
    sample_index,
    seeded_generator,
    tflop_per_s,
    use_fast_path,
)

__all__ = ["NeoResult", "default_block_size", "dominant_colours", "neo"]

logger = logging.getLogger(__name__)

_COLOUR_CHUNK = 256
"""Inputs per k-means batch: fixed, so the seeded draws do not depend on the device."""


@dataclass
class NeoResult(ResultRecord):
    """Per-input outcome (CPU tensors), the model verdict, the settings used and the work done.

    ``phases``: setup (uploads, predictions, dominant colours) and attack (block search and
    confirmation); ``images_forwarded`` counts every image the model ran on."""

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
    flip_threshold: float
    n_confirm: int
    max_candidates: int
    min_confirmed: int
    blocks_per_round: int
    seed: int
    images_per_forward: int
    amp: str | None
    channels_last: bool
    blocks_probed: int
    images_forwarded: int
    phases: dict[str, float]
    flops: float | None
    tflop_per_s: float | None


@dataclass(frozen=True)
class _Run:
    """What every forward pass of one NEO run shares."""

    model: nn.Module
    block: int
    chunk: int
    amp: torch.dtype | None
    channels_last: bool

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return logits_in_chunks(self.model, images, chunk=self.chunk, amp=self.amp,
                                channels_last=self.channels_last)


def default_block_size(height: int) -> int:
    """SecurityNet's 4x4 block for 32x32 inputs, scaled to the input height: round(4 * H / 32), at least 1."""
    return max(1, round(4 * height / 32))


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
def _covered_scores(
    run: _Run, images: torch.Tensor, colours: torch.Tensor, positions: torch.Tensor,
    predictions: torch.Tensor, confidence: torch.Tensor,
) -> torch.Tensor:
    """Score [m, r] of covering each of r blocks per input with its dominant colour: the drop of the
    predicted class's probability where the prediction flips, -inf where it does not."""
    m, r = positions.shape[:2]
    height, width = images.shape[-2:]
    scores = []
    for rows in torch.arange(m, device=images.device).split(max(1, run.chunk // r)):
        masks = _block_masks(positions[rows], run.block, height, width)  # [c, r, 1, H, W]
        covered = torch.where(masks, colours[rows][:, None, :, None, None], images[rows].unsqueeze(1))
        with autocast(images.device, run.amp):
            logits = run.model(covered.flatten(0, 1).contiguous(memory_format=memory_format(run.channels_last)))
        probs = logits.float().softmax(1).view(len(rows), r, -1)
        wanted = predictions[rows]
        flips = probs.argmax(2) != wanted.unsqueeze(1)
        drop = confidence[rows].unsqueeze(1) - probs.gather(2, wanted[:, None, None].expand(-1, r, 1)).squeeze(2)
        scores.append(torch.where(flips, drop, torch.full_like(drop, -torch.inf)))
    return torch.cat(scores)


def _pick_pool_images(
    predictions: torch.Tensor, pool_predictions: torch.Tensor, excluded: torch.Tensor,
    n_confirm: int, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_confirm`` random pool images per input (CPU draws) whose prediction differs from the
    input's and that are not the input itself; returns their indices and which picks are real."""
    eligible = pool_predictions.unsqueeze(0) != predictions.unsqueeze(1)  # [m, P]
    own = torch.nonzero(excluded >= 0).flatten()
    eligible[own, excluded[own]] = False  # never confirm an input on itself
    score = torch.rand(eligible.shape, generator=generator).masked_fill_(~eligible, -1.0)
    picked = score.topk(min(n_confirm, score.shape[1]), dim=1)
    return picked.indices, picked.values >= 0


@torch.no_grad()
def _confirm(
    run: _Run, images: torch.Tensor, positions: torch.Tensor, pool: tuple[torch.Tensor, torch.Tensor],
    picks: torch.Tensor, real: torch.Tensor, flip_threshold: float,
) -> torch.Tensor:
    """Paste each input's block (original content, same position) on its picked pool images and
    test whether more than ``flip_threshold`` of their predictions flip."""
    pool_images, pool_predictions = pool
    m, n_confirm = picks.shape
    height, width = images.shape[-2:]
    masks = _block_masks(positions, run.block, height, width).unsqueeze(1)  # [m, 1, 1, H, W]
    flipped = []
    for rows in torch.arange(m, device=images.device).split(max(1, run.chunk // n_confirm)):
        others = pool_images[picks[rows]].float().div_(255)  # [c, n_confirm, C, H, W]
        pasted = torch.where(masks[rows], images[rows].unsqueeze(1), others)
        new = run.logits(pasted.flatten(0, 1)).argmax(1).view(len(rows), n_confirm)
        flipped.append(new != pool_predictions[picks[rows]])
    flipped = torch.cat(flipped) & real
    rate = flipped.sum(1) / real.sum(1).clamp(min=1)
    return (rate > flip_threshold) & real.any(1)


@dataclass
class _Outcome:
    """Per-input state of the search (on the device) and the work done."""

    confirmed: torch.Tensor
    found_at: torch.Tensor
    has_candidate: torch.Tensor
    budget: torch.Tensor
    probed: int = 0
    confirm_images: int = 0


def _search_and_confirm(
    run: _Run, images: torch.Tensor, colours: torch.Tensor, positions: torch.Tensor,
    predictions: torch.Tensor, confidence: torch.Tensor, pool: tuple[torch.Tensor, torch.Tensor],
    excluded: torch.Tensor, *, blocks_per_round: int, max_candidates: int, n_confirm: int,
    flip_threshold: float, generator: torch.Generator,
) -> _Outcome:
    """Probe blocks round by round for every input still searching; confirm the round's flipping
    blocks, largest confidence drop first, while the input has confirmation budget left
    (``max_candidates`` in all). An input stops once a candidate is confirmed or its budget is spent.

    With one block per round and an unbounded budget this is the authors' search (confirm each flip
    as it is found, stop at the first confirmed); with every block in one round it is the exhaustive
    ranking (the ``max_candidates`` largest drops over all blocks). Host reads: one per round (who
    still searches) and a few per candidate rank (which inputs to confirm, drawn on the CPU).
    """
    n, n_blocks = positions.shape[:2]
    device = images.device
    state = _Outcome(
        confirmed=torch.zeros(n, dtype=torch.bool, device=device),
        found_at=torch.full((n, 2), -1, dtype=torch.long, device=device),
        has_candidate=torch.zeros(n, dtype=torch.bool, device=device),
        budget=torch.full((n,), max_candidates, dtype=torch.long, device=device),
    )
    predictions_cpu, pool_predictions_cpu = predictions.cpu(), pool[1].cpu()
    for first in range(0, n_blocks, blocks_per_round):
        todo = torch.nonzero(~state.confirmed & (state.budget > 0)).squeeze(1)
        if todo.numel() == 0:
            break
        block_positions = positions[todo, first : first + blocks_per_round]
        score = _covered_scores(run, images[todo], colours[todo], block_positions, predictions[todo],
                                confidence[todo])
        state.probed += score.numel()
        top = score.topk(min(max_candidates, score.shape[1]), dim=1)
        state.has_candidate[todo] |= torch.isfinite(top.values[:, 0])
        ranked = block_positions.gather(1, top.indices.unsqueeze(-1).expand(-1, -1, 2))
        for rank in range(top.values.shape[1]):
            wanted = torch.isfinite(top.values[:, rank]) & (state.budget[todo] > 0) & ~state.confirmed[todo]
            chosen = torch.nonzero(wanted).squeeze(1)
            if chosen.numel() == 0:
                break  # later ranks only hold fewer flips
            rows = todo[chosen]
            rows_cpu = rows.cpu()
            picks, real = _pick_pool_images(predictions_cpu[rows_cpu], pool_predictions_cpu,
                                            excluded[rows_cpu], n_confirm, generator)
            ok = _confirm(run, images[rows], ranked[chosen, rank], pool, picks.to(device), real.to(device),
                          flip_threshold)
            state.confirm_images += picks.numel()
            state.budget[rows] -= 1
            state.confirmed[rows] |= ok
            state.found_at[rows] = torch.where(ok[:, None], ranked[chosen, rank], state.found_at[rows])
    return state


def _colours(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.cat([dominant_colours(part, generator=generator) for part in images.split(_COLOUR_CHUNK)])


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
    batch_size: int | None = None,
    blocks_per_round: int | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
) -> NeoResult:
    """NEO (Udeshi et al., 2022) with SecurityNet's settings: 2,000 inputs, 200 blocks, 3 clusters, 0.8.

    Scores ``n_inputs`` seeded test images (or ``inputs_to_score``, e.g. triggered ones). Blocks are
    probed ``blocks_per_round`` at a time (None: all in one round, the exhaustive reference); the
    flipping blocks of a round are confirmed, largest confidence drop first, on ``n_confirm`` random
    test images whose prediction differs from the input's (images already predicted as the
    would-be target cannot flip to it); an input stops at its first confirmed block or after
    ``max_candidates`` confirmations. The model is flagged when at least ``min_confirmed`` inputs
    (default 1, the SecurityNet rule) have a confirmed trigger. Block size defaults to
    round(4 * H / 32). A forward pass holds at most ``batch_size`` images (default: 2048 32x32
    images on the CPU, 16384 on CUDA, fewer for larger inputs). ``amp`` (bf16 autocast) and
    ``channels_last`` default to on for CUDA only.
    """
    device = resolve_device(device)
    timer = PhaseTimer(device)
    height, width = test_images_uint8.shape[-2:]
    block = block_size or default_block_size(height)
    source = test_images_uint8 if inputs_to_score is None else inputs_to_score
    fast_layout = use_fast_path(channels_last, device)
    with attack_mode(model, channels_last=fast_layout):
        with timer.phase("setup"):
            generator = seeded_generator(seed)
            index = sample_index(len(source), n_inputs, generator)
            excluded = index if inputs_to_score is None else torch.full_like(index, -1)
            positions = _sample_positions(len(index), n_blocks, height, width, block, generator)
            n_blocks = positions.shape[1]
            rounds = min(blocks_per_round or n_blocks, n_blocks)
            run = _Run(model, block, images_per_forward(batch_size, device, tuple(source.shape[1:])),
                       autocast_dtype(amp, device), fast_layout)
            pool_images = test_images_uint8.to(device)
            pool = (pool_images, run.logits(pool_images).argmax(1))
            images = source[index].to(device).float().div_(255)
            probs = run.logits(images).softmax(1)
            predictions = probs.argmax(1)
            confidence = probs.gather(1, predictions[:, None]).squeeze(1)
            colours = _colours(images, generator)
        with timer.phase("attack"):
            outcome = _search_and_confirm(
                run, images, colours, positions.to(device), predictions, confidence, pool, excluded,
                blocks_per_round=rounds, max_candidates=max_candidates, n_confirm=n_confirm,
                flip_threshold=flip_threshold, generator=generator,
            )
            confirmed, has_candidate, found_at = (
                outcome.confirmed.cpu(), outcome.has_candidate.cpu(), outcome.found_at.cpu())
    probed = outcome.probed
    forwarded = len(pool_images) + len(images) + probed + outcome.confirm_images
    flops_per_image = pass_flops(model, tuple(source.shape[1:]))
    flops = None if flops_per_image is None else forwarded * flops_per_image[0]
    seconds = timer.phases["attack"]
    n_confirmed = int(confirmed.sum())
    result = NeoResult(
        confirmed=confirmed, has_candidate=has_candidate, trigger_positions=found_at,
        confirmed_fraction=n_confirmed / max(1, len(confirmed)),
        candidate_fraction=has_candidate.float().mean().item() if len(has_candidate) else 0.0,
        n_confirmed=n_confirmed, flagged=n_confirmed >= min_confirmed, n_inputs=len(confirmed),
        n_blocks=n_blocks, block_size=block, runtime_s=timer.total, flip_threshold=flip_threshold,
        n_confirm=n_confirm, max_candidates=max_candidates, min_confirmed=min_confirmed,
        blocks_per_round=rounds, seed=seed, images_per_forward=run.chunk,
        amp=None if run.amp is None else str(run.amp).removeprefix("torch."), channels_last=fast_layout,
        blocks_probed=probed, images_forwarded=forwarded, phases=dict(timer.phases), flops=flops,
        tflop_per_s=tflop_per_s(flops, seconds),
    )
    logger.info(
        "neo: %d of %d inputs confirmed (candidates on %.3f), flagged=%s, %d of %d blocks probed, %.1fs",
        n_confirmed, result.n_inputs, result.candidate_fraction, result.flagged, probed,
        len(confirmed) * n_blocks, result.runtime_s,
    )
    return result
