"""Properties of the spec that hold for any parameters, under every namespace.

causality, padding, normalisation of the weights, and the identities between variants the papers
imply (aft_local with a wide window is aft_full; aft_conv with gamma = beta = 0 is aft_simple;
factorized_random is random with R = R1 R2^T; a mixture with one dominant weight is that
component; a shorter input uses the leading slice of every length-indexed parameter).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from spec_cases import SOFTMAX, random_params, run, run_both
from spec_tolerances import DOMINANT, F64

import synth_ref as sr

# One spec per variant/option family that has a sequence axis (2-D aft_conv has neither a causal
# order nor a padding mask).  Two heads wherever heads exist, so head mix-ups would show.
SEQ_SPECS = {
    "dot_product": sr.Spec("dot_product", d_model=4, n_heads=2, max_len=6),
    "dense": sr.Spec("dense", d_model=4, n_heads=2, max_len=6),
    "random": sr.Spec("random", d_model=4, n_heads=2, max_len=6),
    "factorized_random": sr.Spec("factorized_random", d_model=4, n_heads=2, max_len=6, k=2),
    "factorized_dense-outer": sr.Spec("factorized_dense", d_model=4, n_heads=2, max_len=6),
    "factorized_dense-tile": sr.Spec("factorized_dense", d_model=4, n_heads=2, max_len=6, tiling="tile"),
    "mixture": sr.Spec("mixture", d_model=4, n_heads=2, max_len=6, k=2, components=SOFTMAX),
    "aft_full": sr.Spec("aft_full", d_model=3, max_len=6),
    "aft_full-rank": sr.Spec("aft_full", d_model=3, max_len=6, pos_rank=2),
    "aft_simple": sr.Spec("aft_simple", d_model=3, max_len=6),
    "aft_local": sr.Spec("aft_local", d_model=3, max_len=6, window=2),
    "aft_conv-odd": sr.Spec("aft_conv", d_model=4, n_heads=2, max_len=6, kernel_size=3),
    "aft_conv-even": sr.Spec("aft_conv", d_model=4, n_heads=2, max_len=6, kernel_size=2),
}
EXACT = (1e-12, 1e-12)  # the same arithmetic on the same numbers: only reduction order can differ


def _setup(name, seed=0, B=2, l=5):
    spec = SEQ_SPECS[name]
    rng = np.random.default_rng(seed)
    return spec, random_params(spec, rng), rng.standard_normal((B, l, spec.d_model)), rng


def _causal_only(name):
    return name == "aft_conv-even"  # an even kernel has no centre: only its causal form exists


@pytest.mark.parametrize("name", SEQ_SPECS)
def test_causal_output_ignores_the_future(ns, name):
    spec, p, x, rng = _setup(name)
    l = x.shape[1]
    y = run(ns, spec, p, x, causal=True)
    for t in range(l - 1):
        x2 = x.copy()
        x2[:, t + 1:] = rng.standard_normal(x2[:, t + 1:].shape) * 3
        y2 = run(ns, spec, p, x2, causal=True)
        assert_allclose(y2[:, :t + 1], y[:, :t + 1], *EXACT, err_msg=f"y_{t} saw x_>{t}")
        # control: the change does reach later outputs, and without the mask also y_t
        assert not np.allclose(y2[:, t + 1:], y[:, t + 1:])
    if not _causal_only(name) and ns.name == "numpy":  # the control's power does not depend on ns
        x2 = x.copy()
        x2[:, 1:] += 1.0
        assert not np.allclose(run(ns, spec, p, x2)[:, 0], run(ns, spec, p, x)[:, 0])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", SEQ_SPECS)
def test_padding_is_ignored_at_real_tokens(ns, name, causal):
    if not causal and _causal_only(name):
        pytest.skip("an even aft_conv kernel is defined only with causal=True")
    spec, p, x, rng = _setup(name)
    mask = np.array([[True, False, True, True, False], [False, True, True, False, True]])
    y = run(ns, spec, p, x, causal=causal, mask=mask)
    x2 = np.where(mask[:, :, None], x, rng.standard_normal(x.shape) * 5)
    y2 = run(ns, spec, p, x2, causal=causal, mask=mask)
    assert_allclose(y2[mask], y[mask], *EXACT)
    if ns.name == "numpy":  # control (namespace-independent): without the mask padding does count
        unmasked = run(ns, spec, p, x2, causal=causal), run(ns, spec, p, x, causal=causal)
        assert not np.allclose(unmasked[0][mask], unmasked[1][mask])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", SEQ_SPECS)
def test_weight_rows_sum_to_one_or_zero(ns, name, causal):
    if not causal and _causal_only(name):
        pytest.skip("an even aft_conv kernel is defined only with causal=True")
    spec, p, x, _ = _setup(name, B=3, l=4)
    # batch 0: everything real; batch 1: key 0 padded (so under causal row 0 has no key at all);
    # batch 2: nothing real at all.
    mask = np.array([[True] * 4, [False, True, True, True], [False] * 4])
    y, w = run_both(ns, spec, p, x, causal=causal, mask=mask)
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    sums = w.sum(axis=-1)
    empty = np.zeros(sums.shape, dtype=bool)
    empty[2] = True
    if causal:
        empty[1, :, 0] = True
    assert_allclose(sums[~empty], 1.0, *EXACT)
    assert np.all(w[empty] == 0)
    # masked keys and (causal) future keys get exactly 0
    assert np.all(w[1, :, :, 0] == 0)
    if causal:
        assert np.all(w[0][..., np.triu(np.ones((4, 4), dtype=bool), 1)] == 0)
    assert_allclose(y[2], np.broadcast_to(p["b_o"], y[2].shape), *EXACT)  # no key: y = b_o


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("pos_rank", [None, 2])
def test_aft_local_wide_window_is_aft_full(ns, causal, pos_rank):
    full = sr.Spec("aft_full", d_model=3, max_len=6, pos_rank=pos_rank)
    p = random_params(full, np.random.default_rng(3))
    x = np.random.default_rng(4).standard_normal((2, 5, 3))
    mask = np.array([[True, True, False, True, True], [True] * 5])
    want = run(ns, full, p, x, causal=causal, mask=mask)
    for window in (5, 6, 9):  # window >= l
        local = sr.Spec("aft_local", d_model=3, max_len=6, pos_rank=pos_rank, window=window)
        assert_allclose(run(ns, local, p, x, causal=causal, mask=mask), want, *EXACT)
    narrow = sr.Spec("aft_local", d_model=3, max_len=6, pos_rank=pos_rank, window=4)
    assert not np.allclose(run(ns, narrow, p, x, causal=causal, mask=mask), want)


@pytest.mark.parametrize("kernel_size, causal, heads", [
    (3, False, 2), (3, True, 2), (2, True, 1), (5, False, 1), (4, True, 2)])
def test_aft_conv_with_zero_gamma_beta_is_aft_simple(ns, kernel_size, causal, heads):
    conv = sr.Spec("aft_conv", d_model=4, n_heads=heads, max_len=6, kernel_size=kernel_size)
    p = random_params(conv, np.random.default_rng(5))
    x = np.random.default_rng(6).standard_normal((2, 6, 4))
    mask = np.array([[True, False, True, True, True, True], [True] * 6])
    simple = sr.Spec("aft_simple", d_model=4, max_len=6)
    ps = {n: p[n] for n in simple.param_shapes()}
    want = run(ns, simple, ps, x, causal=causal, mask=mask)
    zero = dict(p, conv_gamma=np.zeros(heads), conv_beta=np.zeros(heads))
    assert_allclose(run(ns, conv, zero, x, causal=causal, mask=mask), want, *EXACT)
    assert not np.allclose(run(ns, conv, p, x, causal=causal, mask=mask), want)


def test_aft_conv_2d_with_zero_gamma_beta_is_aft_simple(ns):
    conv = sr.Spec("aft_conv", d_model=4, n_heads=2, max_len=12, kernel_size=3, spatial_dims=2)
    p = random_params(conv, np.random.default_rng(7))
    x = np.random.default_rng(8).standard_normal((2, 3, 4, 4))
    simple = sr.Spec("aft_simple", d_model=4, max_len=12)
    want = run(ns, simple, {n: p[n] for n in simple.param_shapes()}, x.reshape(2, 12, 4))
    zero = dict(p, conv_gamma=np.zeros(2), conv_beta=np.zeros(2))
    assert_allclose(run(ns, conv, zero, x), want.reshape(x.shape), *EXACT)
    assert not np.allclose(run(ns, conv, p, x), want.reshape(x.shape))


@pytest.mark.parametrize("causal", [False, True])
def test_factorized_random_is_random_with_r1_r2t(ns, causal):
    fr = sr.Spec("factorized_random", d_model=4, n_heads=2, max_len=6, k=3)
    p = random_params(fr, np.random.default_rng(9))
    r = np.einsum("hik,hjk->hij", p["r_1"], p["r_2"])  # R[h] = R1[h] R2[h]^T, contracted over k
    rnd = sr.Spec("random", d_model=4, n_heads=2, max_len=6)
    pr = dict({n: p[n] for n in ("w_v", "b_v", "w_o", "b_o")}, r=r)
    x = np.random.default_rng(10).standard_normal((2, 4, 4))  # l = 4 < L = 6: both slice
    mask = np.array([[True, True, False, True], [False, True, True, True]])
    assert_allclose(run(ns, fr, p, x, causal=causal, mask=mask),
                    run(ns, rnd, pr, x, causal=causal, mask=mask), *F64)
    assert_allclose(run(ns, fr, p, x, weights=True), run(ns, rnd, pr, x, weights=True), *F64)


@pytest.mark.parametrize("which", range(3))
def test_mixture_with_a_dominant_weight_tends_to_that_component(ns, which):
    comps = ("dense", "factorized_random", "dot_product")
    mix = sr.Spec("mixture", d_model=4, n_heads=2, max_len=5, k=2, components=comps)
    p = random_params(mix, np.random.default_rng(11))
    x = np.random.default_rng(12).standard_normal((2, 5, 4))
    comp = sr.Spec(comps[which], d_model=4, n_heads=2, max_len=5, **({"k": 2} if which == 1 else {}))
    pc = {n: p[n] if n in ("w_v", "b_v", "w_o", "b_o") else p[f"{comps[which]}.{n}"]
          for n in comp.param_shapes()}
    want = run(ns, comp, pc, x, causal=True)
    errors = []
    for m in (2.0, 6.0, 12.0, 40.0):
        logits = np.zeros(3)
        logits[which] = m
        got = run(ns, mix, dict(p, mix_logits=logits), x, causal=True)
        errors.append(np.abs(got - want).max())
    assert all(a > b for a, b in zip(errors[:-2], errors[1:-1], strict=True)), errors  # shrinks with m
    assert errors[0] > 1e-3, errors  # and was not already 0: the other components do contribute
    assert_allclose(got, want, *DOMINANT)


def test_random_weights_are_shared_by_the_batch(ns):
    for spec in (SEQ_SPECS["random"], SEQ_SPECS["factorized_random"]):
        p = random_params(spec, np.random.default_rng(13))
        w = run(ns, spec, p, np.random.default_rng(14).standard_normal((3, 4, 4)), weights=True)
        assert_allclose(w[1], w[0], *EXACT)
        assert_allclose(w[2], w[0], *EXACT)


def _sliced(spec, p, l):
    """The same layer built for max_len = l, with every length-indexed array cut to its first l."""
    cut = {"w_2": lambda a: a[..., :l], "b_2": lambda a: a[..., :l], "r": lambda a: a[:, :l, :l],
           "r_1": lambda a: a[:, :l], "r_2": lambda a: a[:, :l], "pos_bias": lambda a: a[:l, :l],
           "pos_u": lambda a: a[:l], "pos_v": lambda a: a[:l]}
    opts = spec.options()
    if spec.variant == "factorized_dense":  # C[:l] with l = a' b is the outer product of A[:a'] and B
        a, b = spec.factors
        assert l % b == 0
        opts["factors"] = (l // b, b)
        cut.update(w_a=lambda t: t[..., :l // b], b_a=lambda t: t[..., :l // b])
    small = sr.Spec(spec.variant, d_model=spec.d_model, n_heads=spec.n_heads, max_len=l, **opts)
    return small, {n: cut.get(n, lambda a: a)(a) for n, a in p.items()}


@pytest.mark.parametrize("name, l", [
    ("dense", 4), ("random", 3), ("factorized_random", 5), ("aft_full", 4), ("aft_full-rank", 2),
    ("aft_local", 4), ("factorized_dense-outer", 4)])  # factors (3, 2) below: C[:4] = A[:2] x B
def test_shorter_input_uses_the_leading_slice(ns, name, l):
    spec = SEQ_SPECS[name]
    if name == "factorized_dense-outer":
        spec = sr.Spec("factorized_dense", d_model=4, n_heads=2, max_len=6, factors=(3, 2))
    p = random_params(spec, np.random.default_rng(15))
    x = np.random.default_rng(16).standard_normal((2, l, spec.d_model))
    small, ps = _sliced(spec, p, l)
    for causal in (False, True):
        assert_allclose(run(ns, spec, p, x, causal=causal), run(ns, small, ps, x, causal=causal), *EXACT)
    # control: the trailing slice gives other numbers
    tail = {n: np.flip(a, axis=tuple(range(a.ndim))) if n in ("r", "pos_bias", "w_2", "b_2", "r_1")
            else a for n, a in p.items()}
    if tail.keys() & {"r", "pos_bias", "w_2", "r_1"}:
        assert not np.allclose(run(ns, spec, tail, x), run(ns, small, ps, x))


@pytest.mark.parametrize("factors", [(2, 2), (2, 4), (4, 6), (2, 3), (3, 4)])
def test_tile_repeats_with_period_lcm_and_outer_does_not(ns, factors):
    # tile: C[m] = A[m mod a] B[m mod b] depends on m only through m mod lcm(a, b).
    a, b = factors
    L = a * b
    period = a * b // math.gcd(a, b)
    tile = sr.Spec("factorized_dense", d_model=2, max_len=L, factors=factors, tiling="tile")
    outer = sr.Spec("factorized_dense", d_model=2, max_len=L, factors=factors)
    p = random_params(tile, np.random.default_rng(17))
    x = np.random.default_rng(18).standard_normal((1, L, 2))
    wt = run(ns, tile, p, x, weights=True)
    wo = run(ns, outer, p, x, weights=True)
    if period < L:
        assert_allclose(wt[..., period:], wt[..., :L - period], *EXACT)
        assert not np.allclose(wo[..., period:], wo[..., :L - period])
        assert not np.allclose(wt, wo)
    else:  # gcd = 1: the Chinese remainder theorem makes tile a permutation of outer's pairs
        perm = [(m % a) * b + (m % b) for m in range(L)]
        assert_allclose(wt, wo[..., perm], *EXACT)
