"""Which torch device a process uses."""

from __future__ import annotations

import torch


def default_device(requested: str | None, gpu_index: int | None) -> torch.device:
    """`requested` if given; else this worker's GPU, the first GPU, or the CPU."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        index = gpu_index if gpu_index is not None else 0
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")
