"""`securitynet sweep --executor slurm` on a real one-node Slurm (scripts/slurm-up).

Each sweep runs the demo models' task-performance test plus a gate test that blocks, for the
models named in SWEEP_GATE's directory, until the test removes the model's file: a shard can be
cancelled, requeued or run into its time limit at a known point. Every test ends with the rows of a
direct `pytest` run, no row twice, and none of the sweep's jobs left in the queue.

Slurm is started here when it is not running and can be (root, slurm-wlm and munge installed), and
stopped again at the end; otherwise the tests skip, saying why. CI starts it in .ci/run and sets
SECURITYNET_REQUIRE_SLURM=1, which turns that skip into a failure.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("submitit")

from pytest_securitynet.results.merge import results_of  # noqa: E402
from pytest_securitynet.results.rows import load_results, results_exist, row_key  # noqa: E402
from pytest_securitynet.sweep import slurm  # noqa: E402
from pytest_securitynet.sweep.status import read_submissions  # noqa: E402
from pytest_securitynet.sweep.submit import SweepOptions, run_sweep  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = Path(os.environ.get("SECURITYNET_SLURM_DIR", "/tmp/securitynet-slurm"))
REQUIRED = os.environ.get("SECURITYNET_REQUIRE_SLURM") == "1"
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
GATED = "demo-digits-cnn"  # shard-000's model (the plan gives each demo model its own shard)

GATE = """
import os, time
from pathlib import Path

def test_gate(catalog_entry, record):
    gate = Path(os.environ.get("SWEEP_GATE", "/nonexistent")) / catalog_entry.id
    while gate.exists():
        time.sleep(0.1)
    record(ok=1)
