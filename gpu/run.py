"""One stage of the GPU checks on a lent device machine, each sub-step under its own time limit,
every result bundled into $OUT (gpu/README.md says how to call it and what comes back).

    python3 gpu/run.py essential      # one call for a 15-minute lease: the three GPU suites, the
                                      # issue-4 target shape, the harness on dense, random, aft_full
    python3 gpu/run.py conformance    # the suite on torch-cuda, cupy, jax (GPU) + the GPU tests
    python3 gpu/run.py bench          # benchmarks/torch_bench.py + python -m benchmarks --device cuda --quick
    python3 gpu/run.py long           # deep conformance (torch-cuda, bfloat16) + l = 65536 kernels
    python3 gpu/run.py STAGE --local  # the same orchestration on this CPU machine, tiny stand-ins
    python3 gpu/run.py STAGE --dry-run  # print the plan, run nothing

Standard library only (the steps are subprocesses).  Steps run in groups, one group after another;
the steps of a group run at the same time (the conformance runs of different backends: 16 cores and
one GPU of mostly idle small kernels), each with its own log and time limit, and every limit is cut
to what is left of ``--budget`` so that the bundle is always written before the caller's limit.
Writes ``$OUT/<stage>-bundle.tar.gz`` (logs, reports, results, steps.json) and
``$OUT/<stage>-summary.txt`` (also printed last), exit status 1 if any step failed or timed out.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = "/tmp/site"  # where the carried wheels are installed (pip --target)
PY = sys.executable
#: xdist workers per pytest run.  The three conformance runs share 16 cores and one GPU at the same
#: time (the Pallas probe takes one more core): JAX compiles every case's program (apply, vjp; about
#: 1.2 s a check per worker on this 2-core CPU machine) and gets the most; torch-cuda and cupy mostly
#: wait on Triton / NVRTC compiles that their workers share through the on-disk caches.
WORKERS = "4"
GPU_RUNS = [("conf-torch-cuda", ["--backend", "torch-cuda"], "4"),
            ("conf-cupy", ["--backend", "cupy"], "2"),
            ("conf-jax-gpu", ["--adapter", "gpu.adapters:jax_gpu"], "8")]
#: Seconds for the whole stage, bundling included.  A drawn session has 15 minutes of device time in
#: all: the machine's start (1-2 min) + ``essential`` (9 min) + transfers leave about 3 minutes, so
#: ``essential`` is the one call to make; the other stages are for what is left (gpu/README.md).
BUDGET = {"essential": 540.0, "conformance": 540.0, "bench": 540.0, "long": 300.0}
STAGES = tuple(BUDGET)
#: Issue 4's target shape, B x h x l x e, as benchmarks/torch_bench.py's --shapes spells it (this
#: file imports nothing of the project; tests/test_torch_bench.py checks that the two agree).
TARGET_SHAPE = "4x8x4096x64"
#: The harness's variants in ``essential``: those every adapter target of issues 5 and 6 names
#: (benchmarks/analysis.py, ADAPTER_TARGETS with REFERENCE_SPEEDUP_VARIANTS), to fit its minutes.
ESSENTIAL_VARIANTS = ["dense", "random", "aft_full"]


@dataclass
class Step:
    name: str
    argv: list | object  # a list, or a callable(ctx) -> list | str (a str: skip with this reason)
    timeout: float
    group: int = 0
    env: dict = field(default_factory=dict)
    info: bool = False  # informational: a failure does not fail the stage
    critical: bool = False  # a failure skips every later step (nothing after it can work)
    stdout_to: str | None = None  # also save stdout alone to this file (relative to the work dir)
    last: bool = False  # the cheap closing step (merging reports): may use the bundling reserve


# --- the plans -------------------------------------------------------------------------------------


def _conformance(name_args, report, profile="ci", workers=WORKERS, pytest_args=()):
    argv = [PY, "-m", "synth_ref.conformance", *name_args, "--profile", profile, "--report", report]
    if workers:
        argv += ["-n", workers]
    return argv + (["--", *pytest_args] if pytest_args else [])


def _pytest(files, junit, workers=WORKERS, extra=()):
    argv = [PY, "-m", "pytest", *files, "-q", "-ra", "-p", "no:cacheprovider", "--durations=15",
            f"--junitxml={junit}"]
    return argv + (["-n", workers] if workers else []) + list(extra)


def pallas_decision(probe_file: Path, report: str, local: bool):
    """The step after the Pallas probe: the suite on the Pallas path if either kernel family lowered,
    else the path recorded in the report as unavailable, with the probe's reasons."""
    try:
        probe = json.loads(probe_file.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError) as exc:
        return f"the Pallas probe wrote no verdict ({type(exc).__name__}: {exc})"
    verdicts = {k: probe.get(k, "not probed") for k in ("flash", "aft")}
    name = "jax-pallas-interpret" if local else "jax-pallas-gpu"
    if any(v == "ok" for v in verdicts.values()):
        target = (["--backend", "jax-pallas-interpret"] if local
                  else ["--adapter", "gpu.adapters:jax_pallas_gpu"])
        extra = ["-k", "aft_full and float32 and s1"] if local else []
        return _conformance(target, report, pytest_args=extra, workers="2" if local else WORKERS)
    why = (f"the Pallas kernels do not lower on {probe.get('platform')} (jax {probe.get('jax')}): "
           + "; ".join(f"{k}: {v}" for k, v in verdicts.items()))
    return [PY, "-m", "synth_ref.conformance", "--backend", name, "--report", report, "--unavailable", why]


