"""A new user's first run: budgets that fit the data, what is printed before, during and after,
the report at the end, time limits, effective sizes, the catalog command and the project conftest."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _pytest.mark.expression import Expression

from pytest_securitynet.attacks.surrogates import build_surrogate
from pytest_securitynet.catalog import entries
from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, load_catalog
from pytest_securitynet.catalog.stats import normalise_countries, records, panel_counts, PANELS
from pytest_securitynet.cli import main
from pytest_securitynet.harness.budget_rules import SmallCNN, nc_epochs, surrogate_plan
from pytest_securitynet.plugin import estimate, progress
from pytest_securitynet.plugin import gpus
from pytest_securitynet.plugin.selection import SharedNames, may_match
from pytest_securitynet.results.rows import SCHEMA
from pytest_securitynet.results.summary import summary_lines
from conftest import AKAMASTER_DIR, DATA_DIR, needs_shared

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
TASK = BENCHMARKS / "test_task_performance.py"

SLEEPER = '''
from dataclasses import dataclass

from pytest_securitynet.harness.settings import budget


@budget("sleeper")
@dataclass(frozen=True)
class Budget:
    seconds: float = 2.0


def test_sleep(catalog_entry, securitynet, progress, record):
    progress("sleeping", total=2, unit="nap")
    progress.step(1)
    import time
    time.sleep(securitynet.settings.budget(Budget).seconds)
    record(slept=1)
'''

FAILING = '''
def test_phases(catalog_entry, progress, record):
    progress("loading the attack")
    progress("training the surrogate", total=3, unit="epoch")
    progress.step(2)
    assert False, "stops here"
'''


# --- budgets derived from the data --------------------------------------------------------------


def test_the_rule_keeps_the_paper_for_its_datasets_and_shrinks_small_data():
    digits = surrogate_plan((1, 8, 8), 898)
    assert (digits.surrogate, digits.epochs, digits.batch_size, digits.scale_lr, digits.scale) == (
        "small-cnn", 20, 32, False, "small")
    for shape, n_train in [((3, 32, 32), 50_000), ((3, 32, 32), 73_257), ((3, 224, 224), 1_281_167),
                           ((1, 28, 28), 1_000), ((1, 8, 8), 60_000)]:
        paper = surrogate_plan(shape, n_train)
        assert (paper.surrogate, paper.epochs, paper.batch_size, paper.scale_lr, paper.scale) == (
            "resnet18", 30, None, True, "paper"), shape
        assert nc_epochs(shape, n_train) == 50
    assert nc_epochs((1, 8, 8), 898) == 20 and nc_epochs((1, 8, 8), 898, requested=3) == 3
    forced = surrogate_plan((1, 8, 8), 898, surrogate="wrn50_2", epochs=2)
    assert (forced.surrogate, forced.epochs, forced.steal_kwargs()["surrogate"]) == ("wrn50_2", 2, "wrn50_2")
    assert digits.recipe_kwargs() == {"architecture": "small-cnn", "epochs": 20, "batch_size": 32, "scale_lr": False}


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16), (1, 13, 11)])
def test_small_cnn_takes_unit_images_of_any_small_size(shape):
    net = build_surrogate("small-cnn", 7, shape[-1], shape[0]).eval()
    assert isinstance(net[1], SmallCNN)
    out = net(torch.rand(2, *shape))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert sum(p.numel() for p in net.parameters()) < 30_000  # against 11M for the CIFAR ResNet-18


# --- -k decides which models are generated ------------------------------------------------------

STEALING_NAMES = SharedNames("test_model_stealing",
                           ("test_model_stealing", "test_model_stealing.py", "benchmarks", "parametrize",
                            "xdist_group", "benchmark_models", "security_models", "skip", "securitynet_heavy"),
                           ("budget10", "budget25", "budget50", "ood", "wrn50_2", "label-only"))


def brute_force(expression: str, model_names: list[str], model_id: str, rest: SharedNames) -> bool:
    """What pytest's -k does on each test of the model: substring match over all of the test's names."""
    expr = Expression.compile(expression)
    for setting in rest.ids:
        names = [f"{rest.function}[{model_id}-{setting}]", *rest.names, *model_names]
        if expr.evaluate(lambda word: any(word.lower() in n.lower() for n in names)):
            return True
    return False


@pytest.mark.parametrize("expression", [
    "demo", "not demo", "cifar10 and akamaster", "resnet20 and budget10", "cnn-budget", "stealing",
    "demo or wrn50_2", "test_model_stealing[cifar10", "benchmark_models", "security and not ood",
    "akamaster and not (wrn50_2 or ood)", "digits-cnn-label", "nothing_like_this",
])
def test_the_model_filter_never_drops_a_model_k_would_keep(expression):
    catalog = load_catalog([BUILTIN_CATALOG])
    dropped = kept = 0
    for entry in catalog.models.values():
        names = [entry.id, *entry.keywords()]
        truth = brute_force(expression, names, entry.id, STEALING_NAMES)
        decided = may_match(Expression.compile(expression), names, entry.id, STEALING_NAMES)
        assert decided or not truth, (expression, entry.id)
        dropped += not decided
        kept += decided
    if expression in ("demo", "cifar10 and akamaster", "test_model_stealing[cifar10"):
        assert kept == sum(brute_force(expression, [e.id, *e.keywords()], e.id, STEALING_NAMES)
                           for e in catalog.models.values())  # exact where the words are the model's


# --- the first run, end to end ------------------------------------------------------------------


@pytest.fixture
def project(pytester, cache_dir, monkeypatch):
    """A temporary project with benchmarks/; `run` uses the session's cache and writes out.json."""
    for name in ("SECURITYNET_DATASET", "SECURITYNET_BUDGET", "CI"):
        monkeypatch.delenv(name, raising=False)
    (pytester.path / "benchmarks").mkdir()

    def run(*args, subprocess=False):
        argv = ["-p", "no:cacheprovider", f"--securitynet-cache={cache_dir}",
                f"--securitynet-json={pytester.path / 'out.json'}", *args]
        return (pytester.runpytest_subprocess if subprocess else pytester.runpytest)(*argv)

    return run


