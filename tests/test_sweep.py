"""`securitynet sweep`: planning by model, shards that requeue and resume, status, local sweeps end to end."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

from pytest_securitynet.harness.devices import inherited_gpus  # noqa: E402
from pytest_securitynet.plugin import gpus  # noqa: E402
from pytest_securitynet.cli import main  # noqa: E402
from pytest_securitynet.results.merge import results_of  # noqa: E402
from pytest_securitynet.results.rows import load_results, results_exist, row_key  # noqa: E402
from pytest_securitynet.sweep.cli import add_sweep_parser  # noqa: E402
from pytest_securitynet.sweep.plan import (PLUGIN, CollectedTest, Durations, ModelGroup, assign,  # noqa: E402
                                           collect, make_plan, read_plan, write_manifest, write_plan)
from pytest_securitynet.sweep.shard import ShardRun, ShardSpec, launch, stop, wait  # noqa: E402
from pytest_securitynet.sweep.status import record_submissions, sweep_status  # noqa: E402
from pytest_securitynet.sweep.submit import SweepOptions, local_slots, run_sweep, slurm_parameters  # noqa: E402

# Tests that cost nothing but the catalog: rows for two demo models without loading one. `test_gate`
# blocks while the file named by SWEEP_GATE exists, so a test can stop or kill a shard mid-run.
QUICK = '''
import os, signal, time
from pathlib import Path
import pytest

@pytest.mark.parametrize("k", [1, 2])
def test_quick(catalog_entry, record, k):
    record(k=k)

def test_gate(catalog_entry, record):
    gate = os.environ.get("SWEEP_GATE")
    while gate and Path(gate).exists():
        time.sleep(0.05)
    record(ok=1)
'''

SIGNALLING = '''
import os, signal, time

def test_signal(catalog_entry, record):
    if os.environ.get("SIGNAL_PARENT"):
        os.kill(os.getppid(), signal.SIGUSR2)  # the xdist controller
    os.kill(os.getpid(), signal.SIGUSR2)
    time.sleep(0.3)
    record(ok=1)
'''

DEMO_MODELS = ("demo-digits-cnn", "demo-digits-rbf-overfit")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path, cache_dir) -> Path:
    """A project directory with the quick benchmarks; `selection` is how a sweep selects them."""
    root = tmp_path / "project"
    (root / "bench").mkdir(parents=True)
    (root / "bench" / "test_quick.py").write_text(QUICK)
    return root


def selection(cache_dir: Path, *extra: str) -> list[str]:
    return ["bench", "-k", "demo", "-p", "no:cacheprovider", f"--securitynet-cache={cache_dir}", *extra]


def rows_of(path: Path) -> list[dict]:
    return load_results(path)["results"]


def wait_for(predicate, timeout: float = 120.0, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# --- planning ----------------------------------------------------------------------------------

def test_longest_first_assignment_known_answer():
    groups = [ModelGroup(m, [f"t::{m}"], s) for m, s in [("a", 7), ("b", 5), ("c", 4), ("d", 3), ("e", 3), ("f", 2)]]
    shards = assign(groups, 2)
    # 7 -> s0; 5 -> s1; 4 -> s1 (9); 3 (d) -> s0 (10); 3 (e) -> s1 (12); 2 -> s0 (12)
    assert [s.models for s in shards] == [["a", "d", "f"], ["b", "c", "e"]]
    assert [s.seconds for s in shards] == [12, 12]
    assert [s.name for s in shards] == ["shard-000", "shard-001"]


def test_equal_costs_tie_break_on_model_id_and_never_more_shards_than_models():
    groups = [ModelGroup(m, [f"t::{m}"], 1.0) for m in ("c", "a", "b")]
    assert [s.models for s in assign(groups, 2)] == [["a", "c"], ["b"]]
    assert [s.models for s in assign(groups, 10)] == [["a"], ["b"], ["c"]]


def test_a_model_never_spans_shards_and_costs_come_from_earlier_rows():
    tests = [CollectedTest(f"b/test_x.py::test_{b}[{m}]", m, f"x.{b}", "default")
             for m in ("m1", "m2", "m3") for b in ("fast", "slow")]
    rows = [{"model": "m1", "benchmark": "x.slow", "setting": "default", "wall_time_s": 100.0, "setup_time_s": 0.0},
            {"model": "m2", "benchmark": "x.slow", "setting": "default", "wall_time_s": 10.0, "setup_time_s": 2.0},
            {"model": "m1", "benchmark": "x.fast", "setting": "default", "wall_time_s": 1.0, "setup_time_s": 0.0}]
    plan = make_plan(tests, 2, ["b"], Durations(rows))
    by_model = {m: s.name for s in plan.shards for m in s.models}
    for shard in plan.shards:
        assert all(any(f"[{m}]" in n for m in shard.models) for n in shard.nodeids)
    # m1 costs 101 s; m2 costs 12 s + the median of x.fast (1 s); m3 has no row: the medians 56 + 1.
    assert by_model["m1"] != by_model["m2"] == by_model["m3"]
    assert sorted(s.seconds for s in plan.shards) == [13.0 + 57.0, 101.0]


def test_a_plan_is_identical_across_two_runs(project, cache_dir, tmp_path):
    args = selection(cache_dir)
    first, second = collect(args, project), collect(args, project)
    assert {t.model for t in first} == set(DEMO_MODELS) and len(first) == 6
    plans = []
    for name, tests in (("one", first), ("two", list(reversed(second)))):
        random.Random(name).shuffle(tests)  # the plan does not depend on the order tests come in
        write_plan(make_plan(tests, 2, args), tmp_path / name)
        plans.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())})
    assert plans[0] == plans[1] and len(plans[0]) == 3  # plan.json and two manifests
    assert [s.models for s in read_plan(tmp_path / "one").shards] == [["demo-digits-cnn"], ["demo-digits-rbf-overfit"]]


def test_plan_only_submits_nothing_and_a_sweep_directory_keeps_its_selection(project, cache_dir, tmp_path, capsys,
                                                                            monkeypatch):
    out = tmp_path / "runs" / "planned"
    monkeypatch.chdir(project)
    assert main(["sweep", "--shards", "2", "--plan-only", "--out", str(out), "--", *selection(cache_dir)]) == 0
    printed = capsys.readouterr().out
    assert "6 tests of 2 models in 2 shards" in printed and "shard-001" in printed
    assert (out / "plan.json").exists() and not (out / "jobs.json").exists()
    assert main(["sweep", "--out", str(out), "--executor", "local", "--", "bench", "-k", "cnn"]) == 2
    assert "holds a sweep of" in capsys.readouterr().err
    assert main(["sweep", "--out", str(out), "--shards", "3", "--plan-only"]) == 2


def test_a_manifest_runs_only_its_tests_and_names_what_it_lacks(project, cache_dir, tmp_path):
    manifest = tmp_path / "m.txt"
    write_manifest(manifest, ["bench/test_quick.py::test_quick[demo-digits-cnn-2]",
                              "bench/test_quick.py::test_quick[demo-digits-gone-1]"])
    out = tmp_path / "r.json"
    proc = subprocess.run(["python3", "-m", "pytest", *selection(cache_dir), "-p", PLUGIN,
                           f"--securitynet-manifest={manifest}", f"--securitynet-json={out}"],
                          cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(r["model"], r["setting"]) for r in rows_of(out)] == [("demo-digits-cnn", "2")]
    assert "1 listed test(s) were not collected, e.g. bench/test_quick.py::test_quick[demo-digits-gone-1]" in proc.stdout


# --- one shard ----------------------------------------------------------------------------------

def shard_spec(project: Path, out: Path, cache_dir: Path, name: str = "shard-000", extra: tuple[str, ...] = ()) -> ShardSpec:
    """A one-shard plan of the quick benchmarks in `out`."""
    args = selection(cache_dir, *extra)
    plan = make_plan(collect(args, project), 1, args)
    write_plan(plan, out)
    # Two minutes to stop: a loaded CI machine may be slow to write the results and exit.
    return ShardSpec(out=str(out), name=name, pytest_args=args, cwd=str(project), stop_grace_s=120)


@pytest.mark.slow
def test_checkpoint_stops_pytest_and_the_requeued_shard_resumes(project, cache_dir, tmp_path, monkeypatch):
    """submitit's path on a timeout, called directly: the signal handler calls `checkpoint` and
    exits; the DelayedSubmission it returned is what submitit runs when the job restarts."""
    gate = tmp_path / "gate"
    gate.touch()
    monkeypatch.setenv("SWEEP_GATE", str(gate))
    spec = shard_spec(project, tmp_path / "sweep", cache_dir)
    run, requeued = ShardRun(spec), []

    def on_signal(signum, frame):
        requeued.append(run.checkpoint())
        raise SystemExit(-1)

    def signal_when_blocked():  # both quick tests of the first model are done; test_gate is waiting
        wait_for(lambda: len(rows_of(spec.results)) >= 2 if spec.results.exists() else False, what="two rows")
        os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, on_signal)
    helper = threading.Thread(target=signal_when_blocked)
    try:
        helper.start()
        with pytest.raises(SystemExit):
            run()
    finally:
        helper.join()
        signal.signal(signal.SIGUSR2, previous)
    state = json.loads(spec.state_file.read_text())
    assert state["state"] == "requeued" and state["exit_code"] == 2  # pytest was interrupted, not killed
    before = {row_key(r): r["finished_at"] for r in rows_of(spec.results)}
    assert len(before) == 2
    (delayed,) = requeued
    assert isinstance(delayed, submitit.helpers.DelayedSubmission) and delayed.function.requeues == 1
    gate.unlink()
    outcome = delayed.result()  # what the requeued job runs
    assert outcome["state"] == "done" and outcome["starts"] == 2 and outcome["exit_code"] == 0
    rows = rows_of(spec.results)
    assert len(rows) == 6 == len({row_key(r) for r in rows})
    assert all(r["outcome"] == "passed" for r in rows)
    assert {k: v for k, v in ((row_key(r), r["finished_at"]) for r in rows) if k in before} == before  # not rerun


@pytest.mark.slow
def test_usr2_sent_to_every_process_of_a_shard_kills_none(project, cache_dir, tmp_path, monkeypatch):
    """Slurm signals every process of a job step; pytest and its xdist workers must outlive USR2."""
    (project / "bench" / "test_signal.py").write_text(SIGNALLING)
    monkeypatch.setenv("SIGNAL_PARENT", "1")
    spec = shard_spec(project, tmp_path / "sweep", cache_dir, extra=("-n", "2"))
    proc = launch(spec)
    try:
        assert wait(proc) == 0
    finally:
        stop(proc, 5)
    rows = rows_of(spec.results)
    assert {(r["model"], r["benchmark"]) for r in rows if r["benchmark"] == "signal.signal"} == {
        (m, "signal.signal") for m in DEMO_MODELS}
    assert len(rows) == 8 and {r["worker"] for r in rows} <= {"gw0", "gw1"}
    # Without the shard's launch, the same signal ends pytest (so the check above can fail).
    monkeypatch.delenv("SIGNAL_PARENT")
    plain = subprocess.run(["python3", "-m", "pytest", *selection(cache_dir, "bench/test_signal.py"),
                            f"--securitynet-json={tmp_path / 'plain.json'}"], cwd=project, capture_output=True)
    assert plain.returncode == -signal.SIGUSR2


@pytest.mark.slow
def test_a_timeout_requeues_through_submitit_and_the_shard_finishes(project, cache_dir, tmp_path, monkeypatch):
    """submitit's local executor sends USR2 `signal_delay_s` before the time limit, as Slurm does;
    its handler calls `checkpoint`, the task exits for requeue and restarts from the checkpoint."""
    gate = tmp_path / "gate"
    gate.touch()
    monkeypatch.setenv("SWEEP_GATE", str(gate))
    spec = shard_spec(project, tmp_path / "sweep", cache_dir)
    executor = submitit.LocalExecutor(tmp_path / "submitit" / "%j", max_num_timeout=3)
    executor.update_parameters(timeout_min=2, signal_delay_s=105, gpus_per_node=0)  # USR2 15 s after each start
    job = executor.submit(ShardRun(spec))

    def state() -> dict:
        try:
            return json.loads(spec.state_file.read_text())
        except (OSError, ValueError):
            return {}

    wait_for(lambda: state().get("state") == "requeued" or state().get("starts", 0) >= 2, timeout=180, what="a requeue")
    gate.unlink()
    outcome = job.result()
    assert outcome["state"] == "done" and outcome["starts"] >= 2 and outcome["requeues"] >= 1
    rows = rows_of(spec.results)
    assert len(rows) == 6 == len({row_key(r) for r in rows}) and all(r["outcome"] == "passed" for r in rows)


# --- status, executors ----------------------------------------------------------------------------

def test_status_tells_pending_running_done_and_failed_apart(tmp_path):
    tests = [CollectedTest(f"b/test_x.py::test_y[m{i}]", f"m{i}", "x.y", "default") for i in range(5)]
    plan = make_plan(tests, 5, ["b"])
    write_plan(plan, tmp_path)
    names = [s.name for s in plan.shards]
    states = {
        names[1]: {"state": "running", "job_id": "7_1", "host": "node-a", "started_ts": 1.0},
        names[2]: {"state": "done", "exit_code": 1, "job_id": "7_2", "started_ts": 1.0, "ended_ts": 2.0},
        names[3]: {"state": "running", "job_id": "7_3", "host": "node-b", "started_ts": 1.0},
        names[4]: {"state": "failed", "exit_code": 3, "reason": "pytest exited with status 3", "job_id": "7_4",
                   "started_ts": 1.0, "ended_ts": 2.0},
    }
    for name, state in states.items():
        (tmp_path / f"{name}.state.json").write_text(json.dumps(state))
    record_submissions(tmp_path, [{"shard": n, "executor": "slurm", "job_id": f"7_{i}", "submitted_ts": 0.5}
                                  for i, n in enumerate(names)])
    squeue = {"7_0": "PENDING", "7_1": "RUNNING", "7_2": "COMPLETED", "7_3": "GONE", "7_4": "FAILED"}
    got = {s.name: (s.state, s.detail) for s in sweep_status(tmp_path, plan, lambda r: squeue[r["job_id"]])}
    assert got == {names[0]: ("pending", "queued (job PENDING)"), names[1]: ("running", ""),
                   names[2]: ("done", "some tests failed"),
                   names[3]: ("failed", "the job ended while the shard ran (killed or lost)"),
                   names[4]: ("failed", "pytest exited with status 3")}
    # Where the scheduler cannot be asked, the state files speak: nothing is called failed that said it ran.
    unknown = {s.name: s.state for s in sweep_status(tmp_path, plan, lambda r: None)}
    assert unknown == {names[0]: "pending", names[1]: "running", names[2]: "done", names[3]: "running",
                       names[4]: "failed"}
    # A failed shard submitted again is pending until its new job starts, and failed if that job ends first.
    record_submissions(tmp_path, [{"shard": names[4], "executor": "slurm", "job_id": "8_0", "submitted_ts": 3.0}])
    assert sweep_status(tmp_path, plan, lambda r: "PENDING")[4].state == "pending"
    assert sweep_status(tmp_path, plan, lambda r: "GONE")[4].state == "failed"


def test_a_requeued_job_is_pending_whatever_its_shard_wrote_and_never_resubmitted(tmp_path):
    """One rule on every host: while Slurm holds a shard's job (requeued after SIGTERM, pending with a
    BeginTime), the shard is pending, however its process ended, and the sweep does not submit it."""
    tests = [CollectedTest(f"b/test_x.py::test_y[m{i}]", f"m{i}", "x.y", "default") for i in range(3)]
    plan = make_plan(tests, 3, ["b"])
    write_plan(plan, tmp_path)
    names = [s.name for s in plan.shards]
    here = socket.gethostname()
    gone = subprocess.Popen(["true"])
    gone.wait()  # the shard's process on this host has ended (as it does when Slurm requeues its job)
    for i, kind in enumerate(("requeued", "running", "failed")):
        (tmp_path / f"{names[i]}.state.json").write_text(json.dumps(
            {"state": kind, "job_id": f"9_{i}", "host": here, "pid": gone.pid, "started_ts": 1.0, "ended_ts": 2.0}))
    record_submissions(tmp_path, [{"shard": n, "executor": "slurm", "job_id": f"9_{i}", "submitted_ts": 0.5}
                                  for i, n in enumerate(names)])
    statuses = sweep_status(tmp_path, plan, lambda r: {"9_0": "PENDING", "9_1": "COMPLETING", "9_2": "PENDING"}[r["job_id"]])
    assert [(s.state, s.detail) for s in statuses] == [("pending", "requeued (job PENDING)"), ("running", ""),
                                                       ("pending", "requeued (job PENDING)")]
    assert all(s.job_alive for s in statuses)
    from pytest_securitynet.sweep.submit import _Driver

    driver = _Driver(tmp_path, plan, {"cwd": str(tmp_path)}, SweepOptions(retries=5), None, lambda line: None)
    assert driver.wanted(statuses) == []
    # Once Slurm has let go of them, the same shards are failed and wanted again.
    ended = sweep_status(tmp_path, plan, lambda r: "GONE")
    assert [s.state for s in ended] == ["failed"] * 3 and driver.wanted(ended) == names


def test_slurm_gets_one_array_limited_to_max_parallel(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    options = SweepOptions(shards=64, partition="gpu", time_min=240, max_parallel=16, gpus_per_shard=2, mem_gb=32,
                           slurm_setup=["source venv/bin/activate"], slurm_parameters={"account": "abc"})
    text = _make_sbatch_string(command="python -m x", folder=tmp_path, map_count=64,
                               **slurm_parameters(tmp_path / "runs" / "cifar10", options))
    for line in ("#SBATCH --array=0-63%16", "#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --signal=USR2@120", "#SBATCH --mem=32GB", "#SBATCH --account=abc",
                 "#SBATCH --job-name=securitynet-cifar10", "source venv/bin/activate"):
        assert line in text.splitlines()


class FakeNode:
    """What `pytest_configure_node` sees of an xdist worker."""

    def __init__(self, worker_id: str):
        self.gateway = argparse.Namespace(id=worker_id)
        self.workerinput: dict = {}


def test_gpus_index_into_an_inherited_cuda_visible_devices_and_never_change_it(monkeypatch):
    """CUDA_VISIBLE_DEVICES=3,5 with --gpus 2: the workers get cuda:0 and cuda:1, which are GPUs 3 and 5."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    hooks = gpus.XdistHooks(gpus.GpuPool(2, inherited_gpus(count=2)), [], True)  # torch sees the two
    nodes = [FakeNode("gw0"), FakeNode("gw1")]
    for node in nodes:
        hooks.pytest_configure_node(node)
    assert [(n.workerinput[gpus.GPU_KEY], n.workerinput[gpus.GPU_ID_KEY]) for n in nodes] == [(0, "3"), (1, "5")]
    hooks.pytest_testnodedown(nodes[0], None)  # a crashed worker's replacement gets its GPU
    replacement = FakeNode("gw2")
    hooks.pytest_configure_node(replacement)
    assert (replacement.workerinput[gpus.GPU_KEY], replacement.workerinput[gpus.GPU_ID_KEY]) == (0, "3")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
    assert inherited_gpus({"CUDA_VISIBLE_DEVICES": "3,5"}, count=0) == []  # listed, but torch sees none
    assert inherited_gpus({}, count=2) == ["0", "1"]


