"""``python -m benchmarks [--quick] [--device cpu|cuda]``: measure, analyse, write
results/<mode>.json, results/<mode>.md and results/<mode>-*.png."""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import math
import pstats
import time
from dataclasses import replace
from pathlib import Path

from synth_ref import _aft

from . import analysis, impls, machine, measure, naive, report, schema, settings, sweep

RESULTS = Path(__file__).parent / "results"
#: Whose memory the AFT claim probes: the reference on the device (NumPy's is exact via tracemalloc;
#: on a GPU the torch adapter's, by the CUDA allocator) and the same math written in torch.
PROBE_IMPLS = {"cpu": ("numpy", "torch_direct"), "cuda": ("torch-cuda", "torch_direct")}


def build_impls(st, skipped) -> list:
    out = impls.adapter_impls(st, skipped)
    out.append(impls.direct_impl(st))
    out += naive.impls_for(st, skipped)
    out += [impls.sdpa_impl(st), impls.conv_impl(st, dynamic=True), impls.conv_impl(st, dynamic=False)]
    return out


def claim_settings(st):
    c = st.claim
    return replace(
        st,
        batch=c.batch,
        d_model=c.d_model,
        n_heads=c.n_heads,
        lengths=c.lengths,
        causal=c.causal,
        conv_kernel=c.kernel_size,
        variants=("random",),
        dtypes=st.dtypes[:1],
    )


def where_time_goes(st, variant, dtype, length, top=5) -> dict:
    """cProfile of NumPy-reference forward calls (process CPU time, as the table; repeated to about
    0.3 s so that short calls are not all noise): the functions with the most time of their own, per
    call."""
    from synth_ref import backends

    ad = backends.get("numpy")
    pt = sweep.make_point(st, variant, dtype, length)

    def call():
        return ad.apply(pt.spec, pt.params, pt.x, causal=st.causal, key_padding_mask=None)

    c0 = time.process_time()
    call()  # warm, and how long one call takes
    n = max(1, min(50, int(0.3 / max(time.process_time() - c0, 1e-4))))
    prof = cProfile.Profile(time.process_time)
    c0 = time.process_time()
    prof.enable()
    for _ in range(n):
        call()
    prof.disable()
    total = (time.process_time() - c0) / n
    stats = pstats.Stats(prof).stats
    entries = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    fns = [
        {"function": (f"{Path(f).stem}.{fn}" if f != "~" else fn), "self_s": v[2] / n, "calls": v[1] / n}
        for (f, _, fn), v in entries
    ]
    return {"length": length, "calls": n, "total_s": total, "top": fns}


def run_all(st, out_dir: Path, *, make_plots=True, log=print) -> dict:
    """Measure, analyse and write one mode's results; returns the JSON document."""
    try:
        return _run_all(st, out_dir, make_plots=make_plots, log=log)
    finally:  # leave a process that goes on (pytest) as it was
        measure.release_rss()
        gc.unfreeze()


def _run_all(st, out_dir: Path, *, make_plots=True, log=print) -> dict:
    t0 = time.perf_counter()
    skipped = []
    why = measure.prepare_rss()
    if why:
        skipped.append({"what": "peak RSS memory for torch/JAX on CPU", "why": why})
    doc = {
        "schema": schema.SCHEMA,
        "mode": st.mode,
        "device": machine.describe(st.device),
        "versions": machine.versions(),
        "settings": st.to_json(),
    }
    if not why and st.device == "cpu":
        doc["device"]["timing_allocator"] = measure.TIMING_ALLOCATOR
    log(f"{st.mode}: {doc['device']['name']}; calibrating")
    doc["calibration"] = machine.calibrate(
        st.device, st.dtypes, matmul_n=st.matmul_n, copy_bytes=st.copy_bytes
    )
    all_impls = build_impls(st, skipped)
    # torch and JAX are imported by now: move their millions of objects out of the collector's view,
    # so that the gc.collect() before each memory measurement costs milliseconds, not a second.
    gc.freeze()
    # The memory probe first, while the heap holds no blocks freed by timed calls (timing keeps them
    # in the heap, see measure.timing_allocator): later RSS readings can reuse those and read a few
    # MiB off, which at the probe's small footprints (aft_simple) would bend the fitted growth.
    probe_rows = []
    aft_claim = [v for v in analysis.AFT_CLAIM_VARIANTS if v in st.variants]
    if st.probe_lengths and aft_claim:
        log("claim: AFT memory against l (forward, one call per point)")
        probe = [i for i in all_impls if i.name in PROBE_IMPLS[st.device]]
        # Reach at least twice the length where the reference's AFT row block stops holding all of
        # (B, l, l, d): only past it does the growth show what long inputs cost.
        full = math.sqrt(_aft.BLOCK_ELEMENTS / (st.batch * st.d_model))
        probe_rows = sweep.memory_probe(
            st,
            probe,
            st.probe_lengths,
            aft_claim,
            budget_s=st.probe_budget_s,
            must_reach=2 ** math.ceil(math.log2(2 * full)),
            log=log,
        )
    rows, stops = sweep.run(st, all_impls, doc["calibration"], log)
    cst = claim_settings(st)
    log("claim: random synthesizer vs dynamic convolution")
    # Whole layers only: the naive rows are mixing steps (no projections), the convolution is a layer.
    claim_impls = [
        i
        for i in build_impls(cst, [])
        if (i.covers("random") or i.covers(None)) and not analysis.is_naive(i.name)
    ]
    claim_rows, claim_stops = sweep.run(cst, claim_impls, doc["calibration"], log, groups=["random", None])
    analysis.add_ratios(rows)
    analysis.add_ratios(claim_rows)
    analysis.add_ratios(probe_rows)  # none apply (one forward call each): the fields say so
    random_impls = [i.name for i in claim_impls if i.covers("random")]
    doc.update(
        {
            "results": rows,
            "claim_results": claim_rows,
            "memory_probe": probe_rows,
            "stops": stops + claim_stops,
            "skipped": skipped,
            "fits": analysis.fits(rows),
            "cpu_row": analysis.cpu_row(rows, st, probe_rows) if st.device == "cpu" else [],
            "claims": {
                "random_vs_dynamic_conv": analysis.claim_random_vs_conv(claim_rows, cst.claim, random_impls),
                "aft_memory": analysis.claim_aft_memory(rows, st, probe_rows),
                "adapter_targets": analysis.adapter_targets(rows, st),
            },
        }
    )
    doc["cpu_row_profiles"] = {}
    for e in doc["cpu_row"]:
        if not e["within_limit"]:
            # Profile where the ratio is worst: at short lengths that is per-call overhead, at long
            # ones the arithmetic.
            top_l = max(
                (pt for pt in e["points"] if "numpy_forward_ratio" in pt),
                key=lambda pt: pt["numpy_forward_ratio"],
            )["length"]
            doc["cpu_row_profiles"][f"{e['variant']} {e['dtype']}"] = where_time_goes(
                st, e["variant"], e["dtype"], top_l
            )
    doc["elapsed_s"] = float(time.perf_counter() - t0)
    errs = schema.validate(doc)
    if errs:
        raise AssertionError("the run's JSON does not match its schema:\n" + "\n".join(errs[:20]))
    write(doc, st, out_dir, make_plots)
    return doc


