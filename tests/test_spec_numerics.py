"""Numerics: wide logits in float32, empty rows and their gradients, float16, and AFT's peak memory."""

from __future__ import annotations

import time
import tracemalloc

import brute
import numpy as np
import pytest
from numpy.testing import assert_allclose
from spec_cases import SOFTMAX, random_params, run, run_both
from spec_tolerances import F16, F32_WIDE

import synth_ref as sr

B, L, D = 2, 6, 4


def _wide_case(variant):
    """A layer whose logits (softmax family) or keys (AFT) spread over about +-80.

    Position 0 gets the most negative value and the last position the most positive one, so under a
    causal mask row 0 sees only a key about 160 below the global maximum: a stabilizer that
    subtracts a global (or future-including) maximum underflows exp there to 0/0 in float32."""
    rng = np.random.default_rng(20)
    x = rng.uniform(-1, 1, (B, L, D))
    x[:, 0, :] = -1.0
    x[:, -1, :] = 1.0
    opts = {"factorized_random": {"k": 1}, "aft_local": {"window": 2}, "aft_conv": {"kernel_size": 3}}
    h = 1 if variant in ("aft_full", "aft_simple", "aft_local") else 2
    spec = sr.Spec(variant, d_model=D, n_heads=h, max_len=L, **opts.get(variant, {}))
    p = random_params(spec, rng, scale=0.5)
    p["w_v"] = np.eye(D)
    if variant.startswith("aft_"):
        p["w_k"], p["b_k"] = 80.0 * np.eye(D), np.zeros(D)  # K = 80 x in [-80, 80]
    elif variant == "dot_product":
        # e = 2: S = Q K^T / sqrt(2) with Q = K = 7.6 x[:, head cols]: up to 7.6^2 * 2 / sqrt2 = 82
        p["w_q"], p["w_k"], p["b_q"], p["b_k"] = 7.6 * np.eye(D), 7.6 * np.eye(D), np.zeros(D), np.zeros(D)
    elif variant == "random":
        p["r"] = rng.uniform(-80, 80, (h, L, L))
        p["r"][:, :, 0], p["r"][:, :, -1] = -80.0, 80.0
    elif variant == "factorized_random":
        p["r_1"] = rng.uniform(-9, 9, (h, L, 1))
        p["r_2"] = np.linspace(-9, 9, L)[None, :, None] * np.ones((h, 1, 1))  # S[t, :] spans +-81 r_1[t]/9
    elif variant in ("dense", "factorized_dense"):
        p["b_1"] = np.abs(p["b_1"]) + 1.0  # a live hidden layer
        last = "b_2" if variant == "dense" else "b_b"
        p[last] = p[last] * 0 + np.linspace(-80, 80, p[last].shape[-1])
        if variant == "factorized_dense":
            p["w_a"], p["b_a"] = p["w_a"] * 0, p["b_a"] * 0 + 1.0  # A = 1: C = B, spread +-80
    return spec, p, x


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", [v for v in sr.VARIANTS if v != "mixture"] + ["mixture"])
def test_float32_wide_logits_close_to_float64_gold(ns, variant, causal):
    if variant == "mixture":
        spec = sr.Spec("mixture", d_model=D, n_heads=2, max_len=L, components=("random", "dense"))
        rs, rp, x = _wide_case("random")
        ds, dp, _ = _wide_case("dense")
        p = dict(rp, **{f"dense.{n}": dp[n] for n in ds.info.shapes(ds)},
                 **{"random.r": rp["r"], "mix_logits": np.array([1.0, 0.0])})
        del p["r"]
    else:
        spec, p, x = _wide_case(variant)
    mask = np.ones((B, L), dtype=bool)
    mask[1, 2] = False
    gold = brute.apply(spec, p, x, causal=causal, key_padding_mask=mask)
    got, w = run_both(ns, spec, p, x, causal=causal, mask=mask, dtype="float32")
    assert np.all(np.isfinite(got)), got
    assert_allclose(got, gold, *F32_WIDE)
    assert_allclose(w, brute.attention_weights(spec, p, x, causal=causal, key_padding_mask=mask),
                    *F32_WIDE)


def _torch_grads(spec, p, x, dy, causal, mask, dtype):
    torch = pytest.importorskip("torch", reason="torch autograd is the gradient engine here")
    pt = {n: torch.tensor(a, dtype=dtype, requires_grad=True) for n, a in p.items()}
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    y = sr.apply(spec, pt, xt, causal=causal, key_padding_mask=torch.tensor(mask))
    (y * torch.tensor(dy, dtype=dtype)).sum().backward()
    return y.detach().numpy(), xt.grad.numpy(), {n: t.grad.numpy() for n, t in pt.items()}