def test_local_shards_get_their_gpus_from_the_inherited_list():
    options = SweepOptions(executor="local", gpus_per_shard=2, max_parallel=8)
    assert local_slots(options, ["3", "5", "6", "7", "GPU-9"]) == ["3,5", "6,7"]
    assert local_slots(SweepOptions(executor="local", gpus_per_shard=0, max_parallel=2), ["3"]) == ["", ""]


# --- whole sweeps on this machine ----------------------------------------------------------------

def sweep_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="securitynet")
    add_sweep_parser(parser.add_subparsers())
    args = parser.parse_args(["sweep", *argv])
    return args.run(args)


GATE = """
import os, time
from pathlib import Path

def test_gate(catalog_entry, record):
    gate = os.environ.get("SWEEP_GATE")
    while gate and Path(gate).exists():
        time.sleep(0.05)
    record(ok=1)
"""
DEMO_FILES = ("benchmarks/test_membership_inference.py", "benchmarks/test_task_performance.py")
"""The quick benchmarks: 11 tests per demo model (naming the files keeps collection short)."""


@pytest.fixture
def demo_project(tmp_path) -> Path:
    """A copy of the repository's benchmarks, plus a test that blocks while SWEEP_GATE's file exists."""
    root = tmp_path / "demo-project"
    shutil.copytree(REPO / "benchmarks", root / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "benchmarks" / "test_zz_gate.py").write_text(GATE)  # runs after a model's other tests
    return root


