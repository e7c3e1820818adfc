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
    session.install(*CONSTRAINTS, "-e", ".[test,torch]", "jax")
    session.run("pytest", "tests", *session.posargs)
