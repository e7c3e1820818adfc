"""Forward + backward time and peak extra memory of each variant's mixing step: the fused Triton
kernels (synth_ref.backends.torch_triton) next to what a user writes today (the rows of
../shared/notes/anchors.md, re-measured in the same run) and SDPA flash on the same shapes.

    python benchmarks/torch_bench.py                   # a GPU: bf16, the anchors' three shapes
    python benchmarks/torch_bench.py --long            # also l = 65536 at B = 1 (kernels only)
    python benchmarks/torch_bench.py --shapes 4x8x4096x64  # only these shapes (B x h x l x e): here
                                                       # the issue-4 target, as gpu/run.py essential
    python benchmarks/torch_bench.py --quick           # CPU, tiny shapes, kernels in Triton's
                                                       # interpreter: exercises the script only

Writes ``--out`` (JSON: one row per implementation and shape) and prints a Markdown table with the
issue's targets checked where the shape is the target's (B=4 h=8 l=4096 e=64).  The mixing step
only: inputs are the per-head tensors after the projections (q, k, v; H and w_2; R; K, V and w').
A row that fails (out of memory, unsupported) records why instead of a time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

if __name__ == "__main__" and "--quick" in sys.argv:
    # The interpreter must be chosen before anything imports triton (torch._dynamo does).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

GPU_SHAPES = [(8, 8, 1024, 64), (4, 8, 4096, 64), (1, 8, 16384, 64)]
LONG_SHAPES = [(1, 8, 65536, 64)]
QUICK_SHAPES = [(2, 2, 16, 16)]
TARGET_SHAPE = (4, 8, 4096, 64)
K_RANK = 64  # factorized random rank
WINDOW = 64  # aft_local window and aft_conv kernel size (the s = 64)


# --- timing ----------------------------------------------------------------------------------------
def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, dev, quick):
    """(median ms of fn(), peak extra bytes or None).  fn runs forward and backward."""
    if dev.type == "cuda":
        import triton.testing

        fn()
        _sync(dev)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        _sync(dev)
        peak = torch.cuda.max_memory_allocated() - base
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"), peak
    times = []
    for _ in range(1 if quick else 6):  # quick: one call (the interpreter is slow, and times mean nothing)
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times = times if quick else times[1:]  # the first call warms up
    return sorted(times)[len(times) // 2], None


def fwd_bwd(f, *inputs):
    """A closure running f(*inputs) forward and backward with a fixed upstream gradient."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def run():
        out = f(*inputs)
        torch.autograd.grad(out, leaves, torch.ones_like(out))

    run.inputs = inputs  # what the row reads: gpu/long_bench.py skips a row that needs a left-out one
    return run


# --- inputs ----------------------------------------------------------------------------------------
def make_inputs(B, h, l, e, dtype, dev):
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dev, dtype).requires_grad_(True)

    d = h * e
    return {
        "q": rnd(B, h, l, e),
        "k": rnd(B, h, l, e),
        "v": rnd(B, h, l, e),
        "hid": rnd(B, h, l, e, scale=0.5).relu().detach().requires_grad_(True),
        "w2": rnd(h, e, l, scale=e**-0.5),
        "b2": rnd(h, l, scale=0.0),
        "r": rnd(h, l, l),
        "r1": rnd(h, l, K_RANK, scale=K_RANK**-0.25),
        "r2": rnd(h, l, K_RANK, scale=K_RANK**-0.25),
        "K": rnd(B, l, d),
        "V": rnd(B, l, d),
        "w": rnd(1, l, l, scale=0.1),
        "wc": rnd(h, l, l, scale=0.1),
        # the windowed kernels' operands: aft_local's band (1, l, 2 s - 1), aft_conv's taps (h, s)
        "wl": rnd(1, l, 2 * min(WINDOW, l) - 1, scale=0.1),
        "taps": rnd(h, WINDOW, scale=0.1),
    }