def demo_selection(cache_dir: Path, *files: str) -> list[str]:
    return [*DEMO_FILES, *files, "-k", "demo", "--securitynet-limit", "200", "-p", "no:cacheprovider",
            f"--securitynet-cache={cache_dir}"]


def comparable(path: Path) -> list[tuple]:
    """Rows with only their result metrics (times and cache provenance differ between any two runs)."""
    return sorted((r["model"], r["benchmark"], r["setting"], r["outcome"], json.dumps(results_of(r), sort_keys=True))
                  for r in rows_of(path))


@pytest.mark.slow
def test_a_two_shard_local_sweep_gives_the_rows_of_a_single_run(demo_project, cache_dir, tmp_path, capsys,
                                                                   monkeypatch):
    out, single = tmp_path / "runs" / "demo", tmp_path / "single.json"
    subprocess.run(["python3", "-m", "pytest", *demo_selection(cache_dir), f"--securitynet-json={single}"],
                   cwd=demo_project, check=True, capture_output=True)
    monkeypatch.chdir(demo_project)
    assert sweep_cli("--shards", "2", "--executor", "local", "--gpus-per-shard", "0", "--poll", "0.5",
                     "--out", str(out), "--", *demo_selection(cache_dir)) == 0
    tests = read_plan(out).tests  # 11 membership and task-performance settings per model, or more
    assert len(comparable(single)) == tests >= 22 and comparable(out / "results.json") == comparable(single)
    assert load_results(out / "results.json")["run"]["status"] == "merged"
    assert [s.models for s in read_plan(out).shards] == [["demo-digits-cnn"], ["demo-digits-rbf-overfit"]]
    capsys.readouterr()
    assert sweep_cli("status", str(out)) == 0
    assert f"0 pending, 0 running, 2 done, 0 failed; {tests} of {tests} rows written" in capsys.readouterr().out
    # Again with the same directory: nothing is submitted, the merged rows stay; merge reads a sweep directory.
    submissions = len(json.loads((out / "jobs.json").read_text())["submissions"])
    outcome = run_sweep(out, [], SweepOptions(executor="local", gpus_per_shard=0, poll_s=0.5), say=lambda line: None)
    assert outcome.submissions == 0 and outcome.complete
    assert len(json.loads((out / "jobs.json").read_text())["submissions"]) == submissions
    (out / "results.json").unlink()
    assert main(["merge", str(out)]) == 0
    assert comparable(out / "results.json") == comparable(single)


