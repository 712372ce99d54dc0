"""Before the first test: the selected models whose weights or data are neither in the cache nor a mirror.

Without this check a run with nothing to load fails every test of every such model one by one
(thousands of error rows for `-k cifar10` offline). Instead the run stops before its first test
with one line: how many models lack files and what to do. With `--securitynet-skip-missing`
their tests skip instead, announced by one line. Online, missing files only stop the run when the
hosts they come from cannot be reached (one short connection attempt per host); otherwise the
tests download them as usual.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Callable, Iterable
from urllib.parse import urlparse

from pytest_securitynet.catalog.entries import ModelEntry
from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.zoo.datasets import decoded_path
from pytest_securitynet.zoo.resolver import resolve_dataset, resolve_model
from pytest_securitynet.zoo.robustbench import DOWNLOAD_HOST, robustbench_unusable, weight_needs
from pytest_securitynet.zoo.store import FileStore, Need

PROBE_TIMEOUT_S = 3.0
MAX_NAMED = 4


@dataclass
class MissingFiles:
    """Per selected model, the files neither the cache nor a mirror holds and that cannot be fetched now."""

    selected: int
    models: dict[str, list[Need]] = field(default_factory=dict)
    data_missing: bool = False  # some missing file is a data set's, not only weights
    why: str = ""  # `offline` or `HOST cannot be reached`

    def __bool__(self) -> bool:
        return bool(self.models)

    def what(self) -> str:
        return "weights or data" if self.data_missing else "weights"

    def stop_line(self, prefetch_selection: str) -> str:
        """The one line a run that stops prints."""
        return (f"{len(self.models)} of {self.selected} selected models need {self.what()} that are not in the cache "
                f"or a mirror ({self.why}); run `securitynet catalog prefetch {prefetch_selection}` where the network "
                f"is reachable (or list a folder holding the files in SECURITYNET_MIRROR), "
                f"or pass --securitynet-skip-missing")

    def skip_line(self) -> str:
        """The one line a run with --securitynet-skip-missing prints."""
        ids = list(self.models)
        named = ", ".join(ids[:MAX_NAMED]) + (f", ... {len(ids) - MAX_NAMED} more" if len(ids) > MAX_NAMED else "")
        return (f"securitynet: the tests of {len(ids)} of {self.selected} selected models skip: their "
                f"{self.what()} are not in the cache or a mirror ({self.why}; --securitynet-skip-missing): {named}")

    def reason(self, model_id: str) -> str:
        """The skip reason of one model's tests."""
        names = ", ".join(need.name for need in self.models[model_id])
        return (f"{model_id}: {names} not in the cache or a mirror ({self.why}); "
                f"--securitynet-skip-missing skips it (`securitynet catalog prefetch` fetches it)")


def missing_files(entries: Iterable[ModelEntry], store: FileStore, dataset_of: Callable[[ModelEntry], object],
                  reachable: Callable[[str], bool] | None = None) -> MissingFiles:
    """What the selected `entries` lack. Entries marked unavailable skip anyway and are not counted.

    `dataset_of(entry)` is the dataset the run evaluates it on (after `--securitynet-dataset`);
    `reachable(host)` answers for online runs (default: one TCP connection attempt per host).
    """
    entries = [e for e in entries if not e.raw.get("unavailable") and not robustbench_unusable(e)]
    result = MissingFiles(selected=len(entries))
    absent: dict[Need, bool] = {}
    datasets: dict[str, list[Need]] = {}
    data_needs: set[Need] = set()
    loader_hosts: dict[Need, str] = {}  # files a package's loader downloads itself, and from where
    for entry in entries:
        try:
            if entry.source_kind == "robustbench":  # files robustbench's loader reads and downloads itself
                weights = weight_needs(entry)
                loader_hosts.update(dict.fromkeys(weights, DOWNLOAD_HOST))
            else:
                weights = list(resolve_model(entry).needs)
            dataset = dataset_of(entry)
        except SecurityNetError:
            continue  # the model's tests report it, with its own message
        if dataset.id not in datasets:
            datasets[dataset.id] = [] if decoded_path(dataset, store).exists() else list(resolve_dataset(dataset).needs)
            data_needs.update(datasets[dataset.id])
        lacking = [n for n in (*weights, *datasets[dataset.id]) if absent.setdefault(n, store.find(n) is None)]
        if lacking:
            result.models[entry.id] = lacking
    result.data_missing = any(n in data_needs for needs in result.models.values() for n in needs)
    if not result.models or store.offline:
        result.why = "offline"
        return result
    def hosts_of(need: Need) -> list[str]:
        return [loader_hosts[need]] if need in loader_hosts else [urlparse(url).netloc for url in need.urls]

    hosts = {h for needs in result.models.values() for n in needs for h in hosts_of(n)}
    probe = reachable or _reachable
    down = sorted(h for h in hosts if h and not probe(h))
    # Online, a file with a reachable URL downloads when its test needs it: that model is not missing.
    result.models = {model: needs for model, needs in result.models.items()
                     if any(not hosts_of(n) or all(h in down for h in hosts_of(n)) for n in needs)}
    result.data_missing = any(n in data_needs for needs in result.models.values() for n in needs)
    result.why = (f"{', '.join(down)} cannot be reached" if down else "no download URL is known")
    return result


def _reachable(host: str) -> bool:
    """Whether a TCP connection to `host` (port 443 unless it names one) opens within a few seconds."""
    name, _, port = host.rpartition(":") if ":" in host else (host, "", "443")
    try:
        socket.create_connection((name, int(port or 443)), timeout=PROBE_TIMEOUT_S).close()
        return True
    except (OSError, ValueError):
        return False