XLA_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _suite_runs(local: bool):
    """The three concurrent suite runs: the GPU backends, or (--local) CPU stand-ins, a few cases each."""
    if local:
        return ([("conf-torch", ["--backend", "torch"], "2"), ("conf-numpy", ["--backend", "numpy"], "2"),
                 ("conf-jax", ["--backend", "jax"], "2")], ["-k", "aft_simple and float32 and s1"])
    return GPU_RUNS, []


def _merge_step(conf: Path, runs, extra_reports, local: bool, group: int, last: bool) -> Step:
    require = [] if local else ["--require", "torch-cuda", "cupy", "jax-gpu"]
    return Step("merge-reports", [PY, "gpu/unpack.py", "merge", str(conf / "merged.json"),
                                  *[str(conf / f"{n}.json") for n, _, _ in runs], *extra_reports, *require],
                30, group=group, last=last)


def _bench_argvs(local: bool, work: Path, essential: bool):
    """torch_bench and the harness: on a GPU the anchors' shapes and every variant, or (essential)
    the target shape alone and ESSENTIAL_VARIANTS; --local, the scripts' CPU modes."""
    if local:
        tb = [PY, "benchmarks/torch_bench.py", "--quick", "--out", str(work / "torch_bench.json")]
        harness = [PY, "-m", "benchmarks", "--quick", "--variants", "dense", "--max-length", "512",
                   "--backends", "numpy", "torch", "--out", str(work / "results")]
        return tb, harness
    tb = [PY, "benchmarks/torch_bench.py", *(["--shapes", TARGET_SHAPE] if essential else []),
          "--out", str(work / "torch_bench.json")]
    harness = [PY, "-m", "benchmarks", "--device", "cuda", "--quick",
               *(["--variants", *ESSENTIAL_VARIANTS] if essential else []), "--out", str(work / "results")]
    return tb, harness


def _suites_and_probe(local: bool, work: Path, limit: float, probe_limit: float):
    """Group 1 of the conformance stages: the three suite runs at once and, beside them in one more
    process, whether the Pallas kernels lower here at all.  Returns (steps, runs, probe file)."""
    conf, probe = work / "conformance", work / "pallas-probe.json"
    runs, extra = _suite_runs(local)
    steps = [Step(name, _conformance(target, str(conf / f"{name}.json"), workers=workers, pytest_args=extra),
                  limit, group=1, env=XLA_ENV) for name, target, workers in runs]
    steps.append(Step("pallas-probe", [PY, "gpu/pallas_probe.py", "--path", "pallas"], probe_limit, group=1,
                      info=True, stdout_to=str(probe.relative_to(work))))
    return steps, runs, probe


