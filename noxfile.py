"""Sessions: ``tests`` (spec tests on every namespace), ``lint`` (ruff), ``conformance`` (per backend)."""

import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

ROOT = Path(__file__).parent
# pip's options for every install: the CPU torch build on disk (pyproject itself allows any recent
# torch), and no byte-compiling of whole packages at install (torch's: 14 s of a 36 s install);
# Python compiles the modules a run imports, when it imports them.
PIP = ("--no-compile", "-c", str(ROOT / ".ci" / "constraints.txt"))

# Shared environments.  The tests and most conformance sessions need the same packages, and building
# a virtual environment with torch in it costs ~25 s: once per environment instead of once per
# session (six of them) saves about a minute of CI.  name -> (extras of this project, further
# packages).  "base" has no framework at all: the numpy and array_api_strict backends are certified
# there, so the spec and the suite are known to run on NumPy alone.
ENVS = {
    "base": ("test", ()),
    # every CPU framework, xdist, and NVRTC (no GPU needed) for tests/test_cupy_nvrtc.py: the CuPy
    # adapter's sources compiled as CuPy compiles them on a GPU
    "cpu": ("test,torch,triton,jax", ("pytest-xdist", 'nvidia-cuda-nvrtc; sys_platform == "linux"')),
    "cupy": ("test,cupy", ()),
}


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on ``path`` (POSIX; elsewhere nothing is locked): sessions run side by
    side with ``nox -j`` share environments.  The twin of ``synth_ref.conformance.report._exclusive``,
    which nox's own interpreter cannot import (synth_ref needs NumPy, installed only in the envs)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def shared_python(session, name: str) -> str:
    """The python of shared environment ``name`` (``.nox/env-<name>``), created on first use and
    reinstalled whenever what it was built from changes (the install arguments, pyproject.toml,
    the constraints): a stamp file records that.  Sessions using it are ``venv_backend="none"``."""
    extras, packages = ENVS[name]
    where = ROOT / ".nox" / f"env-{name}"
    args = [*PIP, "-e", f".[{extras}]", *packages]
    digest = hashlib.sha256(json.dumps(args).encode())
    for f in ("pyproject.toml", ".ci/constraints.txt"):
        digest.update((ROOT / f).read_bytes())
    stamp = where / "synth-ref-stamp"
    python = str(where / "Scripts" / "python.exe" if os.name == "nt" else where / "bin" / "python")
    with _locked(ROOT / ".nox" / f"env-{name}.lock"):
        if not (stamp.exists() and stamp.read_text() == digest.hexdigest()):
            if not Path(python).exists():
                session.run(sys.executable, "-m", "venv", str(where), external=True)
            session.run(python, "-m", "pip", "install", "-q", *args, external=True)
            stamp.write_text(digest.hexdigest())
    return python


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", ".")


# XLA:CPU set for compile time, which is most of a jax test's time on CPU: optimization level 0 (LLVM's
# optimizations off) and the older loop emitters for fused ops in place of the MLIR fusion emitters.
# Both change how XLA:CPU generates code, hence last-ulp rounding, not what is computed; at level 0 a
# fused operand evaluated twice may also round differently each time, as on XLA:GPU (the condition
# that exposed the max-gradient NaN, _common.row_max).  Used by both jax conformance sessions and by
# FAST_COMPILE_TESTS; the rest of the tests session, tests/test_jax_jit.py (every option of every
# variant, jitted) among them, compiles as a user's XLA:CPU does, with no flag.
_FAST_COMPILE = {"XLA_FLAGS": " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0",
                                        "--xla_cpu_use_fusion_emitters=false"]).strip()}
