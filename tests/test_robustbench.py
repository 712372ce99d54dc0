"""RobustBench's zoo as a catalog source (catalog/robustbench/, zoo/robustbench.py): the generated
files list exactly the package's models, every architecture builds, and a synthetic checkpoint in
an entry's format loads offline from the cache. The tests that need the robustbench package skip,
saying so, where it is not installed (pip install 'pytest-securitynet[robust]')."""

from __future__ import annotations

import importlib.util
import tomllib
import warnings
from pathlib import Path

import pytest
import torch

from pytest_securitynet.catalog.entries import catalog_paths, load_catalog
from pytest_securitynet.errors import CatalogError
from pytest_securitynet.zoo.robustbench import build_architecture, parse_source, robustbench_modules
from pytest_securitynet.zoo.store import FileStore

REPO = Path(__file__).resolve().parents[1]
GENERATED = sorted((REPO / "catalog" / "robustbench").glob("*.toml"))
INSTALLED = importlib.util.find_spec("robustbench") is not None
needs_robustbench = pytest.mark.skipif(not INSTALLED, reason="robustbench is not installed "
                                       "(pip install 'pytest-securitynet[robust]', docs/catalog.md)")

META_UNBUILDABLE = {
    # Built with real tensors at construction (they read values or move to CUDA), so not on the meta device.
    "cifar10-linf-bai2023improving-edm-robustbench": "moves its parts to CUDA when built",
    "cifar-100-linf-bai2023improving-edm-robustbench": "moves its parts to CUDA when built",
    "cifar-100-linf-bai2023improving-trades-robustbench": "moves its parts to CUDA when built",
    "cifar10-linf-bai2024mixednuts-robustbench": "reads tensor values when built",
    "cifar-100-linf-bai2024mixednuts-robustbench": "reads tensor values when built",
    "imagenet1k-linf-bai2024mixednuts-robustbench": "reads tensor values when built",
    "cifar10-linf-kang2021stable-robustbench": "reads tensor values when built",
    "imagenet1k-linf-xu2024mimir-swin-b-robustbench": "reads tensor values when built",
    "imagenet1k-linf-xu2024mimir-swin-l-robustbench": "reads tensor values when built",
    "imagenet1k-linf-amini2024meansparse-swin-l-robustbench": "copies tensor values when built",
}
SYNTHETIC = [  # small models of each checkpoint layout robustbench reads: {'last': ...}, {'state_dict': ...}
    "cifar10-linf-andriushchenko2020understanding-robustbench",
    "cifar10-corruptions-kireev2021effectiveness-rlat-robustbench",
    "cifar10-linf-ding2020mma-robustbench",
    "cifar10-corruptions-hendrycks2020augmix-wrn-robustbench",
    "cifar-100-linf-rice2020overfitting-robustbench",
    "imagenet1k-linf-salman2020do-r18-robustbench",
]


def _entries() -> list[dict]:
    return [e for path in GENERATED for e in tomllib.loads(path.read_text(encoding="utf-8"))["models"]]


def test_generated_entries_carry_the_codebook():
    entries = _entries()
    assert len(entries) == 206 and len({e["id"] for e in entries}) == 206
    for e in entries:
        notes = e["annotations"]
        assert notes["threat_model"] in ("Linf", "L2", "corruptions")
        standard = e["source"].split("/")[-1].startswith("Standard")  # RobustBench's non-robust baselines
        assert notes["purpose"] == ("benchmark" if standard else "security")
        assert notes["training"] in ("standard", "adversarial", "corruption-robust")
        assert standard or 2012 <= notes["year"] <= 2026, e["id"]  # AlexNet (2012) is the oldest
    robust = [e for e in entries if e["annotations"]["purpose"] == "security" and "unavailable" not in e]
    assert len(robust) == 189


def test_the_catalog_loads_them_as_robustbench_sources():
    catalog = load_catalog(catalog_paths())
    entry = catalog.model("cifar10-linf-carmon2019unlabeled-robustbench")
    assert entry.source_kind == "robustbench" and entry.purpose == "security"
    assert parse_source(entry.source) == ("cifar10", "Linf", "Carmon2019Unlabeled")
    assert entry.raw["robustbench"]["autoattack_acc"] == "59.53"  # RobustBench's reported number, kept for comparison


@pytest.mark.skipif(INSTALLED, reason="robustbench is installed")
def test_without_the_package_the_error_names_the_extra():
    with pytest.raises(CatalogError, match=r"pytest-securitynet\[robust\]"):
        robustbench_modules()


@needs_robustbench
def test_the_files_list_exactly_the_packages_models():
    _, zoo = robustbench_modules()
    package = {f"robustbench:{d.value}/{t.value}/{name}" for d, threats in zoo.model_dicts.items()
               for t, models in threats.items() for name in models}
    assert {e["source"] for e in _entries()} == package


