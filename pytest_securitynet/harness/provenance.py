"""What produced a row: checksums of the weights and data, the catalog entry, budgets, seed, code.

Every row records `provenance` (docs/results-schema.md): `--securitynet-compare` fails a row whose
baseline row was produced by something else (other weights, another copy of the data, a changed
entry, other budgets, seed or sample sizes) before it compares a number, and
`--securitynet-resume` refuses to put rows of two models or code versions in one file.

- `weights_sha256`: sha256 of the loaded model's parameters and buffers (names, dtypes, shapes and
  bytes, in name order), so a checkpoint re-saved in another format keeps it and a retrained
  demo model or a swapped file changes it.
- `dataset_sha256`: sha256 of the decoded images and labels of both splits.
- `catalog_entry_sha256`: sha256 of the model's catalog entry (its TOML table, as JSON).
- `budgets`: the resolved budgets of the benchmark's module; `seed`, `members`, `limit`.
- `code_version`: the pytest-securitynet version (recorded, compared as a note only by
  `--securitynet-compare`: a regression check exists to compare code versions).

The checksums are computed once per model and dataset per process (CIFAR-10: about half a second).
Comparing and describing provenance is `results/provenance.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref
from typing import Any, Mapping

import torch

from pytest_securitynet.errors import SecurityNetError

# Weak references: a checksum must not keep a model or dataset alive after the harness frees it.
_weights_cache: dict[int, tuple[weakref.ref, str]] = {}
_data_cache: dict[str, tuple[weakref.ref, str]] = {}


def code_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pytest-securitynet")
    except metadata.PackageNotFoundError:
        return "unknown"


def tensors_sha256(named: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(named):
        tensor = named[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """Of the model's state dict; cached while the same model object is loaded."""
    cached = _weights_cache.get(id(model))
    if cached is None or cached[0]() is not model:
        _weights_cache.clear()  # one model is loaded at a time
        cached = (weakref.ref(model), tensors_sha256(model.state_dict()))
        _weights_cache[id(model)] = cached
    return cached[1]


def dataset_sha256(data: Any) -> str:
    """Of a dataset's decoded splits (`zoo.datasets.ImageData`); cached per loaded copy."""
    cached = _data_cache.get(data.dataset_id)
    if cached is None or cached[0]() is not data:
        cached = (weakref.ref(data), tensors_sha256({"train_images": data.train_images, "train_labels": data.train_labels,
                                        "test_images": data.test_images, "test_labels": data.test_labels}))
        _data_cache[data.dataset_id] = cached
    return cached[1]


def entry_sha256(raw: Mapping[str, Any]) -> str:
    """Of a catalog entry's table, keys sorted (paths the loader adds are left out)."""
    kept = {k: v for k, v in raw.items() if k not in ("members_path",)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def module_budgets(module: Any, settings: Any) -> dict[str, Any]:
    """The resolved budgets (defaults with the run's overrides) a benchmark module declares."""
    out = {}
    for value in vars(module).values() if module is not None else ():
        name = getattr(value, "budget_name", None)
        if isinstance(value, type) and name and dataclasses.is_dataclass(value):
            try:
                out[name] = dataclasses.asdict(settings.budget(value))
            except SecurityNetError:  # a bad override is reported before tests run; the row keeps the rest
                continue
    return dict(sorted(out.items()))


def row_provenance(*, model: torch.nn.Module | None, data: Any, entry_raw: Mapping[str, Any], budgets: dict,
                   settings: Any) -> dict[str, Any]:
    """The `provenance` of a row (checksums only for what was loaded: a test that failed before
    its model loaded records the rest)."""
    out: dict[str, Any] = {}
    if model is not None:
        out["weights_sha256"] = weights_sha256(model)
    if data is not None:
        out["dataset_sha256"] = dataset_sha256(data)
    out["catalog_entry_sha256"] = entry_sha256(entry_raw)
    out["budgets"] = budgets
    out.update(seed=settings.seed, members=settings.members, limit=settings.limit)
    out["code_version"] = code_version()
    return out
