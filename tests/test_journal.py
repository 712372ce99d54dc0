"""The results journal: rows durable at once, compaction that writes O(n) bytes, replay after a kill."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_securitynet.results.journal import CompactionPolicy, journal_path, read_journal
from pytest_securitynet.results.rows import ResultsWriter, load_document, load_results, row_key
from pytest_securitynet.sweep import status

REPO = Path(__file__).resolve().parents[1]


def make_row(i: int, auc: float | None = None) -> dict:
    """A row shaped like a real membership-inference row (about 450 bytes of JSON)."""
    model, setting = f"cifar10-model{i // 40:04d}", f"setting{i % 40:02d}-global"
    return {"model": model, "benchmark": "membership_inference.metric", "setting": setting,
            "params": {"k": i % 40}, "metrics": {"auc": auc if auc is not None else 0.5 + i * 1e-6,
                                                  "tpr_at_1pct_fpr": 0.01, "n_members": 5000},
            "dataset": "cifar10", "dataset_source": "cifar10-jpeg", "device": "cuda:0", "seed": 0, "worker": "gw0",
            "nodeid": f"benchmarks/test_membership_inference.py::test_metric[{model}-{setting}]",
            "finished_at": "2026-11-23T11:09:43+00:00", "outcome": "passed", "wall_time_s": 1.234, "setup_time_s": 0.01}


class Ticks:
    """A clock that advances one second per reading: a run whose tests take about a second each."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def python_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def test_a_row_is_in_the_journal_before_add_returns_and_compaction_empties_it(tmp_path):
    path = tmp_path / "r.json"
    writer = ResultsWriter(path, {"status": "running"}, policy=CompactionPolicy(interval_s=1e9))
    assert not path.exists()  # nothing is written before the first row
    writer.add(make_row(0), {"dataset": "cifar10"})
    assert [r["model"] for r in load_document(path)["results"]] == ["cifar10-model0000"]  # the first row compacts
    writer.add(make_row(1), None)
    writer.add(make_row(2), None)
    assert len(load_document(path)["results"]) == 1  # not rewritten per row ...
    assert [r["row"]["setting"] for r in read_journal(journal_path(path))] == ["setting01-global", "setting02-global"]
    doc = load_results(path)  # ... but every row is there for a reader
    assert [r["setting"] for r in doc["results"]] == ["setting00-global", "setting01-global", "setting02-global"]
    assert doc["models"] == {"cifar10-model0000": {"dataset": "cifar10"}}
    writer.finish("complete")
    assert not journal_path(path).exists()
    assert load_document(path)["run"]["status"] == "complete" and len(load_document(path)["results"]) == 3


def test_replay_replaces_a_row_by_key_and_is_idempotent(tmp_path):
    path = tmp_path / "r.json"
    writer = ResultsWriter(path, {"status": "running"}, policy=CompactionPolicy(interval_s=1e9))
    writer.add(make_row(0, auc=0.6), None)
    writer.add(make_row(1), None)
    writer.add(make_row(0, auc=0.7), None)  # a rerun of the first test
    journal = journal_path(path)
    journal.write_bytes(journal.read_bytes() * 2)  # a kill between compaction and emptying replays rows twice
    doc = load_results(path)
    assert [(r["setting"], r["metrics"]["auc"]) for r in doc["results"]] == [("setting00-global", 0.7),
                                                                             ("setting01-global", 0.5 + 1e-6)]