def write(doc, st, out_dir: Path, make_plots=True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = doc["mode"]
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    paths[0].write_text(json.dumps(doc, indent=1, default=str) + "\n")
    paths[1].write_text(report.render(doc))
    if make_plots:
        from . import plots  # matplotlib only when plotting

        rows = doc["results"]
        for dtype in st.dtypes:
            suffix = f"-{dtype}" if len(st.dtypes) > 1 else ""
            for variant in st.variants:
                paths.append(
                    plots.variant_plot(rows, st, variant, dtype, out_dir / f"{stem}-{variant}{suffix}.png")
                )
            paths.append(plots.baseline_plot(rows, st, dtype, out_dir / f"{stem}-baselines{suffix}.png"))
        paths.append(
            plots.aft_memory_plot(doc["claims"]["aft_memory"], st, out_dir / f"{stem}-claim-aft-memory.png")
        )
    return paths


def parse(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (minutes)")
    ap.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: cuda when torch sees a GPU, else cpu",
    )
    ap.add_argument("--causal", action="store_true", help="measure with a causal mask")
    ap.add_argument("--variants", nargs="+", metavar="VARIANT", help="a subset of the variants")
    ap.add_argument("--max-length", type=int,
                    help="drop the sweep's lengths above this (the random-vs-convolution claim and "
                         "the AFT memory probe keep their own lengths)")
    ap.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        help="synth_ref.backends adapters to run (default: every available one)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for NumPy/BLAS, torch and XLA (default 1: every library runs alike, and "
        "a shared machine's other load stalls no thread pool; set before import by __main__)",
    )
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if machine.cuda_available() else "cpu"
    if device == "cuda" and not machine.cuda_available():
        raise SystemExit(
            "--device cuda: expected a CUDA device visible to torch; torch.cuda.is_available() is False"
        )
    import torch

    torch.set_num_threads(max(1, args.threads))
    st = settings.make(device, args.quick)
    over = {"threads": max(1, args.threads)}
    if args.causal:
        over.update(causal=True, mode=st.mode + "-causal")
    if args.variants:
        bad = [v for v in args.variants if v not in settings.VARIANT_OPTIONS]
        if bad:
            raise SystemExit(
                f"--variants: expected names among {', '.join(settings.VARIANT_OPTIONS)}; got {bad}"
            )
        over["variants"] = tuple(args.variants)
    if args.max_length:
        over["lengths"] = tuple(l for l in st.lengths if l <= args.max_length)
        if not over["lengths"]:
            raise SystemExit(f"--max-length: expected at least {st.lengths[0]}; got {args.max_length}")
    if args.backends:
        over["backends"] = tuple(args.backends)
    st = replace(st, **over)
    doc = run_all(st, args.out, make_plots=not args.no_plots)
    print(f"wrote {args.out}/{doc['mode']}.json, .md and plots in {doc['elapsed_s']:.0f} s")
    for name, c in doc["claims"].items():
        print(f"{name}: {c['verdict']}")
    return 0
