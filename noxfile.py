"""Sessions: ``tests`` (spec tests on every namespace), ``lint`` (ruff), ``conformance`` (per backend)."""

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

ROOT = Path(__file__).parent
# The CPU torch build on disk; pyproject itself allows any recent torch.
CONSTRAINTS = ("-c", str(ROOT / ".ci" / "constraints.txt"))


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def tests(session):
    session.install(*CONSTRAINTS, "-e", ".[test,torch,triton]", "jax")  # triton: the kernel tests
    session.run("pytest", "tests", *session.posargs)


@nox.session
def docs(session):
    """Build the docs with warnings as errors (no network: MathJax is bundled), then test the build:
    generated pages, the example adapter, and formulas typeset in headless Chromium."""
    session.install(*CONSTRAINTS, "-e", ".[docs,test]")
    html = ROOT / "docs" / "_build" / "html"
    session.run("sphinx-build", "-W", "--keep-going", "-q", "-b", "html", "docs", str(html))
    session.run("pytest", "docs/tests", *session.posargs, env={"SYNTH_REF_DOCS_HTML": str(html)})


@nox.session
def bench(session):
    """Benchmarks (benchmarks/README.md): ``nox -s bench -- --quick`` runs on CPU in minutes and writes
    benchmarks/results/cpu-quick.{json,md,png}.  Not in CI (.ci/run): tests/test_bench_harness.py is."""
    session.install(*CONSTRAINTS, "-e", ".[torch]", "jax", "matplotlib")
    session.run("python", "-m", "benchmarks", *session.posargs)
