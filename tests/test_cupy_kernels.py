"""The CuPy adapter's CUDA kernels, run on the CPU.

The very sources CuPy compiles (synth_ref/backends/cuda/*.cu) are built with the host C++ compiler
against a small emulation of the CUDA execution model (synth_ref/backends/cuda/emu/emu.h, built by
``synth_ref.backends.cupy_emulated``) and driven through
``KernelOps``, the same glue ``CupyOps`` uses on a GPU (argument packing, shapes, the
one-representative-row case).  They are checked against the Array-API steps (``XpOps``) and, for
the whole vjp, against torch autograd of the reference.  Not shown here: anything about real GPU
execution (NVRTC, scheduling, races between warps, speed); see test_cupy_gpu.py for that.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from cupy_cases import CASES, CAUSAL_ONLY, GRID, RTOL64, assert_close, check, ids

from synth_ref import _common
from synth_ref.backends import cupy_emulated as emulated
from synth_ref.backends import cupy_impl
from synth_ref.backends import cupy_kernels as ck
from synth_ref.backends.cupy_impl.ops import XpOps
from synth_ref.backends.cupy_impl.position import Band, BandGrad, Position, band_to_dense

pytestmark = pytest.mark.skipif(
    emulated.compiler() is None,
    reason="no host C++ compiler ($CXX, g++ or c++) to build the CPU emulation of the kernels")


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    """Both dtypes' libraries (cupy_emulated.build: one block per softmax row of EMU_THREADS = 8
    threads, so rows of 37 and 70 keys exercise the strided loops and the tree reduction)."""
    return emulated.build(tmp_path_factory.mktemp("cuda_emu"))


@pytest.fixture(scope="module")
def emu(libs):
    return emulated.EmuOps(libs)


# --- the source table --------------------------------------------------------------------------

def test_kernel_table_matches_the_sources():
    """Every .cu in the directory is in SOURCES (so the nvcc check and the loader see the same set),
    and each kernel's parameter count and kinds agree with SIGNATURES."""
    assert set(ck.SOURCES) == {p.name for p in ck.CUDA_DIR.glob("*.cu")}
    assert set(ck.SIGNATURES) == {k for names in ck.SOURCES.values() for k in names}
    for filename, names in ck.SOURCES.items():
        text = (ck.CUDA_DIR / filename).read_text()
        for name in names:
            m = re.search(rf'extern "C" __global__ void {name}\((.*?)\)\s*{{', text, re.S)
            assert m, f"{filename}: kernel {name} not found"
            params = [p.strip() for p in m.group(1).split(",")]
            kinds = ["ptr" if "*" in p else "i64" if p.startswith("long long") else "i32" for p in params]
            assert tuple(kinds) == ck.SIGNATURES[name], name


# --- each step against the Array-API definition -------------------------------------------------

RTOL = {"float64": 1e-13, "float32": 2e-6}  # same math, different summation order and e * (1/sum)


def _kpm(B, l, rng):
    m = rng.random((B, l)) > 0.3
    m[-1, :] = False  # one batch element with no real key: every row empty
    return m


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("B", "h", "l"), [(3, 2, 5), (2, 1, 37)])
def test_masked_softmax_kernel(emu, dtype, B, h, l):
    rng = np.random.default_rng(l)
    for shared in (False, True):
        s = (rng.standard_normal((1 if shared else B, h, l, l)) * 30).astype(dtype)
        for causal in (False, True):
            for kpm in (None, _kpm(B, l, rng)):
                got = emu.masked_softmax(np, s, causal, kpm)
                want = XpOps().masked_softmax(np, s, causal, kpm)
                assert got.dtype == np.dtype(dtype)
                assert_close(got, np.broadcast_to(want, got.shape), "P", RTOL[dtype], 0)
                if kpm is not None:
                    assert np.all(got[-1] == 0)


def _softmax_rows(rng, shape, spread):
    """Rows of a masked softmax (what the step receives): logits spread over +-spread, about a third
    of the keys masked (P = 0), and the last row of each (batch, head) empty."""
    s = rng.standard_normal(shape) * spread
    ok = rng.random(shape) < 0.7
    ok[..., -1, :] = False
    e = _common.masked_exp(np, s, ok, _common.masked_max(np, s, ok, axis=-1))
    return _common.safe_divide(np, e, e.sum(-1, keepdims=True))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("l", [6, 70])  # 6 < 8 emulated threads: one pass; 70: strided, tree reduction
