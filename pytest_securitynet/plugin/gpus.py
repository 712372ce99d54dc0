"""`--gpus N`: one xdist worker per GPU, each pinned to its own device, one model per worker.

`--workers-per-gpu K` starts K workers on each GPU (N*K in all): small CIFAR models do not fill
a large GPU, and K models side by side raise models per hour.

The controller hands GPU indices out from a pool when a worker starts and takes them back when it
goes down, so a crashed worker's replacement (with a new id) gets a free GPU. The GPUs are the
ones this process inherited: index i is the i-th entry of CUDA_VISIBLE_DEVICES (as Slurm or the
user set it), which is torch's `cuda:i` in every worker; the variable itself is never changed.
With `--dist loadgroup` (which `--gpus` implies) the controller schedules with `ModelScheduling`
(plugin/scheduler.py).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pytest_securitynet.harness.devices import inherited_gpus, planned_device
from pytest_securitynet.plugin import collected
from pytest_securitynet.plugin.items import xdist_group
from pytest_securitynet.plugin.runstate import RunState, harness
from pytest_securitynet.plugin.scheduler import ModelScheduling, worker_count

log = logging.getLogger(__name__)

GPU_KEY = "securitynet_gpu"
GPU_ID_KEY = "securitynet_gpu_id"
DONE_KEY = "securitynet_done"
LOADGROUP_KEY = "securitynet_loadgroup"
NOTICE = pytest.StashKey[str | None]()


def configure_worker(config: pytest.Config, workerinput: dict) -> None:
    """On an xdist worker: adopt the controller's scheduling choice; say which GPU it was given."""
    if workerinput.get(LOADGROUP_KEY):
        config.option.loadgroup = True
    if workerinput.get(GPU_ID_KEY) is not None:
        log.info("%s: GPU %s (cuda:%s)", workerinput.get("workerid"), workerinput[GPU_ID_KEY], workerinput[GPU_KEY])


def configure_workers(config: pytest.Config) -> None:
    """Before xdist reads its options: `--gpus N` means N workers, unless `-n` was given."""
    if hasattr(config, "workerinput"):
        return  # a worker sees the user's --gpus too, but must not start workers of its own
    gpus = config.getoption("securitynet_gpus")
    per_gpu = config.getoption("securitynet_workers_per_gpu") or 1
    if gpus and per_gpu > 1:
        gpus = gpus * per_gpu
    has_xdist = config.pluginmanager.hasplugin("xdist")
    if not has_xdist:
        if gpus:
            raise pytest.UsageError("--gpus needs pytest-xdist (pip install pytest-xdist)")
        return
    if gpus and config.option.numprocesses is None:
        visible = len(inherited_gpus())
        workers = gpus if visible else min(gpus, os.cpu_count() or 1)  # on a CPU: one worker per core at most
        config.option.numprocesses = workers
        config.option.tx = ["popen"] * workers
        config.stash[NOTICE] = gpu_notice(config.getoption("securitynet_gpus"), visible, workers, gpus)
    elif gpus:  # `-n` given: its worker count stands
        workers = config.option.numprocesses
        config.stash[NOTICE] = gpu_notice(config.getoption("securitynet_gpus"), len(inherited_gpus()), workers, workers)
    if gpus and config.option.dist in ("no", "load"):
        # One model's tests stay on one worker, so it is loaded and queried once. With a plain
        # `-n N` the user's --dist stands (pass --dist loadgroup for the same effect).
        config.option.dist = "loadgroup"


def gpu_notice(requested: int, visible: int, workers: int, asked_workers: int) -> str | None:
    """One line for the run's header when fewer GPUs are visible than `--gpus` asks for."""
    if visible >= requested:
        return None
    if visible:
        return f"securitynet: --gpus {requested}: {visible} GPU(s) visible; the other workers run on the CPU"
    cores = os.cpu_count() or 1
    capped = f"{workers} workers (one per CPU core, of {asked_workers} asked for)" if workers < asked_workers else (
        f"{workers} workers")
    return f"securitynet: --gpus {requested}: no GPU visible; {capped} run on the CPU ({cores} cores)"


def pytest_report_header(config: pytest.Config) -> str | None:
    """The `--gpus` notice, in the header of the run (the controller's, under xdist)."""
    return config.stash.get(NOTICE, None)


class GpuPool:
    """Free GPU indices into the inherited devices; each xdist worker takes one when it starts."""

    def __init__(self, requested: int, devices: list[str] | None = None, per_gpu: int = 1):
        devices = inherited_gpus() if devices is None else devices
        available = len(devices)
        self.visible = available
        self.devices = devices[:min(requested, available)]
        # Slot j of K on every GPU before slot j+1 of any: workers spread over the GPUs first.
        self.free = [index for _ in range(per_gpu) for index in range(len(self.devices))]
        self.held: dict[str, int] = {}

    def device(self, index: int | None) -> str | None:
        """The inherited name (e.g. `5` of CUDA_VISIBLE_DEVICES=3,5) of GPU index `index`."""
        return None if index is None else self.devices[index]

    def take(self, worker_id: str) -> int | None:
        if not self.free:
            return None
        self.held[worker_id] = self.free.pop(0)
        return self.held[worker_id]

    def give_back(self, worker_id: str) -> None:
        if worker_id in self.held:
            self.free.insert(0, self.held.pop(worker_id))  # the replacement goes where the crash was


class XdistHooks:
    """Controller-side xdist hooks (registered only when xdist is active)."""

    def __init__(self, pool: GpuPool, done: list[str], loadgroup: bool, state: RunState | None = None,
                 collected_dir: Path | None = None):
        self.collected_dir = collected_dir  # where each worker lists its benchmark tests (plugin/collected.py)
        self.pool = pool
        self.done = done
        self.loadgroup = loadgroup
        self.state = state  # where the controller records each worker's device, for crash rows

    @pytest.hookimpl(optionalhook=True, tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log) -> ModelScheduling | None:
        """`--dist loadgroup` (and `--gpus`): keep each model's tests on one worker, on any pytest."""
        if config.getvalue("dist") != "loadgroup":
            return None
        models = harness(config).catalog.models

        def report(worker: str, message: str) -> None:  # shown as a collection error, as xdist does
            config.hook.pytest_collectreport(report=pytest.CollectReport(worker, "failed", message, []))

        return ModelScheduling(worker_count(config.getvalue("tx")), lambda nodeid: xdist_group(nodeid, models), report)

    @pytest.hookimpl
    def pytest_configure_node(self, node) -> None:
        index = self.pool.take(node.gateway.id)
        node.workerinput[GPU_KEY] = index  # the worker's torch device is cuda:<index>
        node.workerinput[GPU_ID_KEY] = self.pool.device(index)
        if self.state is not None:  # recorded here, so the row of a test whose worker dies says where it ran
            self.state.worker_devices[node.gateway.id] = str(
                planned_device(self.state.settings.device, index, self.pool.visible > 0))
        node.workerinput[DONE_KEY] = self.done
        # A worker decides on group suffixes from its own command line, which lacks a --dist
        # chosen here; without them the scheduler would not keep one model on one worker.
        node.workerinput[LOADGROUP_KEY] = self.loadgroup
        if self.collected_dir is not None:
            node.workerinput[collected.KEY] = str(self.collected_dir)

    @pytest.hookimpl
    def pytest_testnodedown(self, node, error) -> None:
        self.pool.give_back(node.gateway.id)
