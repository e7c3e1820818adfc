"""The report of a run that does not reach its end: periodic snapshots, marked incomplete.

A suite run stopped from outside (a time limit's SIGKILL on a lent GPU) never reaches
pytest_sessionfinish; the plugin's snapshots keep what it checked, and every reader of the report
(summary, Markdown matrix, docs) says it is incomplete instead of calling it a pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from synth_ref.conformance import report as R

ROOT = Path(__file__).resolve().parents[1]

# A pytest plugin that snapshots after every check and dies like a SIGKILL after the third: no
# sessionfinish, no terminal summary.  trylast: the conformance plugin has recorded the check first.
KILLER = """
import os
import pytest
from synth_ref.conformance import plugin

seen = []

def pytest_configure(config):
    plugin.SNAPSHOT_EVERY = 0.0

@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    if report.when == "call":
        seen.append(report.nodeid)
        if len(seen) == 3:
            os._exit(9)
"""


def test_a_run_killed_midway_leaves_an_incomplete_report(tmp_path):
    (tmp_path / "killer.py").write_text(KILLER)
    report = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "synth_ref.conformance", "--backend", "numpy",
                          "--report", str(report), "--variant", "aft_simple", "--", "-p", "killer",
                          "-k", "test_forward"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 9, run.stdout[-2000:] + run.stderr[-2000:]
    entry = json.loads(report.read_text())["backends"]["numpy"]
    assert entry["counts"]["pass"] == 3
    assert entry["partial"]["recorded"] == 3 and entry["partial"]["planned"] > 3
    assert R.verdict(entry) == "partial"
    assert "| numpy | PARTIAL | 3 |" in report.with_suffix(".md").read_text()


def test_a_complete_run_is_not_marked_and_a_failure_outranks_incomplete():
    rec = {"backend": "b", "variant": "dense", "dtype": "float32", "kind": "forward", "status": "pass",
           "ratio": 0.1, "case": "c", "detail": ""}
    done = R.backend_entry("b", None, True, "", [rec], "ci", 1.0)
    assert done["partial"] is None and R.verdict(done) == "pass" and R.partial_note(done) == ""
    cut = R.backend_entry("b", None, True, "", [rec], "ci", 1.0,
                          {"recorded": 1, "planned": 10, "why": "stopped"})
    assert R.verdict(cut) == "partial"
    assert R.partial_note(cut) == "incomplete: 1 checks recorded (the run collected 10 tests); stopped"
    assert "incomplete" not in R.summary({"backends": {"b": done}}) and "PARTIAL" in R.summary(
        {"backends": {"b": cut}})
    bad = R.backend_entry("b", None, True, "", [rec, {**rec, "status": "fail", "ratio": 3.0}], "ci", 1.0,
                          {"recorded": 2, "planned": 10, "why": "stopped"})
    assert R.verdict(bad) == "fail"


# Kills the xdist worker (like a segfault) at the first float32 forward check and at the first
# Hypothesis-drawn check: each once (a flag file), so the replacement worker goes on.
CRASHER = """
import os
from pathlib import Path
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    for key, hit in (("grid", "float32" in item.name and item.originalname == "test_forward"),
                     ("drawn", item.originalname == "test_drawn")):
        flag = Path(os.environ["CRASH_DIR"]) / key
        if hit and hasattr(item.config, "workerinput") and not flag.exists():
            flag.write_text(item.nodeid)
            os._exit(11)
"""


def test_a_check_whose_process_dies_is_an_error_not_a_silent_gap(tmp_path):
    """A crashed xdist worker's check records no outcome; without the plugin's handling the report
    would count only the checks that finished and read pass.  The grid check becomes an error of its
    cell (verdict fail); the drawn one, which names no grid case, marks the run incomplete."""
    (tmp_path / "crasher.py").write_text(CRASHER)
    report = tmp_path / "r.json"
    env = {**os.environ, "CRASH_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "synth_ref.conformance", "--backend", "numpy",
                          "--report", str(report), "--variant", "aft_simple", "-n", "1", "--",
                          "-p", "crasher", "-k", "test_forward or test_drawn"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = run.stdout[-3000:] + run.stderr[-3000:]
    assert run.returncode == 1, out
    crashed = (tmp_path / "grid").read_text()
    assert "crashed" in run.stdout, out  # xdist's own report of it
    entry = json.loads(report.read_text())["backends"]["numpy"]
    assert entry["counts"]["error"] == 1 and entry["counts"]["fail"] == 0, entry["counts"]
    (err,) = entry["failures"]
    assert err["status"] == "error" and err["dtype"] == "float32" and err["kind"] == "forward"
    assert crashed.endswith(f"-{err['case']}-float32]") and "without a result" in err["detail"]
    assert R.verdict(entry) == "fail"
    assert "1 checks ended without a result" in entry["partial"]["why"]
    assert (tmp_path / "drawn").read_text() in entry["partial"]["why"]


def _write_rounds(path, name, rounds):
    for i in range(rounds):
        R.write(path, [R.backend_entry(name, None, False, f"round {i}", [], "ci", 0.0)])


def test_sessions_writing_side_by_side_lose_no_entry(tmp_path):
    """``nox -j`` runs conformance sessions side by side, each merging its entry into one report:
    every writer's last entry must survive the others' read-merge-write cycles (without the lock,
    a writer that read before another's write put that one's older entry back)."""
    import multiprocessing

    path = tmp_path / "report.json"
    names, rounds = [f"backend{i}" for i in range(6)], 25
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_rounds, args=(path, n, rounds)) for n in names]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * len(names)
    got = {n: e["reason"] for n, e in R.load(path)["backends"].items()}
    assert got == {n: f"round {rounds - 1}" for n in names}
