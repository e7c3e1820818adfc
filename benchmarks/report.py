"""The Markdown report of one run: settings, ceilings, time and memory tables with ratios, the CPU
row, the two paper claims, fitted exponents, and what was not measured and why."""

from __future__ import annotations

from collections import defaultdict

from . import analysis, floors

_SHORT = {"forward": "fwd", "forward_backward": "fwd+bwd"}


def fmt_time(s) -> str:
    if s is None:
        return "–"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def fmt_bytes(b) -> str:
    if b is None:
        return "–"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:.3g} {unit}"
    return f"{b} B"


def _x(v) -> str:
    return "–" if v is None else f"{v:.2g}×"


def _header(doc) -> list[str]:
    dev, ver, st, cal = doc["device"], doc["versions"], doc["settings"], doc["calibration"]
    lines = [
        f"# synth-ref benchmarks: {doc['mode']}",
        "",
        f"Device: **{dev['name']}** ({dev['kind']}, {dev['cpu_cores']} CPU cores, torch threads "
        f"{dev['torch_threads']}, 1-min load average at start {dev.get('load_average_1min_at_start', '?')}); "
        f"run {dev['started']}, {doc['elapsed_s']:.0f} s.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if v) + ".",
        "",
        f"Layer: B={st['batch']}, d_model={st['d_model']}, n_heads={st['n_heads']} (1 for aft_full, "
        f"aft_simple, aft_local), max_len = l, causal={st['causal']}; options "
        + ("; ".join(f"{v} {o}" for v, o in st["variant_options"].items() if o) or "none")
        + ".",
        "",
        f"Timing: median of {st['repeats']} calls after {st['warmup']} warm-up, as "
        + (
            "**process CPU time** (every library single-threaded: an idle machine's wall time for this work, "
            "which other processes sharing the cores cannot inflate; the wall times are in the JSON)"
            if st["time_basis"] == "cpu"
            else "wall time (CUDA events on a GPU)"
        )
        + f"; {st['threads']} CPU thread(s) per library"
        + (f"; allocator: {dev['timing_allocator']}" if dev.get("timing_allocator") else "")
        + "; per-call budget "
        f"{st['budget_s']} s, memory budget {fmt_bytes(st['memory_budget'])}. Memory: extra peak bytes of "
        "one call over its inputs and parameters (NumPy: tracemalloc; torch/JAX on CPU: peak RSS; "
        "CUDA: max_memory_allocated).",
        "",
        "Ceilings measured on this device: matrix product "
        + ", ".join(f"{dt} {r / 1e9:.3g} GFLOP/s" for dt, r in cal["matmul_flops_per_s"].items())
        + f"; copy {cal['copy_bytes_per_s'] / 1e9:.3g} GB/s (read + write). Floor = max(FLOPs / rate, "
        f"bytes / bandwidth) with Spec.flops and Spec.memory; forward + backward: "
        f"{floors.BACKWARD_FACTOR}x the forward's FLOPs and {floors.BACKWARD_BYTES_FACTOR}x its bytes.",
        "",
    ]
    return lines


def _grid(rows, lengths, cell) -> dict:
    table = defaultdict(dict)
    for r in rows:
        if r["status"] == "ok":
            table[(r["variant"] or "", r["dtype"], r["impl"], r["pass"])][r["length"]] = cell(r)
        else:
            table[(r["variant"] or "", r["dtype"], r["impl"], r["pass"])][r["length"]] = r["status"][:40]
    return table


def _table(rows, lengths, cell, first="variant") -> list[str]:
    grid = _grid(rows, lengths, cell)
    head = f"| {first} | dtype | implementation | pass | " + " | ".join(f"l={l}" for l in lengths) + " |"
    out = [head, "|" + " --- |" * (4 + len(lengths))]
    for v, dt, impl, p in sorted(grid, key=lambda k: (k[0], k[1], k[3], k[2])):
        cells = " | ".join(grid[(v, dt, impl, p)].get(l, "") for l in lengths)
        out.append(f"| {v or '—'} | {dt} | {impl} | {_SHORT[p]} | {cells} |")
    return out