def plan(stage: str, local: bool, work: Path) -> list[Step]:
    conf = work / "conformance"
    steps = prelude(local, work)
    if stage == "essential":
        # Correctness first: the three suites at once (each writes its report as it goes, so one cut
        # at its limit still brings back what it checked, marked partial), beside them the Pallas
        # probe; the merge right after, so that the report exists whatever the timings do after it.
        group1, runs, _ = _suites_and_probe(local, work, 220, 90)
        steps += group1
        steps.append(_merge_step(conf, runs, [], local, group=2, last=False))
        # then the timings, one after the other (they must not share the GPU or the cores)
        tb, harness = _bench_argvs(local, work, essential=True)
        steps.append(Step("torch-bench", tb, 90, group=3))
        steps.append(Step("bench-harness", harness, 140, group=4, last=True))
    elif stage == "conformance":
        group1, runs, probe = _suites_and_probe(local, work, 330, 150)
        steps += group1
        report = str(conf / "conf-jax-pallas.json")
        steps.append(Step("conf-jax-pallas", lambda ctx: pallas_decision(probe, report, local), 200,
                          group=2, env=XLA_ENV))
        if local:
            tests = [("tests-cupy-torch", ["tests/test_cupy_gpu.py", "tests/test_torch_nn.py"],
                      ["-k", "not compile and dense"]),
                     ("tests-jax", ["tests/test_jax_jit.py"], ["-k", "float64_with_x64 and dense"])]
        else:
            # The tests with a GPU path.  test_jax_pallas: the XLA path with real cuDNN and the plans;
            # not the kernels in Pallas's interpreter, which CI runs on CPU (and slowly).  Not
            # test_torch_kernels_sm90.py: its ahead-of-time compiles (minutes of CPU) stand in for a
            # GPU, where test_torch_kernels.py compiles and runs the kernels themselves.
            tests = [("tests-cupy-torch", ["tests/test_cupy_gpu.py", "tests/test_torch_kernels.py"], []),
                     ("tests-jax", ["tests/test_jax_jit.py", "tests/test_jax_nnx.py",
                                    "tests/test_jax_pallas.py"],
                      ["-k", "not interpreter and not flash_kernel and not aft_kernel"])]
        for name, files, extra in tests:
            steps.append(Step(name, _pytest(files, str(work / f"{name}.junit.xml"),
                                            workers="2" if local else WORKERS, extra=extra),
                              200, group=2, env=XLA_ENV))
        steps.append(_merge_step(conf, runs, [report], local, group=3, last=True))
    elif stage == "bench":
        tb, harness = _bench_argvs(local, work, essential=False)
        # one after the other: timings must not share the GPU or the cores
        steps.append(Step("torch-bench", tb, 240, group=1))
        steps.append(Step("bench-harness", harness, 270, group=2))
    elif stage == "long":
        bf16 = ["-k", "bfloat16"]
        if local:
            target, profile, extra = ["--backend", "torch"], "ci", ["-k", "bfloat16 and aft_simple and s1"]
        else:
            target, profile, extra = ["--backend", "torch-cuda"], "deep", bf16
        steps.append(Step("conf-deep-torch-cuda-bf16",
                          _conformance(target, str(conf / "deep-torch-cuda-bf16.json"), profile=profile,
                                       workers="2" if local else "8", pytest_args=extra),
                          150, group=1, env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}))
        quick = ["--quick"] if local else []
        lb = [PY, "gpu/long_bench.py", "--out", str(work / "long_bench.json"), *quick]
        steps.append(Step("long-bench", lb, 120, group=2))
    else:
        raise SystemExit(f"stage: expected one of {', '.join(STAGES)}; got {stage!r}")
    return steps


