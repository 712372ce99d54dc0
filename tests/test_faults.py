"""Reliability under faults and bad input (issue 16): each test holds the harness to a promise in
docs/reliability.md. Sections follow the issue's points; the results-file and zoo points live in
their own sections below, filled by the modules that own them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_securitynet import cli
from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, load_catalog
from pytest_securitynet.catalog.policy import check_builders
from pytest_securitynet.errors import CatalogError
from pytest_securitynet.harness.settings import settings_from
from pytest_securitynet.plugin.items import model_in_nodeid, xdist_group
from pytest_securitynet.plugin.scheduler import ModelScheduling, worker_count

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "benchmarks" / "test_task_performance.py"

CRASHING = '''
import os, signal

def test_first(target, test_set, record):
    record(n=len(test_set))

def test_second(target, record, catalog_entry):
    if catalog_entry.id == "demo-digits-rbf-overfit":
        os.kill(os.getpid(), signal.SIGKILL)
    record(ok=1)
'''

LOCAL_MODEL = """
[[models]]
id = "digits-local-cnn"
dataset = "digits"
architecture = "democnn"
model_type = "cnn"
source = "file:weights.pt"
builder = "demo_cnn"
builder_args = { num_classes = 10, in_channels = 1, width = 8 }
preprocess = { input_size = [1, 8, 8], mean = [0.5], std = [0.5] }
annotations = { topic_category = "handwritten digits", training_set_size = 898, num_classes = 10, input_dims = "8x8x1", purpose = "security" }
"""

ARCHIVE_DATASET = """
[datasets.svhn-local]
source = "image-folder-archive"
file = "svhn.tar.gz"
sha256 = "{sha}"
archive_root = "svhn"
num_classes = 10
input_size = [3, 32, 32]
train_size = 10
test_size = 10
""".replace("{sha}", "0" * 64)


@pytest.fixture
def bench(pytester, cache_dir, monkeypatch):
    """A temporary project with a `benchmarks/` folder; runs use the session's cache."""
    monkeypatch.delenv("SECURITYNET_DATASET", raising=False)
    monkeypatch.delenv("SECURITYNET_CATALOG", raising=False)
    (pytester.path / "benchmarks").mkdir()
    shutil.copy(TASK, pytester.path / "benchmarks" / TASK.name)

    def run(*args, subprocess=False, timeout=None):
        argv = ["-p", "no:cacheprovider", f"--securitynet-cache={cache_dir}",
                f"--securitynet-json={pytester.path / 'out.json'}", *args]
        if subprocess:
            return pytester.runpytest_subprocess(*argv, timeout=timeout)
        return pytester.runpytest(*argv)

    return run


def rows(pytester) -> list[dict]:
    return json.loads((pytester.path / "out.json").read_text())["results"]


# --- 1. --gpus / --dist loadgroup: one model per worker on every pytest; a dead worker ends the run --

MODELS = {"demo-a", "demo-a-big", "demo-b"}
COLLECTION = [
    "benchmarks/test_x.py::test_one[demo-a]",
    "benchmarks/test_x.py::test_one[demo-a-big]",
    "benchmarks/test_x.py::test_one[demo-b]",
    "benchmarks/test_x.py::test_two[demo-a-mentropy-global]",
    "benchmarks/test_x.py::test_two[demo-a-big-mentropy-global]",
    "benchmarks/test_x.py::test_two[demo-b-mentropy-global]",
    "benchmarks/test_x.py::test_three[demo-a-big]",
    "tests/test_plain.py::test_unrelated",
]


def test_the_model_is_found_in_node_ids_with_and_without_group_suffix():
    # pytest 9.2 node ids carry no `@group` suffix; older ones do: both name the same model.
    assert model_in_nodeid("b/test_x.py::test_two[demo-a-big-mentropy-global]", MODELS) == "demo-a-big"
    assert model_in_nodeid("b/test_x.py::test_two[demo-a-mentropy-global]@demo-a", MODELS) == "demo-a"
    assert model_in_nodeid("b/test_x.py::Suite::test_y[3-demo-b]", MODELS) == "demo-b"
    assert model_in_nodeid("b/test_x.py::test_plain", MODELS) is None
    assert xdist_group("t.py::test_g@gname", MODELS) == "gname"
    assert xdist_group("t.py::test_p[a@b]", MODELS) == "t.py::test_p[a@b]"
    assert worker_count(["2*popen", "ssh=host"]) == 3