EMPTY_ROW_SPECS = {
    "dot_product": sr.Spec("dot_product", d_model=4, n_heads=2, max_len=4),
    "mixture": sr.Spec("mixture", d_model=4, n_heads=2, max_len=4, k=2, factors=(2, 2),
                       components=SOFTMAX),
    "aft_full": sr.Spec("aft_full", d_model=4, max_len=4, pos_rank=2),
    "aft_simple": sr.Spec("aft_simple", d_model=4, max_len=4),
    "aft_local": sr.Spec("aft_local", d_model=4, max_len=4, window=2),
    "aft_conv": sr.Spec("aft_conv", d_model=4, n_heads=2, max_len=4, kernel_size=2),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", EMPTY_ROW_SPECS)
def test_fully_masked_rows_give_zero_and_finite_gradients(name, dtype):
    import torch

    spec = EMPTY_ROW_SPECS[name]
    rng = np.random.default_rng(21)
    p = random_params(spec, rng)
    x = rng.standard_normal((2, 4, 4))
    dy = rng.standard_normal(x.shape)
    mask = np.array([[False] * 4, [False, True, True, True]])  # batch 0 empty; causal row 0 of batch 1
    y, dx, dp = _torch_grads(spec, p, x, dy, True, mask, getattr(torch, dtype))
    assert_allclose(y[0], np.broadcast_to(p["b_o"], (4, 4)), rtol=1e-6, atol=1e-6)  # Y = 0: y = b_o
    assert_allclose(y[1, 0], p["b_o"], rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(dx)) and all(np.all(np.isfinite(g)) for g in dp.values())
    # nothing flows into an input whose key is masked and whose own row is empty
    assert np.all(dx[0] == 0) and np.all(dx[1, 0] == 0)
    w = sr.attention_weights(spec, p, x, causal=True, key_padding_mask=mask)
    assert np.all(w[0] == 0) and np.all(w[1, :, 0] == 0)


@pytest.mark.parametrize("variant", ["random", "aft_full", "aft_conv"])
def test_wide_logits_float32_gradients_finite(variant):
    import torch

    spec, p, x = _wide_case(variant)
    mask = np.ones((B, L), dtype=bool)
    mask[1, :2] = False
    dy = np.random.default_rng(22).standard_normal(x.shape)
    for causal in (False, True):
        _, dx, dp = _torch_grads(spec, p, x, dy, causal, mask, torch.float32)
        assert np.all(np.isfinite(dx)) and all(np.all(np.isfinite(g)) for g in dp.values())


@pytest.mark.parametrize("variant", sr.VARIANTS)
def test_float16(ns, variant):
    if not ns.float16:
        pytest.skip(f"{ns.name} has no float16 (the Array API standard requires only float32/float64)")
    extra = {"factorized_random": {"k": 2}, "mixture": {"components": ("dense", "random")},
             "aft_local": {"window": 2}, "aft_conv": {"kernel_size": 3}}.get(variant, {})
    h = 1 if variant in ("aft_full", "aft_simple", "aft_local") else 2
    spec = sr.Spec(variant, d_model=4, n_heads=h, max_len=5, **extra)
    rng = np.random.default_rng(23)
    p = {n: a.astype(np.float16).astype(np.float64) for n, a in spec.init(seed=1).items()}
    if "conv_gamma" in p:  # init's zero gain (the paper's) zeroes every kernel; keep their terms
        p["conv_gamma"] = np.ones_like(p["conv_gamma"])
    x = rng.standard_normal((2, 5, 4)).astype(np.float16).astype(np.float64)  # exact in float16
    mask = np.array([[True, True, False, True, True], [False] * 5])
    causal = variant != "aft_conv"
    gold = brute.apply(spec, p, x, causal=causal, key_padding_mask=mask)
    got = run(ns, spec, p, x, causal=causal, mask=mask, dtype="float16")
    assert np.all(np.isfinite(got))
    assert_allclose(got, gold, *F16)


def test_aft_full_peak_memory_stays_linear():
    """B=1, l=4096, d=64, float32: the (B, d, l, l) array would be 4 GiB; the spec must stay under
    1 GB.  tracemalloc sees NumPy's buffers (NumPy reports its allocations to it).  (d = 64, not
    256: the quadratic array is still 4x the bound, at a quarter of the CPU time, ~115 s in CI.)"""
    spec = sr.Spec("aft_full", d_model=64, max_len=4096)
    p = spec.init(seed=0, dtype="float32")
    x = np.random.default_rng(24).standard_normal((1, 4096, 64)).astype(np.float32)
    tracemalloc.start()
    try:
        start = time.perf_counter()
        y = sr.apply(spec, p, x)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"aft_full B=1 l=4096 d=64 float32: peak {peak / 2**20:.0f} MiB, {seconds:.1f} s")
    assert y.shape == x.shape and np.all(np.isfinite(y))
    assert peak < 1e9, f"peak traced memory {peak / 1e9:.2f} GB"
    # the check has teeth: tracemalloc does see a 256 MiB NumPy temporary
    tracemalloc.start()
    try:
        np.ones((4096, 4096, 4), dtype=np.float32)
        big = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert big >= 2**28


