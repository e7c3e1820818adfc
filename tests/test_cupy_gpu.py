"""The CuPy adapter on a GPU: the fused kernels against the Array-API steps on CuPy arrays, and the
whole hand-derived vjp (kernels included) against torch autograd of the reference in float64.

Where there is no GPU (CI) every test here skips with the adapter's own reason; the same code is
covered on CPU by test_cupy_vjp.py (Array-API steps) and test_cupy_kernels.py (kernels emulated).
"""

from __future__ import annotations

import numpy as np
import pytest
from cupy_cases import CASES, CAUSAL_ONLY, GRID, assert_close, check, ids

from synth_ref import backends

OK, WHY = backends.available("cupy")
pytestmark = pytest.mark.skipif(not OK, reason=f"the cupy adapter is not available here: {WHY}")

RTOL = {"float64": 1e-12, "float32": 2e-6}  # kernels vs Array-API steps: summation order only


@pytest.fixture(scope="module")
def cp():
    import cupy

    return cupy


@pytest.fixture(scope="module")
def xp(cp):
    """The Array-API namespace of CuPy arrays, as the adapter's code sees it."""
    from array_api_compat import array_namespace

    return array_namespace(cp.zeros(1))


@pytest.fixture(scope="module")
def ops():
    from synth_ref.backends import cupy_kernels

    return cupy_kernels.ops()


def _np(cp, a):
    return None if a is None else cp.asnumpy(a)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_softmax_kernels_match_the_array_api_steps(cp, xp, ops, dtype):
    from synth_ref.backends.cupy_impl.ops import XpOps

    rng = np.random.default_rng(0)
    for B, h, l in ((3, 2, 5), (2, 2, 300)):  # 300 > 256 threads: strided loop and reduction
        kpm = rng.random((B, l)) > 0.3
        kpm[-1] = False
        for bs in (B, 1):
            s = cp.asarray((rng.standard_normal((bs, h, l, l)) * 30).astype(dtype))
            for causal in (False, True):
                for mask in (None, cp.asarray(kpm)):
                    got = ops.masked_softmax(xp, s, causal, mask)
                    want = XpOps().masked_softmax(xp, s, causal, mask)
                    assert_close(cp.asnumpy(got), np.broadcast_to(cp.asnumpy(want), got.shape), "P",
                                 RTOL[dtype], 0)
        p = cp.asarray(rng.random((B, h, l, l)).astype(dtype))
        dp = cp.asarray(rng.standard_normal((B, h, l, l)).astype(dtype))
        assert_close(cp.asnumpy(ops.softmax_backward(xp, p, dp)),
                     cp.asnumpy(XpOps().softmax_backward(xp, p, dp)), "dS", RTOL[dtype], 0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("form", ["none", "dense-G4", "local", "conv-s5"])
def test_aft_kernels_match_the_array_api_steps(cp, xp, ops, dtype, form):
    """Dense online-max kernels (none, dense) and the windowed ones (local, conv) on the GPU."""
    from synth_ref.backends.cupy_impl.ops import XpOps
    from synth_ref.backends.cupy_impl.position import Band, BandGrad, Position, band_to_dense

    rng = np.random.default_rng(1)
    B, l, d = 2, 67, 64
    kpm = rng.random((B, l)) > 0.3
    kpm[-1, :5] = False
    for causal in (False, True):
        if form == "none":
            pos = None
        elif form == "dense-G4":
            dense = cp.asarray(rng.standard_normal((4, l, l)).astype(dtype))
            pos = Position(4, lambda dense=dense: dense)
        elif form == "local":  # window 9 on a dense table
            table = cp.asarray(rng.standard_normal((l, l)).astype(dtype))
            near = cp.asarray(np.abs(np.arange(l)[:, None] - np.arange(l)[None, :]) < 9)
            pos = Position(1, lambda t=table, n=near: cp.where(n, t, 0)[None], Band(table, 0, l, 1, 0, 8, 8))
        else:  # conv, s = 5, two heads
            s, off = 5, (4 if causal else 2)
            taps = rng.standard_normal((2, s)).astype(dtype)
            tt = np.arange(l)
            tap = tt[None, :] - tt[:, None] + off
            dense = np.where(((tap >= 0) & (tap < s))[None], taps[:, np.clip(tap, 0, s - 1)], 0).astype(dtype)
            dense = cp.asarray(dense)
            pos = Position(2, lambda dd=dense: dd, Band(cp.asarray(taps), s, -1, 1, off, off, s - 1 - off))
        for mask in (None, cp.asarray(kpm)):
            k, v, dr = (cp.asarray(rng.standard_normal((B, l, d)).astype(dtype)) for _ in range(3))
            r, stats = ops.aft_forward(xp, k, v, pos, causal, mask)
            r0, stats0 = XpOps().aft_forward(xp, k, v, pos, causal, mask)
            assert_close(cp.asnumpy(r), cp.asnumpy(r0), "R", RTOL[dtype], 0)
            for name, a, b in zip(("max", "1/den"), stats, stats0, strict=True):
                assert_close(cp.asnumpy(a), cp.asnumpy(b), name, RTOL[dtype], 0)
            got = list(ops.aft_backward(xp, k, v, pos, causal, mask, r0, stats0, dr))
            want = list(XpOps().aft_backward(xp, k, v, pos, causal, mask, r0, stats0, dr))
            if isinstance(got[2], BandGrad):  # compare on the band, where the windowed kernel works
                on = band_to_dense(xp, BandGrad(cp.ones_like(got[2].values), got[2].a), l) != 0
                got[2], want[2] = band_to_dense(xp, got[2], l), cp.where(on, want[2], 0)
            for name, a, b in zip(("dK", "dV", "dw'"), got, want, strict=True):
                if b is not None:
                    assert_close(_np(cp, a), _np(cp, b), name, 10 * RTOL[dtype], 0)


WHOLE = [(v, kw, c) for v, kw in CASES for c in (False, True)] + [(v, kw, True) for v, kw in CAUSAL_ONLY]


@pytest.mark.parametrize("mask_kind", [None, "pad"])
@pytest.mark.parametrize(("variant", "kw", "causal"), WHOLE,
                         ids=[f"{i}-causal={c}" for i, (*_, c) in zip(ids([w[:2] for w in WHOLE]), WHOLE,
                                                                        strict=True)])
def test_vjp_on_gpu_matches_torch_autograd(cp, ops, variant, kw, causal, mask_kind):
    check(variant, kw, causal, mask_kind, ops=ops, to=cp.asarray, back=cp.asnumpy)


@pytest.mark.parametrize(("variant", "kw"), GRID, ids=ids(GRID))
def test_vjp_2d_grid_on_gpu(cp, ops, variant, kw):
    check(variant, kw, False, None, shape=(2, 2, 3, 4), ops=ops, to=cp.asarray, back=cp.asnumpy)


def test_the_registered_adapter_has_the_hand_derived_vjp(cp):
    import synth_ref as sr

    adapter = backends.get("cupy")
    assert backends.has_vjp(adapter)
    spec = sr.Spec("aft_conv", d_model=8, n_heads=2, max_len=16, kernel_size=3)
    params = {n: adapter.from_numpy(a, "float32") for n, a in spec.init(seed=0).items()}
    x = adapter.from_numpy(np.random.default_rng(2).standard_normal((2, 16, 8)), "float32")
    dx, dp = adapter.vjp(spec, params, x, cp.ones_like(x), causal=False, key_padding_mask=None)
    assert dx.dtype == cp.float32 and set(dp) == set(spec.param_shapes())
    assert all(bool(cp.all(cp.isfinite(g))) for g in [dx, *dp.values()])
