"""Your project's extension points for pytest-securitynet (README: "Extending the harness").

Everything here is inert until you use it, so `pytest benchmarks/ -k demo` and `pytest tests/`
run exactly as without this file:

1. An architecture of your own: a builder registered by name. A catalog entry selects it with
   `builder = "example_mlp"`; until one does, nothing calls it.
2. A project-local catalog: `securitynet-local.toml` beside this file, when you create one, is
   added to the catalog as if given with `--securitynet-catalog` (the CLI takes `--catalog`).
3. Extra fields in every results row: the `pytest_securitynet_row` hook
   (`pytest_securitynet/plugin/hookspec.py`) copies `ROW_EXTRAS` into `row["extra"]`; empty, it adds nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from torch import nn

from pytest_securitynet.zoo.architectures import register_builder

LOCAL_CATALOG = Path(__file__).with_name("securitynet-local.toml")
ROW_EXTRAS: dict[str, Any] = {}
"""Fields for every row's `extra`, e.g. {"code_version": "abc123"}; empty: rows are unchanged."""


@register_builder("example_mlp")
def example_mlp(num_classes: int = 10, input_dim: int = 64, hidden: int = 128) -> nn.Module:
    """A two-layer perceptron on flattened images; its catalog entry's preprocessing feeds it [0, 1] inputs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Add the project-local catalog before the plugin reads its options."""
    catalogs = getattr(config.option, "securitynet_catalog", None)
    if LOCAL_CATALOG.is_file() and catalogs is not None and str(LOCAL_CATALOG) not in catalogs:
        catalogs.append(str(LOCAL_CATALOG))


@pytest.hookimpl(optionalhook=True)
def pytest_securitynet_row(item: pytest.Item, row: dict[str, Any]) -> None:
    """Record `ROW_EXTRAS` with every result (plain JSON values only: rows cross process boundaries)."""
    if ROW_EXTRAS:
        row["extra"] = dict(ROW_EXTRAS)