@pytest.mark.slow
def test_a_shard_killed_mid_run_is_resubmitted_and_loses_or_repeats_no_row(demo_project, cache_dir, tmp_path,
                                                                           monkeypatch):
    gate = tmp_path / "gate"
    gate.touch()
    monkeypatch.setenv("SWEEP_GATE", str(gate))
    out = tmp_path / "runs" / "killed"
    args = demo_selection(cache_dir, "benchmarks/test_zz_gate.py")
    killed: dict = {}

    def submissions() -> list[str]:
        try:
            return [r["shard"] for r in json.loads((out / "jobs.json").read_text())["submissions"]]
        except (OSError, ValueError):
            return []

    def kill_first_shard_at_the_gate():
        # shard-000 runs demo-digits-cnn: its benchmark tests, then test_gate, which waits.
        results = out / "shard-000.json"
        wait_for(lambda: (out / "plan.json").exists(), what="the plan")
        killed["before_gate"] = len(read_plan(out).shards[0].nodeids) - 1
        wait_for(lambda: results_exist(results) and len(rows_of(results)) >= killed["before_gate"], timeout=300,
                 what="shard-000's rows")
        killed["state"] = json.loads((out / "shard-000.state.json").read_text())
        killed["rows"] = {row_key(r): (r["outcome"], r["finished_at"]) for r in rows_of(results)}
        os.kill(killed["state"]["pid"], signal.SIGKILL)  # the shard's process; its pytest dies with it
        wait_for(lambda: submissions().count("shard-000") == 2, what="the resubmission")
        gate.unlink()

    helper = threading.Thread(target=kill_first_shard_at_the_gate)
    helper.start()
    try:
        outcome = run_sweep(out, args, SweepOptions(executor="local", shards=2, gpus_per_shard=0, retries=1, poll_s=0.3),
                            cwd=demo_project, say=lambda line: None)
    finally:
        gate.unlink(missing_ok=True)
        helper.join()
    assert outcome.complete, [(s.name, s.state, s.detail) for s in outcome.statuses]
    assert sorted(submissions()) == ["shard-000", "shard-000", "shard-001"]
    assert len(killed["rows"]) == killed["before_gate"] >= 11
    rows = rows_of(out / "results.json")
    planned = {row_key({"model": t.model, "benchmark": t.benchmark, "setting": t.setting})
               for t in collect(args, demo_project)}
    assert len(rows) == len(planned) >= 24 and {row_key(r) for r in rows} == planned  # none lost, none twice
    assert not [r for r in rows if r["outcome"] not in ("passed", "skipped")]  # a setting may skip on demo models
    kept = {row_key(r): r["finished_at"] for r in rows}
    # Passed before the kill: kept, not rerun (resume runs a skipped test again).
    assert all(kept[k] == at for k, (outcome, at) in killed["rows"].items() if outcome == "passed")


