"""A test's row provenance (harness/provenance.py), computed once per test and shared by the row
and the regression check."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_securitynet.catalog.entries import ModelEntry
from pytest_securitynet.harness.provenance import module_budgets, row_provenance
from pytest_securitynet.plugin.runstate import STATE

PROVENANCE = pytest.StashKey[dict]()


def provenance_of(item: pytest.Item, entry: ModelEntry) -> dict[str, Any]:
    """What produced this test's row; the checksums of what it loaded (none if it loaded nothing)."""
    cached = item.stash.get(PROVENANCE, None)
    loaded = getattr(item, "funcargs", {}).get("_securitynet_loaded")
    if cached is not None and (loaded is None or "weights_sha256" in cached):
        return cached
    settings = item.config.stash[STATE].settings
    out = row_provenance(model=loaded.model if loaded is not None else None,
                         data=loaded.data if loaded is not None else None, entry_raw=entry.raw,
                         budgets=module_budgets(getattr(item, "module", None), settings), settings=settings)
    item.stash[PROVENANCE] = out
    return out
