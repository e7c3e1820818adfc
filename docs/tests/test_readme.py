"""README.md against the code: the quick start runs and prints what its comments say, and its
tables and commands name what exists (backends and their dtypes, variants and their options, nox
sessions, CLI options)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np

import synth_ref as sr
from synth_ref import backends
from synth_ref.conformance import cli

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _table(title: str) -> list[list[str]]:
    rows = [line for line in _section(title).splitlines() if line.startswith("| ")]
    return [[c.strip() for c in r.strip("|").split(" | ")] for r in rows[2:]]


def test_quick_start_runs_and_matches_its_comments():
    code = re.search(r"## Quick start\n\n```python\n(.*?)```", README, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "README quick start", "exec"), ns)  # noqa: S102 - the README's own snippet
    params, y, P, x = ns["params"], ns["y"], ns["P"], ns["x"]
    comments = dict(re.findall(r"^(\w+) = .*#\s*(.*)$", code, re.M))
    for name, shape in re.findall(r'"(\w+)": (\([\d, ]+\))', comments["params"]):
        assert params[name].shape == ast.literal_eval(shape), (name, params[name].shape)
    assert y.shape == ast.literal_eval(re.match(r"\([\d, ]+\)", comments["y"]).group())
    assert y.dtype == x.dtype and type(y) is type(x)
    assert P.shape == ast.literal_eval(re.match(r"\([\d, ]+\)", comments["P"]).group())
    assert "rows sum to 1" in comments["P"] and np.allclose(P.sum(-1), 1)


def test_backend_table_names_every_builtin_backend_and_its_claimed_dtypes():
    named = []
    for backend_cell, what, _ in _table("Backends"):
        names = re.findall(r"`([\w-]+)`", backend_cell)
        named += names
        for n in names:
            if "interpret" in n:  # the interpreter rows state the dtypes they claim
                listed = re.findall(r"float\d+|bfloat16", what)
                assert tuple(listed) == tuple(backends.get(n).dtypes), (n, listed, backends.get(n).dtypes)
    assert sorted(named) == sorted(backends.BUILTIN), named


def test_variant_table_lists_every_variant_with_its_options():
    table = _table("Variants and options")
    assert [v for r in table for v in re.findall(r"`(\w+)`", r[0])] == list(sr.VARIANTS)
    for cell, options in table:
        for v in re.findall(r"`(\w+)`", cell):
            want = set(sr.REGISTRY[v].options)
            if v == "mixture":  # "plus their options": the components' own
                want = {"components"}
            assert set(re.findall(r"`(\w+)(?:=[^`]*)?`", options)) - {"outer", "tile"} == want, (v, options)


def test_commands_name_existing_nox_sessions_and_cli_options():
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    sessions = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)
                and any("session" in ast.unparse(d) for d in f.decorator_list)}
    used = set()
    for cmd in re.findall(r"nox -s ([^`\n]+)", README):
        used |= {s.split("(")[0].strip('"') for s in cmd.split(" --")[0].split()}
    assert used and used <= sessions, (used, sessions)
    options = {o for a in cli._parser()._actions for o in a.option_strings}
    named = re.findall(r"python -m synth_ref\.conformance (--[\w-]+)", README.replace("\n", " "))
    named += re.findall(r"`(--[\w-]+)", README)  # `--adapter package.module:object`
    assert named and set(named) <= options, (named, options)
    for path in re.findall(r"`((?:synth_ref|docs|benchmarks|gpu|\.ci)/[\w./-]*)`", README):
        if not path.startswith("docs/_build/"):  # what `nox -s docs` writes
            assert (ROOT / path).exists(), path