def test_softmax_backward_kernel(emu, dtype, l):
    rng = np.random.default_rng(l)
    B, h = 3, 2
    for pb in (B, 1):
        p = _softmax_rows(rng, (pb, h, l, l), 2.0).astype(dtype)
        dp = rng.standard_normal((B, h, l, l)).astype(dtype)
        got = emu.softmax_backward(np, p, dp)
        assert_close(got, XpOps().softmax_backward(np, p, dp), "dS", RTOL[dtype], 0)
        # the row term is sum_j P dP of each row (float64 gold), with P shared by the batch if pb = 1
        p64, dp64 = np.broadcast_to(p, dp.shape).astype(np.float64), dp.astype(np.float64)
        gold = p64 * (dp64 - (p64 * dp64).sum(-1, keepdims=True))
        assert_close(got, gold, "dS vs float64", RTOL[dtype], 0)
        assert np.all(got[..., -1, :] == 0)  # the empty rows


@pytest.mark.parametrize("l", [6, 70])
def test_softmax_backward_dominant_key_float32(emu, l):
    """Rows where one key holds all but 1e-6..1e-3 of the weight: the dominant key's dS, rebuilt from
    the other keys (docs/backward.md, step 5), is within a few float32 roundings of the terms it is
    made of (the other keys' P |dP| and the row term times their weight); P (dP - sum P dP) there
    keeps a rounding of dP, thousands of times that.  The Array-API step does the same."""
    rng = np.random.default_rng(7 + l)
    shape = (2, 2, l, l)
    s = rng.standard_normal(shape)
    s[..., 0] += rng.uniform(7.0, 14.0, shape[:-1])  # key 0 dominates every row by 7..14
    e = np.exp(s - s.max(-1, keepdims=True))
    p = (e / e.sum(-1, keepdims=True)).astype(np.float32)
    dp = (rng.standard_normal(shape) + 10.0).astype(np.float32)  # a common offset: the worst case
    p64, dp64 = p.astype(np.float64), dp.astype(np.float64)
    # float64 gold of dS_0 on the float32 P, as the other keys give it (the weights of p sum to 1
    # only to float32 rounding: P_0 (dP_0 - sum P dP) would differ by that rounding times dP)
    gold = (p64 * dp64).sum(-1) * p64[..., 1:].sum(-1) - (p64 * dp64)[..., 1:].sum(-1)
    flash = (p64 * (dp64 - (p64.astype(np.float32) * dp).sum(-1, keepdims=True)))[..., 0]
    size = np.abs((p64 * dp64).sum(-1)) * p64[..., 1:].sum(-1) + np.abs(p64 * dp64)[..., 1:].sum(-1)
    eps = float(np.finfo(np.float32).eps)
    for got in (emu.softmax_backward(np, p, dp), XpOps().softmax_backward(np, p, dp)):
        err = np.abs(got[..., 0].astype(np.float64) - gold) / (eps * size)
        assert np.max(err) < 16, np.max(err)
    assert np.max(np.abs(flash - gold) / (eps * size)) > 1e3  # what the step is there to avoid


def _aft_inputs(rng, B, l, d, spread, dtype):
    k = rng.standard_normal((B, l, d)) * spread
    v = rng.standard_normal((B, l, d))
    dr = rng.standard_normal((B, l, d))
    return tuple(a.astype(dtype) for a in (k, v, dr))


def _positions(rng, l, dtype):
    """w' in every form the AFT steps take: none, dense (G = 1, 2), and the bands of AFT-local
    (reading a dense table, window capped at l) and 1-D AFT-conv (reading taps, odd/even, causal)."""
    dense1 = rng.standard_normal((1, l, l)).astype(dtype)
    dense2 = rng.standard_normal((2, l, l)).astype(dtype)
    table = rng.standard_normal((l, l)).astype(dtype)
    taps = rng.standard_normal((2, 4)).astype(dtype)
    out = {"none": lambda causal: None,
           "dense-G1": lambda causal: Position(1, lambda: dense1),
           "dense-G2": lambda causal: Position(2, lambda: dense2)}
    for window in (2, l + 3):
        reach = min(window, l) - 1
        near = np.abs(np.arange(l)[:, None] - np.arange(l)[None, :]) < window
        out[f"local-w{window}"] = (lambda causal, near=near, reach=reach: Position(
            1, lambda: np.where(near, table, 0)[None], Band(table, 0, l, 1, 0, reach, reach)))

    def conv(causal, s):
        off = s - 1 if causal else (s - 1) // 2
        t = np.arange(l)
        tap = t[None, :] - t[:, None] + off
        inside = (tap >= 0) & (tap < s)
        what = np.ascontiguousarray(taps[:, :s])
        dense = np.where(inside[None], what[:, np.clip(tap, 0, s - 1)], 0).astype(dtype)
        return Position(2, lambda: dense, Band(what, s, -1, 1, off, off, s - 1 - off))

    out["conv-s3"] = lambda causal: conv(causal, 3)
    out["conv-s4"] = lambda causal: conv(True, 4) if causal else None  # even: causal only
    return out


