"""Shared by the tests of the hand-derived vjp (test_cupy_vjp.py), the CPU-emulated kernels
(test_cupy_kernels.py) and the GPU run (test_cupy_gpu.py): the cases, the torch-autograd gold and the
tolerances, in one place."""

from __future__ import annotations

import numpy as np
import pytest

import synth_ref as sr
from synth_ref.backends import cupy_impl

torch = pytest.importorskip("torch", reason="torch autograd of the reference is the gold for the vjp")

# Tolerances, in one place.  float64: both sides compute the same sums in a different order, so
# they agree to a few hundred ulps of the largest entry; 1e-10 relative leaves room and still
# catches any wrong term (a wrong term is O(1) relative).  float32 with logits spread over +-80:
# exp() arguments near 80 carry absolute errors of ~80 * 6e-8, so 1e-3 relative to the float64
# result (of the same hand-derived code) is what float32 can promise there, measured against the
# largest gradient entry of the layer: a saturated softmax has gradients of 1e-11 that float32
# cannot resolve (dS = P (dP - rowsum) cancels), and those are compared in absolute terms.
RTOL64 = 1e-10
ATOL64 = 1e-13  # for gradients that are exactly 0 in exact arithmetic (padded rows of r, ...)
RTOL32_SPREAD = 1e-3

# (variant, Spec keyword arguments): every variant and every option value worth a distinct path.
CASES = [
    ("dot_product", dict(n_heads=2)),
    ("dense", dict(n_heads=2)),
    ("random", dict(n_heads=2)),
    ("factorized_random", dict(n_heads=2, k=2)),
    ("factorized_dense", dict(n_heads=2, factors=(2, 4))),  # gcd(a, b) > 1
    ("factorized_dense", dict(n_heads=2, factors=(2, 4), tiling="tile")),
    ("factorized_dense", dict(n_heads=1, factors=(8, 1), tiling="tile")),  # l < a
    ("mixture", dict(n_heads=2, components=("dot_product", "random"))),
    ("mixture", dict(n_heads=2, components=("dense", "factorized_dense", "factorized_random"),
                     k=3, factors=(4, 2), tiling="tile")),
    ("aft_full", dict()),
    ("aft_full", dict(pos_rank=2)),
    ("aft_simple", dict()),
    ("aft_local", dict(window=2)),
    ("aft_local", dict(window=3, pos_rank=2)),
    ("aft_conv", dict(n_heads=2, kernel_size=3)),
    ("aft_conv", dict(n_heads=2, kernel_size=1)),
]
CAUSAL_ONLY = [("aft_conv", dict(n_heads=2, kernel_size=4))]  # even kernels need causal
GRID = [("aft_conv", dict(n_heads=2, kernel_size=3, spatial_dims=2)),
        ("aft_conv", dict(n_heads=1, kernel_size=5, spatial_dims=2))]

D, L, LEN, B = 4, 8, 5, 3


def random_params(spec, seed):
    """Every parameter drawn at random (biases, position biases, mixture logits and conv
    gamma/beta too: init leaves some at 0, which would hide their terms)."""
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s) * (0.5 if n.split(".")[-1].startswith("w_") else 1.0)
            for n, s in spec.param_shapes().items()}


def padding_mask(kind):
    """Key padding: batch 0 all real; batch 1 pads its first key (so, causal, row 0 sees nothing);
    batch 2 has no real key at all (every row fully masked)."""
    if kind is None:
        return None
    m = np.ones((B, LEN), dtype=bool)
    m[1, 0] = m[1, 3] = False
    m[2, :] = False
    return m


def torch_gold(spec, params, x, dy, causal, mask):
    names = list(params)
    leaves = [torch.tensor(x, requires_grad=True)]
    leaves += [torch.tensor(params[n], requires_grad=True) for n in names]
    kpm = None if mask is None else torch.tensor(mask)
    p = dict(zip(names, leaves[1:], strict=True))
    y = sr.apply(spec, p, leaves[0], causal=causal, key_padding_mask=kpm)
    grads = torch.autograd.grad(y, leaves, torch.tensor(dy), allow_unused=True)
    grads = [np.zeros(a.shape) if g is None else g.numpy() for a, g in zip(leaves, grads, strict=True)]
    return y.detach().numpy(), grads[0], dict(zip(names, grads[1:], strict=True))


def assert_close(got, gold, what, rtol=RTOL64, atol=ATOL64):
    assert got.shape == gold.shape, f"{what}: shape {got.shape} != {gold.shape}"
    err = float(np.max(np.abs(got - gold))) if got.size else 0.0
    scale = float(np.max(np.abs(gold))) if gold.size else 0.0
    assert err <= rtol * scale + atol, f"{what}: max error {err:.3e} vs max |gold| {scale:.3e}"


def ours(spec, params, x, dy, causal, mask, ops=None, to=np.asarray, back=np.asarray):
    """(y, dx, dparams) of the hand-derived passes, as NumPy; ``to``/``back`` move arrays to and from
    the namespace under test (NumPy itself by default), ``ops`` picks the fused steps."""
    p = {n: to(a) for n, a in params.items()}
    kw = dict(causal=causal, key_padding_mask=None if mask is None else to(mask), ops=ops)
    y = cupy_impl.apply(spec, p, to(x), **kw)
    dx, dp = cupy_impl.vjp(spec, p, to(x), to(dy), **kw)
    assert set(dp) == set(spec.param_shapes())
    return back(y), back(dx), {n: back(g) for n, g in dp.items()}


def check(variant, kw, causal, mask_kind, seed=0, shape=None, rtol=RTOL64, atol=ATOL64, **how):
    """Our y, dx and every parameter gradient against torch autograd of sr.apply in float64."""
    spec = sr.Spec(variant, d_model=D, max_len=L, **kw)
    params = random_params(spec, seed)
    rng = np.random.default_rng(seed + 100)
    xshape = shape or (B, LEN, D)
    x = rng.standard_normal(xshape)
    dy = rng.standard_normal(xshape)
    mask = padding_mask(mask_kind)
    gold = torch_gold(spec, params, x, dy, causal, mask)
    return _compare(ours(spec, params, x, dy, causal, mask, **how), gold, rtol, atol)


def _compare(got, gold, rtol, atol):
    (y, dx, dp), (y_gold, dx_gold, dp_gold) = got, gold
    assert_close(y, y_gold, "y", rtol, atol)
    assert_close(dx, dx_gold, "dx", rtol, atol)
    assert set(dp) == set(dp_gold)
    for n in dp:
        assert dp[n].dtype == dp_gold[n].dtype, n
        assert_close(dp[n], dp_gold[n], f"d{n}", rtol, atol)
    return dx, dp


def ids(cases):
    return [f"{v}-{'-'.join(f'{k}={val}' for k, val in kw.items())}" for v, kw in cases]