def test_a_torn_last_line_is_dropped_and_a_bad_line_elsewhere_names_the_line(tmp_path):
    journal = tmp_path / "r.journal.jsonl"
    good = json.dumps({"row": make_row(0), "model_info": None})
    journal.write_text(good + "\n" + good[: len(good) // 2])
    assert len(read_journal(journal)) == 1
    journal.write_text(good + "\n" + good[: len(good) // 2] + "\n" + good + "\n")
    with pytest.raises(ValueError, match=r"r.journal.jsonl:2"):
        read_journal(journal)


def test_a_journal_without_its_document_is_read_and_neither_is_an_error(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(FileNotFoundError):
        load_results(path)
    journal_path(path).write_text(json.dumps({"row": make_row(3), "model_info": None}) + "\n")
    doc = load_results(path)
    assert doc["run"]["status"] == "running" and [row_key(r) for r in doc["results"]] == [row_key(make_row(3))]


def test_a_new_run_drops_a_stale_journal_and_a_resumed_one_keeps_its_rows(tmp_path):
    path = tmp_path / "r.json"
    old = ResultsWriter(path, {"status": "running"}, policy=CompactionPolicy(interval_s=1e9))
    old.add(make_row(0), None)
    old.add(make_row(1), None)  # journaled only; the run is then killed
    old.close()
    resumed = ResultsWriter(path, {"status": "running"}, load_results(path))
    resumed.add(make_row(2), None)
    assert [r["setting"] for r in load_document(path)["results"]] == [f"setting0{i}-global" for i in range(3)]
    resumed.close()
    journal_path(path).write_text(json.dumps({"row": make_row(9), "model_info": None}) + "\n")
    fresh = ResultsWriter(path, {"status": "running"})  # no resume: the run replaces the file
    fresh.add(make_row(5), None)
    assert [r["setting"] for r in load_results(path)["results"]] == ["setting05-global"]


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from tests.test_journal import make_row
from pytest_securitynet.results.journal import CompactionPolicy
from pytest_securitynet.results.rows import ResultsWriter

path, rows, ratio, point, nth = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
calls = {"n": 0}

def killing(name, real):
    def call(*args):
        calls["n"] += 1
        if calls["n"] == nth:
            if name == "write":  # half a line reaches the file, then the process dies
                real(args[0], bytes(args[1])[: len(args[1]) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args)
    return call

if point != "none":
    setattr(os, point, killing(point, getattr(os, point)))
writer = ResultsWriter(path, {"status": "running"}, policy=CompactionPolicy(interval_s=0, ratio=ratio))
for i in range(rows):
    writer.add(make_row(i), {"dataset": "cifar10"} if i % 40 == 0 else None)
    print(i, flush=True)
writer.finish("complete")
print("finished", flush=True)
"""


def killed_run(path: Path, rows: int, ratio: float, point: str = "none", nth: int = 0,
               kill_after: int | None = None, rng: random.Random | None = None) -> int:
    """Run the writer in a child killed by SIGKILL (by itself at the `nth` call of `os.<point>`, or by
    this process after `kill_after` rows); returns the last row it reported finished."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(rows), str(ratio), point, str(nth)],
                            cwd=REPO, env=python_env(), stdout=subprocess.PIPE, text=True)
    acknowledged = -1
    for line in proc.stdout:
        if line.strip() == "finished":
            break
        acknowledged = int(line)
        if kill_after is not None and acknowledged >= kill_after:
            spin = rng.randrange(0, 20_000)  # a little later, at a point the reader cannot predict
            while spin:
                spin -= 1
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "the writer was to be killed before it finished"
    return acknowledged


def assert_every_finished_row_kept(path: Path, rows: int, acknowledged: int) -> None:
    doc = load_results(path)
    keys = [row_key(r) for r in doc["results"]]
    assert len(keys) == len(set(keys))
    expected = {row_key(make_row(i)): make_row(i) for i in range(rows)}
    assert set(keys) <= set(expected)
    assert {row_key(make_row(i)) for i in range(acknowledged + 1)} <= set(keys)
    assert all(r == expected[row_key(r)] for r in doc["results"])


# Every write, fsync, rename and truncation the writer makes is a point a kill can land on. With
# ratio 0.3 a 120-row run makes a few hundred such calls and compacts a dozen times.
@pytest.mark.parametrize(("point", "nth"), [("write", 7), ("write", 61), ("write", 110),
                                            ("fsync", 9), ("fsync", 80), ("fsync", 150),
                                            ("replace", 3), ("replace", 8), ("replace", 11),
                                            ("ftruncate", 4), ("ftruncate", 9), ("ftruncate", 12)])
def test_a_sigkill_inside_any_write_loses_no_finished_row(tmp_path, point, nth):
    path, rows = tmp_path / "r.json", 120
    acknowledged = killed_run(path, rows, 0.3, point, nth)
    assert_every_finished_row_kept(path, rows, acknowledged)


@pytest.mark.parametrize("seed", range(4))
def test_a_sigkill_at_a_random_moment_loses_no_finished_row(tmp_path, seed):
    rng = random.Random(seed)
    path, rows = tmp_path / "r.json", 400
    kill_after = rng.randrange(1, rows - 40)
    acknowledged = killed_run(path, rows, rng.choice([0.0, 0.3]), kill_after=kill_after, rng=rng)
    assert acknowledged >= kill_after
    assert_every_finished_row_kept(path, rows, acknowledged)


BYTES_COUNTED = """
import json, sys
from pathlib import Path
from tests.test_journal import Ticks, make_row
from pytest_securitynet.results.rows import ResultsWriter

def wchar():
    return int(next(l for l in open("/proc/self/io") if l.startswith("wchar")).split()[1])

path, DURABLE = Path(sys.argv[1]), sys.argv[2] == "durable"
writer = ResultsWriter(path, {"status": "running"}, clock=Ticks(), durable=DURABLE)
before = wchar()
for i in range(20_000):
    writer.add(make_row(i), {"dataset": "cifar10"} if i % 40 == 0 else None)
writer.finish("complete")
written = wchar() - before
print(json.dumps({"wchar": written, "counted": writer.bytes_written, "compactions": writer.compactions}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts written bytes with Linux's /proc/self/io")
def test_a_20000_row_run_writes_less_than_three_times_its_final_file(tmp_path):
    """The operating system's count of bytes written (wchar) by a process that does nothing else.

    Without fsync: it changes when bytes reach the disk, not how many are written, and 20,000 of
    them take minutes on a busy shared disk."""
    path = tmp_path / "r.json"
    out = subprocess.run([sys.executable, "-c", BYTES_COUNTED, str(path), "fast"], cwd=REPO, env=python_env(),
                         capture_output=True, text=True, check=True)
    counts = json.loads(out.stdout)
    final = path.stat().st_size
    assert len(load_document(path)["results"]) == 20_000 and not journal_path(path).exists()
    assert counts["wchar"] == counts["counted"]
    assert counts["wchar"] < 3 * final, counts["wchar"] / final
    # Rewriting after every row would have written about n/2 final files.
    assert counts["compactions"] < 20


def test_merge_and_reports_read_the_journal_a_killed_run_left(tmp_path):
    from pytest_securitynet.results.merge import merge_files

    path = tmp_path / "shard.json"
    killed = ResultsWriter(path, {"status": "running"}, policy=CompactionPolicy(interval_s=1e9))
    for i in range(3):
        killed.add(make_row(i), None)
    killed.close()  # killed: one row in the document, two in the journal
    assert len(load_document(path)["results"]) == 1
    merged = merge_files([path], tmp_path / "merged.json")
    assert len(merged.rows) == 3 and len(load_document(tmp_path / "merged.json")["results"]) == 3
    assert not journal_path(tmp_path / "merged.json").exists()


def test_benchmark_specs_reach_the_journal_with_their_first_row(tmp_path):
    path = tmp_path / "r.json"
    killed = ResultsWriter(path, {"status": "running"}, policy=CompactionPolicy(interval_s=1e9))
    killed.add(make_row(0), None)
    killed.benchmarks["membership_inference"] = {"id": "membership_inference", "headline": ["auc"]}
    killed.add(make_row(1), None)  # the spec recorder fills `benchmarks` just before a row is added
    killed.add(make_row(2), None)
    killed.close()
    records = read_journal(journal_path(path))
    assert [sorted(r.get("benchmarks", {})) for r in records] == [["membership_inference"], []]
    assert load_results(path)["benchmarks"] == {"membership_inference": {"id": "membership_inference", "headline": ["auc"]}}


def test_a_sweep_poll_reads_a_shard_again_only_when_its_files_changed(tmp_path, monkeypatch):
    path = tmp_path / "shard-000.json"
    writer = ResultsWriter(path, {"status": "running"}, policy=CompactionPolicy(interval_s=1e9))
    writer.add(make_row(0), None)
    reads = []
    real = status.load_results
    monkeypatch.setattr(status, "load_results", lambda p: reads.append(p) or real(p))
    assert status.count_rows(path) == (1, 1) and status.count_rows(path) == (1, 1)
    assert len(reads) == 1  # the second poll found the files as they were
    writer.add(make_row(1), None)  # a journal append
    assert status.count_rows(path) == (2, 2) and len(reads) == 2
