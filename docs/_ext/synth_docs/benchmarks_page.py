"""The benchmark page: time and peak memory against sequence length, per variant, from
``benchmarks/results/*.json`` (written by ``nox -s bench``, schema ``synth-ref-bench/1``, defined in
``benchmarks/schema.py``), with the device named.

Only what the page draws is read: ``device.name``, ``mode``, ``claims.*.verdict``, ``fits`` and the
rows of ``results`` whose status is "ok" (impl, role, variant, dtype, pass, length, time_s,
peak_bytes).  Rows with variant None are baselines (dot-product attention, convolutions): they are
drawn grey and dashed on every variant's plot.  A file in another layout is listed as not read.
"""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import markdown as md  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
ENV = "SYNTH_REF_BENCHMARK_RESULTS"
SCHEMA = "synth-ref-bench/1"
_ROW = {"impl": str, "dtype": str, "pass": str, "length": int, "status": str}


def results_dir() -> Path:
    return Path(os.environ.get(ENV) or ROOT / "benchmarks" / "results")


def read(path: Path) -> dict:
    """The parts of one result file the page uses; ValueError saying what is wrong."""
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"schema: expected {SCHEMA!r}; got {got!r}")
    device = doc.get("device")
    if not isinstance(device, dict) or not isinstance(device.get("name"), str):
        raise ValueError("device.name: expected a string")
    if not isinstance(doc.get("results"), list):
        raise ValueError("results: expected a list")
    rows = []
    for i, r in enumerate(doc["results"]):
        for key, kind in _ROW.items():
            if not isinstance(r.get(key), kind):
                raise ValueError(f"results[{i}].{key}: expected {kind.__name__}; got {r.get(key)!r}")
        if r["status"] == "ok" and isinstance(r.get("time_s"), (int, float)):
            rows.append(r)
    claims = {k: v["verdict"] for k, v in (doc.get("claims") or {}).items()
              if isinstance(v, dict) and isinstance(v.get("verdict"), str)}
    return {"device": device["name"], "kind": device.get("kind", ""), "mode": doc.get("mode", path.stem),
            "rows": rows, "claims": claims, "fits": [f for f in doc.get("fits") or [] if isinstance(f, dict)]}


def _label(r) -> str:
    return f"{r['impl']} {r['dtype']} {r['pass'].replace('_', '+')}"


def _plot(rows: list[dict], baselines: list[dict], title: str) -> bytes:
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    series = defaultdict(list)
    for r in rows + baselines:
        series[(r.get("variant") is None, _label(r))].append(r)
    any_memory = False
    for (is_base, label), recs in sorted(series.items()):
        recs = sorted(recs, key=lambda r: r["length"])
        style = {"color": "0.6", "linestyle": "--"} if is_base else {
            "linestyle": "-" if recs[0]["pass"] == "forward" else ":"}
        ax_t.plot([r["length"] for r in recs], [r["time_s"] * 1e3 for r in recs], marker="o", ms=3,
                  label=label, **style)
        mem = [r for r in recs if isinstance(r.get("peak_bytes"), int)]
        if mem:
            any_memory = True
            ax_m.plot([r["length"] for r in mem], [r["peak_bytes"] / 2**20 for r in mem], marker="o", ms=3,
                      label=label, **style)
    for ax, what in ((ax_t, "time (ms)"), (ax_m, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length l")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    if not any_memory:
        ax_m.text(0.5, 0.5, "no memory recorded", ha="center", va="center", transform=ax_m.transAxes)
    ax_t.set_title(f"{title}: time")
    ax_m.set_title(f"{title}: peak memory")
    handles, labels = ax_t.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def render(directory: Path | None = None) -> tuple[str, dict[str, bytes]]:
    """(the page's Markdown, {figure file name: PNG bytes})."""
    directory = results_dir() if directory is None else Path(directory)
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    out = ["# Benchmarks\n",
           "Time and peak memory against sequence length, per variant, implementation, dtype and pass "
           "(forward solid, forward + backward dotted; baselines grey and dashed), read at build time "
           "from `benchmarks/results/*.json` (written by `nox -s bench`).\n"]
    figures, read_any, problems = {}, False, []
    for path in files:
        try:
            doc = read(path)
        except (ValueError, json.JSONDecodeError) as exc:
            problems.append(f"- {md.code(path.name)}: not read ({md.text(exc)})")
            continue
        read_any = True
        out += [f"## {md.text(doc['mode'])}: {md.text(doc['device'])}\n",
                f"From {md.code(path.name)}; device {md.text(doc['device'])} ({md.text(doc['kind'])}), "
                f"{len(doc['rows'])} measurements.\n"]
        for claim, verdict in sorted(doc["claims"].items()):
            out.append(f"- {md.code(claim)}: {md.text(verdict)}")
        out.append("")
        baselines = [r for r in doc["rows"] if r.get("variant") is None]
        for variant in sorted({r["variant"] for r in doc["rows"] if r.get("variant") is not None}):
            fname = f"bench_{path.stem}_{variant}.png"
            rows = [r for r in doc["rows"] if r.get("variant") == variant]
            figures[fname] = _plot(rows, baselines, variant)
            fits = [f for f in doc["fits"] if f.get("variant") == variant and f.get("quantity") == "time"]
            out += [f"### {md.text(variant)}\n",
                    f"```{{figure}} img/{fname}\n:alt: time and memory of {variant} against length on "
                    f"{md.text(doc['device'])}\n\n{md.text(variant)} on {md.text(doc['device'])}.\n```\n"]
            if fits:
                out.append(md.table(["implementation", "dtype", "pass", "time ~ l^p, fitted p"],
                                    [[md.code(f["impl"]), md.code(f["dtype"]), md.text(f["pass"]),
                                      f"{f['exponent']:.2f}"] for f in fits]))
    if not read_any:
        out.append("No results yet: `benchmarks/results/` holds no benchmark JSON"
                   + (" that could be read.\n" if files else ".\n"))
    if problems:
        out += ["Files not read:\n", *problems, ""]
    return "\n".join(out), figures
