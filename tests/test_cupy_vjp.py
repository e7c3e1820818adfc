"""The hand-derived backward passes (synth_ref.backends.cupy_impl) against torch autograd of the
reference, in float64, for every variant and option, causal and key padding (fully masked rows
included).  These run on NumPy with the Array-API steps (``XpOps``): the code path the CuPy adapter
takes on a GPU, minus the fused kernels (tested in test_cupy_kernels.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from cupy_cases import (  # shared with the kernel tests, see tests/cupy_cases.py
    CASES,
    CAUSAL_ONLY,
    GRID,
    LEN,
    RTOL32_SPREAD,
    B,
    D,
    L,
    assert_close,
    check,
    ids,
    padding_mask,
    random_params,
)

import synth_ref as sr
from synth_ref.backends import cupy_impl


@pytest.mark.parametrize("mask_kind", [None, "pad"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("variant", "kw"), CASES, ids=ids(CASES))
def test_vjp_matches_torch_autograd(variant, kw, causal, mask_kind):
    check(variant, kw, causal, mask_kind)


@pytest.mark.parametrize("mask_kind", [None, "pad"])
@pytest.mark.parametrize(("variant", "kw"), CAUSAL_ONLY, ids=ids(CAUSAL_ONLY))
def test_vjp_even_causal_kernel(variant, kw, mask_kind):
    check(variant, kw, True, mask_kind)


@pytest.mark.parametrize(("variant", "kw"), GRID, ids=ids(GRID))
def test_vjp_2d_grid(variant, kw):
    check(variant, kw, False, None, shape=(2, 2, 3, D))


def test_fully_masked_rows_get_zero_gradient_not_nan():
    """Batch 2 has no real key: its output is b_o on every row, so dx there is exactly 0."""
    for variant, kw in [("dense", dict(n_heads=2)), ("aft_full", {}), ("aft_conv", dict(kernel_size=3))]:
        dx, dp = check(variant, kw, True, "pad")
        assert np.all(dx[2] == 0.0), variant
        assert all(np.all(np.isfinite(g)) for g in dp.values())


def test_padded_positions_beyond_length_get_exactly_zero():
    """Parameters indexed by position beyond the input's length l < max_len never touch y."""
    spec = sr.Spec("random", d_model=D, n_heads=2, max_len=L)
    params = random_params(spec, 1)
    x = np.random.default_rng(2).standard_normal((B, LEN, D))
    _, dp = cupy_impl.vjp(spec, params, x, np.ones_like(x))
    assert np.all(dp["r"][:, LEN:, :] == 0) and np.all(dp["r"][:, :, LEN:] == 0)
    assert np.any(dp["r"][:, :LEN, :LEN] != 0)


@pytest.mark.parametrize(("causal", "padded"), [(True, False), (False, True), (True, True)])
def test_long_sequence_uses_several_row_blocks(monkeypatch, causal, padded):
    """The AFT steps process query rows in blocks; a tiny block size must give the same numbers."""
    from synth_ref.backends.cupy_impl import ops

    spec = sr.Spec("aft_local", d_model=D, max_len=L, window=2)
    params = random_params(spec, 3)
    rng = np.random.default_rng(4)
    x, dy = rng.standard_normal((2, 7, D)), rng.standard_normal((2, 7, D))
    mask = np.array([[True] * 7, [False, True, True, False, True, True, True]]) if padded else None
    whole = cupy_impl.vjp(spec, params, x, dy, causal=causal, key_padding_mask=mask)
    monkeypatch.setattr(ops, "BLOCK_ELEMENTS", 2 * 7 * D * 3)  # 3 rows a block: 3 + 3 + 1
    blocked = cupy_impl.vjp(spec, params, x, dy, causal=causal, key_padding_mask=mask)
    assert_close(blocked[0], whole[0], "dx", rtol=1e-14)
    for n in whole[1]:
        assert_close(blocked[1][n], whole[1][n], n, rtol=1e-14)


STRICT = [("mixture", dict(n_heads=2, components=("dot_product", "dense", "factorized_dense",
                                                 "factorized_random", "random"), k=2, factors=(2, 4))),
          ("mixture", dict(n_heads=2, components=("dense", "factorized_dense"), factors=(2, 4),
                           tiling="tile")),
          ("aft_full", dict(pos_rank=2)), ("aft_local", dict(window=2)), ("aft_simple", dict()),
          ("aft_conv", dict(n_heads=2, kernel_size=3))]


