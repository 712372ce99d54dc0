"""Which torch device a process uses."""

from __future__ import annotations

import os
from typing import Mapping

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


def inherited_gpus(environ: Mapping[str, str] = os.environ, count: int | None = None) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (else `0`..`n-1`).

    `count` is how many devices torch sees (asked when not given); entry i is torch's `cuda:i`."""
    if count is None:
        count = torch.cuda.device_count()
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    names = [d.strip() for d in raw.split(",") if d.strip()] if raw is not None else [str(i) for i in range(count)]
    return names[:count]
