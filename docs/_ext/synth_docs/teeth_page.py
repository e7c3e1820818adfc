"""The table of deliberately wrong adapters the suite must fail (``conformance/wrong_adapters.py``).

Read from ``DEFECTS`` and ``VJP_DEFECTS`` themselves, so the page lists exactly what
``conformance/test_teeth.py`` runs.  ``conformance`` is the repository's test package, not part of
the installed ``synth_ref``, so the module is loaded from its file (it needs only NumPy and
synth_ref at import; torch only when a ``WrongVjp`` is made, which the page never does).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from . import markdown as md

ROOT = Path(__file__).resolve().parents[3]


def load():
    path = ROOT / "conformance" / "wrong_adapters.py"
    spec = importlib.util.spec_from_file_location("_synth_docs_wrong_adapters", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(module) -> list[tuple[str, str, tuple[str, ...], str]]:
    """(name, defect, variants, where seen) for every wrong adapter the teeth tests run: the
    forward defects, then the backward ones (``VJP_DEFECTS``, the torch adapter's vjp made wrong)."""
    return [(name, defect, tuple(variants), source)
            for table in (module.DEFECTS, module.VJP_DEFECTS)
            for name, (defect, variants, _, source) in table.items()]


def render() -> str:
    module = load()
    body = [[md.code(name), md.text(defect), ", ".join(md.code(v) for v in variants), md.text(source)]
            for name, defect, variants, source in rows(module)]
    return ("Each row is a deliberately wrong adapter in `conformance/wrong_adapters.py`; "
            "`conformance/test_teeth.py` runs the `ci` grid on the variants it affects (a "
            "backward-pass defect: its gradient checks) and fails unless at least one check catches "
            "it, and runs the same code with the defect switched off, which must pass (so the catch "
            "is the defect's doing).  `nox -s conformance` runs them (in the jax session) and "
            "prints how many checks caught each.\n\n"
            + md.table(["wrong adapter", "what it does wrong", "variants", "seen in"], body))