# --- what a user writes today -------------------------------------------------------------------------
def _up(t):
    """At least float32, as users compute softmax and exponentials of half-precision tensors;
    float32 and float64 stay as they are (``.float()`` would make a float64 baseline a float32 one,
    cheaper than the layer it is compared with)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def naive_softmax(s, v):
    return torch.softmax(_up(s), -1).to(v.dtype) @ v


def baselines(x, B, h, l, e, dev):
    """(name, variant, closure) for the anchors' rows."""
    q, k, v, hid, w2, b2, r = x["q"], x["k"], x["v"], x["hid"], x["w2"], x["b2"], x["r"]
    K, V, w = x["K"], x["V"], x["w"]
    rows = [
        (
            "SDPA flash (dot product, no mask)",
            "dot_product",
            fwd_bwd(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), q, k, v),
        ),
        (
            "dot product, plain softmax(QK^T)V",
            "dot_product",
            fwd_bwd(lambda q, k, v: naive_softmax(q @ k.transpose(-1, -2) / math.sqrt(e), v), q, k, v),
        ),
        (
            "dense, softmax(H W2) V",
            "dense",
            fwd_bwd(lambda hid, w2, b2, v: naive_softmax(hid @ w2 + b2[:, None], v), hid, w2, b2, v),
        ),
        (
            "dense via SDPA with expanded static keys",
            "dense",
            fwd_bwd(
                lambda hid, w2, b2, v: F.scaled_dot_product_attention(
                    hid,
                    w2.transpose(1, 2).expand(B, h, l, e),
                    v,
                    attn_mask=b2[:, None].expand(B, h, l, l),
                    scale=1.0,
                ),
                hid,
                w2,
                b2,
                v,
            ),
        ),
        (
            "random, softmax(R) @ V broadcast",
            "random",
            fwd_bwd(lambda r, v: naive_softmax(r.expand(B, h, l, l), v), r, v),
        ),
        (
            "random, softmax(R) once + one GEMM per head (batch folded)",
            "random",
            fwd_bwd(
                lambda r, v: (
                    (torch.softmax(_up(r), -1).to(v.dtype) @ v.permute(1, 2, 0, 3).reshape(h, l, B * e))
                    .reshape(h, l, B, e)
                    .permute(2, 0, 1, 3)
                ),
                r,
                v,
            ),
        ),
        (
            "random via SDPA float bias, zero q/k",
            "random",
            fwd_bwd(
                lambda r, v: F.scaled_dot_product_attention(
                    torch.zeros_like(v), torch.zeros_like(v), v, attn_mask=r.expand(B, h, l, l)
                ),
                r,
                v,
            ),
        ),
        # The mixture rows (here and in ours()) take unit weights: the spec's softmax(mix_logits)
        # alpha is taken as folded into q and R by the caller (same cost; tests/test_bench_harness.py
        # checks the math with q and R halved, the layer at init).
        (
            "mixture R + dot product, SDPA float bias",
            "mixture",
            fwd_bwd(
                lambda q, k, v, r: F.scaled_dot_product_attention(q, k, v, attn_mask=r.expand(B, h, l, l)),
                q,
                k,
                v,
                r,
            ),
        ),
        (
            "AFT-full, two GEMMs exp(w) @ (exp(K) V) / exp(w) @ exp(K)",
            "aft_full",
            fwd_bwd(_aft_two_gemms, K, V, w),
        ),
        ("AFT-full, broadcast exp(K + w) over (B, l, l, d)", "aft_full", fwd_bwd(_aft_broadcast, K, V, w)),
        (
            "device copy of AFT-simple's inputs and outputs",
            "aft_simple",
            fwd_bwd(lambda K, V: K.clone() + V.clone(), K, V),
        ),
    ]
    if dev.type == "cuda":
        rows.append(("mixture R + dot product, FlexAttention score_mod", "mixture", _flex_row(q, k, v, r)))
    return rows


def _aft_two_gemms(K, V, w):
    # Global maxima only: the form users write; it loses early rows under a causal mask.
    ek = torch.exp(_up(K) - _up(K).amax(1, keepdim=True))
    ew = torch.exp(_up(w[0]) - _up(w[0]).amax(1, keepdim=True))
    return ((ew @ (ek * _up(V))) / (ew @ ek)).to(V.dtype)


def _aft_broadcast(K, V, w):
    B, l, d = K.shape
    if B * l * l * d * 4 > 40e9:
        raise MemoryError(f"(B, l, l, d) = {(B, l, l, d)} float32 is {B * l * l * d * 4 / 1e9:.0f} GB")
    z = _up(K[:, None]) + _up(w[0, :, :, None])
    e = torch.exp(z - z.amax(2, keepdim=True))
    return ((e * _up(V[:, None])).sum(2) / e.sum(2)).to(V.dtype)


def _flex_row(q, k, v, r):
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention)

    def score_mod(score, b, hh, qi, ki):
        return score + r[hh, qi, ki]

    return fwd_bwd(lambda q, k, v, r: flex(q, k, v, score_mod=score_mod), q, k, v, r)