def test_fused_helpers_give_the_two_pass_numbers_bit_for_bit():
    """The spec's speed-ups must not move a bit: stable_exp against masked_exp(masked_max) (the
    two-pass definition), with an all-masked row and a causal mask; sigmoid against its two
    branches evaluated apart; random's batch-free weights against the per-batch-element ones."""
    import array_api_compat.numpy as xp

    from synth_ref import _common as c
    from synth_ref import _softmax

    rng = np.random.default_rng(3)
    for dt in (np.float32, np.float64):
        s = (rng.standard_normal((2, 3, 7, 7)) * 40).astype(dt)
        causal = c.causal_allowed(xp, 7, "cpu")[None, None]
        pad = rng.random((2, 1, 1, 7)) > 0.4
        pad[0] = False  # every key of batch element 0 masked: its rows must be exactly 0
        for allowed in (None, causal, np.logical_and(causal, pad)):
            want = c.masked_exp(xp, s, allowed, c.masked_max(xp, s, allowed, axis=-1))
            got = c.stable_exp(xp, s, allowed, axis=-1)
            assert got.dtype == want.dtype and np.array_equal(got, want)
        q = np.concatenate([s.ravel(), np.array([0.0, -0.0, 100.0, -100.0], dt)])
        with np.errstate(over="ignore", invalid="ignore"):  # the branch where() drops
            branch = np.where(q >= 0, 1 / (1 + np.exp(-q)), np.exp(q) / (1 + np.exp(q)))
        assert np.array_equal(c.sigmoid(xp, q), branch.astype(dt))
    spec = sr.Spec("random", d_model=4, n_heads=2, max_len=5)
    p = {k: xp.asarray(v) for k, v in spec.init(seed=1).items()}
    x = rng.standard_normal((3, 5, 4))
    once = _softmax._weights(spec, p, x, xp, False, None)
    assert once.shape == (1, 2, 5, 5)  # computed once, not per batch element
    per_b = _softmax._weights(spec, p, x, xp, False, np.ones((3, 5), bool))  # a mask forces B rows
    assert per_b.shape == (3, 2, 5, 5) and all(np.array_equal(once[0], w) for w in per_b)


def test_row_max_is_max_and_sends_its_whole_gradient_to_one_entry():
    """_common.row_max: max's value (ties, -inf rows and all) and, under autodiff, the whole gradient
    on the one entry argmax picks -- never g / count(s == max), which is 0/0 when a compiler rounds
    a recomputed s differently (tests/test_jax_jit.py)."""
    torch = pytest.importorskip("torch", reason="torch autograd checks the gradient")
    import array_api_compat.torch as txp

    from synth_ref import _common as c

    s = np.array([[1.0, 3.0, 3.0, -2.0], [-np.inf] * 4, [0.5, -1.0, 2.0, 2.0]])
    assert np.array_equal(c.row_max(np, s, 1), np.max(s, axis=1, keepdims=True))
    t = torch.tensor(s, requires_grad=True)
    c.row_max(txp, t, 1).sum().backward()
    assert torch.equal(t.grad, torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]],
                                            dtype=t.dtype))


@pytest.mark.parametrize("taps", ["single", "nearly_equal"])
def test_conv_kernel_gradients_in_float16_match_float64(taps):
    """AFT-conv's kernel normalisation under autodiff in float16, torch and jax.  Its derivative in
    the variance, (var + 1e-5)^(-3/2) / 2, is 1.6e7 at var = 0, past float16's 65504: computed in
    float16, jax gave NaN for conv_w with a single-tap kernel (w - mean = 0 exactly: inf * 0) and
    with nearly equal taps (torch's order of operations stayed finite).  The spec normalises in
    float32 for 16-bit parameters."""
    import jax
    import torch

    s = 1 if taps == "single" else 3
    spec = sr.Spec("aft_conv", d_model=4, n_heads=2, max_len=5, kernel_size=s)
    rng = np.random.default_rng(24)
    p = {n: a.astype(np.float16).astype(np.float64) for n, a in random_params(spec, rng).items()}
    p["conv_w"] = np.broadcast_to(np.array([0.5, 0.5 + 2 ** -9, 0.5])[:s], p["conv_w"].shape).copy()
    p["conv_gamma"] = np.ones_like(p["conv_gamma"])
    x = rng.standard_normal((2, 5, 4)).astype(np.float16).astype(np.float64)
    dy = rng.standard_normal(x.shape).astype(np.float16).astype(np.float64)
    mask = np.ones((2, 5), dtype=bool)
    gold = _torch_grads(spec, p, x, dy, True, mask, torch.float64)[2]["conv_w"]
    got_torch = _torch_grads(spec, p, x, dy, True, mask, torch.float16)[2]["conv_w"]
    jp = {n: jax.numpy.asarray(a, jax.numpy.float16) for n, a in p.items()}
    _, pull = jax.vjp(lambda q: sr.apply(spec, q, jax.numpy.asarray(x, jax.numpy.float16), causal=True), jp)
    got_jax = np.asarray(pull(jax.numpy.asarray(dy, jax.numpy.float16))[0]["conv_w"], np.float64)
    for got in (got_torch, got_jax):
        assert np.all(np.isfinite(got)), got
        assert_allclose(got, gold, rtol=0.05, atol=0.05 * np.max(np.abs(gold)) + 1e-3)