def _time_cell(r) -> str:
    ratios = " / ".join(_x(r.get(k)) for k in ("vs_sdpa", "vs_naive", "vs_floor"))
    return f"{fmt_time(r['time_s'])} ({ratios})"


def _ratio(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def _yes(flag) -> str:
    return "–" if flag is None else ("yes" if flag else "**no**")


def _cpu_row(doc) -> list[str]:
    out = [
        "## The reference's CPU row",
        "",
        f"The NumPy reference's forward time over the same math written directly in torch on CPU "
        f"(benchmarks/direct_torch.py), at each length both reached; the issue's bound is "
        f"{analysis.CPU_ROW_LIMIT:g}x. Also the torch adapter (the reference on torch tensors) over the same "
        "direct torch code, forward and forward + backward. Memory: the growth of the NumPy reference's "
        "peak between its two longest measured lengths (the AFT memory probe's where it ran) against "
        "the spec's (materialized l^2 for softmax variants, streaming l for AFT).",
        "",
        "| variant | dtype | numpy / direct (per l) | max | at longest l | max within 3x "
        "| torch adapter fwd / fwd+bwd (at top l) | memory ~ l^p (spec) | within spec |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in doc["cpu_row"]:
        per_l = ", ".join(
            f"{pt['length']}: {pt['numpy_forward_ratio']:.2f}"
            for pt in e["points"]
            if "numpy_forward_ratio" in pt
        )
        top = e["points"][-1]
        tor = " / ".join(_ratio(top.get(f"torch_{p}_ratio")) for p in ("forward", "forward_backward"))
        mem = (
            "–"
            if e["memory_tail_exponent"] is None
            else f"{e['memory_tail_exponent']:.2f} ({e['spec_memory_exponent']:.2f}), "
            f"l={e['memory_lengths'][-2]}–{e['memory_lengths'][-1]}"
        )
        out.append(
            f"| {e['variant']} | {e['dtype']} | {per_l} | {e['max_ratio']:.2f} | "
            f"{e['ratio_at_longest']:.2f} | "
            f"{'yes' if e['within_limit'] else '**no**'} | {tor} | {mem} | "
            f"{_yes(e['memory_within_spec'])} |"
        )
    prof = doc.get("cpu_row_profiles") or {}
    if prof:
        out += [
            "",
            "Where the time goes in references over the bound (cProfile, CPU time per NumPy forward call "
            "at the length where the ratio is worst; time inside each Python function itself, NumPy's "
            "ufuncs included):",
            "",
        ]
        for key, p in prof.items():
            top = "; ".join(f"{f['function']} {f['self_s'] * 1e3:.1f} ms" for f in p["top"])
            out.append(f"- {key} (l={p['length']}, {p['total_s'] * 1e3:.0f} ms): {top}")
    return out + [""]


def _claims(doc) -> list[str]:
    c1, c2 = doc["claims"]["random_vs_dynamic_conv"], doc["claims"]["aft_memory"]
    s = c1["setting"]
    out = [
        "## The two paper claims",
        "",
        f"**{c1['paper']}.** Setting: one layer, B={s['batch']}, "
        f"d_model={s['d_model']}, {s['n_heads']} heads, causal={s['causal']}, {s['dtype']}, dynamic "
        f"convolution kernel {s['kernel_size']} with {s['n_heads']} heads; projections included on both "
        "sides. "
        "The paper measured whole LM1B models; it states no layer shapes, so these are ours.",
        "",
        f"Verdict: **{c1['verdict']}**.",
        "",
        "| l | pass | random synthesizer (impl) | dynamic conv | lightweight conv | conv / random |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for pt in c1["points"]:
        out.append(
            f"| {pt['length']} | {_SHORT[pt['pass']]} | {fmt_time(pt['random_s'])} ({pt['random_impl']}) | "
            f"{fmt_time(pt['dynamic_conv_s'])} | {fmt_time(pt['lightweight_conv_s'])} | {pt['speedup']:.2f} |"
        )
    out += [
        "",
        f"**{c2['paper']}.**",
        "",
        f"Verdict: **{c2['verdict']}**.",
        "",
        f"Measured by the {c2['source']} (forward, peak extra memory); {c2['note']}.",
        "",
        "| variant | implementation | dtype | memory ~ l^p (all) | between the two longest | peak per l |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in c2["table"]:
        peaks = ", ".join(f"{l}: {fmt_bytes(b)}" for l, b in t["peaks"])
        out.append(
            f"| {t['variant']} | {t['impl']} | {t['dtype']} | {t['exponent']:.2f} | "
            f"{t['tail_exponent']:.2f} | {peaks} |"
        )
    return out + [""]


def _adapter_targets(doc) -> list[str]:
    t = doc["claims"].get("adapter_targets")
    if not t:
        return []
    out = [
        "## Adapter speed targets (issues 5 and 6)",
        "",
        f"Verdict: **{t['verdict']}**.",
        "",
        "Whole layers through the adapters; ratio = first implementation's time / second's, judged at "
        "l = 4096 where measured, else at the longest length both reached.",
        "",
        "| issue | target | variant | dtype | ratio per l | judged at | limit | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in t["checks"]:
        if not c["points"]:
            continue
        pts = ", ".join(f"{pt['length']}: {pt['ratio']:.2f}" for pt in c["points"])
        limit = f"{'≤' if c['direction'] == 'at most' else '≥'} {c['limit']:g}"
        out.append(
            f"| {c['issue']} | {c['numerator']} / {c['denominator']}, {c['pass'].replace('_', ' + ')} | "
            f"{c['variant']} | {c['dtype']} | {pts} | {c['judged_at']} | {limit} | {_yes(c['met'])} |"
        )
    measured = {c["target"] for c in t["checks"] if c["points"]}
    unmeasured = sorted({c["target"] for c in t["checks"]} - measured)
    out += [""] + [f"- not measured: {what}" for what in unmeasured]
    return out + [""]


def render(doc) -> str:
    st = doc["settings"]
    lengths = list(st["lengths"])
    rows = doc["results"]
    out = _header(doc)
    out += [
        "## Time",
        "",
        "Each cell: median time (× SDPA dot-product layer / × fastest naive version of the "
        "variant / × floor) at the same dtype, length and pass; > 1 means slower. '–': no such baseline. "
        "The `naive: ...` rows (benchmarks/torch_bench.py, issue 4) time the mixing step only, forward + "
        "backward: our whole layer's × naive overstates our cost by the projections' share, and they "
        "carry no × SDPA or × floor of their own.",
        "",
    ]
    out += _table([r for r in rows if r["variant"]], lengths, _time_cell)
    out += ["", "Baselines (no variant): SDPA dot-product layer and the convolution layers.", ""]
    out += _table(
        [r for r in rows if not r["variant"]], lengths, lambda r: fmt_time(r["time_s"]), first="baseline"
    )
    out += ["", "## Peak extra memory", ""]
    out += _table(rows, lengths, lambda r: fmt_bytes(r["peak_bytes"]))
    out += [""]
    if doc.get("cpu_row"):
        out += _cpu_row(doc)
    out += _claims(doc)
    out += _adapter_targets(doc)
    out += [
        "## Fitted exponents (value ~ l^p over the measured lengths)",
        "",
        "| variant | implementation | dtype | pass | time p | memory p | lengths |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    by = defaultdict(dict)
    for f in doc["fits"]:
        by[(f["variant"] or "", f["impl"], f["dtype"], f["pass"])][f["quantity"]] = f
    for (v, impl, dt, p), q in sorted(by.items()):
        t, m = q.get("time"), q.get("memory")
        rng = (t or m)["lengths"]
        out.append(
            f"| {v or '—'} | {impl} | {dt} | {_SHORT[p]} | {t['exponent']:.2f} | "
            f"{'–' if not m else format(m['exponent'], '.2f')} | {rng[0]}–{rng[1]} |"
        )
    out += ["", "## Not measured, and why", ""]
    out += [f"- {s['what']}: {s['why']}" for s in doc["skipped"]]
    out += [
        f"- series {s['impl']} / {s['variant'] or 'baseline'} / {s['dtype']} / {_SHORT[s['pass']]} "
        f"ended: {s['why']}"
        for s in doc["stops"]
    ]
    return "\n".join(out) + "\n"