def results(pytester) -> dict:
    return json.loads((pytester.path / "out.json").read_text())


def test_start_line_estimate_sizes_and_report(pytester, project, tmp_path):
    """Before the first test: one line; after the last: the table, the JSON and the report."""
    shutil.copy(TASK, pytester.path / "benchmarks" / TASK.name)
    first = project("benchmarks", "-k", "demo", "--securitynet-members", "100")
    first.assert_outcomes(passed=2)
    out = first.stdout.str()
    assert "collected 2 items" in out  # the other catalog models are never generated for -k demo
    first.stdout.fnmatch_lines([
        "securitynet: 2 tests of 1 benchmark on 2 models (demo-digits-cnn, demo-digits-rbf-overfit); "
        "device cpu; results out.json; *",
        "demo-digits-cnn: 1 passed", "*task_performance.accuracy*default*passed*train_accuracy=*",
        "2 models, 2 rows: 2 passed", "results: *out.json (2 rows)",
        "report: securitynet report *out.json -o report/ (or run with --securitynet-report report/)",
    ])
    doc = results(pytester)
    assert doc["run"]["settings"]["members"] == 100
    assert doc["run"]["effective"]["members"] == {"demo-digits-cnn": 100, "demo-digits-rbf-overfit": 100}
    for row in doc["results"]:
        assert row["sizes"] == {"members": 100, "nonmembers": 100, "auxiliary": 449, "train": 898, "test": 899}
        assert row["cpu_time_s"] > 0 and "\x1b" not in out  # no live status: the output is not a terminal
    assert doc["models"]["demo-digits-cnn"]["sizes"]["members"] == 100

    second = project("benchmarks", "-k", "demo", f"--securitynet-report={tmp_path / 'report'}")
    second.stdout.fnmatch_lines(["securitynet: 2 tests * about * (* cache; from the previous run's durations*",
                                 f"report: {tmp_path / 'report' / 'index.html'} (* sections: *)"])
    assert (tmp_path / "report" / "index.html").is_file()
    assert results(pytester)["run"]["effective"]["members"]["demo-digits-cnn"] == 898  # the split's size, not 5000