class FakeWorker:
    """An xdist worker as the controller sees it. Like a real one it runs an assigned test only
    when it knows the next one or has been told to shut down (it needs `nextitem` for teardown)."""

    def __init__(self, name: str):
        self.gateway = SimpleNamespace(id=name)
        self.queue: list[int] = []
        self.units: list[list[int]] = []
        self.shutdown_sent = False

    @property
    def shutting_down(self) -> bool:
        return self.shutdown_sent

    def send_runtest_some(self, indices):
        self.units.append(list(indices))
        self.queue.extend(indices)

    def shutdown(self):
        self.shutdown_sent = True

    def can_run(self) -> bool:
        return len(self.queue) > 1 or (len(self.queue) == 1 and self.shutdown_sent)


def play(collection: list[str], crash_on: str | None = None, workers: int = 2):
    """Play xdist's controller loop (DSession) against the scheduler: run, complete, crash, replace."""
    sched = ModelScheduling(workers, lambda nodeid: xdist_group(nodeid, MODELS))
    every = [FakeWorker(f"gw{i}") for i in range(workers)]
    for worker in every:
        sched.add_node(worker)
    for worker in every:
        sched.add_node_collection(worker, collection)
    sched.schedule()
    ran: list[tuple[str, str]] = []
    crashed: list[tuple[str, str | None]] = []
    shutting_down = False
    for _ in range(10 * len(collection)):
        if sched.tests_finished and not shutting_down:  # DSession.triggershutdown
            shutting_down = True
            for worker in sched.nodes:
                worker.shutdown()
        runnable = [w for w in sched.nodes if w.can_run()]
        if not runnable:
            break
        worker = runnable[0]
        index = worker.queue.pop(0)
        if collection[index] == crash_on:  # SIGKILL: the worker and its queue are gone
            crashed.append((worker.gateway.id, sched.remove_node(worker)))
            shutting_down = False  # DSession.worker_errordown, then a replacement worker
            replacement = FakeWorker(f"gw{len(every)}")
            every.append(replacement)
            sched.add_node(replacement)
            sched.add_node_collection(replacement, collection)
            sched.schedule()
            continue
        ran.append((worker.gateway.id, collection[index]))
        sched.mark_test_complete(worker, index)
    stalled = [w.gateway.id for w in sched.nodes if w.queue] + ([] if sched.tests_finished else ["scheduler"])
    return ran, crashed, every, stalled


def test_each_model_runs_on_one_worker_though_node_ids_carry_no_group():
    ran, crashed, workers, stalled = play(COLLECTION)
    assert not stalled and not crashed
    assert sorted(nodeid for _, nodeid in ran) == sorted(COLLECTION)
    for model in MODELS:
        assert len({w for w, nodeid in ran if model_in_nodeid(nodeid, MODELS) == model}) == 1, model
    for worker in workers:  # every unit sent is one model's tests (or one test outside the catalog)
        for unit in worker.units:
            assert len({xdist_group(COLLECTION[i], MODELS) for i in unit}) == 1


def test_a_worker_that_dies_after_finishing_a_model_leaves_no_stalled_run():
    # gw0 finishes demo-a, takes demo-b and dies in its first test. xdist's loadgroup requeued the
    # finished unit too, sent it to the replacement as an empty list, and waited forever.
    crash = "benchmarks/test_x.py::test_one[demo-b]"
    ran, crashed, workers, stalled = play(COLLECTION, crash_on=crash)
    assert not stalled
    assert crashed == [("gw0", crash)]
    assert sorted(nodeid for _, nodeid in ran) == sorted(set(COLLECTION) - {crash})  # the rest ran once
    assert all(unit for worker in workers for unit in worker.units)  # never an empty unit
    assert sum(unit.count(COLLECTION.index(crash)) for w in workers for unit in w.units) == 1  # not rerun


def test_workers_that_collected_different_tests_are_reported_and_get_no_work():
    reports: list[tuple[str, str]] = []
    sched = ModelScheduling(2, lambda nodeid: xdist_group(nodeid, MODELS), lambda *r: reports.append(r))
    first, second = FakeWorker("gw0"), FakeWorker("gw1")
    for worker, collection in ((first, COLLECTION), (second, COLLECTION[:-1])):
        sched.add_node(worker)
        sched.add_node_collection(worker, collection)
    sched.schedule()
    assert reports == [("gw1", "collected 7 tests, not the same 8 as gw0 (e.g. it lacks tests/test_plain.py::test_unrelated); "
                               "nothing is scheduled")]
    assert first.shutdown_sent and second.shutdown_sent and not first.units and sched.tests_finished