@pytest.mark.slow
@needs_robustbench
def test_every_architecture_builds():
    failed = {}
    for e in _entries():
        if "unavailable" in e:
            continue
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            try:
                net = build_architecture(*parse_source(e["source"]))
            except (RuntimeError, NotImplementedError, AssertionError) as exc:
                failed[e["id"]] = str(exc)
                continue
        assert sum(p.numel() for p in net.parameters()) > 0, e["id"]
    assert set(failed) == set(META_UNBUILDABLE), failed


@pytest.mark.slow
@needs_robustbench
@pytest.mark.parametrize("model_id", SYNTHETIC)
def test_a_synthetic_checkpoint_in_the_entrys_format_loads_offline(model_id, tmp_path):
    from pytest_securitynet.zoo.weights import load_model

    catalog = load_catalog(catalog_paths())
    entry = catalog.model(model_id)
    dataset, threat, name = parse_source(entry.source)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = build_architecture(dataset, threat, name).state_dict()
    checkpoint = {"last": state} if name.startswith(("Kireev2021", "Andriushchenko2020")) else {"state_dict": state}
    folder = tmp_path / "weights" / "robustbench" / dataset / threat
    folder.mkdir(parents=True)
    torch.save(checkpoint, folder / f"{name}.pt")
    model = load_model(entry, catalog, FileStore(cache_dir=tmp_path, offline=True))
    loaded = model.net.state_dict() if hasattr(model, "net") else model.state_dict()
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@needs_robustbench
def test_offline_without_the_file_says_where_to_put_it(tmp_path):
    from pytest_securitynet.zoo.weights import load_model

    catalog = load_catalog(catalog_paths())
    entry = catalog.model("cifar10-linf-ding2020mma-robustbench")
    with pytest.raises(CatalogError, match=r"missing .*Ding2020MMA\.pt and the run is offline"):
        load_model(entry, catalog, FileStore(cache_dir=tmp_path, offline=True))


def test_one_sha256_for_an_ensembles_files_is_refused(monkeypatch, tmp_path):
    """An ensemble reads one file per member: a single recorded checksum cannot hold for all of them."""
    import dataclasses

    from pytest_securitynet.zoo import robustbench as zoo_robustbench

    entry = load_catalog(catalog_paths()).model("cifar10-linf-ding2020mma-robustbench")
    entry = dataclasses.replace(entry, raw={**entry.raw, "sha256": "0" * 64})
    monkeypatch.setattr(zoo_robustbench, "robustbench_modules", lambda: (None, None))  # no package needed
    monkeypatch.setattr(zoo_robustbench, "weight_files", lambda *source: ["Ens.pt_m0.pt", "Ens.pt_m1.pt"])
    with pytest.raises(CatalogError, match="one sha256 for an ensemble of 2 weight files; leave sha256 out"):
        zoo_robustbench.load_robustbench(entry, FileStore(cache_dir=tmp_path, offline=True))
    monkeypatch.setattr(zoo_robustbench, "weight_files", lambda *source: ["Single.pt"])  # one file: checked as usual
    with pytest.raises(CatalogError, match=r"missing .*Single\.pt and the run is offline"):
        zoo_robustbench.load_robustbench(entry, FileStore(cache_dir=tmp_path, offline=True))


def test_its_weight_files_are_checked_before_the_run(monkeypatch, tmp_path):
    """With the package, a RobustBench entry's files count in the pre-run check: missing offline,
    found in a mirror, and online missing only when robustbench's download host cannot be reached."""
    from pytest_securitynet.plugin.missing import missing_files
    from pytest_securitynet.zoo import robustbench as zoo_robustbench

    catalog = load_catalog(catalog_paths())
    entry, dataset = catalog.model("cifar10-linf-ding2020mma-robustbench"), catalog.dataset("cifar10-jpeg")
    monkeypatch.setattr(zoo_robustbench, "robustbench_installed", lambda: True)
    monkeypatch.setattr(zoo_robustbench, "weight_files", lambda *source: ["Ding2020MMA.pt"])
    from pytest_securitynet.zoo.datasets import decoded_path

    data = tmp_path / "data"
    store = FileStore(cache_dir=tmp_path / "cache", offline=True)
    decoded = decoded_path(dataset, store)  # a decoded copy in the cache stands in for the dataset's files
    decoded.parent.mkdir(parents=True)
    decoded.touch()
    offline = missing_files([entry], store, lambda e: dataset)
    assert [n.name for n in offline.models[entry.id]] == ["Ding2020MMA.pt"] and offline.why == "offline"
    data.mkdir()
    (data / "Ding2020MMA.pt").write_bytes(b"weights")
    assert not missing_files([entry], FileStore(cache_dir=store.cache_dir, mirrors=[data], offline=True),
                             lambda e: dataset)
    online = FileStore(cache_dir=store.cache_dir, offline=False)
    asked = []
    down = missing_files([entry], online, lambda e: dataset, reachable=lambda host: asked.append(host) or False)
    assert list(down.models) == [entry.id] and down.why == "drive.google.com cannot be reached"
    assert asked == ["drive.google.com"]
    assert not missing_files([entry], online, lambda e: dataset, reachable=lambda host: True)


