"""Dominant colour of each image by batched k-means over its pixels (NEO's trigger-blocking colour)."""

from __future__ import annotations

import torch


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
    counts = _one_hot(assignment[best], k).sum(1)  # [N, k]
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
    one_hot = _one_hot(assignment, k).to(pixels.dtype)  # [M, P, k]
    counts = one_hot.sum(1)
    updated = (one_hot.transpose(1, 2) @ pixels) / counts.clamp(min=1).unsqueeze(-1)
    return torch.where(counts.unsqueeze(-1) > 0, updated, centres)


def _one_hot(index: torch.Tensor, k: int) -> torch.Tensor:
    """One-hot along a new last axis (int64); unlike ``F.one_hot`` it never checks values on the host."""
    return torch.zeros(*index.shape, k, dtype=torch.long, device=index.device).scatter_(-1, index.unsqueeze(-1), 1)
