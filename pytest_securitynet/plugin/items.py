"""What a collected test is in results terms: its catalog model, benchmark name, setting and row key."""

from __future__ import annotations

from pathlib import Path
from typing import Container

import pytest

from pytest_securitynet.catalog.entries import ModelEntry
from pytest_securitynet.results.rows import row_key

METRICS = pytest.StashKey[dict]()


def entry_of(item: pytest.Item) -> ModelEntry | None:
    """The catalog model a test is parametrized with, if any."""
    callspec = getattr(item, "callspec", None)
    entry = callspec.params.get("catalog_entry") if callspec else None
    return entry if isinstance(entry, ModelEntry) else None


def benchmark_name(item: pytest.Item) -> str:
    """`<file without test_>.<function without test_>`, e.g. `task_performance.accuracy`."""
    return f"{item.path.stem.removeprefix('test_')}.{item.originalname.removeprefix('test_')}"


def setting_of(item: pytest.Item, entry: ModelEntry) -> str:
    """The test id without the model id, e.g. `mentropy-global`; `default` when nothing is left."""
    return setting_from_id(item.callspec.id, entry.id)


def setting_from_id(param_id: str, model_id: str) -> str:
    parts = [p for p in param_id.replace(model_id, "", 1).split("-") if p]
    return "-".join(parts) or "default"


def item_row_key(item: pytest.Item, entry: ModelEntry) -> str:
    return row_key({"model": entry.id, "benchmark": benchmark_name(item), "setting": setting_of(item, entry)})


def model_in_nodeid(nodeid: str, model_ids: Container[str]) -> str | None:
    """The catalog model in a node id such as `b/test_x.py::test_y[<model>-<setting>]` (maybe `@<group>`).

    For the xdist controller, which sees node ids only. The parameter ids are joined by `-`, and a
    model id may hold `-` itself, so the longest run of parts that is a catalog id wins.
    """
    _, bracket, rest = nodeid.partition("[")
    if not bracket:
        return None
    params, _, suffix = rest.rpartition("]")
    if suffix.startswith("@") and suffix[1:] in model_ids:
        return suffix[1:]
    parts = params.split("-")
    for length in range(len(parts), 0, -1):
        for start in range(len(parts) - length + 1):
            candidate = "-".join(parts[start:start + length])
            if candidate in model_ids:
                return candidate
    return None


def key_of_nodeid(nodeid: str, model_ids: Container[str]) -> tuple[str, str, str] | None:
    """(model, benchmark, setting) of a node id, for the xdist controller, which has no items."""
    model = model_in_nodeid(nodeid, model_ids)
    if model is None:
        return None
    path, _, rest = nodeid.partition("::")
    name, _, params = rest.partition("[")
    function = name.rpartition("::")[2]
    benchmark = f"{Path(path).stem.removeprefix('test_')}.{function.removeprefix('test_')}"
    return model, benchmark, setting_from_id(params.rpartition("]")[0], model)


def xdist_group(nodeid: str, model_ids: Container[str]) -> str:
    """The unit a test is scheduled in: its catalog model, else its `@group` suffix, else the test itself."""
    model = model_in_nodeid(nodeid, model_ids)
    if model is not None:
        return model
    _, at, group = nodeid.rpartition("@")
    return group if at and "]" not in group else nodeid