def test_prefetch_fetches_its_files_through_the_package_loader(monkeypatch, tmp_path):
    """`securitynet catalog prefetch` lists a RobustBench entry's files, names them offline, and online
    has robustbench's loader fetch them (the store has no URL for Google Drive files)."""
    from pytest_securitynet.errors import MissingFileError
    from pytest_securitynet.zoo import prefetch
    from pytest_securitynet.zoo import robustbench as zoo_robustbench
    from pytest_securitynet.zoo.datasets import decoded_path

    catalog = load_catalog(catalog_paths())
    entry = catalog.model("cifar10-linf-ding2020mma-robustbench")
    monkeypatch.setattr(zoo_robustbench, "robustbench_installed", lambda: False)
    assert prefetch.plan([entry], catalog, FileStore(cache_dir=tmp_path, offline=True))[1] == {
        entry.id: f"RobustBench models need the robustbench package: {zoo_robustbench.INSTALL}"}
    monkeypatch.setattr(zoo_robustbench, "robustbench_installed", lambda: True)
    monkeypatch.setattr(zoo_robustbench, "weight_files", lambda *source: ["Ding2020MMA.pt"])
    store = FileStore(cache_dir=tmp_path, offline=True)
    decoded = decoded_path(catalog.dataset(entry.dataset), store)
    decoded.parent.mkdir(parents=True)
    decoded.touch()
    (status,) = prefetch.plan([entry], catalog, store)[0]
    assert (status.name, status.present, status.loaded_by) == ("Ding2020MMA.pt", False, entry)
    with pytest.raises(MissingFileError, match=r"Ding2020MMA\.pt \(weights of .*\): robustbench downloads it from drive"):
        prefetch.prefetch([status], store)
    loads = []

    def load(entry, store):  # what robustbench's loader does online: the file appears in its folder
        loads.append(entry.id)
        path = store.cache_dir / "weights" / "robustbench" / "cifar10" / "Linf" / "Ding2020MMA.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")

    def broken(entry, store):  # robustbench's loader fails in its own way (gdown, a damaged file)
        raise RuntimeError("Too many users have viewed or downloaded this file recently")

    online = FileStore(cache_dir=tmp_path, offline=False)
    monkeypatch.setattr(zoo_robustbench, "load_robustbench", broken)
    with pytest.raises(MissingFileError, match=r"Ding2020MMA\.pt .*could not fetch or load it from drive\.google\.com "
                                               r"\(RuntimeError: Too many users.*\); put the file into .*robustbench/cifar10/Linf"):
        prefetch.prefetch(prefetch.plan([entry], catalog, online)[0], online, report=lambda line: None)
    monkeypatch.setattr(zoo_robustbench, "load_robustbench", load)
    (fetched,) = prefetch.prefetch(prefetch.plan([entry], catalog, online)[0], online, report=lambda line: None)
    assert loads == [entry.id] and fetched.found == tmp_path / "weights/robustbench/cifar10/Linf/Ding2020MMA.pt"


@pytest.mark.parametrize("installed", [False, True], ids=["without-package", "with-package"])
def test_catalog_list_says_which_robust_models_run_here(monkeypatch, capsys, installed):
    """`catalog list --purpose security`: the 189 RobustBench models that have weights are runnable with
    the package, and say `needs [robust]` (left out by --available) without it."""
    from pytest_securitynet.cli import main
    from pytest_securitynet.zoo import robustbench as zoo_robustbench

    monkeypatch.setattr(zoo_robustbench, "robustbench_installed", lambda: installed)
    assert main(["catalog", "list", "--purpose", "security"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()[1:] if line.split()[4] == "robustbench"]
    waiting = [line for line in rows if line.endswith("needs [robust]")]
    assert len(rows) == 189 + 12 and sum(line.endswith("unavailable") for line in rows) == 12  # 12 without weights
    assert len(waiting) == (0 if installed else 189)
    assert main(["catalog", "list", "--purpose", "security", "--available"]) == 0
    available = [line for line in capsys.readouterr().out.splitlines()[1:] if line.split()[4] == "robustbench"]
    assert len(available) == (189 if installed else 0)