def _on_band(band_grad, dense, l):
    """The windowed kernels give dw' on the band only (the entries off it are 0 in w' and their
    gradient is never used); compare the dense gradient there."""
    on = band_to_dense(np, BandGrad(np.ones_like(band_grad.values), band_grad.a), l) != 0
    return band_to_dense(np, band_grad, l).astype(np.float64), np.where(on, dense, 0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("form", ["none", "dense-G1", "dense-G2", "local-w2", "local-w10", "conv-s3",
                                  "conv-s4"])
def test_aft_kernels(emu, dtype, form):
    rng = np.random.default_rng(2)
    B, l, d = 3, 7, 4
    make = _positions(rng, l, dtype)[form]
    before = len(emu.launched)
    for causal in (False, True):
        pos = make(causal)
        if form == "conv-s4" and pos is None:
            continue
        for kpm in (None, _kpm(B, l, rng)):
            k, v, dr = _aft_inputs(rng, B, l, d, 1.0, dtype)
            r, stats = emu.aft_forward(np, k, v, pos, causal, kpm)
            r0, stats0 = XpOps().aft_forward(np, k, v, pos, causal, kpm)
            assert_close(r, r0, "R", RTOL[dtype], 0)
            for name, a, b in zip(("max", "1/den"), stats, stats0, strict=True):
                assert_close(a, b, name, RTOL[dtype], 0)
            got = list(emu.aft_backward(np, k, v, pos, causal, kpm, r0, stats0, dr))
            want = list(XpOps().aft_backward(np, k, v, pos, causal, kpm, r0, stats0, dr))
            if isinstance(got[2], BandGrad):
                got[2], want[2] = _on_band(got[2], want[2], l)
            for name, a, b in zip(("dK", "dV", "dw'"), got, want, strict=True):
                if b is None:
                    assert a is None
                else:
                    assert_close(a, b, name, 10 * RTOL[dtype], 0)
    ran = set(emu.launched[before:])
    assert ("aftw_fwd" in ran) == form.startswith(("local", "conv")), ran  # a band takes the window path
    assert ("aft_fwd" in ran) == (not form.startswith(("local", "conv"))), ran


@pytest.mark.parametrize("form", ["dense-G1", "local-w2", "conv-s3"])
@pytest.mark.parametrize("causal", [False, True])
def test_aft_kernels_float32_keys_spread_80(emu, causal, form):
    """The stabiliser is exact per (row, channel) in both kernel families (online max; merged
    scans): float32 stays finite and matches float64."""
    rng = np.random.default_rng(3)
    B, l, d = 2, 9, 4
    k, v, dr = _aft_inputs(rng, B, l, d, 1.0, "float64")
    k[0] += np.linspace(80, -80, l)[:, None]  # largest key first
    k[1] += np.linspace(-80, 80, l)[:, None]  # largest key last: in every row's future when causal
    pos64 = _positions(np.random.default_rng(5), l, "float64")[form](causal)
    pos32 = _positions(np.random.default_rng(5), l, "float32")[form](causal)
    r64, stats64 = XpOps().aft_forward(np, k, v, pos64, causal, None)
    f32 = [a.astype(np.float32) for a in (k, v, dr)]
    r, stats = emu.aft_forward(np, f32[0], f32[1], pos32, causal, None)
    assert np.all(np.isfinite(r)) and all(np.all(np.isfinite(a)) for a in stats)
    assert_close(r.astype(np.float64), r64, "R float32", 1e-4, 0)
    grads = list(emu.aft_backward(np, f32[0], f32[1], pos32, causal, None, r, stats, f32[2]))
    want = list(XpOps().aft_backward(np, k, v, pos64, causal, None, r64, stats64, dr))
    if isinstance(grads[2], BandGrad):
        grads[2], want[2] = _on_band(grads[2], want[2], l)
    # Judged against the largest gradient entry: with keys 80 apart the weights saturate and dK
    # is a difference V - R of nearly equal numbers, tiny and beyond float32's relative reach.
    scale = max(float(np.max(np.abs(b))) for b in want)
    for name, a, b in zip(("dK", "dV", "dw'"), grads, want, strict=True):
        assert np.all(np.isfinite(a)), name
        assert_close(a.astype(np.float64), b, name, 0, 1e-5 * scale)


def test_float16_and_other_dtypes_fall_back_to_the_array_api_steps(emu):
    before = len(emu.launched)
    s = np.random.default_rng(4).standard_normal((1, 1, 3, 3)).astype(np.float16)
    emu.masked_softmax(np, s, True, None)
    assert len(emu.launched) == before


# --- the whole vjp through the kernels ---------------------------------------------------------

WHOLE = [(v, kw, causal) for v, kw in CASES for causal in (False, True)] + [
    (v, kw, True) for v, kw in CAUSAL_ONLY]  # an even aft_conv kernel is defined only with causal


@pytest.mark.parametrize("mask_kind", [None, "pad"])
@pytest.mark.parametrize(("variant", "kw", "causal"), WHOLE,
                         ids=[f"{i}-causal={c}" for i, (*_, c) in zip(ids([w[:2] for w in WHOLE]), WHOLE,
                                                                        strict=True)])
def test_vjp_through_emulated_kernels_matches_torch_autograd(emu, variant, kw, causal, mask_kind):
    before = len(emu.launched)
    check(variant, kw, causal, mask_kind, ops=emu, rtol=RTOL64)
    launched = set(emu.launched[before:])
    if variant in ck_softmax():
        fused = {"masked_softmax_fwd", "softmax_bwd"}
    elif variant in ("aft_local", "aft_conv"):  # 1-D: the windowed identity
        fused = {"aftw_scan_fwd", "aftw_fwd", "aftw_scan_bwd", "aftw_bwd_kv", "aftw_bwd_w"}
    else:
        fused = {"aft_fwd", "aft_bwd_kv"} | ({"aft_bwd_w"} if variant == "aft_full" else set())
    assert fused <= launched, f"expected the fused kernels {fused} to run; ran {launched}"


@pytest.mark.parametrize(("variant", "kw"), GRID, ids=ids(GRID))
def test_vjp_2d_grid_through_emulated_kernels(emu, variant, kw):
    before = len(emu.launched)
    check(variant, kw, False, None, shape=(2, 2, 3, 4), ops=emu)
    assert "aft_bwd_w" in emu.launched[before:]  # 2-D: the dense w' kernels


def ck_softmax():
    from synth_ref.variants import SOFTMAX_VARIANTS

    return set(SOFTMAX_VARIANTS) | {"mixture"}


# --- saturated softmax rows (the conformance suite's regression cases) --------------------------

@pytest.mark.parametrize("kernels", [False, True], ids=["array-api-steps", "emulated-kernels"])
def test_saturated_softmax_gradients_float32(emu, kernels):
    """The suite's saturated-softmax cases (the softmax rows of cases._DEEP_FINDS), float32
    gradients: with the row term of dS taken as sum_e dO * O instead of sum_t' P dP, four of them
    failed (up to 3.3x tolerance)."""
    from synth_ref.conformance import cases, check

    adapter = cupy_impl.NumpyHandVjpAdapter(emu if kernels else XpOps())
    before = len(emu.launched)
    for case in cases.grid("ci")[-len(cases._DEEP_FINDS):]:
        if case.spec.family != "softmax" or case.grad_dtypes != ("float32",):
            continue
        out = check.check_gradient(adapter, case, "float32")
        assert out.status == "pass", out.message()
    assert ("softmax_bwd" in emu.launched[before:]) == kernels


@pytest.mark.parametrize("kernels", [False, True], ids=["array-api-steps", "emulated-kernels"])
def test_aft_gradient_precision_matches_the_reference(emu, kernels):
    """Deep-grid AFT cases with z over +-100 (aft_simple causal; windowed aft_conv): dV's error
    (db_v) within 3x the reference's own float32 error.  With P = exp(z - lse) it was 35x and 20x:
    lse = max + log(den) carries its rounding into every P (docs/backward.md, AFT)."""
    from kernel_precision import gradient_errors, reference_errors

    from synth_ref.conformance import cases

    adapter = cupy_impl.NumpyHandVjpAdapter(emu if kernels else XpOps())
    deep = {c.seed: c for c in cases.grid("deep")}
    for seed in (720, 1011):
        case = deep[seed]
        assert case.spec.family == "aft" and case.values == "large"
        got, ref = gradient_errors(adapter, case, ("b_v",)), reference_errors(case, ("b_v",))
        assert got["b_v"] <= 3 * ref["b_v"], (case.id, got, ref)