def prelude(local: bool, work: Path) -> list[Step]:
    """Every stage: install the carried wheels, record the machine, check the package imports."""
    steps = []
    wheels = sorted(glob.glob(str(ROOT / ".whl" / "*.whl")))
    if wheels:
        steps.append(Step("install-wheels", [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                             "--no-compile", "--no-cache-dir", "--upgrade", "--target", SITE,
                                             *wheels], 120, group=-2, critical=True))
    # then these four at once
    steps.append(Step("nvidia-smi", ["nvidia-smi"], 30, group=-1, info=True))
    steps.append(Step("versions", [PY, "-c", VERSIONS], 120, group=-1, info=True))
    steps.append(Step("import-check", [PY, "-c", IMPORT_CHECK], 60, group=-1, critical=True))
    steps.append(Step("backends", [PY, "-m", "synth_ref.conformance", "--list"], 120, group=-1, info=True))
    return steps


VERSIONS = r"""
import importlib, platform, sys
print("python", sys.version.split()[0], sys.executable, platform.platform())
for name in ("numpy", "torch", "triton", "jax", "jaxlib", "cupy", "flax", "pytest", "xdist", "hypothesis",
             "array_api_compat", "array_api_strict", "matplotlib"):
    try:
        m = importlib.import_module(name)
        print(f"{name:<17} {getattr(m, '__version__', '?')}  {getattr(m, '__file__', '')}")
    except Exception as exc:
        print(f"{name:<17} NOT IMPORTABLE: {type(exc).__name__}: {exc}")
try:
    import torch
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print("torch cuda", torch.version.cuda, p.name, p.multi_processor_count, "SMs",
              round(p.total_memory / 2**30, 1), "GiB", "capability", torch.cuda.get_device_capability(0))
    else:
        print("torch: no CUDA device")
except Exception as exc:
    print("torch device query failed:", exc)
try:
    import jax
    print("jax backend", jax.default_backend(), jax.devices())
except Exception as exc:
    print("jax device query failed:", exc)
"""

# Uninstalled, from PYTHONPATH alone: the package, its one non-NumPy dependency and the CLI module.
IMPORT_CHECK = r"""
import array_api_compat, numpy, synth_ref, synth_ref.conformance.cli, synth_ref.backends
print("synth_ref", synth_ref.__version__, synth_ref.__file__)
print("array_api_compat", array_api_compat.__version__, array_api_compat.__file__)
print("backends", synth_ref.backends.names())
"""


# --- running -----------------------------------------------------------------------------------------


