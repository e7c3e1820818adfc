"""The benchmark page: plots of time and peak memory against sequence length from
``benchmarks/results/*.json``.

The harness (issue 8) is not written yet; this reads the layout below and lists any file it cannot
read, with the reason, instead of guessing::

    {"device": "NVIDIA H100 80GB HBM3",            # named on the page
     "results": [{"variant": "dense", "backend": "torch", "dtype": "bfloat16",
                  "mode": "forward" | "forward_backward", "length": 1024,
                  "time_ms": 0.81, "peak_bytes": 4400000000}, ...]}
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
_KEYS = {"variant": str, "backend": str, "dtype": str, "mode": str, "length": int, "time_ms": (int, float)}


def results_dir() -> Path:
    return Path(os.environ.get(ENV) or ROOT / "benchmarks" / "results")


def read(path: Path) -> tuple[str, list[dict]]:
    """(device, records) of one file; ValueError naming the file and what is wrong."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("device"), str) or not isinstance(
            data.get("results"), list):
        raise ValueError("expected an object with 'device' (string) and 'results' (list)")
    for i, rec in enumerate(data["results"]):
        for key, kind in _KEYS.items():
            if not isinstance(rec.get(key), kind):
                raise ValueError(f"results[{i}].{key}: expected {kind}; got {rec.get(key)!r}")
    return data["device"], data["results"]


def _plot(series: dict, variant: str) -> bytes:
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    any_memory = False
    for label, recs in sorted(series.items()):
        recs = sorted(recs, key=lambda r: r["length"])
        ls = [r["length"] for r in recs]
        ax_t.plot(ls, [r["time_ms"] for r in recs], marker="o", label=label)
        mem = [(r["length"], r["peak_bytes"] / 2**20) for r in recs
               if isinstance(r.get("peak_bytes"), (int, float))]
        if mem:
            any_memory = True
            ax_m.plot([m[0] for m in mem], [m[1] for m in mem], marker="o", label=label)
    for ax, what in ((ax_t, "time (ms)"), (ax_m, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length l")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    if not any_memory:
        ax_m.text(0.5, 0.5, "no memory recorded", ha="center", va="center", transform=ax_m.transAxes)
    ax_t.set_title(f"{variant}: time")
    ax_m.set_title(f"{variant}: peak memory")
    ax_t.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def render(directory: Path | None = None) -> tuple[str, dict[str, bytes]]:
    """(Markdown, {figure file name: PNG bytes})."""
    directory = results_dir() if directory is None else Path(directory)
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    by_variant: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    devices, problems = [], []
    for path in files:
        try:
            device, recs = read(path)
        except (ValueError, json.JSONDecodeError) as exc:
            problems.append(f"- {md.code(path.name)}: not read ({md.text(exc)})")
            continue
        devices.append(f"- {md.code(path.name)}: {md.text(device)}, {len(recs)} measurements")
        for r in recs:
            by_variant[r["variant"]][f"{r['backend']} {r['dtype']} {r['mode']} ({device})"].append(r)
    head = ["# Benchmarks\n",
            "Time and peak memory against sequence length, per variant, backend, dtype and mode, read at "
            "build time from `benchmarks/results/*.json` (written by `nox -s bench`).\n"]
    if not by_variant:
        text = "No results yet: `benchmarks/results/` holds no benchmark JSON"
        text += " that could be read.\n" if files else ".\n"
        return "\n".join([*head, text, *problems]) + "\n", {}
    out = [*head, "Files read, with the device each was measured on:\n", *devices, *problems, ""]
    figures = {}
    for variant in sorted(by_variant):
        fname = f"bench_{variant}.png"
        figures[fname] = _plot(by_variant[variant], variant)
        out += [f"## {md.text(variant)}\n",
                f"```{{figure}} img/{fname}\n:alt: time and memory of {variant} against length\n\n"
                f"Time and peak memory of {md.text(variant)} against sequence length (log-log).\n```\n"]
    return "\n".join(out), figures
