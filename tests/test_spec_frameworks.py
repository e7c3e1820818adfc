"""Framework-specific checks: eager JAX, gradients under torch autograd and jax.grad, and dot_product
against torch's scaled_dot_product_attention.

JAX float64 is switched on with the ``jax.enable_x64(True)`` context around each JAX computation, so
the setting never outlives the test.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose
from spec_cases import SOFTMAX, random_params
from spec_tolerances import F64, FINITE_DIFF, GRAD

import synth_ref as sr

torch = pytest.importorskip("torch", reason="torch is not installed")
jax = pytest.importorskip("jax", reason="jax is not installed")
jnp = jax.numpy


def x64():
    return jax.enable_x64(True)


# Every variant and the options that change the math; d = 4 and l = 4 everywhere so that eager JAX
# reuses its per-primitive compiles from one spec to the next.
SPECS = {
    "dot_product": sr.Spec("dot_product", d_model=4, n_heads=2, max_len=5),
    "dense": sr.Spec("dense", d_model=4, n_heads=2, max_len=5),
    "random": sr.Spec("random", d_model=4, n_heads=2, max_len=5),
    "factorized_dense-outer": sr.Spec("factorized_dense", d_model=4, n_heads=2, max_len=4),
    "factorized_dense-tile": sr.Spec("factorized_dense", d_model=4, n_heads=2, max_len=4, tiling="tile"),
    "factorized_random": sr.Spec("factorized_random", d_model=4, n_heads=2, max_len=5, k=2),
    "mixture": sr.Spec("mixture", d_model=4, n_heads=2, max_len=4, k=2, components=SOFTMAX),
    "aft_full": sr.Spec("aft_full", d_model=4, max_len=5),
    "aft_full-rank": sr.Spec("aft_full", d_model=4, max_len=5, pos_rank=2),
    "aft_simple": sr.Spec("aft_simple", d_model=4, max_len=5),
    "aft_local": sr.Spec("aft_local", d_model=4, max_len=5, window=2),
    "aft_conv-odd": sr.Spec("aft_conv", d_model=4, n_heads=2, max_len=5, kernel_size=3),
    "aft_conv-even": sr.Spec("aft_conv", d_model=4, n_heads=2, max_len=5, kernel_size=2),
    "aft_conv-2d": sr.Spec("aft_conv", d_model=4, n_heads=2, max_len=6, kernel_size=3, spatial_dims=2),
}


def _inputs(name, seed=30):
    spec = SPECS[name]
    rng = np.random.default_rng(seed)
    p = random_params(spec, rng)
    if spec.spatial_dims == 2:
        return spec, p, rng.standard_normal((2, 2, 3, 4)), [(False, None)]
    x = rng.standard_normal((2, 4, 4))
    mask = np.array([[True, False, True, True], [False] * 4])  # batch 1: nothing real
    # (causal, mask) settings, the first the richest.  JAX compiles each (about a second or more on
    # a loaded 2-core machine), so JAX takes only the first; the other paths run under jax.jit in the
    # namespace-parametrized tests.
    if name == "aft_conv-even":  # an even kernel exists only causally
        return spec, p, x, [(True, mask), (True, None)]
    return spec, p, x, [(True, mask), (False, None)]


@pytest.mark.parametrize("name", SPECS)
def test_eager_jax_matches_numpy(name):
    """JAX without jit (the rest of the suite runs JAX under jax.jit)."""
    spec, p, x, settings = _inputs(name)
    for causal, mask in settings[:1]:
        want = sr.apply(spec, p, x, causal=causal, key_padding_mask=mask)
        want_w = sr.attention_weights(spec, p, x, causal=causal, key_padding_mask=mask)
        with x64():
            pj = {n: jnp.asarray(a) for n, a in p.items()}
            mj = None if mask is None else jnp.asarray(mask)
            got = sr.apply(spec, pj, jnp.asarray(x), causal=causal, key_padding_mask=mj)
            got_w = sr.attention_weights(spec, p, jnp.asarray(x), causal=causal, key_padding_mask=mj)
            assert got.dtype == jnp.float64 and isinstance(got, jax.Array)
        assert_allclose(np.asarray(got), want, *F64)
        assert_allclose(np.asarray(got_w), want_w, *F64)


def _loss_torch(spec, p, x, dy, causal, mask):
    pt = {n: torch.tensor(a, requires_grad=True) for n, a in p.items()}
    xt = torch.tensor(x, requires_grad=True)
    mt = None if mask is None else torch.tensor(mask)
    y = sr.apply(spec, pt, xt, causal=causal, key_padding_mask=mt)
    (y * torch.tensor(dy)).sum().backward()
    return xt.grad.numpy(), {n: t.grad.numpy() for n, t in pt.items()}


def _loss_jax(spec, p, x, dy, causal, mask):
    with x64():
        def loss(params, xx):
            m = None if mask is None else jnp.asarray(mask)
            return jnp.sum(sr.apply(spec, params, xx, causal=causal, key_padding_mask=m) * jnp.asarray(dy))

        gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))({n: jnp.asarray(a) for n, a in p.items()},
                                                          jnp.asarray(x))
        return np.asarray(gx), {n: np.asarray(g) for n, g in gp.items()}


@pytest.mark.parametrize("name", SPECS)
def test_gradients_torch_equal_jax_and_finite_differences(name):
    spec, p, x, settings = _inputs(name, seed=31)
    rng = np.random.default_rng(32)
    dy = rng.standard_normal(x.shape)
    for i, (causal, mask) in enumerate(settings):
        tx, tp = _loss_torch(spec, p, x, dy, causal, mask)
        assert np.all(np.isfinite(tx)) and all(np.all(np.isfinite(g)) for g in tp.values())
        if i == 0:
            jx, jp = _loss_jax(spec, p, x, dy, causal, mask)
            assert_allclose(jx, tx, *GRAD, err_msg="d/dx")
            for n in p:
                assert_allclose(jp[n], tp[n], *GRAD, err_msg=f"d/d{n}")
        # both against a central finite difference of the NumPy float64 spec along a random direction
        vx = rng.standard_normal(x.shape)
        vp = {n: rng.standard_normal(a.shape) for n, a in p.items()}
        eps = 1e-6

        def f(s, causal=causal, mask=mask, vx=vx, vp=vp):
            ps = {n: a + s * vp[n] for n, a in p.items()}
            return float(np.sum(sr.apply(spec, ps, x + s * vx, causal=causal, key_padding_mask=mask) * dy))

        fd = (f(eps) - f(-eps)) / (2 * eps)
        slope = float(np.sum(tx * vx) + sum(np.sum(tp[n] * vp[n]) for n in p))
        assert_allclose(slope, fd, *FINITE_DIFF)


def _sdpa_reference(p, x, h, causal, mask):
    import torch.nn.functional as F

    xt = torch.tensor(x)
    B, l, d = x.shape

    def heads(t):  # (B, l, d) -> (B, h, l, e)
        return t.reshape(B, l, h, d // h).transpose(1, 2)

    q = heads(xt @ torch.tensor(p["w_q"]) + torch.tensor(p["b_q"]))
    k = heads(xt @ torch.tensor(p["w_k"]) + torch.tensor(p["b_k"]))
    v = heads(xt @ torch.tensor(p["w_v"]) + torch.tensor(p["b_v"]))
    allowed = None
    if mask is not None:
        allowed = torch.tensor(mask)[:, None, None, :]
    if causal and allowed is not None:
        allowed = allowed & torch.ones(l, l, dtype=torch.bool).tril()
        causal = False  # SDPA takes either is_causal or an explicit mask, not both
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=causal)
    o = o.transpose(1, 2).reshape(B, l, d)
    return (o @ torch.tensor(p["w_o"]) + torch.tensor(p["b_o"])).numpy()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_dot_product_equals_torch_sdpa(causal, masked):
    spec = sr.Spec("dot_product", d_model=8, n_heads=2, max_len=6)
    rng = np.random.default_rng(33)
    p = random_params(spec, rng)
    x = rng.standard_normal((3, 6, 8))
    mask = None
    if masked:  # ragged, key 0 padded (an empty causal row 0), and one element with no real token
        mask = np.array([[True] * 4 + [False] * 2, [False] + [True] * 5, [False] * 6])
    want = _sdpa_reference(p, x, 2, causal, mask)
    got = sr.apply(spec, {n: torch.tensor(a) for n, a in p.items()}, torch.tensor(x), causal=causal,
                   key_padding_mask=None if mask is None else torch.tensor(mask))
    assert_allclose(got.numpy(), want, *F64)


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_gate_slope_at_zero_query(engine):
    """Q = 0 exactly (w_q = b_q = 0): d y / d b_q must use sigmoid'(0) = 1/4, as a finite difference
    of the smooth sigmoid says (an exp(-|q|) formulation gives autodiff a kink there)."""
    spec = sr.Spec("aft_simple", d_model=3, max_len=4)
    rng = np.random.default_rng(34)
    p = random_params(spec, rng)
    p["w_q"], p["b_q"] = np.zeros((3, 3)), np.zeros(3)
    x = rng.standard_normal((2, 4, 3))
    dy = rng.standard_normal(x.shape)
    _, grads = (_loss_torch if engine == "torch" else _loss_jax)(spec, p, x, dy, True, None)
    eps = 1e-6
    fd = np.zeros(3)
    for c in range(3):
        hi, lo = dict(p, b_q=np.eye(3)[c] * eps), dict(p, b_q=-np.eye(3)[c] * eps)
        diff = sr.apply(spec, hi, x, causal=True) - sr.apply(spec, lo, x, causal=True)
        fd[c] = np.sum(diff * dy) / (2 * eps)
    assert_allclose(grads["b_q"], fd, *FINITE_DIFF)