# --- options, files and jobs the sweep checks itself ---------------------------------------------

BAD_OPTIONS = [
    (["--max-parallel", "0"], "--max-parallel 0: must be a whole number of at least 1"),
    (["--max-parallel", "-1"], "--max-parallel -1: must be a whole number of at least 1"),
    (["--retries", "-1"], "--retries -1: must be a whole number of at least 0"),
    (["--time", "0"], "--time 0: must be a whole number of at least 1"),
    (["--poll", "-1"], "--poll -1.0: give the seconds between looks at the shards, more than 0"),
    (["--poll", "0"], "--poll 0.0: give the seconds between looks at the shards, more than 0"),
    (["--shards", "0"], "--shards 0: must be a whole number of at least 1"),
    (["--gpus-per-shard", "-1"], "--gpus-per-shard -1: must be a whole number of at least 0"),
    (["--cpus-per-shard", "0"], "--cpus-per-shard 0: must be a whole number of at least 1"),
    (["--mem-gb", "0"], "--mem-gb 0.0: give the memory per shard in GB, more than 0"),
    (["--signal-delay", "-5"], "--signal-delay -5: must be a whole number of at least 0"),
    (["--time", "1", "--signal-delay", "60"], "--time 1: the stop warning comes --signal-delay 60 s before the limit"),
    (["--executor", "slurm", "--time", "1", "--signal-delay", "30"],
     "--time 1: the stop warning comes --signal-delay 30 s before the limit and Slurm may send it up to 60 s earlier, "
     "which leaves no time to run: give --time 2 or more"),
    (["--durations-from", "no-such-results.json"], "--durations-from no-such-results.json: no such results file"),
    (["--slurm-option", "time=5"], "--slurm-option time: the sweep sets it (--time)"),
]