def test_xdist_controller_prints_the_start_line(pytester, project):
    """Of benchmark tests only: the project's own tests are parametrized by model ids too, and are no benchmark."""
    shutil.copy(TASK, pytester.path / "benchmarks" / TASK.name)
    (pytester.path / "test_own.py").write_text(
        "import pytest\n\n@pytest.mark.parametrize('model', ['demo-digits-cnn', 'demo-digits-rbf-overfit'])\n"
        "def test_entry(model):\n    assert model\n")
    result = project("benchmarks", "test_own.py", "-k", "demo", "-n", "2", subprocess=True)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["securitynet: 2 tests of 1 benchmark on 2 models (demo-digits-cnn, "
                                 "demo-digits-rbf-overfit); device cpu, 2 workers; results out.json; *"])
    assert "\x1b7" not in result.stdout.str()


def test_report_from_the_ini_file(pytester, project):
    shutil.copy(TASK, pytester.path / "benchmarks" / TASK.name)
    pytester.makeini("[pytest]\nsecuritynet_report = my-report\n")
    project("benchmarks", "-k", "demo-digits-cnn").assert_outcomes(passed=1)
    assert (pytester.path / "my-report" / "index.html").is_file()


def test_heavy_setting_skips_on_a_cpu_saying_so(pytester, project):
    shutil.copy(BENCHMARKS / "test_model_stealing.py", pytester.path / "benchmarks")
    result = project("benchmarks", "-k", "demo-digits-cnn and wrn50_2", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([
        "securitynet: 1 test of 1 benchmark on 1 model (demo-digits-cnn); *; "
        "1 heavy test skip on a CPU (--securitynet-heavy runs them)",
        "*heavy on a CPU: trains a WideResNet-50-2 surrogate*; --securitynet-heavy runs it*",
    ])
    assert results(pytester)["results"][0]["outcome"] == "skipped"


def test_project_timeout_is_lifted_and_a_benchmark_limit_names_its_budget(pytester, project):
    (pytester.path / "benchmarks" / "test_sleeper.py").write_text(SLEEPER)
    pytester.makeini("[pytest]\ntimeout = 1\n")  # the project's own tests' limit
    project("benchmarks", "-k", "demo-digits-cnn").assert_outcomes(passed=1)
    limited = project("benchmarks", "-k", "demo-digits-cnn", "--securitynet-timeout", "1")
    limited.assert_outcomes(failed=1)
    limited.stdout.fnmatch_lines(["*securitynet timeout*", "*timed out after 1 s; lower its budget with "
                                  "--securitynet-budget NAME.FIELD=VALUE (this run: sleeper.seconds=2.0; *"])
    row = results(pytester)["results"][0]
    assert row["outcome"] == "failed" and "sleeper.seconds=2.0" in row["message"] and "Timeout" in row["message"]


def test_phases_reach_the_report_of_a_failure(pytester, project):
    (pytester.path / "benchmarks" / "test_phases.py").write_text(FAILING)
    result = project("benchmarks", "-k", "demo-digits-cnn")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Captured securitynet phases call*", "*s  setup: the model and its data*",
                                 "*s  loading the attack", "*s  training the surrogate"])
    assert "\x1b7" not in result.stdout.str()