@pytest.mark.slow
def test_a_worker_killed_under_gpus_scheduling_ends_the_run_with_its_failed_row(pytester, bench):
    (pytester.path / "benchmarks" / "test_crash.py").write_text(CRASHING)
    # A hang (the failure this guards against) fails the test at the timeout instead of stalling CI.
    result = bench("benchmarks/test_crash.py", "-k", "demo", "--gpus", "2", subprocess=True, timeout=400)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    doc = json.loads((pytester.path / "out.json").read_text())
    assert doc["run"]["status"] == "complete"
    got = {(r["model"], r["benchmark"]): r for r in doc["results"]}
    assert {k: r["outcome"] for k, r in got.items()} == {
        ("demo-digits-cnn", "crash.first"): "passed", ("demo-digits-cnn", "crash.second"): "passed",
        ("demo-digits-rbf-overfit", "crash.first"): "passed", ("demo-digits-rbf-overfit", "crash.second"): "failed"}
    crash = got[("demo-digits-rbf-overfit", "crash.second")]
    assert "crashed while running" in crash["message"]
    # The crash row says where and how it ran, like every other row; and both of a model's tests
    # ran on one worker (the crash on the worker that had run the model's first test).
    assert crash["worker"] == got[("demo-digits-rbf-overfit", "crash.first")]["worker"] in ("gw0", "gw1")
    assert crash["device"] == "cpu" and crash["seed"] == 0 and crash["dataset_source"] == "digits"
    assert got[("demo-digits-cnn", "crash.first")]["worker"] == got[("demo-digits-cnn", "crash.second")]["worker"]


# --- 2. One writer per results file (results/rows.py) -----------------------------------------
# Filled by the results-file work.


# --- 3. Catalog files cannot write outside the cache, nor run code unasked ---------------------

@pytest.mark.parametrize(("field", "value"), [
    ("file", "../../outside.tar.gz"), ("file", "/etc/outside.tar.gz"), ("file", "a\\\\b.tar.gz"),
    ("file", ".."), ("folder", "../elsewhere"), ("flag", "../../x"),
])
def test_a_dataset_file_name_cannot_leave_the_cache(tmp_path, field, value):
    text = ARCHIVE_DATASET.replace('file = "svhn.tar.gz"', f'{field} = "{value}"' + (
        '\nfile = "svhn.tar.gz"' if field != "file" else ""))
    path = tmp_path / "data.toml"
    path.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_catalog([BUILTIN_CATALOG, path])
    assert f"{path}: dataset 'svhn-local': field {field}:" in str(info.value)
    assert "not a plain name" in str(info.value)