# Test files run in a second pytest process under _FAST_COMPILE (XLA reads its flags once per
# process): the Pallas interpreter's programs play no part in a kernel on a TPU or GPU, and the NNX
# module tests check the module around the jitted layer.  On a two-core machine: test_jax_pallas.py
# 354 -> 131 CPU-s; the whole session 11.0 -> 7.9 min, the same 1605 tests passing, 168 skipped.
FAST_COMPILE_TESTS = ("tests/test_jax_pallas.py", "tests/test_jax_nnx.py")


@nox.session(venv_backend="none")
def tests(session):
    python = shared_python(session, "cpu")  # triton: the kernel tests; jax + flax: the NNX module tests
    # the tests are independent processes' work (jax compiles, interpreter runs): spread them over
    # the cores (6.5 -> 4.3 min on CI's two); `nox -s tests -- -n 0` runs each pytest without workers
    xdist = ("-n", "auto", "--maxprocesses", "4")
    ignore = [f"--ignore={f}" for f in FAST_COMPILE_TESTS]
    session.run(python, "-m", "pytest", "tests", *ignore, *xdist, *session.posargs, external=True)
    # exit status 5: posargs (say -k) selected none of these files' tests
    session.run(python, "-m", "pytest", *FAST_COMPILE_TESTS, *xdist, *session.posargs, env=_FAST_COMPILE,
                success_codes=[0, 5], external=True)


# The Triton of the GPU machine (gpu/README.md: torch 2.11 pins it), whose compiler is not CI's: with
# it 19 masked float64 kernels once failed to compile (_common.MASK_DTYPE), unseen by CI's Triton.
GPU_TRITON = "3.6.0"


@nox.session
def gpu_triton(session):
    """The Triton kernel tests with the GPU machine's Triton (GPU_TRITON), on CPU: every kernel compiled
    ahead of time for sm_90, then run in the interpreter.  Not in CI (a second Triton, 190 MB, and
    ~5 min): run it before a device call that follows a change to the kernels."""
    session.install(*PIP, "-e", ".[test,torch]", "pytest-xdist")
    # over the pinned Triton; NumPy < 2.4: Triton 3.6's interpreter converts one-element arrays to
    # Python ints, which NumPy 2.4 refuses ("only 0-dimensional arrays can be converted")
    session.install("--no-compile", f"triton=={GPU_TRITON}", "numpy<2.4")
    session.run("pytest", "tests/test_torch_kernels_sm90.py", "-rs", *session.posargs)
    session.run("pytest", "tests/test_torch_kernels.py", "-n", "auto", "--maxprocesses", "4",
                *session.posargs, env={"TRITON_INTERPRET": "1"})


@nox.session
def docs(session):
    """Build the docs with warnings as errors (no network: MathJax is bundled), then test the build:
    generated pages, the example adapter, and formulas typeset in headless Chromium."""
    session.install(*PIP, "-e", ".[docs,test]")
    html = ROOT / "docs" / "_build" / "html"
    session.run("sphinx-build", "-W", "--keep-going", "-q", "-b", "html", "docs", str(html))
    session.run("pytest", "docs/tests", *session.posargs, env={"SYNTH_REF_DOCS_HTML": str(html)})


@nox.session
def bench(session):
    """Benchmarks (benchmarks/README.md): ``nox -s bench -- --quick`` runs on CPU in minutes and writes
    benchmarks/results/cpu-quick.{json,md,png}.  Not in CI (.ci/run): tests/test_bench_harness.py is."""
    session.install(*PIP, "-e", ".[torch]", "jax", "matplotlib")
    session.run("python", "-m", "benchmarks", *session.posargs)


# --- conformance --------------------------------------------------------------------------------
# One session per backend: `nox -s conformance` runs them all, `nox -s "conformance(backend='jax')"`
# one.  Each merges its results into conformance-report.json (+ .md matrix) and prints the summary;
# an unavailable backend is recorded and the session skipped with the reason.
# SYNTH_REF_PROFILE=deep selects the deep profile (default: the derandomized ci profile).