"""
FILES = ("benchmarks/test_task_performance.py", "benchmarks/test_zz_gate.py")


def _unusable(reason: str) -> None:
    message = f"Slurm cannot be started here: {reason}"
    if REQUIRED:
        pytest.fail(f"{message} (SECURITYNET_REQUIRE_SLURM=1: these tests must run)", pytrace=False)
    pytest.skip(message)


def _idle(env: dict[str, str]) -> bool:
    try:  # sinfo retries a controller that is not there for many seconds: look at its pid first
        os.kill(int((SLURM_DIR / "slurmctld.pid").read_text()), 0)
    except (OSError, ValueError):
        return False
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=env, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and "idle" in proc.stdout.split()


@pytest.fixture(scope="session")
def slurm_cluster():
    """The one-node cluster of scripts/slurm-up (never another Slurm this machine may reach): used
    when it is up, else started, and then stopped once no other test process of the run uses it."""
    conf = SLURM_DIR / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started = False
    if not (conf.exists() and _idle(env)):
        if os.geteuid() != 0:
            _unusable("it is not running, and scripts/slurm-up needs root")
        missing = [t for t in TOOLS if shutil.which(t) is None]
        if missing:
            _unusable(f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge, then scripts/slurm-up)")
        proc = subprocess.run([str(REPO / "scripts" / "slurm-up")], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            _unusable(f"scripts/slurm-up failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        started = not proc.stdout.count("already running")
    users = open(SLURM_DIR / "users.lock", "a")  # noqa: SIM115 - held for the whole session
    fcntl.flock(users, fcntl.LOCK_SH)  # the one that started Slurm stops it once no one holds this
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield conf
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        if started:
            fcntl.flock(users, fcntl.LOCK_EX)
            subprocess.run([str(REPO / "scripts" / "slurm-down"), "--quiet"], env=env, check=False)
        users.close()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The repository's benchmarks and the gate test, in a directory every job sees (one node)."""
    root = tmp_path_factory.mktemp("slurm-project")
    shutil.copytree(REPO / "benchmarks", root / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    (root / FILES[1]).write_text(GATE)
    return root


def selection(cache_dir: Path) -> list[str]:
    return [*FILES, "-k", "demo", "-p", "no:cacheprovider", f"--securitynet-cache={cache_dir}"]


def comparable(path: Path) -> list[tuple]:
    """Rows with only their result metrics (times and cache provenance differ between any two runs)."""
    return sorted((r["model"], r["benchmark"], r["setting"], r["outcome"], json.dumps(results_of(r), sort_keys=True))
                  for r in load_results(path)["results"])


@pytest.fixture(scope="module")
def direct(project, cache_dir, tmp_path_factory) -> list[tuple]:
    """The rows of one plain `pytest` run of the selection: what every sweep must end with. Run
    once for all xdist workers (they share the base temporary directory's parent)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "securitynet-slurm-direct.json"
    with FileLock(shared.with_name("securitynet-slurm-direct.guard")):  # not `.json.lock`: the run's own lock
        if not results_exist(shared):
            proc = subprocess.run(["python3", "-m", "pytest", *selection(cache_dir), f"--securitynet-json={shared}"],
                                  cwd=project, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = comparable(shared)
    assert [r[:4] for r in rows] == [(m, b, "default", "passed") for m in ("demo-digits-cnn", "demo-digits-rbf-overfit")
                                     for b in ("task_performance.accuracy", "zz_gate.gate")]
    return rows


@pytest.fixture
def gate(tmp_path, monkeypatch) -> Path:
    """shard-000's model waits at the gate test until the test opens it (removes its file)."""
    gates = tmp_path / "gates"
    gates.mkdir()
    (gates / GATED).touch()
    monkeypatch.setenv("SWEEP_GATE", str(gates))  # sbatch passes the environment on to the jobs
    return gates / GATED


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def shard_state(out: Path, name: str = "shard-000") -> dict:
    try:
        return json.loads((out / f"{name}.state.json").read_text())
    except (OSError, ValueError):
        return {}


def at_gate(out: Path, name: str = "shard-000") -> bool:
    """The shard has written its task-performance row and waits at the gate."""
    results = out / f"{name}.json"
    return shard_state(out, name).get("state") == "running" and results_exist(results) and \
        len(load_results(results)["results"]) >= 1


def sweep_in_thread(out: Path, project: Path, cache_dir: Path, **options):
    """run_sweep in a thread (the test acts on the cluster meanwhile); returns (thread, box)."""
    import threading

    box: dict = {}
    opts = SweepOptions(executor="slurm", shards=2, poll_s=1.0, retries=1, **options)

    def target():
        try:
            box["outcome"] = run_sweep(out, selection(cache_dir), opts, cwd=project, say=box.setdefault("lines", []).append)
        except BaseException as exc:  # handed to the test's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def finished(thread, box, timeout: float = 300):
    thread.join(timeout)
    assert not thread.is_alive(), f"the sweep did not return within {timeout:.0f} s: {box.get('lines', [])[-5:]}"
    if "error" in box:
        raise box["error"]
    return box["outcome"]


def assert_ended_like_a_direct_run(out: Path, outcome, direct: list[tuple]) -> list[dict]:
    """Same rows as the direct run, none twice, and no job of the sweep left in the queue."""
    assert outcome.complete, [(s.name, s.state, s.detail) for s in outcome.statuses]
    rows = load_results(out / "results.json")["results"]
    assert len(rows) == len({row_key(r) for r in rows})
    assert comparable(out / "results.json") == direct
    submissions = read_submissions(out)
    states = slurm.job_states(r["job_id"] for r in submissions)
    assert not [job for job, state in states.items() if state in slurm.ALIVE], states
    named = subprocess.run(["squeue", "--noheader", f"--name=securitynet-{out.name}", "--format=%i %T"],
                           capture_output=True, text=True, check=True).stdout
    assert named.strip() == ""
    return submissions


def test_two_slurm_shards_give_the_rows_of_a_direct_run(slurm_cluster, project, cache_dir, direct, tmp_path, caplog):
    out = tmp_path / "two"
    thread, box = sweep_in_thread(out, project, cache_dir)
    outcome = finished(thread, box)
    assert not [r for r in caplog.records if "sacct" in r.getMessage()]  # no accounting asked for, none needed
    submissions = assert_ended_like_a_direct_run(out, outcome, direct)
    assert sorted(r["shard"] for r in submissions) == ["shard-000", "shard-001"]
    assert {r["job_id"].split("_")[0] for r in submissions} == {submissions[0]["job_id"].split("_")[0]}  # one array
    assert shard_state(out)["host"] and shard_state(out)["job_id"] == submissions[0]["job_id"]
    # --gpus-per-shard auto on a partition without GPUs: no GPU asked for (sbatch would refuse it).
    (script,) = (out / "submitit").glob("*/*_submission.sh")
    assert "#SBATCH --partition" not in script.read_text() and "gpu" not in script.read_text()


def test_gpus_or_a_partition_slurm_cannot_give_are_one_line_before_anything_is_written(slurm_cluster, project,
                                                                                     cache_dir, tmp_path, capsys,
                                                                                     monkeypatch):
    from pytest_securitynet.cli import main

    monkeypatch.chdir(project)
    for flags, message in ((["--gpus-per-shard", "1"], "--gpus-per-shard 1: a node of partition debug has no GPU; "
                                                       "give --gpus-per-shard 0 or auto"),
                           (["--partition", "nope"], "--partition nope: no such partition (sinfo lists: debug)")):
        out = tmp_path / "never"
        assert main(["sweep", "--shards", "2", *flags, "--out", str(out), "--", *selection(cache_dir)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"securitynet sweep: {message}") and err.count("\n") == 1, err
        assert not out.exists()  # no plan, no pickle: nothing was written


def test_a_cancelled_shard_is_submitted_again_and_a_requeued_one_is_waited_for(slurm_cluster, project, cache_dir,
                                                                              direct, tmp_path, gate):
    """Both shards stop at their gate. shard-000's job is cancelled (`scancel`): the sweep submits it
    again and it resumes. shard-001's job is requeued (`scontrol requeue`, what preemption does
    without preempt_send_user_signal): SIGTERM, then the same job waits in the queue and runs again;
    the shard records `requeued` and the sweep waits for it instead of submitting a second job."""
    (gate.parent / "demo-digits-rbf-overfit").touch()
    out = tmp_path / "cancelled-and-requeued"
    thread, box = sweep_in_thread(out, project, cache_dir)
    try:
        wait_for(lambda: at_gate(out, "shard-000") and at_gate(out, "shard-001"), 240, "both shards at their gate")
        cancelled, requeued = shard_state(out, "shard-000")["job_id"], shard_state(out, "shard-001")["job_id"]
        subprocess.run(["scancel", cancelled], check=True)
        subprocess.run(["scontrol", "requeue", requeued], check=True)
        wait_for(lambda: [r["shard"] for r in read_submissions(out)].count("shard-000") == 2, 120,
                 "shard-000 submitted again")
        wait_for(lambda: shard_state(out, "shard-001").get("state") == "requeued", 60, "shard-001 to record its requeue")
        assert shard_state(out, "shard-001")["reason"] == "SIGTERM: Slurm requeued the job"
    finally:
        for path in gate.parent.iterdir():
            path.unlink()
    outcome = finished(thread, box)
    submissions = assert_ended_like_a_direct_run(out, outcome, direct)
    assert sorted(r["shard"] for r in submissions) == ["shard-000", "shard-000", "shard-001"]  # no second shard-001
    again = shard_state(out, "shard-000")
    assert again["starts"] == 2 and again["job_id"] != cancelled and again["slurm_restarts"] == 0
    waited = shard_state(out, "shard-001")
    assert waited["starts"] == 2 and waited["job_id"] == requeued and waited["slurm_restarts"] == 1


def test_a_slurm_time_limit_requeues_through_the_checkpoint(slurm_cluster, project, cache_dir, direct, tmp_path, gate):
    """--time 2 --signal-delay 59: Slurm sends USR2 30 to 60 s into the job, submitit calls the
    shard's checkpoint (pytest stops, its rows are kept) and requeues the same job, which resumes."""
    out = tmp_path / "timelimit"
    thread, box = sweep_in_thread(out, project, cache_dir, time_min=2, signal_delay_s=59)
    try:
        wait_for(lambda: shard_state(out).get("state") == "requeued" or shard_state(out).get("starts", 0) >= 2, 240,
                 "shard-000 requeued by its time limit")
        job = shard_state(out)["job_id"]
    finally:
        gate.unlink(missing_ok=True)
    outcome = finished(thread, box)
    submissions = assert_ended_like_a_direct_run(out, outcome, direct)
    assert sorted(r["shard"] for r in submissions) == ["shard-000", "shard-001"]
    state = shard_state(out)
    # Through the checkpoint (the successor counts requeues), in the same job. A loaded machine may
    # take long enough to resume that the limit fires once more: each start is one requeue later.
    assert state["job_id"] == job and state["requeues"] >= 1
    assert state["starts"] == state["requeues"] + 1 == state["slurm_restarts"] + 1
