"""Markers of the benchmark files."""

from __future__ import annotations


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "backdoor_all_datasets: backdoor detection on every catalog model, not only "
                   "CIFAR-10/SVHN and demo ones (select with -m backdoor_all_datasets)")