def test_summary_shows_every_row_with_reasons_and_folds_passed_rows_of_a_sweep():
    rows = [{"model": f"m{i % 3}", "benchmark": "b.x", "setting": f"s{i}", "outcome": "passed",
             "metrics": {"auc": 0.5, "flag": True, "n": 3}} for i in range(60)]
    rows.append({"model": "m1", "benchmark": "b.x", "setting": "late", "outcome": "skipped",
                 "message": "Skipped: heavy on a CPU: trains a WideResNet-50-2 surrogate; --securitynet-heavy runs it"})
    rows.append({"model": "m2", "benchmark": "b.x", "setting": "bad", "outcome": "error", "message": ""})
    lines = summary_lines(rows)
    assert len([line for line in lines if line.startswith("  b.x")]) == 62  # every row
    assert "m1: 20 passed, 1 skipped" in lines and "m2: 20 passed, 1 error" in lines
    assert any(line.split()[-3:] == ["passed", "auc=0.5", "n=3"] for line in lines)
    assert any(line.endswith("skipped  heavy on a CPU: trains a WideResNet-50-2 surrogate; --securitynet-heavy runs it")
               for line in lines)
    assert any(line.endswith("error    (no reason recorded)") for line in lines)
    long_reason = "weights missing: " + " ".join(f"word{i}" for i in range(60)) + " end-of-hint"
    wrapped = summary_lines([{"model": "m", "benchmark": "b.y", "setting": "s", "outcome": "skipped",
                              "message": long_reason}])
    assert "..." not in "\n".join(wrapped)
    assert " ".join(" ".join(wrapped[1:-1]).split()[3:]) == long_reason  # whole, in order, over several lines
    assert len(wrapped) > 3 and all(line.startswith(" " * 19 + "word") for line in wrapped[2:-1])
    folded = summary_lines(rows, max_rows=10)
    assert len([line for line in folded if line.startswith("  b.x")]) == 2  # only rows that did not pass
    assert folded[-1].startswith("3 models, 62 rows: 60 passed, 1 error, 1 skipped (passed rows folded")


def test_estimate_prefers_this_machines_previous_run(tmp_path):
    doc = {"schema": SCHEMA, "run": {}, "models": {},
           "results": [{"model": "a", "benchmark": "b", "setting": "s", "outcome": "passed", "wall_time_s": 2.0,
                        "setup_time_s": 1.0},
                       {"model": "a", "benchmark": "b", "setting": "t", "outcome": "failed", "wall_time_s": 9.0}]}
    (tmp_path / "r.json").write_text(json.dumps(doc))
    previous = estimate.previous_run(tmp_path / "r.json")
    reference = estimate.Durations({"a::b::s": 50.0, "a::b::t": 4.0}, "a reference run")
    got = estimate.estimate(["a::b::s", "a::b::t", "a::b::u"], [previous, reference])
    assert (got.seconds, got.known, got.total) == (7.0, 2, 3)
    assert got.describe() == "about 7 s for 2 of 3 tests (warm cache; from the previous run's durations and a reference run)"
    assert estimate.estimate(["x"], [previous]).describe().startswith("no estimate yet")
    assert estimate.previous_run(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text('{"results": []}')  # not a results file: no estimate, no error
    assert estimate.previous_run(tmp_path / "bad.json") is None


def test_estimate_counts_cold_models_the_run_outside_its_tests_and_the_load(tmp_path, harness):
    reference = estimate.Durations({"m::b::s": 30.0}, "a reference run", cold={"m": 12.0}, overhead=10.0, cpu=True)
    assert estimate.estimate(["m::b::s"], [reference]).describe() == "about 40 s (warm cache; from a reference run)"
    cold = estimate.estimate(["m::b::s"], [reference], cold=["m"])
    assert cold.describe() == "about 52 s (cold cache: 1 demo model trains first, 12 s; from a reference run)"
    assert cold.describe(load=7.0, cores=2).endswith("; load average 7.0 on 2 cores now: expect about 3 min")  # 52 s x 4
    assert "load average" not in cold.describe(load=0.5, cores=2)
    measured = estimate.Durations({"m::b::s": 100.0}, "the previous run's durations")  # wall seconds: load included
    assert "load average" not in estimate.estimate(["m::b::s"], [measured]).describe(load=7.0, cores=2)
    demo = [harness.catalog.models["demo-digits-cnn"], harness.catalog.models["demo-digits-rbf-overfit"],
            harness.catalog.models["cifar10-resnet20-akamaster"]]
    (tmp_path / "weights" / "demo").mkdir(parents=True)
    (tmp_path / "weights" / "demo" / "demo-digits-cnn-0123456789ab.pt").write_bytes(b"")
    assert estimate.cold_models(demo, tmp_path) == ["demo-digits-rbf-overfit"]


def test_the_packaged_reference_covers_every_demo_test():
    reference = estimate.reference_run()
    assert reference is not None and "CPU" in reference.source
    demo_keys = {k for k in reference.seconds if k.startswith("demo-digits-")}
    assert len(demo_keys) >= 60 and all(v >= 0 for v in reference.seconds.values())
    assert set(reference.cold) == {"demo-digits-cnn", "demo-digits-rbf-overfit"} and reference.overhead > 0


def test_live_status_draws_after_the_cursor_and_erases_itself(monkeypatch):
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)
    read_end, write_end = os.pipe()
    phases = progress.Phases()
    phases("training the surrogate", total=20, unit="epoch")
    phases.step(3)
    status = progress.LiveStatus(write_end, width=lambda: 80, column=lambda: 30, interval=0.05)
    status.start(phases.status, expected_s=40)
    time.sleep(0.3)
    status.close()
    written = os.read(read_end, 1 << 16).decode()
    os.close(read_end)
    first = written.split(progress.RESTORE)[0]
    assert first == progress.SAVE + progress.CLEAR + " [0s of ~40s] training the surrogate, epoch 3/20"[:49]
    assert written.endswith(progress.SAVE + progress.CLEAR + progress.RESTORE)  # erased before pytest writes on


