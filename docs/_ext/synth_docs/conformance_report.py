"""Reading ``conformance-report.json`` (written by the conformance suite) for the docs.

PROVISIONAL: the report's format belongs to the conformance suite (issue 3), which is being written
now.  ``load`` normalises it into :class:`Row` records; only ``_parse`` knows the file's layout.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import markdown as md

ROOT = Path(__file__).resolve().parents[3]
#: Where the suite writes its report; the environment variable lets tests point elsewhere.
ENV = "SYNTH_REF_CONFORMANCE_REPORT"


def report_path() -> Path:
    return Path(os.environ.get(ENV) or ROOT / "conformance-report.json")


@dataclass(frozen=True)
class Row:
    backend: str
    variant: str
    dtype: str
    check: str  # "forward" or "gradient"
    status: str  # "pass", "fail" or "skipped"
    worst_ratio: float | None  # worst error / allowed error; below 1 passes
    reason: str = ""


@dataclass(frozen=True)
class Report:
    path: Path
    rows: tuple[Row, ...]
    meta: dict


def load(path: Path | None = None) -> Report | None:
    """The report, or None when there is none (the suite has not been run here)."""
    path = report_path() if path is None else Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    rows, meta = _parse(data, path)
    return Report(path=path, rows=tuple(rows), meta=meta)


def _parse(data, path):
    raise ValueError(f"{path}: the conformance report's format is not known to the docs yet")


def _ratio(r: Row) -> str:
    return "" if r.worst_ratio is None else f"{r.worst_ratio:.3g}"


def _cell(rows: list[Row]) -> str:
    if not rows:
        return "not run"
    r = rows[0]
    text = {"pass": "pass", "fail": "**fail**", "skipped": "skipped"}.get(r.status, md.text(r.status))
    ratio = _ratio(r)
    return text + (f" ({ratio})" if ratio else "")


NOT_RUN = ("Not run: no `conformance-report.json` was found when these pages were built.  Run "
           "`python3 -m nox -s conformance` in the repository, then build the docs again.\n")


def variant_section(variant: str, report: Report | None) -> list[str]:
    out = ["## Backends\n"]
    if report is None:
        return out + [NOT_RUN]
    rows = [r for r in report.rows if r.variant == variant]
    if not rows:
        return out + [f"The report ({md.code(report.path.name)}) has no case of this variant.\n"]
    out.append("From the latest conformance report: status and, in brackets, the worst error ratio "
               "(error / allowed error; below 1 passes).  See {doc}`/conformance` for the rule.\n")
    keys = sorted({(r.backend, r.dtype) for r in rows})
    table = []
    for backend, dtype in keys:
        sel = [r for r in rows if (r.backend, r.dtype) == (backend, dtype)]
        table.append([md.code(backend), md.code(dtype),
                      _cell([r for r in sel if r.check == "forward"]),
                      _cell([r for r in sel if r.check == "gradient"])])
    out.append(md.table(["backend", "dtype", "forward", "gradient"], table))
    return out


def matrix_section(report: Report | None) -> list[str]:
    """The full matrix: variant x backend, one cell per dtype."""
    if report is None:
        return [NOT_RUN]
    backends = sorted({r.backend for r in report.rows})
    variants = sorted({r.variant for r in report.rows})
    out = []
    for check in ("forward", "gradient"):
        table = []
        for v in variants:
            row = [f"{{ref}}`{md.text(v)} <variant-{v}>`"]
            for b in backends:
                sel = [r for r in report.rows if (r.variant, r.backend, r.check) == (v, b, check)]
                row.append("<br>".join(f"{md.code(r.dtype)}: {_cell([r])}" for r in sel) or "not run")
            table.append(row)
        out += [f"### {check.capitalize()}\n", md.table(["variant"] + [md.code(b) for b in backends], table)]
    return out


def tolerance_section() -> list[str]:
    """The pass rule and per-dtype floors, read from ``synth_ref.conformance.tolerances`` (the one
    table the suite itself uses)."""
    try:
        tol = importlib.import_module("synth_ref.conformance.tolerances")
    except ImportError as exc:
        return [f"The tolerance table is not available to the docs ({md.text(exc)}).\n"]
    rule = (r"\max\lvert \mathrm{out} - \mathrm{gold} \rvert \;\le\; "
            r"\max\left(\mathrm{floor}_{\mathrm{dtype}},\; "
            rf"{tol.REF_FACTOR:g} \max\lvert \mathrm{{ref}}_{{\mathrm{{dtype}}}} - "
            r"\mathrm{gold} \rvert\right)")
    rows = [[md.code(name), f"{f.forward:g}", f"{f.gradient:g}", md.text(f.why)]
            for name, f in tol.TOLERANCES.items()]
    return ["A check passes when, for every output array (y; or dx and each parameter's gradient),\n",
            md.math_block(rule),
            "and the output has no NaN or Inf where gold is finite.  ref_dtype is the reference itself "
            "run in the checked dtype on the checked backend.  The floors, from "
            "`synth_ref.conformance.tolerances.TOLERANCES`:\n",
            md.table(["dtype", "forward floor", "gradient floor", "why"], rows)]
