"""Sessions: ``tests`` (spec tests on every namespace), ``lint`` (ruff), ``conformance`` (per backend)."""

import json
import os
import shutil
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

ROOT = Path(__file__).parent
# pip's options for every install: the CPU torch build on disk (pyproject itself allows any recent
# torch), and no byte-compiling of whole packages at install (torch's: 14 s of a 36 s install, in
# each of six sessions); Python compiles the modules a run imports, when it imports them.
PIP = ("--no-compile", "-c", str(ROOT / ".ci" / "constraints.txt"))


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def tests(session):
    # triton: the kernel tests; jax extra (jax + flax): the NNX module tests
    session.install(*PIP, "-e", ".[test,torch,triton,jax]", "pytest-xdist")
    # the tests are independent processes' work (jax compiles, interpreter runs): spread them over
    # the cores (6.5 -> 4.3 min on CI's two); `nox -s tests -- -n 0` runs them in one process
    session.run("pytest", "tests", "-n", "auto", "--maxprocesses", "4", *session.posargs)


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
# backend -> (extras of this project, further packages); torch wherever gradients are checked:
# gradient gold is torch autograd in float64 on CPU (the CPU build on disk, via the constraints)
CONFORMANCE_DEPS = {
    "numpy": ("test", ()),
    "array_api_strict": ("test", ()),
    "torch": ("test,torch", ()),
    "torch-triton-interpret": ("test,torch,triton", ("pytest-xdist",)),
    "torch-cuda": ("test,torch", ()),
    "jax": ("test,torch", ("jax", "pytest-xdist")),
    "jax-pallas-interpret": ("test,torch", ("jax", "pytest-xdist")),
    "cupy": ("test,cupy", ()),
    "cupy-emulated": ("test,torch", ()),  # the CUDA sources built by the host C++ compiler
}
# jax compiles every shape twice (apply, vjp), the interpreters are slow: spread them over the cores
CONFORMANCE_WORKERS = {"jax": "auto", "jax-pallas-interpret": "auto", "torch-triton-interpret": "auto"}
# The interpreters run the kernels' logic at 10-100x the reference's cost: a smaller grid
# (cases.grid's "kernels" profile) keeps CI inside its time; SYNTH_REF_PROFILE overrides.
CONFORMANCE_PROFILE = {"torch-triton-interpret": "kernels", "jax-pallas-interpret": "kernels"}
# Triton decides at import whether its kernels are interpreted (the kernels' CPU path).  Both jax
# sessions compile at XLA's optimization level 0: compiling is most of their time (Pallas's
# interpreter: 1.6 s a program, aft_full's checks 103 -> 58 s; the jax grid 300 -> 205 s).  The level
# changes how LLVM optimizes XLA:CPU's code, hence last-ulp rounding, not what is computed; at 0 a
# fused operand evaluated twice may also round differently each time, as on XLA:GPU, the condition
# that exposed the max-gradient NaN (_common.row_max).  The interpreter's programs play no part in a
# kernel on a TPU or GPU.  Programs at XLA's default level: tests/test_jax_*.py and every GPU run.
_O0 = {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()}
CONFORMANCE_ENV = {"torch-triton-interpret": {"TRITON_INTERPRET": "1"}, "jax": _O0,
                   "jax-pallas-interpret": _O0}
NEEDS_NVIDIA = ("torch-cuda", "cupy")
SELFTEST_IN = "jax"  # the session whose environment has every CPU framework


def _nvidia_driver() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists()


@nox.session
@nox.parametrize("backend", CONFORMANCE_BACKENDS)
def conformance(session, backend):
    """Certify one backend against the reference; extra arguments after -- go to pytest."""
    profile = os.environ.get("SYNTH_REF_PROFILE") or CONFORMANCE_PROFILE.get(backend, "ci")
    report = str(ROOT / "conformance-report.json")
    cli = ["python", "-m", "synth_ref.conformance", "--backend", backend, "--profile", profile,
           "--report", report]
    if backend in NEEDS_NVIDIA and not _nvidia_driver():
        reason = "no NVIDIA driver on this machine (no nvidia-smi, no /proc/driver/nvidia)"
        session.install(*PIP, "-e", ".")
        session.run(*cli, "--unavailable", reason)
        session.skip(reason)
    extras, packages = CONFORMANCE_DEPS[backend]
    session.install(*PIP, "-e", f".[{extras}]", *packages)
    env = CONFORMANCE_ENV.get(backend, {})
    probe = session.run(*cli[:5], "--probe", silent=True, env=env)
    info = json.loads(str(probe).strip().splitlines()[-1])
    if not info["available"]:
        session.run(*cli, "--unavailable", info["reason"])
        session.skip(info["reason"])
    workers = CONFORMANCE_WORKERS.get(backend)
    cache = ROOT / ".nox" / "jax-compilation-cache"
    if backend == SELFTEST_IN:
        # the suite's own tests: teeth (every wrong adapter caught), registry, inputs, CLI
        session.run("pytest", "conformance", "--ignore=conformance/test_conformance.py", "-q",
                    "-p", "no:cacheprovider", "-n", "auto")  # 52 -> 42 s on two cores
    session.run(*cli, *(["-n", workers] if workers else []), "--", *session.posargs,
                env={"SYNTH_REF_JAX_CACHE": str(cache), **env})
