"""gpu/run.py, the script a GPU-lent session runs (gpu/README.md), without a GPU: the steps each stage
plans, the Pallas go/no-go, time limits and critical failures, the bundle, and unpacking it.

A drawn session has 15 minutes of device time in all; these checks make sure what it runs there is
the intended plan, fits that time, and always comes back as one bundle and one summary.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", ROOT / "gpu" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


run = _load("run")
unpack = _load("unpack")


def _argvs(steps):
    return {s.name: (s.argv if isinstance(s.argv, list) else None) for s in steps}


def test_gpu_conformance_plan_runs_the_gpu_backends(tmp_path):
    steps = run.plan("conformance", False, tmp_path)
    argv = _argvs(steps)
    for name, target in [("conf-torch-cuda", ["--backend", "torch-cuda"]),
                         ("conf-cupy", ["--backend", "cupy"]),
                         ("conf-jax-gpu", ["--adapter", "gpu.adapters:jax_gpu"])]:
        a = argv[name]
        assert a[1:3] == ["-m", "synth_ref.conformance"] and a[3:5] == target, a
        assert int(a[a.index("-n") + 1]) >= 2 and a[a.index("--profile") + 1] == "ci"
        assert a[a.index("--report") + 1] == str(tmp_path / "conformance" / f"{name}.json")
    # the three suite runs share group 1 (at once); the Pallas decision waits for the probe
    groups = {s.name: s.group for s in steps}
    assert len({groups[n] for n in ("conf-torch-cuda", "conf-cupy", "conf-jax-gpu", "pallas-probe")}) == 1
    assert groups["pallas-probe"] < groups["conf-jax-pallas"] < groups["merge-reports"]
    # all workers at once stay within the device's 16 cores
    assert sum(int(a[a.index("-n") + 1]) for n, a in argv.items() if n.startswith("conf-") and a) + 1 <= 16
    assert "tests/test_cupy_gpu.py" in argv["tests-cupy-torch"] and "tests/test_torch_kernels.py" in argv[
        "tests-cupy-torch"]
    assert "tests/test_jax_pallas.py" in argv["tests-jax"]
    # the prelude: wheels first when carried, import check critical
    crit = [s.name for s in steps if s.critical]
    assert "import-check" in crit
    merged = argv["merge-reports"]
    assert merged[1] == "gpu/unpack.py" and merged[2] == "merge"
    assert str(tmp_path / "conformance" / "conf-jax-pallas.json") in merged
    assert merged[merged.index("--require") + 1:] == ["torch-cuda", "cupy", "jax-gpu"]


def test_gpu_bench_and_long_plans(tmp_path):
    bench = _argvs(run.plan("bench", False, tmp_path))
    assert bench["torch-bench"][1] == "benchmarks/torch_bench.py" and "--quick" not in bench["torch-bench"]
    h = bench["bench-harness"]
    assert h[1:3] == ["-m", "benchmarks"] and h[h.index("--device") + 1] == "cuda" and "--quick" in h
    steps = run.plan("bench", False, tmp_path)
    assert len({s.group for s in steps if s.name in ("torch-bench", "bench-harness")}) == 2  # never at once
    long = _argvs(run.plan("long", False, tmp_path))
    deep = long["conf-deep-torch-cuda-bf16"]
    assert deep[deep.index("--profile") + 1] == "deep" and deep[-2:] == ["-k", "bfloat16"]
    assert "--backend" in deep and deep[deep.index("--backend") + 1] == "torch-cuda"
    assert "--quick" not in long["long-bench"]


def test_essential_plan_fits_one_call_of_a_15_minute_lease(tmp_path):
    """The one call a drawn session makes: the three GPU suites at once with the probe, the merge next
    (so the report exists whatever the timings do), then the target shape, then the harness on the
    variants the adapter targets name; every step's limit added up along the groups stays within the
    stage's budget, and that budget plus a machine's start stays within the call's 600 s limit and
    well within the 15 minutes."""
    steps = run.plan("essential", False, tmp_path)
    argv = _argvs(steps)
    groups = {s.name: s.group for s in steps}
    suites = ("conf-torch-cuda", "conf-cupy", "conf-jax-gpu")
    assert {groups[n] for n in (*suites, "pallas-probe")} == {1}
    assert groups["pallas-probe"] < groups["merge-reports"] < groups["torch-bench"] < groups["bench-harness"]
    assert "conf-jax-pallas" not in argv and not any(n.startswith("tests-") for n in argv)
    assert argv["conf-cupy"][3:5] == ["--backend", "cupy"]
    assert argv["conf-jax-gpu"][3:5] == ["--adapter", "gpu.adapters:jax_gpu"]
    merged = argv["merge-reports"]
    assert [a for a in merged if a.endswith(".json")][1:] == [
        str(tmp_path / "conformance" / f"{n}.json") for n in suites]
    assert merged[merged.index("--require") + 1:] == ["torch-cuda", "cupy", "jax-gpu"]
    tb = argv["torch-bench"]
    assert tb[tb.index("--shapes") + 1] == run.TARGET_SHAPE == "4x8x4096x64" and "--quick" not in tb
    h = argv["bench-harness"]
    assert h[h.index("--device") + 1] == "cuda" and "--quick" in h
    assert h[h.index("--variants") + 1:h.index("--out")] == ["dense", "random", "aft_full"]
    # the worst case: every group runs to its slowest step's limit (prelude included)
    # after the prelude (its limits are generous; it takes about 60 s: pip from wheels, imports)
    worst = sum(max(s.timeout for s in steps if s.group == g) for g in set(groups.values()) if g >= 0)
    assert worst + 60 <= run.BUDGET["essential"] <= 600 - 45  # 45 s: the call's own margin
    assert run.BUDGET["essential"] + 120 + 60 <= 15 * 60 - 120  # start, transfers; 2 min to spare


def test_essential_bundle_unpacks_to_the_committed_files(tmp_path):
    """An essential bundle lands where the conformance and bench bundles' files do, torch_bench's
    one-shape table under its own name (the bench stage's three-shape cuda.json is not replaced)."""
    from synth_ref.conformance import report as R

    top = tmp_path / "b" / "gpu-essential"
    (top / "conformance").mkdir(parents=True)
    (top / "results").mkdir()
    R.write(top / "conformance" / "merged.json",
            [R.backend_entry("torch-cuda", None, False, "stand-in", [], "ci", 0.0)])
    (top / "results" / "cuda-quick.json").write_text("{}")
    (top / "torch_bench.json").write_text(json.dumps({"rows": [], "targets": []}))
    (top / "summary.txt").write_text("s")
    (top / "steps.json").write_text(json.dumps({"stage": "essential", "local": False, "steps": []}))
    tar = tmp_path / "essential-bundle.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(top, arcname=top.name)
    repo = tmp_path / "repo"
    written = {str(p.relative_to(repo)) for p in unpack.unpack(tar, repo, allow_local=False, merge_into=None)}
    assert {"gpu/results/conformance-cuda.json", "gpu/results/conformance-cuda.md",
            "gpu/results/essential-summary.txt", "gpu/results/essential-steps.json",
            "benchmarks/results/cuda-quick.json",
            "benchmarks/results/torch_bench/cuda-target.json"} <= written
    assert "benchmarks/results/torch_bench/cuda.json" not in written


def test_local_plans_touch_no_gpu_backend(tmp_path):
    for stage in run.STAGES:
        text = json.dumps([s.argv for s in run.plan(stage, True, tmp_path) if isinstance(s.argv, list)])
        for gpu_only in ('"--backend", "torch-cuda"', '"--backend", "cupy"', "jax_gpu", '"--device", "cuda"'):
            assert gpu_only not in text, (stage, gpu_only)


def test_pallas_decision(tmp_path):
    probe = tmp_path / "probe.json"
    rep = str(tmp_path / "r.json")
    assert "no verdict" in run.pallas_decision(probe, rep, local=False)  # the probe wrote nothing
    probe.write_text(json.dumps({"platform": "gpu", "jax": "0.x", "flash": "ok", "aft": "pallas-aft: E"}))
    a = run.pallas_decision(probe, rep, local=False)
    assert a[3:5] == ["--adapter", "gpu.adapters:jax_pallas_gpu"] and "--unavailable" not in a
    probe.write_text(json.dumps({"platform": "gpu", "jax": "0.x", "flash": "pallas-flash: ValueError: no",
                                 "aft": "pallas-aft: ValueError: no"}))
    a = run.pallas_decision(probe, rep, local=False)
    assert a[a.index("--backend") + 1] == "jax-pallas-gpu"
    why = a[a.index("--unavailable") + 1]
    assert "flash: pallas-flash: ValueError: no" in why and "aft: pallas-aft" in why


def test_limits_critical_failure_and_bundle(tmp_path, monkeypatch):
    """A step over its limit is killed and recorded; a failed critical step skips the rest; the bundle
    and summary are written either way and the stage fails."""
    py = sys.executable
    steps = [run.Step("ok", [py, "-c", "import time; time.sleep(2); print('fine')"], 20, group=0),
             run.Step("sleeper", [py, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                      0.5, group=0),
             run.Step("critical", [py, "-c", "raise SystemExit(3)"], 20, group=1, critical=True),
             run.Step("after", [py, "-c", "print('never')"], 20, group=2)]
    work, out = tmp_path / "gpu-test", tmp_path / "out"
    (work / "conformance").mkdir(parents=True)
    r = run.Runner("conformance", True, work, out, budget=120)
    r.run(steps)
    status = {x["name"]: x["status"] for x in r.results}
    assert status == {"sleeper": "timeout", "ok": "ok", "critical": "failed", "after": "skipped"}
    assert {x["name"] for x in r.failed()} == {"sleeper", "critical"}
    # held to its own limit while the other step of its group still ran
    assert next(x for x in r.results if x["name"] == "sleeper")["wall_s"] < 1.5
    tar, summary = run.bundle(r)
    assert sorted(p.name for p in out.iterdir()) == ["conformance-bundle.tar.gz", "conformance-summary.txt"]
    text = summary.read_text()
    assert "FAILED: sleeper, critical" in text and "critical failed" in text
    with tarfile.open(tar) as tf:
        names = tf.getnames()
    assert "gpu-test/steps.json" in names and any(n.endswith("-sleeper.log") for n in names)
    # a --local bundle is never unpacked as GPU results by accident
    with pytest.raises(SystemExit, match="--local"):
        unpack.unpack(tar, tmp_path / "repo", allow_local=False, merge_into=None)
    written = unpack.unpack(tar, tmp_path / "repo", allow_local=True, merge_into=None)
    assert {p.name for p in written} == {"conformance-summary.txt", "conformance-steps.json"}


def test_budget_skips_what_cannot_finish(tmp_path):
    work = tmp_path / "w"
    (work / "conformance").mkdir(parents=True)
    r = run.Runner("bench", True, work, tmp_path / "out", budget=20)  # 25 s are kept for the bundle
    r.run([run.Step("late", [sys.executable, "-c", "print(1)"], 60)])
    assert r.results[0]["status"] == "skipped" and "no time left" in r.results[0]["note"]


def test_dry_run_prints_the_plan(capsys):
    assert run.main(["conformance", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    names = [s["name"] for s in plan]
    assert names[-1] == "merge-reports" and "conf-torch-cuda" in names
    assert next(s for s in plan if s["name"] == "conf-jax-pallas")["argv"].startswith("<decided")


def test_merge_requires_the_gpu_backends(tmp_path):
    """A suite run whose backend was unavailable exits 0 (every check skipped); the merge step is where
    the GPU stage fails on it."""
    from synth_ref.conformance import report as R

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    R.write(a, [R.backend_entry("torch-cuda", None, False, "no CUDA device", [], "ci", 0.0)])
    R.write(b, [R.backend_entry("cupy", None, False, "no cupy", [], "ci", 0.0)])
    out = unpack.merge(tmp_path / "m.json", [a, b, tmp_path / "missing.json"])
    assert set(json.loads(out.read_text())["backends"]) == {"torch-cuda", "cupy"}
    with pytest.raises(SystemExit, match="torch-cuda, cupy, jax-gpu"):
        unpack.merge(tmp_path / "m.json", [a, b], require=["torch-cuda", "cupy", "jax-gpu"])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None,
                    reason="gpu/long_bench.py needs torch and triton")
def test_long_bench_runs_quick(tmp_path):
    """The long stage's script end to end on CPU (l = 64, kernels interpreted): every row that needs
    no (h, l, l) input runs -- aft_conv's windowed row too, which reads only its taps -- and the
    aft_full rows check against float64 passes.  It once failed at its first row (torch_bench's
    rows had grown two inputs this script did not draw), which only a GPU run would have shown."""
    import os
    import subprocess

    out = tmp_path / "lb.json"
    proc = subprocess.run([sys.executable, str(ROOT / "gpu" / "long_bench.py"), "--quick", "--out", str(out)],
                          env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    ran = {r["impl"] for r in result["rows"] if r["ms"] is not None}
    skipped = {r["impl"]: r["error"] for r in result["rows"] if r["ms"] is None}
    assert "ours: aft (conv, windowed)" in ran and "ours: aft (full)" in ran, skipped
    assert all(e.startswith("not run: needs r of shape") or e.startswith("not run: needs wc of shape")
               for e in skipped.values()), skipped
    assert len(skipped) == 3, skipped  # random, the mixture with R, aft_conv's dense w'
    (check,) = result["checks"]
    assert check["ok"] and check["out_rel_err"] < 1e-5 and check["dw_rel_err"] < 1e-5, check