@pytest.mark.parametrize("flags,message", BAD_OPTIONS, ids=[" ".join(f) for f, _ in BAD_OPTIONS])
def test_every_bad_sweep_option_is_one_line_before_anything_is_written(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "never"
    argv = ["--shards", "2", "--executor", "local", *flags, "--out", str(out), "--", "bench", "-k", "demo"]
    assert sweep_cli(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"securitynet sweep: {message}") and err.count("\n") == 1, err
    assert not out.exists()


def test_gpus_per_shard_auto_follows_what_is_there_and_more_than_that_is_refused(tmp_path, capsys, monkeypatch):
    from pytest_securitynet.sweep import options as sweep_options, slurm

    monkeypatch.setattr(sweep_options, "visible_gpus", lambda: [])
    assert sweep_options.resolve_gpus(SweepOptions(executor="local")).gpus_per_shard == 0
    monkeypatch.setattr(sweep_options, "visible_gpus", lambda: ["3", "5"])
    assert sweep_options.resolve_gpus(SweepOptions(executor="local")).gpus_per_shard == 1
    with pytest.raises(sweep_options.SweepError, match=r"--gpus-per-shard 3: this machine has 2 GPU\(s\)"):
        sweep_options.resolve_gpus(SweepOptions(executor="local", gpus_per_shard=3))
    monkeypatch.setattr(slurm, "default_partition", lambda: "cpu")
    monkeypatch.setattr(slurm, "partition_gpus", lambda partition: {"cpu": 0, "gpu": 8}[partition])
    assert sweep_options.resolve_gpus(SweepOptions()).gpus_per_shard == 0
    assert sweep_options.resolve_gpus(SweepOptions(partition="gpu")).gpus_per_shard == 1
    # The default --gpus-per-shard on a CPU-only partition: one line, and the sweep directory is never made.
    monkeypatch.chdir(tmp_path)
    assert sweep_cli("--shards", "2", "--gpus-per-shard", "1", "--out", str(tmp_path / "x"), "--", "bench") == 2
    assert capsys.readouterr().err == ("securitynet sweep: --gpus-per-shard 1: a node of partition cpu has no GPU; "
                                       "give --gpus-per-shard 0 or auto\n")
    assert not (tmp_path / "x").exists()


def test_gpus_in_a_partitions_gres():
    from pytest_securitynet.sweep.slurm import gres_gpus

    assert [gres_gpus(g) for g in ("(null)", "gpu:4", "gpu:a100:8(S:0-1)", "gpu:2(S:0,1),shard:8", "gpu", "mps:100")] \
        == [0, 4, 8, 2, 1, 0]


def sweep_dir(tmp_path: Path, shards: int = 2) -> tuple[Path, list[str]]:
    """A planned sweep directory (plan, manifests, settings), as a first `securitynet sweep` leaves it."""
    out = tmp_path / "sweep"
    tests = [CollectedTest(f"b/test_x.py::test_y[m{i}]", f"m{i}", "x.y", "default") for i in range(shards)]
    plan = make_plan(tests, shards, ["b"])
    write_plan(plan, out)
    (out / "sweep.json").write_text(json.dumps({"cwd": str(tmp_path), "python": "python3"}))
    return out, [s.name for s in plan.shards]


@pytest.mark.parametrize("damaged", ["shard-000.json", "shard-000.state.json"])
def test_a_damaged_shard_file_is_named_by_status_and_stops_a_continued_sweep(damaged, tmp_path, capsys):
    out, names = sweep_dir(tmp_path)
    (out / damaged).write_text("{not json")
    assert sweep_cli("status", str(out)) == 1
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"securitynet sweep status: ") and str(out / damaged) in line
    row = next(r for r in captured.out.splitlines() if r.startswith("shard-000"))
    assert " failed " in row and str(out / damaged) in row
    assert sweep_cli("--out", str(out), "--executor", "local", "--gpus-per-shard", "0") == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("securitynet sweep: ") and str(out / damaged) in line
    assert not (out / "jobs.json").exists()  # nothing was submitted


