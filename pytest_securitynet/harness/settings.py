"""A run's settings: options, ini values and environment, resolved once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_securitynet.errors import CatalogError


@dataclass
class Settings:
    """Everything a run is configured with (options, ini values and environment, resolved)."""

    catalogs: list[str] = field(default_factory=list)
    dataset_overrides: dict[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None
    offline: bool = False
    seed: int = 0
    members: int = 5000
    limit: int | None = None
    batch_size: int = 256
    device: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`["cifar10=cifar10-jpeg", ...]` → `{"cifar10": "cifar10-jpeg"}`."""
    out = {}
    for item in items:
        for part in item.replace(",", " ").split():
            name, sep, other = part.partition("=")
            if not sep or not name or not other:
                raise CatalogError(f"bad dataset override {part!r}: write DATASET=OTHER, e.g. cifar10=cifar10-jpeg")
            out[name.strip()] = other.strip()
    return out


def env_overrides() -> list[str]:
    raw = os.environ.get("SECURITYNET_DATASET", "")
    return [raw] if raw.strip() else []
