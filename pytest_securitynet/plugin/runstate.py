"""The run's state in each pytest process, kept in `config.stash` (never in module globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.results.rows import ResultsWriter
from pytest_securitynet.harness.devices import default_device
from pytest_securitynet.harness.harness import Harness
from pytest_securitynet.harness.settings import Settings


@dataclass
class RunState:
    settings: Settings
    json_path: Path
    resume: bool
    gpu_index: int | None
    done: set[str] = field(default_factory=set)
    writer: ResultsWriter | None = None  # only in the process that writes results (controller)
    harness: Harness | None = None
    setup_seconds: dict[str, float] = field(default_factory=dict)
    catalog_params: list | None = None  # the parametrization of `catalog_entry`, shared by all tests
    report_dir: str | None = None  # where `securitynet report` writes when the run ends
    durations: list = field(default_factory=list)  # estimate.Durations sources, first choice first
    keywords: dict[str, set[str]] = field(default_factory=dict)  # per model, computed once and shared by its tests
    worker_devices: dict[str, str] = field(default_factory=dict)  # controller: xdist worker id -> its device
    notices: list[str] = field(default_factory=list)  # one-line notices printed above the start line


STATE = pytest.StashKey[RunState]()


def harness(config: pytest.Config) -> Harness:
    return state_harness(config.stash[STATE])


def state_harness(state: RunState) -> Harness:
    """The process's harness, created on first use (so `--help` never loads the catalog)."""
    if state.harness is None:
        try:
            state.harness = Harness(state.settings, lambda: default_device(state.settings.device, state.gpu_index))
        except SecurityNetError as exc:
            raise pytest.UsageError(str(exc)) from None
    return state.harness
