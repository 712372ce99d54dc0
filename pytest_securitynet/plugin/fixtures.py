"""The fixtures a benchmark receives: the target, its data, the device, the seed and `record`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from pytest_securitynet.catalog.entries import ModelEntry
from pytest_securitynet.harness.data import LabeledSet
from pytest_securitynet.zoo.datasets import ImageData
from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.plugin.items import METRICS, benchmark_name, setting_of
from pytest_securitynet.plugin.progress import Phases, phases_of
from pytest_securitynet.results.rows import plain
from pytest_securitynet.results.intervals import INTERVALS, Bootstrap, split_estimates
from pytest_securitynet.plugin.runstate import STATE, harness
from pytest_securitynet.harness.harness import Harness
from pytest_securitynet.harness.budget_rules import is_small
from pytest_securitynet.harness.target import BlackBoxTarget
from pytest_securitynet.results.archive import artifacts_dir as artifacts_folder


@pytest.fixture
def catalog_entry(request: pytest.FixtureRequest) -> ModelEntry:
    """The catalog model under test (the plugin parametrizes every test that uses it)."""
    raise pytest.UsageError("catalog_entry is parametrized by pytest-securitynet; is the plugin disabled?")


@pytest.fixture
def securitynet(request: pytest.FixtureRequest) -> Harness:
    """The run's harness: settings, catalog, caches."""
    return harness(request.config)


@pytest.fixture(autouse=True)
def _securitynet_threads(request: pytest.FixtureRequest):
    """Small-data models on the CPU run on one intra-op thread, restored after the test.

    Their operations are so small that OpenMP's synchronisation costs more than the work, and on a
    CPU shared with other jobs the spinning threads multiply the time (rule: harness/budget_rules.py).
    """
    if "catalog_entry" not in request.fixturenames:
        yield
        return
    h = harness(request.config)
    data = h.dataset_for(request.getfixturevalue("catalog_entry"))
    if h.device.type != "cpu" or not is_small(tuple(data.input_size), data.train_size):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def _securitynet_loaded(securitynet: Harness, catalog_entry: ModelEntry):
    try:
        return securitynet.loaded(catalog_entry)
    except SecurityNetError as exc:
        message = f"{catalog_entry.id}: {exc}"
    pytest.fail(message, pytrace=False)  # outside `except`: the report shows the message once, unchained


@pytest.fixture
def device(securitynet: Harness) -> torch.device:
    """The torch device of this worker (its GPU, else the CPU)."""
    return securitynet.device


@pytest.fixture
def seed(securitynet: Harness) -> int:
    """The run's seed; torch's global generator is reseeded with it for every test."""
    torch.manual_seed(securitynet.settings.seed)
    return securitynet.settings.seed


@pytest.fixture
def target_model(_securitynet_loaded) -> torch.nn.Module:
    """White-box access: the model in eval mode, taking images in [0,1] (normalisation inside)."""
    return _securitynet_loaded.model


@pytest.fixture
def target(_securitynet_loaded) -> BlackBoxTarget:
    """Black-box access: posteriors with a query counter (fresh per test; posteriors cached per model)."""
    return BlackBoxTarget(_securitynet_loaded.posteriors)


@pytest.fixture
def members(_securitynet_loaded) -> LabeledSet:
    """A seeded subset of the training split (default 5,000)."""
    return _securitynet_loaded.sets["members"]


@pytest.fixture
def nonmembers(_securitynet_loaded) -> LabeledSet:
    """As many test-split samples as there are members."""
    return _securitynet_loaded.sets["nonmembers"]


@pytest.fixture
def auxiliary(_securitynet_loaded) -> LabeledSet:
    """The attacker's data: a seeded 50% of the training split."""
    return _securitynet_loaded.sets["auxiliary"]


@pytest.fixture
def train_set(_securitynet_loaded) -> LabeledSet:
    """The training split (capped by --securitynet-limit)."""
    return _securitynet_loaded.sets["train"]


@pytest.fixture
def test_set(_securitynet_loaded) -> LabeledSet:
    """The test split (capped by --securitynet-limit)."""
    return _securitynet_loaded.sets["test"]


@pytest.fixture
def image_data(_securitynet_loaded) -> ImageData:
    """The whole dataset the model is evaluated on (both splits, uint8)."""
    return _securitynet_loaded.data


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., None]:
    """`record(name=value, ...)`: metrics for this test's row in the results JSON. A value may be an
    `Estimate` (from the `intervals` fixture): its interval goes to `metrics["intervals"][name]`."""
    metrics = request.node.stash.setdefault(METRICS, {})

    def _record(**values: Any) -> None:
        values, intervals = split_estimates(values)
        metrics.update(plain(values))
        if intervals:
            metrics.setdefault(INTERVALS, {}).update(plain(intervals))

    return _record


@pytest.fixture
def intervals(securitynet: Harness) -> Bootstrap:
    """Bootstrap 95% intervals for `record`, seeded by the run's seed, with the run's resample count
    (`--securitynet-bootstrap`): `record(auc=intervals.auc(scores, is_member))` (results/intervals.py)."""
    return Bootstrap(securitynet.settings.seed, securitynet.settings.bootstrap)


@pytest.fixture
def progress(request: pytest.FixtureRequest) -> Phases:
    """`progress("phase", total=N, unit="epoch")` when a phase begins; `progress.step` counts its steps
    (an attack's `progress` callback). Shown live in a terminal, and in the report of a failure."""
    return phases_of(request.node)


@pytest.fixture
def results_path(request: pytest.FixtureRequest) -> Path:
    """The run's results JSON (files a benchmark writes go beside it)."""
    return request.config.stash[STATE].json_path


@pytest.fixture
def artifacts_dir(request: pytest.FixtureRequest, catalog_entry: ModelEntry) -> Path:
    """A directory beside the results JSON for this test's files (images, masks): `<json stem>-artifacts/<model>/<benchmark>/<setting>`."""
    json_path = request.config.stash[STATE].json_path
    item = request.node
    path = artifacts_folder(json_path) / catalog_entry.id / benchmark_name(item) / setting_of(item, catalog_entry)
    path.mkdir(parents=True, exist_ok=True)
    return path
