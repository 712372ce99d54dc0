"""Shared test fixtures: one harness per session on the CPU, with a cache every test reuses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pytest_securitynet.harness.harness import Harness
from pytest_securitynet.harness.settings import Settings

pytest_plugins = ["pytester"]

SHARED = Path(__file__).resolve().parents[2] / "shared"
AKAMASTER_DIR = SHARED / "models" / "akamaster-cifar10"
DATA_DIR = SHARED / "data"


def model_toml(model_id: str, source: str, *, dataset: str = "cifar10", extra: str = "", classes: int = 10,
               channels: int = 3) -> str:
    """One catalog entry of an 8x8 `democnn` in TOML; `extra` adds lines (builder, sha256, train...)."""
    stats = ", ".join(["0.5"] * channels), ", ".join(["0.25"] * channels)
    return f"""
[[models]]
id = "{model_id}"
dataset = "{dataset}"
architecture = "democnn"
model_type = "cnn"
source = "{source}"
{extra}
preprocess = {{ input_size = [{channels}, 8, 8], mean = [{stats[0]}], std = [{stats[1]}] }}
annotations = {{ topic_category = "t", training_set_size = 4, num_classes = {classes}, input_dims = "8x8x{channels}", purpose = "benchmark" }}
"""


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """`SECURITYNET_CACHE` if set (CI sets it, so demo models train once), else a session temp dir."""
    env = os.environ.get("SECURITYNET_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("securitynet-cache")


@pytest.fixture(scope="session")
def harness(cache_dir) -> Harness:
    """A harness on the CPU with the built-in catalog and the shared directories as mirrors."""
    h = Harness(Settings(cache_dir=cache_dir), lambda: torch.device("cpu"))
    h.files.mirrors = [AKAMASTER_DIR, DATA_DIR]
    return h


def needs_shared(*paths: Path):
    """Skip (saying why) when the shared real data is not beside the repository."""
    missing = [str(p) for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"shared data not found: {', '.join(missing)}")


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run far faster on one intra-op thread than with OpenMP on a shared 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
