"""Which torch device a process uses."""

from __future__ import annotations

import os
from typing import Mapping

import torch


def planned_device(requested: str | None, gpu_index: int | None, cuda_available: bool) -> torch.device:
    """`requested` if given; else GPU `gpu_index` (the first GPU without one) when CUDA is there, else the CPU.

    Pure, so the xdist controller can say which device a worker uses without touching a GPU."""
    if requested:
        return torch.device(requested)
    if cuda_available:
        return torch.device("cuda", gpu_index if gpu_index is not None else 0)
    return torch.device("cpu")


def default_device(requested: str | None, gpu_index: int | None) -> torch.device:
    """This process's device (see `planned_device`); a GPU chosen here becomes the current one."""
    device = planned_device(requested, gpu_index, torch.cuda.is_available())
    if not requested and device.type == "cuda":
        torch.cuda.set_device(device.index)
    return device


def inherited_gpus(environ: Mapping[str, str] = os.environ, count: int | None = None) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (else `0`..`n-1`).

    `count` is how many devices torch sees (asked when not given); entry i is torch's `cuda:i`."""
    if count is None:
        count = torch.cuda.device_count()
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    names = [d.strip() for d in raw.split(",") if d.strip()] if raw is not None else [str(i) for i in range(count)]
    return names[:count]
