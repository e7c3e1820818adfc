"""Shared by the tests/test_jax_*.py files: the specs they cover, inputs, and the one tolerance table.

Not a test module itself (no ``test_`` prefix).  Gold is always the NumPy float64 reference.
"""

from __future__ import annotations

import numpy as np

import synth_ref as sr

# One Spec per variant and option value, small enough that the whole sweep compiles in seconds.
# max_len=12 with d_model=16: l x l arrays are recognisable in HLO (12 is no other size here).
D, L = 16, 12
CASES = {
    "dot_product": sr.Spec("dot_product", d_model=D, n_heads=2, max_len=L),
    "dense": sr.Spec("dense", d_model=D, n_heads=2, max_len=L),
    "random": sr.Spec("random", d_model=D, n_heads=2, max_len=L),
    "factorized_random": sr.Spec("factorized_random", d_model=D, n_heads=2, max_len=L, k=3),
    "factorized_dense-outer": sr.Spec("factorized_dense", d_model=D, n_heads=2, max_len=L, factors=(3, 4)),
    "factorized_dense-tile": sr.Spec("factorized_dense", d_model=D, n_heads=2, max_len=L, factors=(2, 6),
                                     tiling="tile"),
    "mixture": sr.Spec("mixture", d_model=D, n_heads=2, max_len=L, k=2,
                       components=("dot_product", "dense", "random", "factorized_random",
                                   "factorized_dense")),
    "mixture-flash": sr.Spec("mixture", d_model=D, n_heads=2, max_len=L, k=2,
                             components=("dot_product", "dense", "random", "factorized_random")),
    "aft_full": sr.Spec("aft_full", d_model=D, max_len=L),
    "aft_full-rank": sr.Spec("aft_full", d_model=D, max_len=L, pos_rank=3),
    "aft_simple": sr.Spec("aft_simple", d_model=D, max_len=L),
    "aft_local": sr.Spec("aft_local", d_model=D, max_len=L, window=3),
    "aft_local-rank": sr.Spec("aft_local", d_model=D, max_len=L, window=2, pos_rank=2),
    "aft_conv": sr.Spec("aft_conv", d_model=D, n_heads=2, max_len=L, kernel_size=3),
    "aft_conv-2d": sr.Spec("aft_conv", d_model=D, n_heads=4, max_len=L, kernel_size=3, spatial_dims=2),
}

# Tolerances, all in one place.  Error measure: max |y - gold| / max(|gold|), gold the NumPy float64
# reference on the same inputs.  Why these numbers: each layer is 3 to 5 chained matmuls over d=16
# or l=12 terms plus an exp/normalise; a rounding of eps per operation compounds to a few tens of eps.
#   float64: eps 2.2e-16, only summation order differs        -> 1e-12
#   float32: eps 1.2e-7  (XLA CPU matmuls are true float32)   -> 2e-5
#   float16: eps 9.8e-4                                        -> 2e-2
#   bfloat16: eps 7.8e-3 (8 mantissa bits)                     -> 8e-2
TOL = {"float64": 1e-12, "float32": 2e-5, "float16": 2e-2, "bfloat16": 8e-2}
# Gradients go through one more chain of products (the transposed pass): twice the forward budget.
GRAD_TOL = {k: 2 * v for k, v in TOL.items()}


def f64(a) -> np.ndarray:
    """Any array (JAX bfloat16 included) as float64 NumPy."""
    return np.asarray(a).astype(np.float64)


def rel_err(got, gold, scale=None) -> float:
    """max |got - gold| / scale, scale defaulting to max |gold|.  Gradients pass one scale for all
    arrays of a layer (the largest gradient entry): some entries are exactly 0 in exact arithmetic
    (e.g. d b_k of dot-product attention, softmax being shift-invariant), and an error relative to
    their own size would be rounding noise over zero."""
    got, gold = f64(got), f64(gold)
    assert got.shape == gold.shape, (got.shape, gold.shape)
    assert np.all(np.isfinite(got)), "non-finite values"
    scale = np.max(np.abs(gold)) if scale is None else scale
    return float(np.max(np.abs(got - gold)) / max(scale, 1e-30))


def grad_errors(got_dx, got_dp, gold_dx, gold_dp) -> dict:
    """{name: error} for dx and every parameter gradient, on the common scale described above."""
    scale = max([np.max(np.abs(gold_dx))] + [np.max(np.abs(g)) for g in gold_dp.values()])
    out = {"x": rel_err(got_dx, gold_dx, scale)}
    out.update({n: rel_err(got_dp[n], g, scale) for n, g in gold_dp.items()})
    return out


def inputs(spec, batch=2, length=None, seed=0, mask=False):
    """(params float64, x float64, key_padding_mask or None) as NumPy; the mask pads a tail of the
    second batch element and leaves one element fully padded when batch >= 3."""
    rng = np.random.default_rng(seed)
    params = spec.init(seed=seed)
    # Nonzero biases and position terms, so that every parameter is exercised (init sets many to 0).
    for name, a in params.items():
        if np.all(a == 0):
            params[name] = 0.3 * rng.standard_normal(a.shape)
    two_d = spec.variant == "aft_conv" and spec.spatial_dims == 2
    if two_d:
        x = rng.standard_normal((batch, 3, 4, spec.d_model))
    else:
        length = spec.max_len if length is None else length
        x = rng.standard_normal((batch, length, spec.d_model))
    kpm = None
    if mask and not two_d:
        kpm = np.ones((batch, x.shape[1]), dtype=bool)
        if batch >= 2:
            kpm[1, x.shape[1] // 2:] = False
        if batch >= 3:
            kpm[2, :] = False
    return params, x, kpm


def options(spec):
    """(causal, masked) pairs the spec accepts."""
    if spec.variant == "aft_conv" and spec.spatial_dims == 2:
        return [(False, False)]
    return [(False, False), (True, False), (False, True), (True, True)]


def torch_gold_vjp(spec, params, x, dy, causal, kpm):
    """Gradient gold from another autodiff system: torch float64 autograd through the reference.
    Returns (dx, {name: dparam}) as float64 NumPy."""
    import torch

    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tm = None if kpm is None else torch.tensor(kpm)
    y = sr.apply(spec, tp, tx, causal=causal, key_padding_mask=tm)
    (y * torch.tensor(dy, dtype=torch.float64)).sum().backward()
    return tx.grad.numpy(), {k: v.grad.numpy() for k, v in tp.items()}