def test_a_model_url_must_end_in_a_file_name(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(LOCAL_MODEL.replace('source = "file:weights.pt"', f'source = "https://example.org/w/.."\nsha256 = "{"0" * 64}"'))
    with pytest.raises(CatalogError, match=r"model 'digits-local-cnn': field source: '\.\.' is not a plain name"):
        load_catalog([BUILTIN_CATALOG, path])


def code_catalog(tmp_path: Path) -> Path:
    path = tmp_path / "code.toml"
    path.write_text(LOCAL_MODEL.replace('builder = "demo_cnn"', 'builder = "os:system"').replace(
        "builder_args = { num_classes = 10, in_channels = 1, width = 8 }\n", 'builder_args = { command = "touch pwned" }\n'))
    return path


def test_a_module_function_builder_needs_the_users_opt_in(tmp_path, capsys):
    path = code_catalog(tmp_path)
    with pytest.raises(CatalogError, match=r"code.toml: model 'digits-local-cnn': field builder: 'os:system' is a "
                                           r"module:function builder.*--securitynet-allow-code-builders"):
        load_catalog([BUILTIN_CATALOG, path])
    assert "digits-local-cnn" in load_catalog([BUILTIN_CATALOG, path], allow_code_builders=True).models
    # The pytest option and the ini flag reach the settings; `catalog validate` has its own flag.
    assert settings_from({"allow_code_builders": True}).allow_code_builders
    assert settings_from({}, {"allow_code_builders": True}).allow_code_builders
    assert not settings_from({}, {"allow_code_builders": False}).allow_code_builders
    assert cli.main(["catalog", "validate", "--catalog", str(path)]) == 2
    assert "--securitynet-allow-code-builders" in capsys.readouterr().err
    assert cli.main(["catalog", "validate", "--catalog", str(path), "--allow-code-builders"]) == 0


def test_a_run_with_a_code_builder_catalog_stops_unless_allowed(tmp_path, pytester, bench):
    path = code_catalog(tmp_path)
    result = bench("benchmarks", "-k", "demo", f"--securitynet-catalog={path}", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {path}: model 'digits-local-cnn': field builder: 'os:system'*"])
    assert bench("benchmarks", "-k", "demo", f"--securitynet-catalog={path}", "--collect-only",
                 "--securitynet-allow-code-builders").ret == pytest.ExitCode.OK
    pytester.makeini("[pytest]\nsecuritynet_allow_code_builders = true\n")
    assert bench("benchmarks", "-k", "demo", f"--securitynet-catalog={path}", "--collect-only").ret == pytest.ExitCode.OK
    assert not (pytester.path / "pwned").exists()  # loading and collecting ran nothing


def test_registered_and_torchvision_builders_need_no_opt_in():
    catalog = load_catalog([BUILTIN_CATALOG])
    assert any(e.raw.get("builder", "").startswith("torchvision.models:") for e in catalog.models.values())
    check_builders(catalog, torchvision=True)


# --- 4. Decoded-dataset cache keyed by checksum (zoo/) ----------------------------------------
# Filled by the zoo work.


# --- 5. Resume with different settings (results/rows.py) --------------------------------------
# Filled by the results-file work.


# --- 6. One-line messages for bad input ---------------------------------------------------------

def test_a_catalog_file_that_is_not_utf8_is_a_one_line_usage_error(tmp_path, bench):
    path = tmp_path / "latin1.toml"
    path.write_bytes(LOCAL_MODEL.replace("handwritten digits", "chiffres écrits").encode("latin-1"))
    with pytest.raises(CatalogError, match=r"latin1.toml: not UTF-8 text \(byte 0xe9 at offset \d+\)"):
        load_catalog([BUILTIN_CATALOG, path])
    result = bench("benchmarks", f"--securitynet-catalog={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {path}: not UTF-8 text*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(("args", "message"), [
    ('{ num_classes = 10, in_channels = "1", width = 8 }', "field builder_args.in_channels: '1' is not of type int"),
    ("{ num_classes = 10, depth = 20 }", "field builder_args: got an unexpected keyword argument 'depth'"),
    ("{ num_classes = 100 }", "field builder_args.num_classes: 100 but annotations.num_classes is 10"),
])
def test_builder_args_that_do_not_fit_the_builder_fail_validation(tmp_path, capsys, args, message):
    path = tmp_path / "args.toml"
    path.write_text(LOCAL_MODEL.replace("{ num_classes = 10, in_channels = 1, width = 8 }", args))
    assert cli.main(["catalog", "validate", "--catalog", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: model 'digits-local-cnn': {message}" in err and len(err.strip().splitlines()) == 1


# --- 7. Smaller faults ---------------------------------------------------------------------------

FAILING = '''
def helper():
    try:
        {}["missing"]
    except KeyError:
        raise ValueError("the real problem")

def test_fails(catalog_entry):
    helper()
'''


def test_a_failure_row_gives_the_error_raised_last_not_the_one_it_was_handling(pytester, bench):
    (pytester.path / "benchmarks" / "test_fails.py").write_text(FAILING)
    for tb in ("auto", "native"):
        bench("benchmarks/test_fails.py", "-k", "demo-digits-cnn", f"--tb={tb}").assert_outcomes(failed=1)
        assert rows(pytester)[0]["message"] == "ValueError: the real problem", tb


def test_a_catalog_edit_replaces_its_cache_file(tmp_path):
    user, cache = tmp_path / "user.toml", tmp_path / "cache"
    legacy = cache / "catalog" / f"{'ab' * 16}.json"  # a per-edit file of earlier versions
    legacy.parent.mkdir(parents=True)
    legacy.write_text("{}")
    for width in (8, 16, 24):
        user.write_text(LOCAL_MODEL.replace("width = 8", f"width = {width}"))
        os.utime(user, ns=(width * 10**9, width * 10**9))  # a new modification time per edit
        assert load_catalog([BUILTIN_CATALOG, user], cache).model("digits-local-cnn").raw["builder_args"]["width"] == width
        files = list((cache / "catalog").iterdir())
        assert len(files) == 1 and files[0].name.startswith("selection-"), files
    with files[0].open(encoding="utf-8") as reader:  # a reader holding the file open ...
        user.write_text(LOCAL_MODEL)
        load_catalog([BUILTIN_CATALOG, user], cache)  # ... while an edit replaces it ...
        assert json.loads(reader.read())["models"]  # ... still reads one whole file
    assert load_catalog([BUILTIN_CATALOG], cache).models  # another selection keeps its own file
    assert len(list((cache / "catalog").iterdir())) == 2


# --- Round 3: every input checked before work starts (issue 20) -----------------------------------

BENCHMARK_FILES = ("test_backdoor_detection.py", "test_model_stealing.py", "test_evasion.py",
                   "test_membership_inference.py")


def builtin_budgets() -> dict[str, type]:
    """The budget dataclasses the repository's benchmark files declare, imported as the plugin does."""
    from pytest_securitynet.plugin.budgets import import_declarations

    import_declarations([REPO / "benchmarks" / name for name in BENCHMARK_FILES],
                        ["backdoor", "stealing", "evasion", "membership"])
    from pytest_securitynet.harness.settings import declared_budgets

    return {name: cls for name, cls in declared_budgets().items()
            if name in ("backdoor", "stealing", "evasion", "membership")}


def test_every_budget_field_refuses_a_value_of_another_type_range_or_choice():
    import dataclasses
    import typing

    from pytest_securitynet.harness.settings import Settings, SettingsError

    budgets = builtin_budgets()
    assert set(budgets) == {"backdoor", "stealing", "evasion", "membership"}
    checked = 0
    for name, cls in budgets.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            bad = {int: ["ten", "-1", "1.5"], float: ["fast", "-1", "nan"], bool: ["maybe"],
                   str: ["vgg99"] if f.metadata.get("choices") else []}[kind]
            for value in bad:
                with pytest.raises(SettingsError, match=rf"--securitynet-budget {name}\.{f.name}="):
                    Settings(budgets={name: {f.name: value}}).budget(cls)
                checked += 1
            default = str(f.default).lower()  # the default given as text is always accepted
            assert getattr(Settings(budgets={name: {f.name: default}}).budget(cls), f.name) == f.default
    assert checked >= 30
    allowed = Settings(budgets={"stealing": {"surrogate": "small-cnn"}}).budget(budgets["stealing"])
    assert allowed.surrogate == "small-cnn"


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["in-process", "xdist"])
@pytest.mark.parametrize(("override", "message"), [
    ("backdoor.nc_epochs=-5", "backdoor.nc_epochs=-5: give a number >= 0"),
    ("backdoor.inputs=-7", "backdoor.inputs=-7: give a number >= 0"),
    ("stealing.surrogate=vgg99", "stealing.surrogate=vgg99: not one of auto, resnet18, wrn50_2, small-cnn"),
    ("backdoor.datasets=some", "backdoor.datasets=some: not one of paper, all"),
])
def test_a_bad_budget_is_one_usage_error_before_any_test_even_under_xdist(pytester, bench, workers, override, message):
    for name in ("test_backdoor_detection.py", "test_model_stealing.py"):
        shutil.copy(REPO / "benchmarks" / name, pytester.path / "benchmarks" / name)
    result = bench("benchmarks", "-k", "demo-digits-cnn", f"--securitynet-budget={override}", *workers)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    assert f"ERROR: --securitynet-budget {message}" in result.stderr.str()
    assert "INTERNALERROR" not in output and "Traceback" not in output
    assert not (pytester.path / "out.json").exists()


def test_a_budget_no_benchmark_declares_is_named_in_a_warning_and_ignored(bench):
    """A misspelt or foreign budget name (here the old `neural_cleanse`) cannot be checked against a
    declaration: the run goes on, and the warnings summary names it with the budgets that exist."""
    result = bench("benchmarks", "-k", "demo-digits-cnn", "--securitynet-budget=neural_cleanse.epochs=10")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*--securitynet-budget neural_cleanse.*: no collected benchmark declares a budget "
                                 "'neural_cleanse' (declared: *); ignored*"])