@pytest.mark.parametrize(("variant", "kw"), STRICT, ids=ids(STRICT))
def test_runs_unchanged_on_array_api_strict(variant, kw):
    """Only standard Array-API calls (what CuPy's namespace offers too): array_api_strict refuses
    anything else, and must give NumPy's numbers."""
    xs = pytest.importorskip("array_api_strict", reason="the strict namespace checks portability")
    spec = sr.Spec(variant, d_model=D, max_len=L, **kw)
    params = random_params(spec, 12)
    rng = np.random.default_rng(13)
    x, dy, mask = rng.standard_normal((B, LEN, D)), rng.standard_normal((B, LEN, D)), padding_mask("pad")
    for causal in (False, True):
        dx, dp = cupy_impl.vjp(spec, params, x, dy, causal=causal, key_padding_mask=mask)
        sx, sp = cupy_impl.vjp(spec, {n: xs.asarray(a) for n, a in params.items()}, xs.asarray(x),
                               xs.asarray(dy), causal=causal, key_padding_mask=xs.asarray(mask))
        assert_close(np.asarray(sx), dx, "dx", rtol=1e-14)
        for n in dp:
            assert_close(np.asarray(sp[n]), dp[n], n, rtol=1e-14)


def _spread_inputs(spec, causal):
    """Keys spread over +-80 along the sequence: a global key max would underflow the visible
    terms under a causal mask (a defect of public code); the per-row max must keep them."""
    l = LEN
    params = random_params(spec, 5)
    x = np.random.default_rng(6).standard_normal((2, l, D)) * 0.1
    x[0, :, 0] = np.linspace(1.0, -1.0, l)  # batch 0: the first key is the largest (seen by all rows)
    x[1, :, 0] = np.linspace(-1.0, 1.0, l)  # batch 1: the largest key is last (future under causal)
    if "w_k" in params:
        params["w_k"][0, :] = 80.0
    for name in ("r", "random.r"):
        if name in params:  # random logits spread over +-80 too
            params[name] = params[name] * 80.0
    return params, x


SPREAD = [("dot_product", dict(n_heads=2)), ("random", dict(n_heads=2)), ("aft_full", dict()),
          ("aft_simple", dict()), ("aft_local", dict(window=2)), ("aft_conv", dict(n_heads=2, kernel_size=3))]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("variant", "kw"), SPREAD, ids=ids(SPREAD))
def test_float32_finite_with_keys_spread_80(variant, kw, causal):
    spec = sr.Spec(variant, d_model=D, max_len=L, **kw)
    params, x = _spread_inputs(spec, causal)
    dy = np.random.default_rng(7).standard_normal(x.shape)
    dx64, dp64 = cupy_impl.vjp(spec, params, x, dy, causal=causal)
    p32 = {n: a.astype(np.float32) for n, a in params.items()}
    y32 = cupy_impl.apply(spec, p32, x.astype(np.float32), causal=causal)
    dx32, dp32 = cupy_impl.vjp(spec, p32, x.astype(np.float32), dy.astype(np.float32), causal=causal)
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    assert np.all(np.isfinite(y32)) and np.all(np.isfinite(dx32))
    scale = max(float(np.max(np.abs(g))) for g in [dx64, *dp64.values()])
    assert_close(dx32.astype(np.float64), dx64, "dx float32", rtol=0, atol=RTOL32_SPREAD * scale)
    for n in dp64:
        assert np.all(np.isfinite(dp32[n])), n
        assert_close(dp32[n].astype(np.float64), dp64[n], f"d{n} float32", rtol=0,
                     atol=RTOL32_SPREAD * scale)


def test_float16_is_computed_in_float32_and_returned_as_float16():
    spec = sr.Spec("aft_full", d_model=D, max_len=L)
    params = random_params(spec, 8)
    rng = np.random.default_rng(9)
    x, dy = rng.standard_normal((2, LEN, D)), rng.standard_normal((2, LEN, D))
    dx64, _ = cupy_impl.vjp(spec, params, x, dy)
    p16 = {n: a.astype(np.float16) for n, a in params.items()}
    dx16, dp16 = cupy_impl.vjp(spec, p16, x.astype(np.float16), dy.astype(np.float16))
    assert dx16.dtype == np.float16 and all(g.dtype == np.float16 for g in dp16.values())
    # float16 rounding of the inputs alone moves the result by ~1e-3 relative
    assert_close(dx16.astype(np.float64), dx64, "dx float16", rtol=2e-2, atol=0)


def test_adapter_object_follows_the_protocol_and_matches_module():
    from synth_ref import backends

    adapter = backends.load("synth_ref.backends.cupy_impl:numpy_adapter")
    assert backends.has_vjp(adapter) and adapter.available()[0]
    spec = sr.Spec("factorized_random", d_model=D, n_heads=2, max_len=L, k=2)
    params = random_params(spec, 10)
    x = adapter.from_numpy(np.random.default_rng(11).standard_normal((B, LEN, D)), "float64")
    dx, dp = adapter.vjp(spec, params, x, np.ones_like(x), causal=True, key_padding_mask=None)
    dx2, dp2 = cupy_impl.vjp(spec, params, x, np.ones_like(x), causal=True)
    assert np.array_equal(dx, dx2) and all(np.array_equal(dp[n], dp2[n]) for n in dp)