CONFORMANCE_BACKENDS = ["numpy", "array_api_strict", "torch", "torch-triton-interpret", "jax",
                        "jax-pallas-interpret", "cupy-emulated", "torch-cuda", "cupy"]
# backend -> shared environment (ENVS); torch wherever gradients are checked: gradient gold is torch
# autograd in float64 on CPU (the CPU build on disk, via the constraints).  cupy-emulated: the CUDA
# sources built by the host C++ compiler.
CONFORMANCE_ENVS = {"numpy": "base", "array_api_strict": "base", "cupy": "cupy"}  # the rest: "cpu"
# jax compiles every shape twice (apply, vjp), the interpreters are slow: spread them over the cores
CONFORMANCE_WORKERS = {"jax": "auto", "jax-pallas-interpret": "auto", "torch-triton-interpret": "auto"}
# The interpreters run the kernels' logic at 10-100x the reference's cost: a smaller grid
# (cases.grid's "kernels" profile) keeps CI inside its time; SYNTH_REF_PROFILE overrides.
CONFORMANCE_PROFILE = {"torch-triton-interpret": "kernels", "jax-pallas-interpret": "kernels"}
# Triton decides at import whether its kernels are interpreted (the kernels' CPU path).  Both jax
# sessions compile with XLA:CPU set for compile time (_FAST_COMPILE): compiling is most of their time
# (the jax grid 300 -> 205 s at level 0, a third of its variants 100 -> 60 s and the Pallas
# interpreter's dense checks 66 -> 42 s with the loop emitters).  Programs as XLA:CPU compiles them
# by default: the tests session (tests/test_jax_jit.py) and every GPU run.
CONFORMANCE_ENV = {"torch-triton-interpret": {"TRITON_INTERPRET": "1"}, "jax": _FAST_COMPILE,
                   "jax-pallas-interpret": _FAST_COMPILE}
NEEDS_NVIDIA = ("torch-cuda", "cupy")
SELFTEST_IN = "jax"  # a session whose environment has every CPU framework


def _nvidia_driver() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists()


@nox.session(venv_backend="none")
@nox.parametrize("backend", CONFORMANCE_BACKENDS)
def conformance(session, backend):
    """Certify one backend against the reference; extra arguments after -- go to pytest."""
    profile = os.environ.get("SYNTH_REF_PROFILE") or CONFORMANCE_PROFILE.get(backend, "ci")
    report = str(ROOT / "conformance-report.json")
    cli = ["-m", "synth_ref.conformance", "--backend", backend, "--profile", profile, "--report", report]
    if backend in NEEDS_NVIDIA and not _nvidia_driver():
        reason = "no NVIDIA driver on this machine (no nvidia-smi, no /proc/driver/nvidia)"
        session.run(shared_python(session, "base"), *cli, "--unavailable", reason, external=True)
        session.skip(reason)
    python = shared_python(session, CONFORMANCE_ENVS.get(backend, "cpu"))
    env = CONFORMANCE_ENV.get(backend, {})
    probe = session.run(python, *cli[:4], "--probe", silent=True, env=env, external=True)
    info = json.loads(str(probe).strip().splitlines()[-1])
    if not info["available"]:
        session.run(python, *cli, "--unavailable", info["reason"], external=True)
        session.skip(info["reason"])
    workers = CONFORMANCE_WORKERS.get(backend)
    cache = ROOT / ".nox" / "jax-compilation-cache"
    if backend == SELFTEST_IN:
        # the suite's own tests: teeth (every wrong adapter caught), registry, inputs, CLI
        session.run(python, "-m", "pytest", "conformance", "--ignore=conformance/test_conformance.py",
                    "-q", "-p", "no:cacheprovider", "-n", "auto", external=True)  # 52 -> 42 s on two cores
    session.run(python, *cli, *(["-n", workers] if workers else []), "--", *session.posargs,
                env={"SYNTH_REF_JAX_CACHE": str(cache), **env}, external=True)
