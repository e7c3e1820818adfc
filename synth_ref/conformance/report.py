"""conformance-report.json, its Markdown matrix, and the summary printed at the end of a run.

Each run (one backend per nox session) merges its entry into the JSON file, so after
``nox -s conformance`` the report holds every backend; the Markdown matrix (variant x dtype rows,
backend columns, forward and gradient per cell, with the worst err/tolerance ratio) is rewritten
from the merged JSON each time.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import synth_ref as sr

from ..backends._protocol import claimed_variants
from .cases import DTYPES
from .tolerances import REF_FACTOR, TOLERANCES

SCHEMA = 1
KINDS = ("forward", "gradient")
_BAD = ("fail", "error")


def _cell(records: list[dict]) -> dict:
    bad = [r for r in records if r["status"] in _BAD]
    done = [r for r in records if r["status"] in ("pass", "fail")]
    worst = max(done, key=lambda r: r["ratio"], default=None)
    if bad:
        status = "fail"
    elif any(r["status"] == "pass" for r in records):
        status = "pass"
    else:
        status = "skip"
    return {
        "status": status,
        "checks": len(records),
        "failed": len(bad),
        "skipped": sum(r["status"] == "skip" for r in records),
        "worst_ratio": None if worst is None else worst["ratio"],
        "worst_case": None if worst is None else worst["case"],
        "skip_reason": next((r["detail"] for r in records if r["status"] == "skip"), None),
    }


def backend_entry(name, adapter, available, reason, records, profile, seconds, partial=None) -> dict:
    """One backend's results, aggregated into (variant, dtype, kind) cells.

    ``partial``: None for a run that reached its end; else ``{"recorded": checks of this backend,
    "planned": tests the run collected (all its backends) or None, "why": text}`` for the snapshot
    a run writes while it goes (a run killed at a time limit leaves that snapshot, so what it
    checked is kept and marked as incomplete)."""
    dtypes = list(getattr(adapter, "dtypes", ())) if adapter is not None else []
    variants = list(claimed_variants(adapter)) if adapter is not None else []
    vjp = adapter is not None and callable(getattr(adapter, "vjp", None))
    cells: dict = {}
    for v in sr.VARIANTS:
        for dt in DTYPES:
            for kind in KINDS:
                rs = [r for r in records if r["variant"] == v and r["dtype"] == dt and r["kind"] == kind]
                if rs:
                    cells.setdefault(v, {}).setdefault(dt, {})[kind] = _cell(rs)
    counts = {s: sum(r["status"] == s for r in records) for s in ("pass", "fail", "error", "skip")}
    bad = [r for r in records if r["status"] in _BAD]
    return {
        "name": name,
        "available": bool(available),
        "reason": reason,
        "dtypes": dtypes,
        "variants": variants,
        "vjp": vjp,
        "profile": profile,
        "run_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(seconds, 1),
        "counts": counts,
        "cells": cells,
        "failures": bad[:200],
        "failures_total": len(bad),
        "partial": partial,
    }


def load(path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
        if data.get("schema") == SCHEMA:
            return data
    except (OSError, ValueError):
        pass
    return {"schema": SCHEMA, "backends": {}, "gold_check": {}}


@contextlib.contextmanager
def _exclusive(path: Path):
    """Hold an exclusive lock on ``<path>.lock`` (POSIX; elsewhere nothing is locked): sessions that
    run side by side (``nox -j``) each read, merge and rewrite the one report, and without the lock
    one would overwrite the entry the other just wrote."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write(path, entries: list[dict], gold_check: dict | None = None) -> tuple[Path, Path]:
    """Merge ``entries`` (and the gold finite-difference check) into the JSON report at ``path``
    and rewrite the Markdown matrix next to it, under a lock (see ``_exclusive``).  Returns both
    paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path):
        return _merge(path, entries, gold_check)


def _merge(path: Path, entries, gold_check) -> tuple[Path, Path]:
    data = load(path)
    for e in entries:
        data["backends"][e["name"]] = e
    if gold_check:
        data["gold_check"] = gold_check
    data["tolerances"] = {k: {"forward": f.forward, "gradient": f.gradient} for k, f in TOLERANCES.items()}
    data["rule"] = f"max|out - gold| <= max(floor[dtype], {REF_FACTOR:g} * max|ref_dtype - gold|)"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False))
    os.replace(tmp, path)
    md = path.with_suffix(".md")
    md.write_text(markdown(data))
    return path, md


# ---------------------------------------------------------------------------------------------


def _fmt_ratio(r) -> str:
    return "" if r is None else f" {r:.2g}"


def _cell_text(entry: dict, variant: str, dtype: str, kind: str) -> str:
    if not entry["available"]:
        return "skip"
    if dtype not in entry["dtypes"] or variant not in entry.get("variants", sr.VARIANTS):
        return "—"
    if kind == "gradient" and not entry["vjp"]:
        return "no vjp"
    c = entry["cells"].get(variant, {}).get(dtype, {}).get(kind)
    if c is None:
        return "not run"
    if c["status"] == "fail":
        return f"**FAIL**{_fmt_ratio(c['worst_ratio'])} ({c['failed']}/{c['checks']})"
    if c["status"] == "skip":
        return "skip"
    return f"pass{_fmt_ratio(c['worst_ratio'])}"


def verdict(entry: dict) -> str:
    """A backend's overall result: ``skipped``, ``fail`` (any check failed, even in an incomplete
    run), ``partial`` (the run stopped before its end: what ran passed, the rest is unknown),
    ``pass`` or ``nothing run``.  The report, the summary and the docs all read it from here."""
    if not entry["available"]:
        return "skipped"
    c = entry["counts"]
    if c.get("fail") or c.get("error"):
        return "fail"
    if entry.get("partial"):
        return "partial"
    return "pass" if c.get("pass") else "nothing run"


def partial_note(entry: dict) -> str:
    """'' for a complete run, else what an incomplete one covered and why it stopped."""
    p = entry.get("partial")
    if not p:
        return ""
    of = f" (the run collected {p['planned']} tests)" if p.get("planned") else ""
    return f"incomplete: {p['recorded']} checks recorded{of}; {p['why']}"


def _overall(entry: dict) -> str:
    v = verdict(entry)
    return v.upper() if v in ("fail", "partial") else v


def markdown(data: dict) -> str:
    backends = list(data["backends"].values())
    out = ["# Conformance report", ""]
    out.append(f"Rule: {data.get('rule', '')}; NaN/Inf where gold is finite always fails.  ")
    out.append("Cells: forward / gradient, with the worst err / tolerance ratio (pass <= 1); "
               "— = dtype or variant not claimed; no vjp = the adapter is forward-only.")
    out.append("")
    out.append("| backend | result | checks | pass | fail | error | skip | profile | run at | seconds "
               "| note |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for e in backends:
        c = e["counts"]
        total = sum(c.values())
        note = "; ".join(t for t in (e["reason"], partial_note(e)) if t).replace("|", "/")
        out.append(
            f"| {e['name']} | {_overall(e)} | {total} | {c['pass']} | {c['fail']} | {c['error']} | "
            f"{c['skip']} | {e['profile']} | {e['run_at']} | {e['seconds']} | {note} |"
        )
    out.append("")
    if backends:
        out.append("| variant | dtype | " + " | ".join(e["name"] for e in backends) + " |")
        out.append("| --- | --- | " + " | ".join("---" for _ in backends) + " |")
        for v in sr.VARIANTS:
            for dt in DTYPES:
                cells = []
                for e in backends:
                    f = _cell_text(e, v, dt, "forward")
                    g = _cell_text(e, v, dt, "gradient")
                    cells.append(f if f in ("skip", "—") else f"{f} / {g}")
                out.append(f"| {v} | {dt} | " + " | ".join(cells) + " |")
        out.append("")
    gc = data.get("gold_check") or {}
    if gc:
        out.append("Gradient gold (torch autograd, float64) against central finite differences, "
                   "max relative difference per variant:")
        out.append("")
        out.append("| variant | max rel. diff |")
        out.append("| --- | --- |")
        for v, r in gc.items():
            out.append(f"| {v} | {r:.2g} |")
        out.append("")
    fails = [f for e in backends for f in e.get("failures", [])]
    if fails:
        out.append("## Failures (first 50)")
        out.append("")
        for f in fails[:50]:
            out.append(f"- {f['backend']} {f['kind']} {f['dtype']} {f['status']}: `{f['case']}` — "
                       f"{_failure_line(f)}")
        out.append("")
    return "\n".join(out)


def _failure_line(f: dict) -> str:
    if f.get("err") is not None and f.get("tol"):
        s = f"{f['worst']}: max|out - gold| {f['err']:.3g} > tolerance {f['tol']:.3g}"
        return s + (f"; {f['detail']}" if f.get("detail") else "")
    return f.get("detail", "")


def _claimed(entry: dict) -> str:
    """'' when the backend claims every variant, else '; variants: ...'."""
    v = entry.get("variants", sr.VARIANTS)
    return "" if set(v) >= set(sr.VARIANTS) else f"; variants: {', '.join(v)}"


def summary(data: dict, only: list[str] | None = None, md_path=None) -> str:
    """The readable end-of-run summary: one line per backend, the variant x backend matrix
    (worst over dtypes), and the first failures."""
    backends = [e for n, e in data["backends"].items() if only is None or n in only]
    allb = list(data["backends"].values())
    lines = ["", "synth-ref conformance"]
    for e in backends:
        c = e["counts"]
        if not e["available"]:
            lines.append(f"  {e['name']:<22} SKIPPED  {e['reason']}")
            continue
        ratios = [
            (cell["worst_ratio"], f"{v} {dt} {kind}")
            for v, byd in e["cells"].items()
            for dt, byk in byd.items()
            for kind, cell in byk.items()
            if cell["worst_ratio"] is not None
        ]
        top = max(ratios, default=None)
        w = "" if top is None else f"; worst ratio {top[0]:.3g} ({top[1]})"
        lines.append(
            f"  {e['name']:<22} {_overall(e):<7} {c['pass']} passed, {c['fail']} failed, "
            f"{c['error']} errors, {c['skip']} skipped in {e['seconds']} s [{e['profile']}; "
            f"{', '.join(e['dtypes'])}{'; vjp' if e['vjp'] else '; forward only'}{_claimed(e)}]{w}"
        )
        note = partial_note(e)
        if note:
            lines.append(f"  {'':<22} {note}")
    if allb:
        width = max(len(e["name"]) for e in allb)
        width = max(width, 12)
        lines.append("")
        lines.append("  " + f"{'variant':<18}" + "".join(f"{e['name']:>{width + 2}}" for e in allb))
        for v in sr.VARIANTS:
            row = []
            for e in allb:
                if not e["available"]:
                    row.append("skip")
                    continue
                cs = [c for byk in e["cells"].get(v, {}).values() for c in byk.values()]
                if v not in e.get("variants", sr.VARIANTS):
                    row.append("not claimed")
                elif not cs:
                    row.append("-")
                elif any(c["status"] == "fail" for c in cs):
                    row.append("FAIL")
                else:
                    r = max((c["worst_ratio"] or 0.0) for c in cs)
                    row.append(f"ok {r:.2f}")
            lines.append("  " + f"{v:<18}" + "".join(f"{t:>{width + 2}}" for t in row))
        lines.append("  (ok r: every check passed; r = worst err / tolerance over dtypes and "
                     "forward/gradient; -: nothing run)")
    gc = data.get("gold_check") or {}
    if gc:
        lines.append(f"  gradient gold vs finite differences: worst relative difference "
                     f"{max(gc.values()):.2g} over {len(gc)} variants")
    fails = [f for e in backends for f in e.get("failures", [])]
    for f in fails[:5]:
        lines.append(f"  FAILED {f['backend']} {f['kind']} {f['dtype']}: {f['case']}")
        lines.append(f"         {_failure_line(f)}")
    if len(fails) > 5:
        lines.append(f"  ... and {len(fails) - 5} more failures (see the report)")
    if md_path:
        lines.append(f"  matrix: {md_path}")
    return "\n".join(lines)