@pytest.mark.parametrize(
    ("dy", "match"),
    [(np.ones((B, LEN + 1, D)), r"dy: expected the output's shape \(3, 5, 4\); got \(3, 6, 4\)"),
     (np.ones((B, LEN, D), dtype=np.float32), "dy: expected x's dtype float64; got float32"),
     ([[1.0]], "dy: expected an array of x's namespace")],
)
def test_bad_dy_is_named(dy, match):
    spec = sr.Spec("random", d_model=D, max_len=L)
    x = np.ones((B, LEN, D))
    with pytest.raises((ValueError, TypeError), match=match):
        cupy_impl.vjp(spec, spec.init(), x, dy)


def test_bad_input_is_rejected_like_the_reference():
    spec = sr.Spec("random", d_model=D, max_len=L)
    with pytest.raises(ValueError, match="x: expected last axis d_model=4"):
        cupy_impl.vjp(spec, spec.init(), np.ones((1, 3, 5)), np.ones((1, 3, 5)))


BANDED = [("aft_local", dict(window=2), False), ("aft_local", dict(window=2), True),
          ("aft_local", dict(window=9, pos_rank=2), False)]
BANDED += [("aft_conv", dict(n_heads=2, kernel_size=s), c)
           for s, c in ((3, False), (3, True), (4, True), (1, False))]


@pytest.mark.parametrize(("variant", "kw", "causal"), BANDED)
def test_band_description_reads_the_same_w_prime(variant, kw, causal):
    """The windowed kernels read w' through ``Band`` (a table and an affine index) instead of the
    dense (G, l, l) array: on the band they must read exactly w', and w' must be 0 off it."""
    from synth_ref.backends.cupy_impl import aft_vjp

    spec = sr.Spec(variant, d_model=D, max_len=L, **kw)
    params = random_params(spec, 14)
    pos, _ = aft_vjp.position_forward(spec, params, np, LEN, causal, None, "cpu")
    dense, band = pos.dense(), pos.band
    assert band is not None and dense.shape == (pos.groups, LEN, LEN)
    table = np.ravel(np.asarray(band.table))
    for g in range(pos.groups):
        for t in range(LEN):
            for u in range(LEN):
                on = t - band.a <= u <= t + band.r and (u <= t or not causal)
                if on:
                    assert table[g * band.sg + t * band.st + u * band.sk + band.base] == dense[g, t, u]
                elif not causal or u <= t:  # off the band w' is 0 (future keys are masked anyway)
                    assert dense[g, t, u] == 0


TIES = [("dense", dict(n_heads=2)), ("factorized_dense", dict(n_heads=2, factors=(2, 4))),
        ("aft_full", dict())]


@pytest.mark.parametrize(("variant", "kw"), TIES, ids=ids(TIES))
def test_exact_ties_match_the_reference(variant, kw):
    """relu at exactly 0 (hidden pre-activations of 0) and the sigmoid at exactly q = 0: the hand
    passes take relu'(0) = 0 and sigmoid'(0) = 1/4, as torch autograd of the reference does
    (docs/backward.md, Kinks).  A maximum(h, 0) in either would give 1/2 at the tie."""
    from cupy_cases import torch_gold

    spec = sr.Spec(variant, d_model=D, max_len=L, **kw)
    params = random_params(spec, 15)
    x = np.zeros((B, LEN, D))
    x[:, :, 1] = np.random.default_rng(16).standard_normal((B, LEN))
    for name in ("w_1", "w_q"):  # the pre-activation ignores x's feature 1, the only nonzero one
        if name in params:
            params[name][..., 1, :] = 0.0
    for name in ("b_1", "b_q"):
        if name in params:
            params[name][...] = 0.0
    dy = np.random.default_rng(17).standard_normal(x.shape)
    _, dx_gold, dp_gold = torch_gold(spec, params, x, dy, False, None)
    dx, dp = cupy_impl.vjp(spec, params, x, dy)
    assert_close(dx, dx_gold, "dx")
    for n in dp:
        assert_close(dp[n], dp_gold[n], f"d{n}")


@pytest.mark.parametrize("call", ["apply", "vjp"])
def test_cupy_adapter_names_x_when_it_is_not_a_cupy_array(monkeypatch, call):
    """The CuPy adapter given a NumPy x must say so, naming x, instead of failing inside the kernel
    glue (half the arrays moved to the GPU, "Unsupported device" from NumPy's empty).  A stand-in
    cupy module is enough: the check runs before anything is launched."""
    import sys
    import types

    from synth_ref.backends import cupy as cupy_adapter

    fake = types.ModuleType("cupy")
    fake.ndarray = type("ndarray", (), {})
    fake.__version__ = "0"
    monkeypatch.setitem(sys.modules, "cupy", fake)
    spec = sr.Spec("aft_full", d_model=D, max_len=L)
    x = np.ones((B, LEN, D))
    args = (x,) if call == "apply" else (x, np.ones_like(x))
    with pytest.raises(TypeError, match=r"x: expected a cupy array .*; got numpy\.ndarray"):
        getattr(cupy_adapter.adapter, call)(spec, spec.init(), *args)
