"""A pytest plugin (`-p pytest_securitynet.plugin.manifest`) for the two ends of a sweep (`sweep/`).

`--securitynet-collect-to FILE` (with `--collect-only`) writes what the selection collected, one
record per test with its model, benchmark and setting, for the planner. `--securitynet-manifest
FILE` runs only the tests a shard's manifest lists (one node id a line), on the controller and on
every xdist worker alike, so the workers agree on what was collected.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from pytest_securitynet.plugin.items import benchmark_name, entry_of, setting_of

SELECTED = pytest.StashKey[frozenset]()
SEEN = pytest.StashKey[set]()


def read_manifest(path: Path) -> list[str]:
    """The node ids a manifest lists (one a line; `sweep.plan.write_manifest` writes them)."""
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("securitynet")
    group.addoption("--securitynet-manifest", default=None, metavar="FILE",
                    help="run only the tests listed in FILE, one node id a line (a sweep's shard). Default: all.")
    group.addoption("--securitynet-collect-to", default=None, metavar="FILE",
                    help="with --collect-only: write the collected tests with model, benchmark and setting "
                         "to FILE as JSON (the sweep planner). Default: off.")


def pytest_configure(config: pytest.Config) -> None:
    manifest = config.getoption("securitynet_manifest")
    if manifest is not None:
        try:
            config.stash[SELECTED] = frozenset(read_manifest(Path(manifest)))
        except OSError as exc:
            raise pytest.UsageError(f"--securitynet-manifest: cannot read {manifest}: {exc}") from None
        config.stash[SEEN] = set()


def pytest_itemcollected(item: pytest.Item) -> None:
    seen = item.config.stash.get(SEEN, None)
    if seen is not None:
        seen.add(item.nodeid)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected = config.stash.get(SELECTED, None)
    if selected is None:
        return
    missing = selected - config.stash[SEEN]
    if missing and not hasattr(config, "workerinput"):
        warnings.warn(pytest.PytestWarning(
            f"--securitynet-manifest: {len(missing)} listed test(s) were not collected, e.g. {min(missing)}; "
            f"the tests or the catalog changed since the sweep was planned"))
    keep = [item for item in items if item.nodeid in selected]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in selected])
        items[:] = keep


def pytest_collection_finish(session: pytest.Session) -> None:
    target = session.config.getoption("securitynet_collect_to")
    if target is None:
        return
    records = []
    for item in session.items:
        entry = entry_of(item)
        records.append({
            "nodeid": item.nodeid,
            "model": entry.id if entry is not None else None,
            "benchmark": benchmark_name(item) if hasattr(item, "originalname") else item.nodeid.partition("::")[0],
            "setting": setting_of(item, entry) if entry is not None else "default",
        })
    Path(target).write_text(json.dumps(records, indent=0) + "\n", encoding="utf-8")