def test_a_seed_out_of_range_is_a_usage_error_before_any_test(bench):
    result = bench("benchmarks", "-k", "demo-digits-cnn", "--securitynet-seed=-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --securitynet-seed -1: give a seed from 0 to 4294967295"])


DEMO_MODEL = (REPO / "catalog" / "models" / "demo.toml").read_text(encoding="utf-8").split("[[models]]")[1]


@pytest.mark.parametrize(("train", "message"), [
    ("{ epochs = -5, lr = 0.003 }", "field train.epochs: -5 is less than the minimum of 1"),
    ('{ epochs = 4, lr = "fast" }', "field train.lr: 'fast' is not of type 'number'"),
    ("{ epochs = 4, lr = 0.003, epoch = 9 }", "field train: Additional properties are not allowed ('epoch' was unexpected)"),
    ("{ lr = 0.003 }", "field train: 'epochs' is a required property"),
])
def test_a_demo_models_train_table_is_validated_with_the_catalog(tmp_path, capsys, bench, train, message):
    path = tmp_path / "train.toml"
    entry = DEMO_MODEL.replace('id = "demo-digits-cnn"', 'id = "demo-digits-mine"')
    path.write_text("[[models]]" + entry.replace(
        "train = { epochs = 40, lr = 0.003, weight_decay = 0.0005, batch_size = 64, seed = 0 }", f"train = {train}"))
    assert cli.main(["catalog", "validate", "--catalog", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: model 'demo-digits-mine': {message}" in err and len(err.strip().splitlines()) == 1
    result = bench("benchmarks", "-k", "demo-digits-mine", f"--securitynet-catalog={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "INTERNALERROR" not in result.stdout.str()
    assert message in result.stderr.str()


def test_an_rbf_demo_model_needs_its_kernel_width(tmp_path):
    path = tmp_path / "rbf.toml"
    rbf = (REPO / "catalog" / "models" / "demo.toml").read_text(encoding="utf-8").split("[[models]]")[2]
    path.write_text("[[models]]" + rbf.replace('id = "demo-digits-rbf-overfit"', 'id = "rbf-mine"')
                    .replace(", width_factor = 0.4", ""))
    with pytest.raises(CatalogError, match=r"model 'rbf-mine': field train: 'width_factor' is a required property"):
        load_catalog([BUILTIN_CATALOG, path])


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_the_cache_creates_follow_the_umask(tmp_path, umask):
    import stat

    from pytest_securitynet.zoo.datasets import load_dataset
    from pytest_securitynet.zoo.store import FileStore

    previous = os.umask(umask)
    try:
        store = FileStore(cache_dir=tmp_path / "cache", offline=True)
        load_dataset(load_catalog([BUILTIN_CATALOG]).dataset("digits"), store)  # a decoded dataset and its lock
        store.write(store.path("reference", "x.pt"), lambda tmp: tmp.write_bytes(b"x"))
    finally:
        os.umask(previous)
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert any(p.suffix == ".pt" for p in files) and any(p.suffix == ".lock" for p in files)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o666 & ~umask for p in files}


def test_a_full_cache_disk_is_one_line_naming_the_folder_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno

    from pytest_securitynet.errors import CacheError
    from pytest_securitynet.zoo.store import FileStore

    store = FileStore(cache_dir=tmp_path / "cache", offline=True)
    folder = store.path("datasets", "x.pt").parent

    def torch_on_a_full_disk(obj, path):  # what torch.save raises when the disk fills
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr("shutil.disk_usage", lambda path: SimpleNamespace(total=1 << 30, used=1 << 30, free=0))
    for write in (lambda tmp: torch_on_a_full_disk({}, tmp),
                  lambda tmp: (_ for _ in ()).throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))):
        with pytest.raises(CacheError) as info:
            store.write(folder / "x.pt", write)
        message = str(info.value)
        assert f"(No space left on device: the disk of {folder} is full)" in message and "\n" not in message
        assert "inline_container" not in message
        assert list(folder.iterdir()) == []  # the temporary file went with the failure

    # The catalog cache: a failed write leaves no selection-*.tmp behind.
    cache = tmp_path / "catalog-cache"
    real = Path.write_text

    def half(self, data, *args, **kwargs):
        if self.suffix == ".tmp":
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", half)
    assert load_catalog([BUILTIN_CATALOG], cache).models  # the catalog loads; only its cache is missing
    assert [p.name for p in (cache / "catalog").iterdir()] == []


