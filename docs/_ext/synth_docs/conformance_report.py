"""Reading ``conformance-report.json`` (written by ``synth_ref.conformance.report``) for the docs,
with the GPU runs committed under ``gpu/results/`` (``conformance-cuda*.json``, written by
``gpu/unpack.py`` from a lent device's run) merged in: a backend the local report lacks, or could
not run here (torch-cuda and cupy on a machine without a GPU), is shown from the committed run,
which the tables name.

Layout (schema 1): ``{"schema": 1, "rule": str, "gold_check": {case: rel. diff},
"backends": {name: entry}}``; an entry has ``available``, ``reason``, ``dtypes``, ``vjp``,
``profile``, ``run_at``, ``counts`` and ``cells[variant][dtype][kind]`` with ``status``
(pass / fail / skip), ``checks``, ``failed`` and ``worst_ratio`` (worst error / tolerance, <= 1
passes), and ``failures`` (the failing checks).
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import synth_ref as sr
from synth_ref.conformance.report import partial_note, verdict

from . import markdown as md

ROOT = Path(__file__).resolve().parents[3]
#: Where the suite writes its report; the environment variable lets tests point elsewhere.
ENV = "SYNTH_REF_CONFORMANCE_REPORT"
#: Where gpu/unpack.py commits the GPU runs' reports; the environment variable lets tests point elsewhere.
GPU_ENV = "SYNTH_REF_GPU_RESULTS"
#: The conformance stage's report; other conformance-cuda-*.json (the deep bf16 run) keep their tag.
GPU_MAIN = "conformance-cuda"
SCHEMA = 1
KINDS = ("forward", "gradient")
DTYPES = ("float64", "float32", "float16", "bfloat16")


def report_path() -> Path:
    return Path(os.environ.get(ENV) or ROOT / "conformance-report.json")


def gpu_results_dir() -> Path:
    return Path(os.environ.get(GPU_ENV) or ROOT / "gpu" / "results")


@dataclass(frozen=True)
class Report:
    path: Path | None  # the local report, None when only committed GPU runs were found
    data: dict
    gpu_files: tuple[str, ...] = ()  # committed GPU reports whose entries are shown

    @property
    def backends(self) -> list[dict]:
        return list(self.data["backends"].values())

    @property
    def origin(self) -> str:
        """Where the tables come from, as Markdown."""
        names = ([md.code(self.path.name)] if self.path else []) + [md.code(f) for f in self.gpu_files]
        return " and ".join(names)


def load(path: Path | None = None, gpu_dir: Path | None = None) -> Report | None:
    """The report with the committed GPU runs merged in, or None when there is neither (the suite
    has not been run here and no GPU run is committed).  A report in another layout is an error:
    the docs must not show a matrix they misread."""
    path = report_path() if path is None else Path(path)
    gpu_dir = gpu_results_dir() if gpu_dir is None else Path(gpu_dir)
    local = _read(path) if path.is_file() else None
    data = local or {"schema": SCHEMA, "backends": {}}
    shown = []
    files = sorted(gpu_dir.glob(f"{GPU_MAIN}*.json"), key=lambda f: (f.stem != GPU_MAIN, f.name)) \
        if gpu_dir.is_dir() else []  # the conformance stage's report first
    for f in files:
        tag = f.stem[len(GPU_MAIN):].lstrip("-")
        for name, e in _read(f)["backends"].items():
            key = f"{name} ({tag})" if tag else name
            here = data["backends"].get(key)
            if here is None or not here["available"]:  # a run here that could not run it loses
                data["backends"][key] = {**e, "name": key, "source": f"gpu/results/{f.name}"}
                if f.name not in shown:
                    shown.append(f.name)
    if local is None and not shown:
        return None
    return Report(path=path if local is not None else None, data=data, gpu_files=tuple(shown))


def _read(path: Path) -> dict:
    data = json.loads(path.read_text())
    if (not isinstance(data, dict) or data.get("schema") != SCHEMA
            or not isinstance(data.get("backends"), dict)):
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a conformance report with schema {SCHEMA}; got schema {got!r}")
    for name, e in data["backends"].items():
        missing = [k for k in ("available", "reason", "dtypes", "vjp", "cells", "counts") if k not in e]
        if missing:
            raise ValueError(f"{path}: backends[{name!r}] lacks {', '.join(missing)}")
    return data


def sr_variants() -> tuple[str, ...]:
    from synth_ref import VARIANTS

    return VARIANTS


def cell_text(entry: dict, variant: str, dtype: str, kind: str) -> str:
    """One check's status as Markdown: pass / **fail** with the worst ratio, or why it did not run."""
    if not entry["available"]:
        return "skipped"
    if dtype not in entry["dtypes"] or variant not in entry.get("variants", sr_variants()):
        return "not claimed"
    if kind == "gradient" and not entry["vjp"]:
        return "no vjp"
    c = entry["cells"].get(variant, {}).get(dtype, {}).get(kind)
    if c is None:
        return "not run"
    ratio = "" if c.get("worst_ratio") is None else f" {c['worst_ratio']:.2g}"
    if c["status"] == "fail":
        return f"**fail**{ratio} ({c['failed']}/{c['checks']})"
    if c["status"] == "skip":
        return "skipped"
    return f"pass{ratio}"