# --- ours ----------------------------------------------------------------------------------------------
def ours(x, B, h, l, e):
    from array_api_compat import torch as torch_xp

    import synth_ref as sr
    from synth_ref.backends.torch_triton._aft import AftMix
    from synth_ref.backends.torch_triton._aft_window import AftWindowMix
    from synth_ref.backends.torch_triton._flash import flash_mix
    from synth_ref.backends.torch_triton._random import random_mix

    q, k, v, hid, w2, b2, r = x["q"], x["k"], x["v"], x["hid"], x["w2"], x["b2"], x["r"]
    r1, r2, K, V, w, wc, wl, taps = (x[n] for n in ("r1", "r2", "K", "V", "w", "wc", "wl", "taps"))
    lo_local, lo_conv = -(min(WINDOW, l) - 1), -((WINDOW - 1) // 2)  # first offset t' - t of each band
    # int32: at l = 65536 the (l, l) difference below is 17 GB, not int64's 34 GB (twice, with abs)
    idx = torch.arange(l, device=K.device, dtype=torch.int32)
    band = (idx[:, None] - idx[None, :]).abs() < WINDOW
    return [
        (
            "ours: flash (dot product)",
            "dot_product",
            fwd_bwd(lambda q, k, v: flash_mix(q, k, v, scale=e**-0.5), q, k, v),
        ),
        (
            "ours: flash, static keys (dense)",
            "dense",
            fwd_bwd(lambda hid, w2, b2, v: flash_mix(hid, _static_keys(w2, B), v, b2), hid, w2, b2, v),
        ),
        ("ours: random, batch folded", "random", fwd_bwd(lambda r, v: random_mix(r, v, False, None), r, v)),
        (
            "ours: flash (factorized random)",
            "factorized_random",
            fwd_bwd(lambda r1, r2, v: flash_mix(_shared(r1, B), _shared(r2, B), v), r1, r2, v),
        ),
        (
            "ours: flash (mixture dot product + random)",
            "mixture",
            fwd_bwd(lambda q, k, v, r: flash_mix(q, k, v, None, r, scale=e**-0.5), q, k, v, r),
        ),
        (
            "ours: aft (full)",
            "aft_full",
            fwd_bwd(lambda K, V, w: AftMix.apply(K, V, w, False, None), K, V, w),
        ),
        (
            # what the layer runs without a causal mask: the reference's O(l d) form, once per batch
            # element (torch_triton._plan.kernel_choice), broadcast over the rows as the layer does
            "ours: aft (simple)",
            "aft_simple",
            fwd_bwd(lambda K, V: sr._aft._mix(torch_xp, K, V, None, None).expand_as(V), K, V),
        ),
        (
            "ours: aft (local, dense banded w')",
            "aft_local",
            fwd_bwd(lambda K, V, w: AftMix.apply(K, V, torch.where(band, w, 0.0), False, None), K, V, w),
        ),
        (
            "ours: aft (conv, dense per-head w')",
            "aft_conv",
            fwd_bwd(lambda K, V, wc: AftMix.apply(K, V, wc, False, None), K, V, wc),
        ),
        (
            "ours: aft (local, windowed)",
            "aft_local",
            fwd_bwd(lambda K, V, wl: AftWindowMix.apply(K, V, wl, lo_local, False, None), K, V, wl),
        ),
        (
            "ours: aft (conv, windowed)",
            "aft_conv",
            fwd_bwd(lambda K, V, taps: AftWindowMix.apply(K, V, taps[:, None].expand(h, l, WINDOW), lo_conv,
                                                          False, None), K, V, taps),
        ),
    ]


def _shared(t, B):
    """A per-head tensor shared by the batch: batch stride 0, no copy."""
    return t[None].expand(B, -1, -1, -1)


def _static_keys(w2, B):
    """The dense synthesizer's keys: column t' of w_2 is key t', for every batch element."""
    return _shared(w2.transpose(1, 2), B)


def attention_flops(B, h, l, e):
    """Forward + backward: 3.5 x the forward's 4 B h l^2 e (QK^T and PV), as in anchors.md."""
    return 3.5 * 4 * B * h * l * l * e


# --- targets -----------------------------------------------------------------------------------------
def targets(rows):
    """The issue's targets, checked on the rows of TARGET_SHAPE: (what, measured, limit, ok)."""
    at = {r["impl"]: r for r in rows if tuple(r["shape"]) == TARGET_SHAPE and r.get("ms") is not None}

    def ms(name):
        return at[name]["ms"] if name in at else None

    flash = ms("SDPA flash (dot product, no mask)")
    simple = ms("ours: aft (simple)")
    copy = ms("device copy of AFT-simple's inputs and outputs")
    out = []

    def check(what, got, limit):
        out.append(
            {
                "target": what,
                "ms": got,
                "limit_ms": limit,
                "ok": None if got is None or limit is None else got <= limit,
            }
        )

    for name in (
        "ours: flash, static keys (dense)",
        "ours: flash (factorized random)",
        "ours: flash (mixture dot product + random)",
    ):
        check(f"{name} <= 1.3 x SDPA flash", ms(name), None if flash is None else 1.3 * flash)
    check("ours: random <= 0.85 ms", ms("ours: random, batch folded"), 0.85)
    check("ours: aft (full) <= 1.2 ms", ms("ours: aft (full)"), 1.2)
    for name in ("ours: aft (local, windowed)", "ours: aft (conv, windowed)"):  # the layers' path
        check(f"{name} <= 2 x AFT-simple", ms(name), None if simple is None else 2 * simple)
    check("ours: aft (simple) <= 2 x device copy", simple, None if copy is None else 2 * copy)
    return out


def run(shapes, dtype, dev, quick, out_path):
    rows = []
    for B, h, l, e in shapes:
        x = make_inputs(B, h, l, e, dtype, dev)
        kernels_only = l > 16384
        todo = ours(x, B, h, l, e) + ([] if kernels_only else baselines(x, B, h, l, e, dev))
        for name, variant, fn in todo:
            row = {
                "impl": name,
                "variant": variant,
                "shape": [B, h, l, e],
                "dtype": str(dtype)[6:],
                "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
            }
            try:
                t, peak = measure(fn, dev, quick)
                row.update(
                    ms=t,
                    peak_extra_bytes=peak,
                    tflops=attention_flops(B, h, l, e) / (t * 1e-3) / 1e12
                    if variant in ("dot_product", "dense", "mixture", "factorized_random")
                    else None,
                )
            except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
                row.update(ms=None, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(_line(row), flush=True)
    result = {"rows": rows, "targets": targets(rows), "torch": torch.__version__}
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    print()
    print(table(result))
    return result


def _line(r):
    t = f"{r['ms']:.3f} ms" if r.get("ms") is not None else r.get("error", "")
    return f"{str(tuple(r['shape'])):<22} {r['impl']:<62} {t}"


def table(result) -> str:
    lines = [
        "| shape (B, h, l, e) | implementation | ms | TFLOP/s | peak extra |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        ms = f"{r['ms']:.3f}" if r.get("ms") is not None else r.get("error", "")
        tf = f"{r['tflops']:.3g}" if r.get("tflops") else ""
        mem = f"{r['peak_extra_bytes'] / 2**20:.0f} MiB" if r.get("peak_extra_bytes") is not None else ""
        lines.append(f"| {tuple(r['shape'])} | {r['impl']} | {ms} | {tf} | {mem} |")
    lines += [
        "",
        "| target (B=4 h=8 l=4096 e=64) | measured ms | limit ms | met |",
        "| --- | --- | --- | --- |",
    ]

    def fmt(v):
        return "" if v is None else f"{v:.3f}"

    for t in result["targets"]:
        met = {True: "yes", False: "NO", None: "not measured"}[t["ok"]]
        lines.append(f"| {t['target']} | {fmt(t['ms'])} | {fmt(t['limit_ms'])} | {met} |")
    for c in result.get("checks", []):  # gpu/long_bench.py's correctness checks
        lines += ["", f"{c['check']}, rows {c['rows']}: output {c['out_rel_err']:.2e}, dw "
                      f"{c['dw_rel_err']:.2e} of the row's largest (tolerance {c['tol']:.2e}): "
                      f"{'ok' if c['ok'] else 'FAILED'}"]
    return "\n".join(lines)


def parse_shape(text):
    """``'4x8x4096x64'`` -> ``(4, 8, 4096, 64)``: B, h, l, e."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected B x h x l x e, four positive integers joined by 'x' such as 4x8x4096x64; got {text!r}"
        )
    return shape


def parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU, tiny shapes, kernels under TRITON_INTERPRET=1")
    ap.add_argument("--long", action="store_true",
                    help="also l = 65536 at B = 1 (kernels only; not with --quick)")
    ap.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        default=None,
        metavar="BxHxLxE",
        help="measure only these shapes instead of the defaults (the GPU's three, or --quick's tiny one); "
        f"the targets are checked only where {'x'.join(map(str, TARGET_SHAPE))} is among them",
    )
    ap.add_argument("--out", default="torch-bench.json")
    return ap


def shapes_for(args):
    """The shapes a run measures: ``--shapes`` if given, else ``--quick``'s or the GPU's; ``--long`` (on
    a GPU) appends l = 65536."""
    base = args.shapes or (QUICK_SHAPES if args.quick else GPU_SHAPES)
    return list(base) + (LONG_SHAPES if args.long and not args.quick else [])


def main(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    if args.quick:
        dev, dtype = torch.device("cpu"), torch.float32
        if os.environ.get("TRITON_INTERPRET") != "1":
            ap.error(
                "--quick needs TRITON_INTERPRET=1 before triton is imported (run this file as a "
                "script, which sets it)"
            )
    else:
        if not torch.cuda.is_available():
            ap.error("no CUDA device: pass --quick to exercise the script on CPU")
        dev, dtype = torch.device("cuda"), torch.bfloat16
    return run(shapes_for(args), dtype, dev, args.quick, args.out)


if __name__ == "__main__":
    main()
