"""Which of an xdist worker's collected tests are benchmark tests, for the controller.

The controller sees node ids only, and a node id naming a catalog model may belong to any test
(the project's own tests are parametrized by model ids too). Each worker writes the node ids of
its benchmark tests (those parametrized with a catalog model) into a folder the controller names
in `workerinput`, before it reports its collection; the controller reads them when the collection
arrives. The controller's start line and its missing-weights check use these ids alone.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

KEY = "securitynet_collected_dir"


def new_folder() -> Path:
    """A fresh folder for one run's lists (removed by `remove`)."""
    return Path(tempfile.mkdtemp(prefix="securitynet-collected-"))


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def write(config: pytest.Config, benchmark_ids: list[str]) -> None:
    """On a worker: its benchmark node ids, where the controller looks for them (nothing without xdist)."""
    workerinput = getattr(config, "workerinput", None)
    if not workerinput or not workerinput.get(KEY):
        return
    path = Path(workerinput[KEY]) / f"{workerinput['workerid']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(benchmark_ids), encoding="utf-8")
    tmp.replace(path)


def read(folder: Path, worker_id: str) -> list[str] | None:
    """The benchmark node ids worker `worker_id` wrote; None when it wrote none (not a securitynet worker)."""
    try:
        return json.loads((Path(folder) / f"{worker_id}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