def overall(entry: dict) -> str:
    v = verdict(entry)
    return f"**{v}**" if v in ("fail", "partial") else v


NOT_RUN = ("Not run: no `conformance-report.json` was found when these pages were built.  Run "
           "`python3 -m nox -s conformance` in the repository, then build the docs again.\n")


def _unavailable(report: Report) -> list[str]:
    return [f"- {md.code(e['name'])} was skipped: {md.text(e['reason'])}" for e in report.backends
            if not e["available"]]


def variant_section(variant: str, report: Report | None) -> list[str]:
    out = ["## Backends\n"]
    if report is None:
        return out + [NOT_RUN]
    rows = []
    for e in report.backends:
        if not e["available"]:
            continue
        for dt in e["dtypes"]:
            rows.append([md.code(e["name"]), md.code(dt),
                         *(cell_text(e, variant, dt, kind) for kind in KINDS)])
    out.append(f"From {report.origin}: each backend in each dtype it claims, with the worst "
               "error ratio (error / tolerance; at most 1 passes).  See {doc}`/conformance` for the rule.\n")
    if rows:
        out.append(md.table(["backend", "dtype", "forward", "gradient"], rows))
    skipped = _unavailable(report)
    return out + (skipped + [""] if skipped else [])


def matrix_section(report: Report | None) -> list[str]:
    """Every backend's summary, then the variant x dtype matrix with one column per backend."""
    if report is None:
        return [NOT_RUN]
    backends = report.backends
    out = [f"From {report.origin}.\n"]
    summary = []
    for e in backends:
        c = e["counts"]
        source = f"committed run {e['source']}" if e.get("source") else ""
        note = "; ".join(t for t in (e["reason"], partial_note(e), source) if t)
        summary.append([md.code(e["name"]), overall(e), str(sum(c.values())),
                        *(str(c.get(k, 0)) for k in ("pass", "fail", "error", "skip")),
                        md.text(e.get("profile", "")), md.text(e.get("run_at", "")), md.text(note)])
    out.append(md.table(["backend", "result", "checks", "pass", "fail", "error", "skip", "profile", "run at",
                         "note"], summary))
    if not backends:
        return out
    out.append("\nEach cell: forward / gradient.\n")
    rows = []
    for v in sr.VARIANTS:
        for dt in DTYPES:
            cells = [" / ".join(dict.fromkeys(cell_text(e, v, dt, k) for k in KINDS)) for e in backends]
            if all(c in ("not claimed", "skipped") for c in cells):
                continue  # no backend checks this dtype: a row of nothing
            rows.append([md.ref("ref", v, f"variant-{v}"), md.code(dt), *cells])
    out.append(md.table(["variant", "dtype", *(md.code(e["name"]) for e in backends)], rows))
    gold = report.data.get("gold_check") or {}
    if gold:
        out += ["\nThe gradient gold (torch autograd of the reference in float64) against central finite "
                "differences, largest relative difference per case:\n",
                md.table(["case", "relative difference"],
                         [[md.code(k), f"{v:.2g}"] for k, v in gold.items()])]
    fails = [f for e in backends for f in e.get("failures", [])]
    if fails:
        out.append(f"\n**Failures** (first {min(len(fails), 30)} of {len(fails)}):\n")
        out += [f"- {md.code(f['backend'])} {md.text(f['kind'])} {md.code(f['dtype'])} "
                f"{md.text(f['status'])}: {md.code(f['case'])}: {md.text(f.get('detail') or '')}"
                for f in fails[:30]]
        out.append("")
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
            rf"{tol.REF_FACTOR:g} \max\left(\max\lvert \mathrm{{ref}}_{{\mathrm{{dtype}}}} - "
            r"\mathrm{gold} \rvert,\; \mathrm{sensitivity}\right)\right)")
    rows = [[md.code(name), f"{f.forward:g}", f"{f.gradient:g}", md.text(f.why)]
            for name, f in tol.TOLERANCES.items()]
    return ["A check passes when, for every output array (y; or dx and each parameter's gradient),\n",
            md.math_block(rule),
            "and the output has no NaN or Inf where gold is finite.  ref_dtype is the reference itself "
            "run in the checked dtype on the checked backend; sensitivity is the largest change of gold "
            f"over {tol.SENSITIVITY_DRAWS} copies of the inputs each multiplied elementwise by "
            "(1 + u U[-1, 1]), u the dtype's unit roundoff: what one rounding of every input does to "
            "the exact result, so that a reference that happens to be more exact than float rounding "
            "guarantees on an ill-conditioned case does not fail a sound kernel.  The floors, from "
            "`synth_ref.conformance.tolerances.TOLERANCES`:\n",
            md.table(["dtype", "forward floor", "gradient floor", "why"], rows)]