def test_a_damaged_submissions_file_is_one_line(tmp_path, capsys):
    out, _ = sweep_dir(tmp_path)
    (out / "jobs.json").write_text("[1, 2")
    assert main(["sweep", "status", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert str(out / "jobs.json") in line and "cannot read the sweep's submissions" in line


def test_jobs_the_sweep_no_longer_wants_are_cancelled_and_waited_for(tmp_path, monkeypatch):
    """An older job of a resubmitted shard and a requeued copy of a done shard are cancelled at
    once; the job of a shard that just finished gets a grace to exit; the sweep is active until
    none of its jobs is left in the queue."""
    from pytest_securitynet.sweep import slurm, submit

    out, names = sweep_dir(tmp_path, 3)
    record_submissions(out, [{"shard": names[0], "executor": "slurm", "job_id": "5_0"},
                             {"shard": names[1], "executor": "slurm", "job_id": "5_1"},
                             {"shard": names[2], "executor": "slurm", "job_id": "5_2"},
                             {"shard": names[0], "executor": "slurm", "job_id": "6_0"}])
    for name, job in ((names[1], "5_1"), (names[2], "5_2")):
        (out / f"{name}.state.json").write_text(json.dumps({"state": "done", "exit_code": 0, "job_id": job}))
    queue = {"5_0": "RUNNING", "5_1": "PENDING", "5_2": "RUNNING", "6_0": "PENDING"}
    cancelled: list[str] = []
    monkeypatch.setattr(slurm, "job_states", lambda ids: {j: queue.get(j, slurm.GONE) for j in ids})
    monkeypatch.setattr(slurm, "cancel", lambda ids: cancelled.extend(ids))
    driver = submit._Driver(out, read_plan(out), {"cwd": str(tmp_path)}, SweepOptions(), None, lambda line: None)
    statuses = driver.statuses()
    assert [s.state for s in statuses] == ["pending", "done", "done"] and driver.wanted(statuses) == []
    driver.cancel(driver.unwanted_jobs(statuses))
    assert sorted(cancelled) == ["5_0", "5_1"]  # 5_2 is a finished shard's job, still exiting
    monkeypatch.setattr(submit, "DONE_JOB_GRACE_S", 0.0)
    driver.cancel(driver.unwanted_jobs(driver.statuses()))
    assert sorted(cancelled) == ["5_0", "5_1", "5_2"]
    queue.update({"5_0": "CANCELLED", "5_1": "COMPLETING", "5_2": "CANCELLED", "6_0": "GONE"})
    (out / f"{names[0]}.state.json").write_text(json.dumps({"state": "done", "exit_code": 0, "job_id": "6_0"}))
    statuses = driver.statuses()
    assert driver.active(statuses)  # 5_1 is still in the queue
    queue["5_1"] = "CANCELLED"
    assert not driver.active(driver.statuses())


@pytest.mark.slow
def test_sigterm_stops_the_shards_pytest_cleanly_and_records_why(project, cache_dir, tmp_path, monkeypatch):
    """A cancel (scancel) signals SIGTERM to every process of the job: pytest ignores it, the shard
    stops pytest with SIGINT (its rows are written) and, not on Slurm, records `failed` with the reason."""
    from pytest_securitynet.sweep.shard import ShardStopped

    gate = tmp_path / "gate"
    gate.touch()
    monkeypatch.setenv("SWEEP_GATE", str(gate))
    spec = shard_spec(project, tmp_path / "sweep", cache_dir)
    run = ShardRun(spec)
    before = signal.getsignal(signal.SIGTERM)

    def terminate_when_blocked():  # both quick tests of the first model are done; test_gate is waiting
        wait_for(lambda: len(rows_of(spec.results)) >= 2 if spec.results.exists() else False, what="two rows")
        child = json.loads(spec.state_file.read_text())["child_pid"]
        os.kill(child, signal.SIGTERM)  # as Slurm does: pytest first, then the shard's own process
        os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=terminate_when_blocked)
    helper.start()
    try:
        with pytest.raises(ShardStopped, match="SIGTERM: the job was cancelled or reached its time limit"):
            run()
    finally:
        helper.join()
        gate.unlink()
    state = json.loads(spec.state_file.read_text())
    assert state["state"] == "failed" and state["exit_code"] == 2  # pytest was interrupted, not killed by SIGTERM
    assert len(rows_of(spec.results)) == 2
    assert signal.getsignal(signal.SIGTERM) == before  # the shard's handler was only there while pytest ran


def test_a_refused_sbatch_is_one_line_and_leaves_no_pickle(tmp_path):
    from pytest_securitynet.sweep.submit import SweepError, _Driver

    out, names = sweep_dir(tmp_path)

    class Refusing:
        folder = out / "submitit" / "%j"

        def submit_array(self, runs):
            (out / "submitit").mkdir(exist_ok=True)
            (out / "submitit" / "0123abcd.pkl").write_bytes(b"pickled shard")  # as submitit dumps before sbatch
            raise submitit.core.utils.FailedJobError(
                "Job submission failed\nsbatch: error: Invalid generic resource (gres) specification\n")

    driver = _Driver(out, read_plan(out), {"cwd": str(tmp_path)}, SweepOptions(gpus_per_shard=0), Refusing(),
                     lambda line: None)
    with pytest.raises(SweepError) as refused:
        driver.submit(names)
    assert str(refused.value) == ("the slurm executor refused the shards: "
                                  "sbatch: error: Invalid generic resource (gres) specification")
    assert list((out / "submitit").iterdir()) == [] and not (out / "jobs.json").exists()