def members_catalog(tmp_path: Path, members: str) -> Path:
    path = tmp_path / "cat" / "members.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(LOCAL_MODEL.replace('builder = "demo_cnn"', f'builder = "demo_cnn"\nmembers_file = "{members}"'))
    return path


@pytest.mark.timeout(60)
def test_a_members_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    (tmp_path / "cat").mkdir()
    os.mkfifo(tmp_path / "cat" / "fifo")
    with pytest.raises(CatalogError, match=r"field members_file: .*/cat/fifo is not a regular file"):
        load_catalog([BUILTIN_CATALOG, members_catalog(tmp_path, "fifo")])


@pytest.mark.parametrize(("content", "message"), [
    (b"1\n2\n\xff\xfe3\n", r"members.txt is not UTF-8 text \(byte 0xff at offset 4\)"),
    ("1\n2\n\u00b2\n".encode(), r"members.txt:3: sample '²' is not in the train split of dataset 'digits'"),
    (b"root:x:0:0:root:/root:/bin/bash\n", r"members.txt:1: the first sample \(not shown: the file does not start like"),
])
def test_a_bad_members_file_is_one_catalog_error_that_quotes_only_a_members_list(tmp_path, bench, content, message):
    catalog = members_catalog(tmp_path, "members.txt")
    (tmp_path / "cat" / "members.txt").write_bytes(content)
    with pytest.raises(CatalogError, match=message) as info:
        load_catalog([BUILTIN_CATALOG, catalog])
    assert "root:x" not in str(info.value) and "\n" not in str(info.value)
    result = bench("benchmarks", "-k", "digits-local-cnn", f"--securitynet-catalog={catalog}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize("where", ["../../../../../../etc/passwd", "/etc/passwd", "link-out"])
def test_a_members_file_outside_the_catalogs_folder_is_refused_naming_the_path_only(tmp_path, where):
    outside = tmp_path / "secret.txt"
    outside.write_text("root:x:0:0:root:/root:/bin/bash\n")
    catalog = members_catalog(tmp_path, where)
    (tmp_path / "cat" / "link-out").symlink_to(outside)
    with pytest.raises(CatalogError, match=rf"field members_file: '{where}' is outside the catalog file's folder") as info:
        load_catalog([BUILTIN_CATALOG, catalog])
    assert "root:x" not in str(info.value)


def image_archive(path: Path, extra: dict[str, bytes] | None = None) -> str:
    """A two-class image-folder tarball of 8x8 PNGs (plus `extra` members); returns its sha256."""
    import hashlib
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    members = {}
    for split, count in (("train", 2), ("test", 1)):
        for label in ("a", "b"):
            for i in range(count):
                buffer = io.BytesIO()
                Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(buffer, format="PNG")
                members[f"tiny/{split}/{label}/{i}.png"] = buffer.getvalue()
    members.update(extra or {})
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def png(side: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("case", "message"), [
    ("not-an-image", r"tiny/train/a/9\.png in the archive .*tiny\.tar\.gz is not a readable image"),
    ("other-size", r"tiny/train/b/9\.png in the archive .*tiny\.tar\.gz is 9x9 pixels, not the catalogued 8x8"),
    ("truncated", r"the archive .*tiny\.tar\.gz is truncated or damaged after member tiny/"),
])
def test_an_archive_whose_checksum_matches_but_whose_members_are_bad_names_archive_and_member(tmp_path, case, message):
    import hashlib

    from pytest_securitynet.zoo.datasets import load_dataset
    from pytest_securitynet.zoo.store import FileStore

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / "tiny.tar.gz"
    extra = {"not-an-image": {"tiny/train/a/9.png": b"these are my notes, not a picture"},
             "other-size": {"tiny/train/b/9.png": png(9)}}.get(case)
    image_archive(archive, extra)
    if case == "truncated":
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()  # the catalog names exactly this file
    toml = tmp_path / "tiny.toml"
    toml.write_text(f"""
[datasets.tinyjpeg]
source = "image-folder-archive"
file = "tiny.tar.gz"
sha256 = "{sha}"
archive_root = "tiny"
num_classes = 2
input_size = [3, 8, 8]
train_size = 5
test_size = 2
""")
    entry = load_catalog([BUILTIN_CATALOG, toml]).dataset("tinyjpeg")
    with pytest.raises(CatalogError, match=f"dataset 'tinyjpeg': {message}") as info:
        load_dataset(entry, FileStore(cache_dir=tmp_path / "cache", mirrors=[mirror], offline=True))
    assert "\n" not in str(info.value)
