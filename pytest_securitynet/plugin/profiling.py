"""Per-test peak GPU memory in every row (`peak_gpu_memory_gib`), for `securitynet bench` and sweeps."""

from __future__ import annotations

from typing import Any

import pytest
import torch


def _cuda_in_use() -> bool:
    # Never initialise CUDA here: the controller and CPU runs must not touch a GPU.
    return torch.cuda.is_available() and torch.cuda.is_initialized()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _cuda_in_use():
        torch.cuda.reset_peak_memory_stats()


def pytest_securitynet_row(item: pytest.Item, row: dict[str, Any]) -> None:
    if _cuda_in_use():
        row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 4)
