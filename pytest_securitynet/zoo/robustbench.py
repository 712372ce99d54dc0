"""RobustBench models (`source = "robustbench:<dataset>/<threat model>/<name>"`), built and loaded by
the `robustbench` package (`pip install 'pytest-securitynet[robust]'`).

The weights live in the harness's cache in robustbench's own layout,
`<cache>/weights/robustbench/<dataset>/<threat model>/<name>.pt` (ensembles: `<name>.pt_m<i>.pt`),
so robustbench's loader finds them there and downloads (from Google Drive, with gdown) only what
is missing, and only when the run is online. A copy in a mirror directory under the same file name
is copied into the cache first. A sha256 recorded for the entry (`sha256`, or the lock file of
`securitynet catalog pin`) is checked before loading.

robustbench 1.1.1's package `__init__` imports `autoattack`, the name of AutoAttack's GitHub
package, which `pyautoattack` from PyPI does not provide; only the model zoo and the loader are
needed here, so the package is imported without running its `__init__`.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_securitynet.catalog.entries import ModelEntry
from pytest_securitynet.errors import CatalogError
from pytest_securitynet.zoo.store import FileStore, Need

if TYPE_CHECKING:  # torch is imported by the loader alone: `catalog list` and the checks stay light
    from torch import nn

INSTALL = "pip install 'pytest-securitynet[robust]' (docs/catalog.md, \"RobustBench\")"
DOWNLOAD_HOST = "drive.google.com"  # where robustbench's loader fetches missing weights (gdown)


@functools.cache
def robustbench_installed() -> bool:
    """Whether the robustbench package can be imported (found without importing it; asked once)."""
    if "robustbench" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("robustbench") is not None
    except (ImportError, ValueError):
        return False


def robustbench_unusable(entry: ModelEntry) -> str:
    """Why a RobustBench entry cannot load here ("" when it can, or when it is not RobustBench's)."""
    if entry.source_kind != "robustbench" or robustbench_installed():
        return ""
    return f"RobustBench models need the robustbench package: {INSTALL}"


def parse_source(source: str) -> tuple[str, str, str]:
    """`robustbench:cifar10/Linf/Carmon2019Unlabeled` -> (dataset, threat model, name)."""
    parts = source.removeprefix("robustbench:").split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise CatalogError(f"source {source!r}: write robustbench:<dataset>/<threat model>/<name>")
    return parts[0], parts[1], parts[2]


def robustbench_modules() -> tuple[Any, Any]:
    """(robustbench.utils, robustbench.model_zoo.models), imported without the package `__init__`."""
    if "robustbench.utils" not in sys.modules:
        spec = importlib.util.find_spec("robustbench")
        if spec is None or not spec.submodule_search_locations:
            raise CatalogError(f"RobustBench models need the robustbench package: {INSTALL}")
        if "robustbench" not in sys.modules:
            package = types.ModuleType("robustbench")
            package.__path__ = list(spec.submodule_search_locations)
            sys.modules["robustbench"] = package
    try:
        import robustbench.model_zoo.models as zoo
        import robustbench.utils as utils
    except ImportError as exc:
        raise CatalogError(f"the robustbench package cannot be imported ({exc}): {INSTALL}") from None
    return utils, zoo


def zoo_spec(dataset: str, threat: str, name: str) -> dict[str, Any]:
    """The package's model-zoo entry: {'model': constructor, 'gdrive_id': ...}."""
    _, zoo = robustbench_modules()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    try:
        return zoo.model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)][name]
    except (KeyError, ValueError):
        raise CatalogError(f"robustbench has no model {name!r} for {dataset} / {threat}") from None


def build_architecture(dataset: str, threat: str, name: str) -> nn.Module:
    """The entry's network with fresh weights, as robustbench defines it."""
    return zoo_spec(dataset, threat, name)["model"]()


def weight_files(dataset: str, threat: str, name: str) -> list[str]:
    """The checkpoint file names robustbench reads for a model (one, or one per ensemble member)."""
    ids = zoo_spec(dataset, threat, name).get("gdrive_id")
    if isinstance(ids, list):
        return [f"{name}.pt_m{i}.pt" for i in range(len(ids))]
    return [f"{name}.pt"]


def weight_needs(entry: ModelEntry) -> list[Need]:
    """The files robustbench reads for the entry, where `load_robustbench` looks for them: the cache
    folder `weights/robustbench/<dataset>/<threat model>/` and mirrors, by file name. They carry no
    URL: robustbench's loader downloads them itself (from DOWNLOAD_HOST), never the file store."""
    dataset, threat, name = parse_source(entry.source)
    files = weight_files(dataset, threat, name)
    sha256 = entry.raw.get("sha256")
    if sha256 and len(files) > 1:  # one checksum cannot hold for every member of an ensemble
        raise CatalogError(f"model {entry.id!r}: one sha256 for an ensemble of {len(files)} weight files; "
                           f"leave sha256 out of this entry")
    return [Need(filename, f"weights of {entry.id}", f"weights/robustbench/{dataset}/{threat}", sha256=sha256,
                 hint=f"robustbench downloads it from {DOWNLOAD_HOST} when online") for filename in files]


def load_robustbench(entry: ModelEntry, store: FileStore) -> nn.Module:
    """The entry's trained network (robustbench normalises inside; the entry's preprocessing is identity)."""
    dataset, threat, name = parse_source(entry.source)
    utils, _ = robustbench_modules()
    model_dir = store.cache_dir / "weights" / "robustbench"
    folder = model_dir / dataset / threat
    folder.mkdir(parents=True, exist_ok=True)
    for need in weight_needs(entry):
        filename = need.name
        path = folder / filename
        if not path.is_file():
            found = next((Path(m) / filename for m in store.mirrors if (Path(m) / filename).is_file()), None)
            if found is not None:  # atomically, so a second worker never reads half a copy
                store.write(path, lambda tmp, source=found: shutil.copyfile(source, tmp))
            elif store.offline:
                raise CatalogError(f"model {entry.id!r}: missing {path} and the run is offline; put {filename} into "
                                   f"{folder} or a SECURITYNET_MIRROR directory, or run online once")
        if path.is_file() and need.sha256:
            need.verify(path, str(path))
    return utils.load_model(name, model_dir=str(model_dir), dataset=dataset, threat_model=threat).eval()
