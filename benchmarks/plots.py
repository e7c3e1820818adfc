"""Log-log scaling plots (matplotlib, Agg): time and peak memory against l, fitted exponents in the
legend.  One figure per variant (and dtype when a run has several), one for the variant-free
baselines and one for the AFT memory claim."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from . import analysis  # noqa: E402

_STYLE = {"forward": "-", "forward_backward": "--"}
_SHORT = {"forward": "fwd", "forward_backward": "fwd+bwd"}


def _line(ax, rs, key, label, **kw):
    pts = [(r["length"], r[key]) for r in rs if r.get(key)]
    if not pts:
        return
    f = analysis.fit_exponent(*zip(*pts, strict=True))
    if f:
        label += f"  ~ l^{f['exponent']:.2f}"
    ax.plot(*zip(*pts, strict=True), label=label, **kw)


def _figure(title):
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5.2))
    fig.suptitle(title, fontsize=10)
    for ax, what in ((ax_t, "time per call [s]"), (ax_m, "peak extra memory [bytes]")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length l")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    return fig, ax_t, ax_m


def _finish(fig, axes, path):
    for ax in axes:
        if ax.lines:
            # Below the axes: inside, the many series' labels would hide the lines.
            ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def variant_plot(rows, settings, variant, dtype, path: Path) -> Path:
    groups = analysis.series(rows)
    impls = sorted({k[0] for k in groups if k[1] == variant and k[2] == dtype})
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(impls)}
    spec0 = settings.spec(variant, settings.lengths[0])
    fig, ax_t, ax_m = _figure(
        f"{variant} {spec0.options() or ''}  B={settings.batch} d={settings.d_model} "
        f"h={spec0.n_heads} {dtype} causal={settings.causal}  [{settings.mode}]"
    )
    for (impl, v, dt, p), rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        if v != variant or dt != dtype:
            continue
        kw = {"color": colors[impl], "linestyle": _STYLE[p], "marker": "o", "markersize": 3}
        _line(ax_t, rs, "time_s", f"{impl} {_SHORT[p]}", **kw)
        _line(ax_m, rs, "peak_bytes", f"{impl} {_SHORT[p]}", **kw)
    for p in ("forward", "forward_backward"):
        sd = groups.get(("sdpa", None, dtype, p))
        if sd:
            _line(
                ax_t,
                sd,
                "time_s",
                f"SDPA dot-product {_SHORT[p]}",
                color="grey",
                linestyle=_STYLE[p],
                marker="x",
                markersize=3,
            )
        floor_rows = next(
            (
                rs
                for (i, v, dt, pp), rs in groups.items()
                if v == variant and dt == dtype and pp == p and rs[0].get("floor_s")
            ),
            None,
        )
        if floor_rows:
            _line(
                ax_t,
                floor_rows,
                "floor_s",
                f"floor {_SHORT[p]}",
                color="black",
                linestyle=":",
                marker="_",
                markersize=8,
            )
    ls = list(settings.lengths)
    for key, style in (("materialized", (0, (1, 3))), ("streaming", (0, (5, 5)))):
        vals = [settings.spec(variant, l).memory(settings.batch, l)[key] for l in ls]
        ax_m.plot(ls, vals, color="0.6", linestyle=style, linewidth=1, label=f"Spec.memory {key}")
    _finish(fig, (ax_t, ax_m), path)
    return path


def baseline_plot(rows, settings, dtype, path: Path) -> Path:
    groups = analysis.series(rows)
    fig, ax_t, ax_m = _figure(
        f"baselines: dot-product layer via SDPA, lightweight / dynamic convolution "
        f"(k={settings.conv_kernel})  B={settings.batch} d={settings.d_model} "
        f"h={settings.n_heads} {dtype}  [{settings.mode}]"
    )
    names = sorted({k[0] for k in groups if k[1] is None and k[2] == dtype})
    for i, name in enumerate(names):
        for p in ("forward", "forward_backward"):
            rs = groups.get((name, None, dtype, p))
            if rs:
                kw = {"color": plt.cm.tab10(i), "linestyle": _STYLE[p], "marker": "o", "markersize": 3}
                _line(ax_t, rs, "time_s", f"{name} {_SHORT[p]}", **kw)
                _line(ax_m, rs, "peak_bytes", f"{name} {_SHORT[p]}", **kw)
    _finish(fig, (ax_t, ax_m), path)
    return path


def aft_memory_plot(claim: dict, settings, path: Path) -> Path:
    """Forward peak memory of the AFT variants and dot-product attention (the claim's own table:
    the memory probe's lengths when there was a probe)."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length l")
    ax.set_ylabel("peak extra memory, forward [bytes]")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(
        f"AFT memory vs dot-product, {claim['source']} [{settings.mode}]\n{claim['note']}", fontsize=8
    )
    variants = sorted({t["variant"] for t in claim["table"]})
    impls = sorted({t["impl"] for t in claim["table"]})
    styles = ("-", "--", "-.", ":")
    for t in claim["table"]:
        ls, bs = zip(*t["peaks"], strict=True)
        ax.plot(
            ls,
            bs,
            color=plt.cm.tab10(variants.index(t["variant"]) % 10),
            linestyle=styles[impls.index(t["impl"]) % 4],
            marker="o",
            markersize=3,
            label=f"{t['variant']} ({t['impl']})  ~ l^{t['exponent']:.2f}, tail l^{t['tail_exponent']:.2f}",
        )
    if claim["block_full_length"]:
        ax.axvline(claim["block_full_length"], color="0.5", linewidth=0.8, linestyle=":")
    _finish(fig, (ax,), path)
    return path