class Runner:
    def __init__(self, stage, local, work: Path, out: Path, budget: float):
        self.stage, self.local, self.work, self.out = stage, local, work, out
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget
        self.results: list[dict] = []
        self.count = 0  # log files are numbered in start order
        self.live: dict[str, subprocess.Popen] = {}
        self.stopped = None  # set by a signal: skip what is left, bundle, exit
        self.env = child_env(local, work)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, steps: list[Step]) -> None:
        self.order = {s.name: i for i, s in enumerate(steps)}  # the summary lists steps in plan order
        halted = None
        for group in sorted({s.group for s in steps}):
            batch = [s for s in steps if s.group == group]
            if halted or self.stopped:
                for s in batch:
                    self._record(s, "skipped", None, 0.0, f"not run: {halted or self.stopped}")
                continue
            self._run_group(batch)
            for s in batch:
                r = next(r for r in self.results if r["name"] == s.name)
                if s.critical and r["status"] != "ok":
                    halted = f"{s.name} failed ({r['status']}), nothing after it can work"

    def _run_group(self, batch: list[Step]) -> None:
        started = []
        for s in batch:
            argv = s.argv(self) if callable(s.argv) else s.argv
            if isinstance(argv, str):
                self._record(s, "skipped", None, 0.0, argv)
                continue
            left = self.remaining() - (8 if s.last else 25)  # kept for bundling
            limit = min(s.timeout, left)
            if left < (2 if s.last else 5):
                self._record(s, "skipped", None, 0.0, "not run: no time left in --budget")
                continue
            self.count += 1
            log = self.work / "logs" / f"{self.count:02d}-{s.name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            fh = open(log, "w")  # noqa: SIM115 - closed when the step ends
            shown = [a if "\n" not in str(a) else f"<script of {str(a).count(chr(10))} lines>" for a in argv]
            fh.write(f"$ {shlex.join(map(str, shown))}\n# env: {s.env}  limit {limit:.0f} s\n")
            fh.flush()
            print(f"[{self.elapsed():6.0f} s] start {s.name} (limit {limit:.0f} s)", flush=True)
            out_fh = open(self.work / s.stdout_to, "w") if s.stdout_to else None  # noqa: SIM115
            try:
                p = subprocess.Popen(list(map(str, argv)), cwd=ROOT, env={**self.env, **s.env},
                                     stdout=out_fh or fh, stderr=fh, start_new_session=True, text=True)
            except OSError as exc:  # e.g. no nvidia-smi on this machine
                fh.write(f"could not start: {exc}\n")
                fh.close()
                self._record(s, "failed", None, 0.0, f"could not start: {exc}", log, argv)
                continue
            self.live[s.name] = p
            started.append((s, p, fh, out_fh, log, time.monotonic(), limit, argv))
        # Poll them all, so that each is held to its own limit whatever the others do.
        while started:
            for item in list(started):
                s, p, fh, out_fh, log, t0, limit, argv = item
                if p.poll() is None and time.monotonic() < t0 + limit:
                    continue
                status, note = "ok", ""
                if p.returncode is None:
                    _kill(p)
                    status, note = "timeout", f"killed after {limit:.0f} s"
                elif p.returncode != 0:
                    status = "stopped" if self.stopped else "failed"
                _kill_group(p)  # workers it may have left behind
                wall = time.monotonic() - t0
                if out_fh is not None:
                    out_fh.close()
                    fh.write((self.work / s.stdout_to).read_text())
                fh.write(f"\n# {s.name}: {status}, exit {p.returncode}, {wall:.1f} s wall\n")
                fh.close()
                self.live.pop(s.name, None)
                self._record(s, status, p.returncode, wall, note, log, argv)
                started.remove(item)
            if started:
                time.sleep(0.5)

    def _record(self, s, status, rc, wall, note, log=None, argv=None):
        if status in ("failed", "timeout") and s.info:
            status += " (info)"
        r = {"name": s.name, "group": s.group, "status": status, "rc": rc, "wall_s": round(wall, 1),
             "timeout_s": s.timeout, "note": note, "info": s.info,
             "log": None if log is None else str(log.relative_to(self.work)),
             "argv": None if argv is None else list(map(str, argv))}
        self.results.append(r)
        print(f"[{self.elapsed():6.0f} s] {s.name}: {status}"
              + (f" (exit {rc})" if rc not in (None, 0) else "") + f", {wall:.1f} s wall"
              + (f"; {note}" if note else ""), flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def stop(self, signum, _frame):
        self.stopped = f"signal {signum} (the caller's time limit?)"
        for p in list(self.live.values()):
            _kill(p)

    def failed(self) -> list[dict]:
        return [r for r in self.results if r["status"] in ("failed", "timeout", "stopped")]


def _kill_group(p: subprocess.Popen) -> None:
    """KILL whatever is left of a finished step's process group (its own session: nothing else)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(p: subprocess.Popen) -> None:
    """End a step and everything it started (xdist workers): its own process group, TERM then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def child_env(local: bool, work: Path) -> dict:
    env = dict(os.environ)
    paths = [str(ROOT)] + ([SITE] if Path(SITE).is_dir() or (ROOT / ".whl").is_dir() else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    # Several processes (xdist workers, torch and JAX in one process) share the GPU: JAX must not
    # take 75 % of its memory up front.
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env["SYNTH_REF_JAX_CACHE"] = str(work.parent / f"{work.name}-jax-cache")  # outside the bundle
    env["TRITON_CACHE_DIR"] = str(work.parent / f"{work.name}-triton-cache")
    env["MPLBACKEND"] = "Agg"
    env.pop("TRITON_INTERPRET", None)  # scripts that need it set it themselves
    return env


# --- the bundle ----------------------------------------------------------------------------------------


def _tail(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def summary(runner: Runner) -> str:
    rs = runner.results
    bad = ", ".join(r["name"] for r in runner.failed())
    stop = f"; STOPPED by {runner.stopped}" if runner.stopped else ""
    lines = [f"gpu/run.py {runner.stage}{' --local' if runner.local else ''}: "
             f"{'FAILED: ' + bad if bad else 'all steps ok'}{stop} ({runner.elapsed():.0f} s)",
             time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), ""]
    lines.append(f"{'step':<26} {'status':<14} {'exit':>4} {'wall s':>7} {'limit s':>7}  note")
    order = getattr(runner, "order", {})
    rs = sorted(rs, key=lambda r: order.get(r["name"], len(order)))
    for r in rs:
        lines.append(f"{r['name']:<26} {r['status']:<14} {'' if r['rc'] is None else r['rc']:>4} "
                     f"{r['wall_s']:>7} {r['timeout_s']:>7}  {r['note']}")
    for r in rs:
        if r["log"] is None or r["name"] in ("install-wheels",):
            continue
        log = runner.work / r["log"]
        n = {"nvidia-smi": 25, "versions": 30, "import-check": 6, "backends": 12}.get(r["name"], 40)
        text = _tail(log, n)
        if r["name"].startswith("conf-"):  # from the suite's own summary on
            full = _tail(log, 400)
            at = max((i for i, s in enumerate(full) if s.strip() == "synth-ref conformance"), default=None)
            text = full[at:][:60] if at is not None else text
        lines += ["", f"--- {r['name']} ({r['status']}; {r['log']}) ---", *text]
    return "\n".join(lines) + "\n"


def bundle(runner: Runner) -> tuple[Path, Path]:
    runner.out.mkdir(parents=True, exist_ok=True)
    (runner.work / "steps.json").write_text(json.dumps(
        {"stage": runner.stage, "local": runner.local, "elapsed_s": round(runner.elapsed(), 1),
         "steps": runner.results}, indent=1))
    text = summary(runner)
    (runner.work / "summary.txt").write_text(text)
    tar = runner.out / f"{runner.stage}-bundle.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(runner.work, arcname=runner.work.name)
    s = runner.out / f"{runner.stage}-summary.txt"
    if tar.stat().st_size > 15 * 2**20:  # the device returns files up to 16 MiB
        text += f"\nWARNING: {tar.name} is {tar.stat().st_size / 2**20:.1f} MiB, over what comes back\n"
    s.write_text(text)
    return tar, s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=STAGES)
    ap.add_argument("--local", action="store_true",
                    help="CPU stand-ins for the GPU parts (proves the wiring)")
    ap.add_argument("--dry-run", action="store_true", help="print the steps as JSON and run nothing")
    ap.add_argument("--budget", type=float, default=None,
                    help=f"seconds for the whole stage, bundling included (default {BUDGET}; the run "
                         "call's timeout_s must be larger)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="where the bundle goes (default $OUT)")
    args = ap.parse_args(argv)
    work = Path("/tmp") / f"gpu-{args.stage}{'-local' if args.local else ''}"
    steps = plan(args.stage, args.local, work)
    if args.dry_run:
        print(json.dumps([{"name": s.name, "group": s.group, "timeout": s.timeout, "info": s.info,
                           "critical": s.critical, "env": s.env,
                           "argv": "<decided after the earlier groups>" if callable(s.argv)
                           else list(map(str, s.argv))} for s in steps], indent=1))
        return 0
    if not args.out:
        ap.error("--out or $OUT: where to write the bundle")
    shutil.rmtree(work, ignore_errors=True)
    (work / "conformance").mkdir(parents=True)
    budget = BUDGET[args.stage] if args.budget is None else args.budget
    runner = Runner(args.stage, args.local, work, Path(args.out), budget)
    signal.signal(signal.SIGTERM, runner.stop)
    signal.signal(signal.SIGINT, runner.stop)
    try:
        runner.run(steps)
    finally:
        tar, s = bundle(runner)
        print()
        print(s.read_text(), end="")
        print(f"\nbundle: {tar} ({tar.stat().st_size / 2**10:.0f} KiB); summary: {s}")
    return 1 if runner.failed() or runner.stopped else 0


if __name__ == "__main__":
    sys.exit(main())