def test_phases_report_their_lengths():
    clock = iter([0.0, 1.0, 4.0, 10.0]).__next__
    phases = progress.Phases(clock=clock)
    phases("setup")
    phases("attack", total=5, unit="epoch")
    assert phases.report().splitlines() == ["     1.0s      3.0s  setup", "     4.0s      6.0s  attack"]
    assert phases.status() == "attack, epoch 0/5"


def test_gpus_without_a_gpu_is_one_notice_and_one_worker_per_core(pytester, monkeypatch, recwarn):
    """`--gpus 4` on a CPU: a one-line notice in the run's header (no warning with its source line), and
    one worker per core."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(gpus, "inherited_gpus", lambda: [])
    config = pytester.parseconfig("--gpus", "4")
    gpus.configure_workers(config)
    assert (config.option.numprocesses, config.option.tx, config.option.dist) == (2, ["popen", "popen"], "loadgroup")
    assert gpus.pytest_report_header(config) == (
        "securitynet: --gpus 4: no GPU visible; 2 workers (one per CPU core, of 4 asked for) run on the CPU (2 cores)")
    gpus.GpuPool(4, [])
    assert not recwarn.list
    explicit = pytester.parseconfig("--gpus", "4", "-n", "3")
    gpus.configure_workers(explicit)
    assert explicit.option.numprocesses == 3 and "no GPU visible; 3 workers run on the CPU" in gpus.pytest_report_header(explicit)
    assert gpus.gpu_notice(4, 2, 4, 4) == "securitynet: --gpus 4: 2 GPU(s) visible; the other workers run on the CPU"
    assert gpus.gpu_notice(2, 2, 2, 2) is None


# --- the catalog command ------------------------------------------------------------------------


def test_list_takes_the_name_stats_prints_and_names_valid_ids(capsys):
    assert main(["catalog", "list", "--dataset", "CIFAR-10"]) == 0
    by_name = capsys.readouterr().out.splitlines()
    assert main(["catalog", "list", "--dataset", "cifar10"]) == 0
    assert by_name == capsys.readouterr().out.splitlines() and len(by_name) > 100
    assert main(["catalog", "list", "--dataset", "CIFAR-11"]) == 2
    err = capsys.readouterr().err
    assert "no such dataset" in err and "CIFAR-10" in err and "cifar10-jpeg" in err


def test_stats_says_what_it_counts_and_merges_country_orders(capsys):
    assert main(["catalog", "stats"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("Counting the 529 models of the SecurityNet database; the catalog holds ")
    assert "akamaster (4), demo (2)" in first
    assert normalise_countries("USA, China") == normalise_countries("China, USA") == "China, USA"
    countries = panel_counts(records(load_catalog([BUILTIN_CATALOG])), next(p for p in PANELS if p.key == "country"))
    assert "USA, China" not in countries["benchmark"] and countries["benchmark"]["China, USA"] == 210


def test_an_unknown_id_is_reported_from_the_cached_catalog_without_torch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SECURITYNET_CACHE", str(tmp_path))
    assert main(["catalog", "list", "--tag", "demo"]) == 0  # fills the catalog cache
    capsys.readouterr()
    parsed = []
    monkeypatch.setattr(entries, "_load_file", lambda file, catalog: parsed.append(file))
    assert main(["catalog", "show", "resnet20-cifar10"]) == 2
    assert parsed == []  # nothing parsed: the validated catalog came from the cache
    assert "did you mean cifar10-resnet20-akamaster" in capsys.readouterr().err
    code = ("import sys; from pytest_securitynet.cli import main; "
            "assert main(['catalog', 'show', 'no-such-model']) == 2; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "SECURITYNET_CACHE": str(tmp_path)})
    assert done.stdout.strip() == "False"


# --- the project conftest -----------------------------------------------------------------------


def load_root_conftest():
    spec = importlib.util.spec_from_file_location("securitynet_root_conftest", REPO / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_root_conftest_is_inert_by_default():
    module = load_root_conftest()
    assert module.ROW_EXTRAS == {} and not module.LOCAL_CATALOG.exists()
    row = {"model": "m"}
    module.pytest_securitynet_row(item=None, row=row)
    assert row == {"model": "m"}
    assert module.example_mlp(num_classes=3)(torch.rand(2, 1, 8, 8)).shape == (2, 3)


def test_root_conftest_adds_a_local_catalog_a_builder_and_row_fields(pytester, project):
    text = (REPO / "conftest.py").read_text().replace('ROW_EXTRAS: dict[str, Any] = {}',
                                                      'ROW_EXTRAS: dict[str, Any] = {"code_version": "abc123"}')
    (pytester.path / "conftest.py").write_text(text)
    demo = (BUILTIN_CATALOG / "models" / "demo.toml").read_text()
    local = demo[demo.index("[[models]]"):demo.index("[[models]]", demo.index("[[models]]") + 1)]
    local = (local.replace('id = "demo-digits-cnn"', 'id = "my-digits-mlp"').replace('"demo_cnn"', '"example_mlp"')
             .replace("{ num_classes = 10, in_channels = 1, width = 8 }", "{ num_classes = 10, input_dim = 64 }")
             .replace('tags = ["demo"]', 'tags = ["mine"]'))
    (pytester.path / "securitynet-local.toml").write_text(local)
    shutil.copy(TASK, pytester.path / "benchmarks" / TASK.name)
    project("benchmarks", "-k", "my-digits-mlp").assert_outcomes(passed=1)
    (row,) = results(pytester)["results"]
    assert row["model"] == "my-digits-mlp" and row["extra"] == {"code_version": "abc123"}
    assert row["metrics"]["train_accuracy"] > 0.9


def test_readme_first_command_needs_only_pypi_and_its_examples_are_ignored():
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("```bash"):].splitlines()[1:5]
    commands = [line for line in block if line.strip() and not line.lstrip().startswith("#")]
    assert 'pip install -e ".[test]"' in commands[0] and "--index-url" not in commands[0]
    # The CPU-only index is offered only as a commented, optional alternative.
    assert any(line.lstrip().startswith("#") and "--index-url https://download.pytorch.org/whl/cpu" in line
               and "torch==2.14.1" in line and "torchvision==0.29.1" in line for line in block)
    written = ["securitynet-results-artifacts/x.png", "report/index.html", "securitynet-results.json",
               "securitynet-results.json.lock", "securitynet-results.json.journal.jsonl",
               "securitynet-results-runs/0001_2026-12-07T07-30-54.json"]
    ignored = subprocess.run(["git", "check-ignore", *written], cwd=REPO, capture_output=True, text=True)
    assert ignored.stdout.split() == written
    assert subprocess.run(["git", "check-ignore", "-q", "pytest_securitynet/results/new.py"], cwd=REPO).returncode == 1


# --- models whose weights are missing -----------------------------------------------------------


def test_missing_weights_stop_the_run_before_the_first_test(pytester, project, monkeypatch, tmp_path):
    """Offline with no weights: one line naming how many models lack them and what to do, no test, exit 4."""
    shutil.copy(TASK, pytester.path / "benchmarks" / TASK.name)
    monkeypatch.delenv("SECURITYNET_MIRROR", raising=False)
    result = project("benchmarks", "-k", "akamaster or demo-digits-cnn", "--securitynet-offline",
                     f"--securitynet-cache={tmp_path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "ERROR: 4 of 5 selected models need weights or data that are not in the cache or a mirror (offline); run "
        "`securitynet catalog prefetch -k 'akamaster or demo-digits-cnn'` where the network is reachable (*), "
        "or pass --securitynet-skip-missing"])
    out = result.stdout.str() + result.stderr.str()
    assert "PASSED" not in out and "passed" not in out and "missing file" not in out  # not one test ran
    assert not (pytester.path / "out.json").exists()
    assert len(out.splitlines()) < 15

    skipping = project("benchmarks", "-k", "akamaster or demo-digits-cnn", "--securitynet-offline",
                       f"--securitynet-cache={tmp_path}", "--securitynet-skip-missing", "-rs")
    skipping.assert_outcomes(passed=1, skipped=4)
    skipping.stdout.fnmatch_lines([
        "securitynet: the tests of 4 of 5 selected models skip: their weights or data are not in the cache or a "
        "mirror (offline; --securitynet-skip-missing): cifar10-resnet20-akamaster, *",
        "securitynet: 5 tests of 1 benchmark on 5 models *",
        "*cifar10-resnet20-akamaster: resnet20-12fca82f.th, * not in the cache or a mirror (offline)*"])


def test_robustbench_models_skip_saying_so_without_their_package(pytester, project, monkeypatch, tmp_path):
    """`-k cifar10` selects RobustBench's CIFAR-10 entries too: without the [robust] extra they skip
    with the install line (no error row), and the missing-files check neither counts nor stops them."""
    from pytest_securitynet.zoo import robustbench as zoo_robustbench

    shutil.copy(TASK, pytester.path / "benchmarks" / TASK.name)
    monkeypatch.setattr(zoo_robustbench, "robustbench_installed", lambda: False)
    monkeypatch.delenv("SECURITYNET_MIRROR", raising=False)
    result = project("benchmarks", "-k", "ding2020mma", "--securitynet-offline", f"--securitynet-cache={tmp_path}", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*cifar10-linf-ding2020mma-robustbench: RobustBench models need the robustbench "
                                 "package: pip install 'pytest-securitynet[[]robust]'*"])
    assert "not in the cache or a mirror" not in result.stdout.str() + result.stderr.str()


def test_missing_weights_stop_an_xdist_run_from_its_controller(pytester, project, monkeypatch, tmp_path):
    shutil.copy(TASK, pytester.path / "benchmarks" / TASK.name)
    monkeypatch.setenv("SECURITYNET_MIRROR", str(tmp_path / "empty"))
    result = project("benchmarks", "-k", "resnet20 and akamaster", "-n", "1", "--securitynet-offline",
                     f"--securitynet-cache={tmp_path}", subprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: 1 of 1 selected models need weights or data that are not in the cache or a "
                                 "mirror (offline); run `securitynet catalog prefetch -k 'resnet20 and akamaster'`*"])
    assert "error" not in result.stdout.str().lower().replace("errors", "")  # no test error rows


@needs_shared(AKAMASTER_DIR, DATA_DIR)
def test_online_missing_files_stop_only_when_their_host_cannot_be_reached(harness):
    from pytest_securitynet.plugin.missing import missing_files
    from pytest_securitynet.zoo.store import FileStore

    entry = harness.catalog.models["cifar10-resnet20-akamaster"]
    store = FileStore(cache_dir=harness.files.cache_dir / "empty-online", mirrors=[], offline=False)
    asked = []
    down = missing_files([entry], store, harness.dataset_for, reachable=lambda host: asked.append(host) or False)
    assert list(down.models) == [entry.id] and "github.com" in down.why and down.why.endswith("cannot be reached")
    assert "github.com" in asked
    up = missing_files([entry], store, harness.dataset_for, reachable=lambda host: True)
    assert not up  # reachable: the test downloads what it needs
    mirrored = FileStore(cache_dir=store.cache_dir, mirrors=harness.files.mirrors, offline=True)
    jpeg = harness.catalog.dataset("cifar10-jpeg")
    assert not missing_files([entry], mirrored, lambda e: jpeg)  # the shared mirrors hold its weights and data



def test_counted_calls_become_a_phase_with_steps():
    phases = progress.Phases(clock=iter([0.0, 1.0, 2.0, 3.0, 4.0]).__next__)
    train = phases.counted(lambda x: x * 2, "training 3 reference models", total=3, unit="model")
    assert phases.status() == ""
    assert [train(1), train(2)] == [2, 4]
    assert phases.status() == "training 3 reference models, model 2/3"
    assert [phase for _, phase in phases.entries] == ["training 3 reference models"]  # entered once


def test_reference_model_training_shows_in_the_phases(pytester, project, tmp_path):
    shutil.copy(BENCHMARKS / "test_membership_inference.py", pytester.path / "benchmarks")
    result = project("benchmarks", "-k", "demo-digits-cnn and rmia-offline", "-rA", f"--securitynet-cache={tmp_path}",
                     "--securitynet-members", "100", "--securitynet-budget",
                     "membership.reference_models=2 membership.reference_pool=200 membership.population=50")
    result.assert_outcomes(passed=1)
    assert results(pytester)["results"][0]["metrics"]["reference_source"] == "trained"  # a fresh cache
    result.stdout.fnmatch_lines(["*Captured securitynet phases call*", "*s  reference models: from memory or the cache*",
                                 "*s  training 2 reference models (once; cached for later runs)",
                                 "*s  reference models: their outputs on the attacker's data*",
                                 "*s  rmia-offline: scoring members against non-members"])


def test_live_status_leaves_out_an_expected_time_under_a_second():
    status = progress.LiveStatus(-1, width=lambda: 80, column=lambda: 0)
    status._text = lambda: "running"
    status._since, status._expected = time.monotonic(), 0.3
    assert status.line() == " [0s] running"
    status._expected = 40
    assert status.line() == " [0s of ~40s] running"


def test_budgets_doc_lists_every_declared_budget_field(pytester):
    """docs/budgets.md has one table row per field of every `@budget` a benchmark file declares, and no other."""
    import dataclasses
    import importlib
    import re

    from pytest_securitynet.harness.settings import declared_budgets

    pytester.syspathinsert(BENCHMARKS)
    modules = {path.stem for path in BENCHMARKS.glob("test_*.py")}
    for module in modules:
        importlib.import_module(module)  # declaring happens at import
    declared = {(name, field.name) for name, cls in declared_budgets().items() if cls.__module__ in modules
                for field in dataclasses.fields(cls)}
    assert {name for name, _ in declared} >= {"backdoor", "evasion", "membership", "stealing"}
    documented, budget = set(), None
    for line in (REPO / "docs" / "budgets.md").read_text().splitlines():
        row = re.match(r"\| *(?:`(\w+)`)? *\| *`(\w+)` *\|", line)
        if row:
            budget = row.group(1) or budget
            documented.add((budget, row.group(2)))
    assert documented == declared


def test_a_stealing_row_says_how_right_the_answers_to_its_training_split_queries_were(pytester, project):
    """An overfit target answers its own training images almost perfectly: the row shows why its copy may beat it."""
    shutil.copy(BENCHMARKS / "test_model_stealing.py", pytester.path / "benchmarks")
    project("benchmarks", "-k", "demo-digits-rbf-overfit and budget10", "--securitynet-budget", "stealing.epochs=1",
            "--securitynet-members", "100").assert_outcomes(passed=1)
    metrics = results(pytester)["results"][0]["metrics"]
    assert metrics["query_split"] == "train" and metrics["answer_accuracy"] >= 0.99
    assert metrics["answer_accuracy"] > metrics["target_accuracy"] + 0.2
