"""Hand-worked tiny cases for every variant (l = 1, 2, 3), each under every namespace.

Parameters are chosen so the arithmetic can be done on paper: identity projections (V = Q = K = x),
logits that are logs of small integers (so softmax rows are small fractions), and sigmoid(0) = 1/2.
Every expected number is derived in the comment above it.  Each case is also run through the
brute-force loops (tests/brute.py), which checks those too.  Several cases are the defects of public
implementations (../shared/notes/peers.md): each says which wrong reading it would catch and what
that reading gives instead.
"""

from __future__ import annotations

import math

import brute
import numpy as np
import pytest
from numpy.testing import assert_allclose
from spec_cases import ln, random_params, run, simple_params
from spec_tolerances import HAND

import synth_ref as sr

LN2, LN3 = math.log(2.0), math.log(3.0)


def check(ns, spec, params, x, expected, *, causal=False, mask=None, weights=False):
    """The spec under ``ns`` and the brute-force loops both give ``expected``."""
    x = np.asarray(x, dtype=np.float64)
    got = run(ns, spec, params, x, causal=causal, mask=mask, weights=weights)
    fn = brute.attention_weights if weights else brute.apply
    ref = fn(spec, params, x, causal=causal, key_padding_mask=mask)
    expected = np.asarray(expected, dtype=np.float64)
    assert_allclose(ref, expected, *HAND, err_msg="brute-force reference disagrees with the hand numbers")
    assert_allclose(got, expected, *HAND)


# --- l = 1: one key, weight 1, for every variant --------------------------------------------------

def _l1_spec(v):
    extra = {
        "factorized_random": {"k": 2},
        "factorized_dense": {"factors": (1, 3)},
        "mixture": {"components": ("dense", "random")},
        "aft_local": {"window": 1},
        "aft_conv": {"kernel_size": 3},
    }.get(v, {})
    h = 1 if v in ("aft_full", "aft_simple", "aft_local") else 2
    return sr.Spec(v, d_model=4, n_heads=h, max_len=3, **extra)


@pytest.mark.parametrize("variant", sr.VARIANTS)
def test_length_one_is_the_single_value(ns, variant):
    # With l = 1 every softmax row has one allowed key, so P = [[1]] and y = V_0 w_o + b_o whatever
    # the logits are; AFT likewise has one key: Y_0 = sigmoid(Q_0) * V_0, y = Y_0 w_o + b_o.
    spec = _l1_spec(variant)
    p = random_params(spec, np.random.default_rng(1))
    x = np.random.default_rng(2).standard_normal((2, 1, 4))
    v = x @ p["w_v"] + p["b_v"]
    if variant.startswith("aft_"):
        q = x @ p["w_q"] + p["b_q"]
        v = v / (1.0 + np.exp(-q))
    check(ns, spec, p, x, v @ p["w_o"] + p["b_o"])
    check(ns, spec, p, x, v @ p["w_o"] + p["b_o"], causal=True)


# --- dot_product ------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_dot_product_l2_scaled_by_sqrt_head_dim(ns, causal):
    # d = 4, one head, e = 4, so logits are Q K^T / 2.  w_q = 0, b_q = (2 ln 3, 0, 0, 0): every Q is
    # (2 ln 3, 0, 0, 0); w_k = I: K = x.  S[t, t'] = 2 ln 3 * x[t', 0] / 2 = ln 3 * x[t', 0].
    # x[:, 0] = (0, 1): every row has logits (0, ln 3) -> P = (1/4, 3/4).
    # V = x, rows (0, 5, 0, 0) and (1, 1, 0, 0): y = 1/4 V_0 + 3/4 V_1 = (3/4, 5/4 + 3/4, 0, 0)
    # = (.75, 2, 0, 0) for both rows.  Causal: row 0 sees only key 0: y_0 = V_0 = (0, 5, 0, 0).
    # Without the 1/sqrt(e) the logits would be (0, 2 ln 3): P = (1/10, 9/10).
    spec = sr.Spec("dot_product", d_model=4, max_len=3)
    p = simple_params(spec, w_q=np.zeros((4, 4)), b_q=[2 * LN3, 0, 0, 0])
    x = [[[0, 5, 0, 0], [1, 1, 0, 0]]]
    y1 = [0.75, 2, 0, 0]
    y0 = [0, 5, 0, 0] if causal else y1
    check(ns, spec, p, x, [[y0, y1]], causal=causal)


def test_dot_product_l3(ns):
    # As above with x[:, 0] = (0, 1, 2): logits ln 3 * (0, 1, 2) -> P = (1, 3, 9) / 13 in every row.
    # V[:, 1] = (13, 0, 0) -> y[:, 1] = 1; y[:, 0] = (0 + 3 + 18) / 13 = 21/13.
    spec = sr.Spec("dot_product", d_model=4, max_len=3)
    p = simple_params(spec, w_q=np.zeros((4, 4)), b_q=[2 * LN3, 0, 0, 0])
    x = [[[0, 13, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0]]]
    check(ns, spec, p, x, [[[21 / 13, 1, 0, 0]] * 3])
    check(ns, spec, p, x, [[[[1 / 13, 3 / 13, 9 / 13]] * 3]], weights=True)


def test_dot_product_two_heads(ns):
    # d = 4, h = 2, e = 2: head 0 owns columns 0-1, head 1 columns 2-3; scale 1/sqrt(2).
    # w_q = 0; b_q = (sqrt2 ln3, 0, 0, 0): head 0's Q = (sqrt2 ln3, 0), head 1's Q = 0.  K = x.
    # Head 0: S[t, t'] = ln 3 * x[t', 0];  x[:, 0] = (0, 1) -> P = (1/4, 3/4).  Head 1: uniform (1/2, 1/2).
    # x rows (0, 4, 0, 2) and (1, 0, 8, 6):
    #   col 0: 3/4;  col 1: 1/4 * 4 = 1;  col 2: (0 + 8)/2 = 4;  col 3: (2 + 6)/2 = 4 (same for both rows).
    spec = sr.Spec("dot_product", d_model=4, n_heads=2, max_len=2)
    p = simple_params(spec, w_q=np.zeros((4, 4)), b_q=[math.sqrt(2) * LN3, 0, 0, 0])
    x = [[[0, 4, 0, 2], [1, 0, 8, 6]]]
    check(ns, spec, p, x, [[[0.75, 1, 4, 4]] * 2])


# --- dense --------------------------------------------------------------------------------------------

def _dense_l3():
    # d = e = 1, L = 3.  w_1 = 1, b_1 = 0: H = relu(x).  w_2 = (0, ln 2, ln 3), b_2 = 0: S[t, :] = H_t w_2.
    # x = (1, -1, 2): H = (1, 0, 2).
    #   row 0: S = (0, ln2, ln3)      -> exp (1, 2, 3) / 6  -> y_0 = (1 - 2 + 6)/6 = 5/6
    #   row 1: S = 0 (relu cut -1)     -> (1, 1, 1) / 3     -> y_1 = (1 - 1 + 2)/3 = 2/3
    #   row 2: S = (0, 2 ln2, 2 ln3)  -> (1, 4, 9) / 14    -> y_2 = (1 - 4 + 18)/14 = 15/14
    # Without the relu row 1 would be (1, 1/2, 1/3) / (11/6): y_1 = (6 - 3 + 4)/11 = 7/11.
    spec = sr.Spec("dense", d_model=1, max_len=3)
    p = simple_params(spec, w_1=[[[1]]], w_2=[[[0, LN2, LN3]]])
    return spec, p, [[[1], [-1], [2]]]


def test_dense_l3(ns):
    spec, p, x = _dense_l3()
    check(ns, spec, p, x, [[[5 / 6], [2 / 3], [15 / 14]]])


def test_dense_l2_slices_the_first_l_logits(ns):
    # The same layer at l = 2 < L: logits are the first two of each row, (H_t * 0, H_t * ln 2).
    #   row 0: (0, ln2) -> (1/3, 2/3) -> y_0 = (1 - 2)/3 = -1/3;   row 1: uniform -> y_1 = 0.
    spec, p, x = _dense_l3()
    check(ns, spec, p, [x[0][:2]], [[[-1 / 3], [0]]])


def test_dense_bias_and_no_scaling(ns):
    # d = 4, e = 4, w_2 = 0, b_2 = (ln 3, 0): every row's logits are (ln 3, 0) -> P = (3/4, 1/4).
    # Not scaled: 1/sqrt(e) = 1/2 would give (sqrt3, 1)/(sqrt3 + 1) instead.
    # x[:, 2] = (4, 8): y[:, 2] = 3 + 2 = 5.
    spec = sr.Spec("dense", d_model=4, max_len=2)
    p = simple_params(spec, b_2=[[LN3, 0]])
    x = [[[0, 0, 4, 0], [0, 0, 8, 0]]]
    check(ns, spec, p, x, [[[0, 0, 5, 0]] * 2])


def test_dense_two_heads_transpose_not_reshape(ns):
    # h = 2, d = 2, e = 1, L = 2.  Head 0 reads column 0 (w_1[0] = [[1], [0]]), head 1 column 1.
    # w_2[0] = (0, ln3), w_2[1] = (ln3, 0); b = 0.  x = ((1, 2), (0, 1)).
    # Head 0: H = (1, 0): row 0 logits (0, ln3) -> (1/4, 3/4); row 1: 0 -> (1/2, 1/2).
    #   V col 0 = (1, 0): y[:, 0] = (1/4, 1/2).
    # Head 1: H = (2, 1): row 0 (2 ln3, 0) -> (9/10, 1/10); row 1 (ln3, 0) -> (3/4, 1/4).
    #   V col 1 = (2, 1): y[:, 1] = (1.8 + .1, 1.5 + .25) = (1.9, 1.75).
    # Reshaping the (l, h, L) logits to (h, l, L) (LRA's defect) gives head 0 the rows
    # (t0 h0, t0 h1) = ((0, ln3), (2 ln3, 0)): y[1, 0] = 9/10 instead of 1/2.
    # Reshaping V (l, h*e) to (h, l, e) gives head 0 the values (1, 2): y[0, 0] = 1/4 + 3/2 instead of 1/4.
    spec = sr.Spec("dense", d_model=2, n_heads=2, max_len=2)
    p = simple_params(spec, w_1=[[[1], [0]], [[0], [1]]], w_2=[[[0, LN3]], [[LN3, 0]]])
    check(ns, spec, p, [[[1, 2], [0, 1]]], [[[0.25, 1.9], [0.5, 1.75]]])


# --- random -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_random_l2_applies_the_softmax(ns, causal):
    # d = 4 (e = 4, to show there is no 1/sqrt(e) either), r = ((0, ln3), (ln3, 0)).
    # P rows (1/4, 3/4) and (3/4, 1/4).  x[:, 0] = (0, 4): y[:, 0] = (3, 1).
    # Causal: row 0 sees key 0 only: y_0 = 0.   Raw R without softmax (a public defect) would give
    # y[:, 0] = (4 ln 3, 0) = (4.39, 0).
    spec = sr.Spec("random", d_model=4, max_len=2)
    p = simple_params(spec, r=[[[0, LN3], [LN3, 0]]])
    x = [[[0, 0, 0, 0], [4, 0, 0, 0]]]
    y0 = 0 if causal else 3
    check(ns, spec, p, x, [[[y0, 0, 0, 0], [1, 0, 0, 0]]], causal=causal)


def test_random_l3_shared_by_the_batch(ns):
    # r = ln((1,1,2), (2,1,1), (1,2,1)): P rows (1,1,2)/4, (2,1,1)/4, (1,2,1)/4, the same R for every
    # batch element.  Batch 0 x = (4, 0, 0): y = (1, 2, 1).  Batch 1 x = (0, 0, 4): y = (2, 1, 1).
    spec = sr.Spec("random", d_model=1, max_len=3)
    r = np.log([[1, 1, 2], [2, 1, 1], [1, 2, 1]])
    p = simple_params(spec, r=r[None])
    x = [[[4], [0], [0]], [[0], [0], [4]]]
    check(ns, spec, p, x, [[[1], [2], [1]], [[2], [1], [1]]])
    check(ns, spec, p, x, [np.exp(r)[None] / 4] * 2, weights=True)


def test_random_two_heads_transpose_not_reshape(ns):
    # h = 2, d = 2, e = 1.  Head 0: r = ((0, ln3), (ln3, 0)) -> P0 = ((1/4, 3/4), (3/4, 1/4));
    # head 1: r = 0, uniform.
    # x = ((4, 2), (0, 8)).  Head 0 owns column 0: V = (4, 0) -> y[:, 0] = (1, 3).
    # Head 1 owns column 1: V = (2, 8) -> y[:, 1] = (5, 5).
    # Reshaping V (l, h*e) -> (h, l, e) would give head 0 the values (4, 2): y[:, 0] = (2.5, 3.5).
    spec = sr.Spec("random", d_model=2, n_heads=2, max_len=2)
    p = simple_params(spec, r=[[[0, LN3], [LN3, 0]], [[0, 0], [0, 0]]])
    check(ns, spec, p, [[[4, 2], [0, 8]]], [[[1, 5], [3, 5]]])


# --- factorized_random --------------------------------------------------------------------------------

def test_factorized_random_l2_is_r1_r2t(ns):
    # k = 1: S[t, t'] = r_1[t] r_2[t'].  r_1 = (1, 2), r_2 = (0, ln3).
    # Row 0 (0, ln3) -> (1/4, 3/4); row 1 (0, 2 ln3) -> (1/10, 9/10).  x = (0, 4): y = (3, 3.6).
    # Contracting over the length axis (Mesh TF's defect) gives every row the same logits (y_0 = y_1).
    spec = sr.Spec("factorized_random", d_model=1, max_len=2, k=1)
    p = simple_params(spec, r_1=[[[1], [2]]], r_2=[[[0], [LN3]]])
    check(ns, spec, p, [[[0], [4]]], [[[3], [3.6]]])


def test_factorized_random_l3_rank2(ns):
    # k = 2, r_1 = ((1,0), (0,1), (1,1)), r_2 = ((0,0), (ln2,0), (0,ln2)).
    # Row 0 (1,0): (0, ln2, 0) -> (1,2,1)/4;  row 1 (0,1): (0, 0, ln2) -> (1,1,2)/4;
    # row 2 (1,1): (0, ln2, ln2) -> (1,2,2)/5.  x = (4, 0, 8): y = (12/4, 20/4, 20/5) = (3, 5, 4).
    spec = sr.Spec("factorized_random", d_model=1, max_len=3, k=2)
    p = simple_params(spec, r_1=[[[1, 0], [0, 1], [1, 1]]], r_2=[[[0, 0], [LN2, 0], [0, LN2]]])
    check(ns, spec, p, [[[4], [0], [8]]], [[[3], [5], [4]]])


# --- factorized_dense ---------------------------------------------------------------------------------

def _fd(tiling):
    # d = e = 2, L = 4, factors (2, 2): gcd 2 > 1.  w_1 = [[1, 0], [0, 0]]: H = (relu(x0), 0) = (1, 0)
    # for x0 = 1.  w_a = [[1, 2], [0, 0]]: A = (1, 2); w_b = [[0, ln2], [0, 0]]: B = (0, ln2).
    #   outer C[2p + q] = A_p B_q = (0, ln2, 0, 2 ln2)   -> exp (1, 2, 1, 4) / 8
    #   tile  C[m] = A_{m%2} B_{m%2} = (0, 2 ln2, 0, 2 ln2) -> exp (1, 4, 1, 4) / 10
    #   (with tiling the pairs A_0 B_1 and A_1 B_0 never appear)
    spec = sr.Spec("factorized_dense", d_model=2, max_len=4, factors=(2, 2), tiling=tiling)
    p = simple_params(spec, w_1=[[[1, 0], [0, 0]]], w_a=[[[1, 2], [0, 0]]], w_b=[[[0, LN2], [0, 0]]])
    return spec, p


@pytest.mark.parametrize("tiling, y1_l4, y1_l3, y1_l2", [
    # x[:, 1] = (8, 0, 0, 8):  outer (8 + 32)/8 = 5,  tile (8 + 32)/10 = 4.
    # l = 3 takes C[:3]:       outer (1,2,1)/4 -> 8/4 = 2,  tile (1,4,1)/6 -> 8/6 = 4/3.
    # l = 2 takes C[:2]:       outer (1,2)/3 -> 8/3,        tile (1,4)/5 -> 8/5.
    ("outer", 5.0, 2.0, 8 / 3),
    ("tile", 4.0, 4 / 3, 8 / 5),
])
def test_factorized_dense_outer_vs_tile(ns, tiling, y1_l4, y1_l3, y1_l2):
    spec, p = _fd(tiling)
    x = np.array([[[1, 8], [1, 0], [1, 0], [1, 8]]], dtype=float)
    # column 0 is 1 everywhere, so any weights give 1 there
    check(ns, spec, p, x, [[[1, y1_l4]] * 4])
    check(ns, spec, p, x[:, :3], [[[1, y1_l3]] * 3])
    check(ns, spec, p, x[:, :2], [[[1, y1_l2]] * 2])


def test_factorized_dense_default_tiling_is_outer(ns):
    spec = sr.Spec("factorized_dense", d_model=2, max_len=4, factors=(2, 2))
    assert spec.tiling == "outer"
    _, p = _fd("outer")
    check(ns, spec, p, [[[1, 8], [1, 0], [1, 0], [1, 8]]], [[[1, 5.0]] * 4])


def test_factorized_dense_default_factors_balanced():
    # The most balanced pair a <= b with a b = L.
    for L, f in [(4, (2, 2)), (6, (2, 3)), (12, (3, 4)), (7, (1, 7)), (1, (1, 1))]:
        assert sr.Spec("factorized_dense", d_model=2, max_len=L).factors == f


# --- mixture ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_mixture_mixes_logits_before_the_softmax(ns, causal):
    # Components (random, factorized_random), mix_logits (ln 3, 0): alpha = (3/4, 1/4).
    # R = ((0, ln3), (0, 0)); R1 R2^T with r_1 = (1, 1), r_2 = (0, ln3): ((0, ln3), (0, ln3)).
    # S = 3/4 R + 1/4 R1R2^T: row 0 (0, ln3) -> (1/4, 3/4); row 1 (0, ln3 / 4) -> (1, c)/(1 + c), c = 3^(1/4).
    # x = (0, 4): y_0 = 3, y_1 = 4c / (1 + c) (= 2.2729...).  Causal: y_0 = 0 (key 0 only).
    # Mixing the probabilities instead would give row 1 3/4 (1/2, 1/2) + 1/4 (1/4, 3/4): y_1 = 2.25.
    spec = sr.Spec("mixture", d_model=1, max_len=2, components=("random", "factorized_random"), k=1)
    p = simple_params(spec, mix_logits=[LN3, 0], random__r=[[[0, LN3], [0, 0]]],
                      factorized_random__r_1=[[[1], [1]]], factorized_random__r_2=[[[0], [LN3]]])
    c = 3 ** 0.25
    check(ns, spec, p, [[[0], [4]]], [[[0 if causal else 3], [4 * c / (1 + c)]]], causal=causal)


def test_mixture_l3_dense_and_dot_product(ns):
    # Components (dot_product, dense), alpha = (1/2, 1/2) (mix_logits 0).  d = e = 1.
    # dot_product: w_q = 0, b_q = 2 ln2 -> Q = 2 ln2, K = x: S1[t, t'] = 2 ln2 * x_t'.
    # dense: w_1 = 0, b_1 = 1 -> H = 1; w_2 = (0, 0, 2 ln2): S2[t, :] = (0, 0, 2 ln2).
    # x = (0, 1, 0): S = (S1 + S2)/2 = (0, ln2, 0) + (0, 0, ln2) = (0, ln2, ln2) -> (1, 2, 2)/5 every row.
    # y = (0 + 2 + 0)/5 = 0.4.
    spec = sr.Spec("mixture", d_model=1, max_len=3, components=("dot_product", "dense"))
    p = simple_params(spec, **{"dot_product__w_q": [[0]], "dot_product__b_q": [2 * LN2],
                               "dense__b_1": [[1]], "dense__w_2": [[[0, 0, 2 * LN2]]]})
    check(ns, spec, p, [[[0], [1], [0]]], [[[0.4]] * 3])


# --- masks on the softmax family ------------------------------------------------------------------------

def test_key_padding_mask_and_empty_rows(ns):
    # random, r = 0 (uniform), l = 3, x = (3, 6, 9), b_o = 1.
    # Batch 0 mask (T, F, T): keys 0 and 2 -> y = (3 + 9)/2 + 1 = 7 in every row.
    # Batch 1 mask (F, F, F): no key -> P = 0, y = b_o = 1 (never NaN).
    # Causal with batch 0's mask: row 0 -> key 0: 3 + 1 = 4; row 1 -> key 0: 4; row 2 -> keys 0, 2: 7.
    spec = sr.Spec("random", d_model=1, max_len=3)
    p = simple_params(spec, b_o=[1])
    x = [[[3], [6], [9]]] * 2
    mask = [[True, False, True], [False, False, False]]
    check(ns, spec, p, x, [[[7]] * 3, [[1]] * 3], mask=mask)
    check(ns, spec, p, x, [[[4], [4], [7]], [[1]] * 3], mask=mask, causal=True)
    w0 = [[0.5, 0, 0.5]] * 3
    check(ns, spec, p, x, [[w0], [[[0, 0, 0]] * 3]], mask=mask, weights=True)


# --- AFT ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_aft_full_adds_k_and_w(ns, causal):
    # d = 1, l = 2.  w_k = ln2: K = x ln2; w_q = ln3: Q = x ln3; V = x.  x = (0, 1): K = (0, ln2), V = (0, 1),
    # sigmoid(Q) = (sigmoid(0), sigmoid(ln3)) = (1/2, 3/4).  pos_bias = ((0, 0), (ln3, 0)).
    #   row 0: exp(K + w) = (1, 2) -> (0 + 2)/3 = 2/3, Y_0 = 1/2 * 2/3 = 1/3
    #   row 1: exp(K + w) = (3, 2) -> 2/5,             Y_1 = 3/4 * 2/5 = 3/10
    # Causal: row 0 keeps key 0 only (V = 0): Y_0 = 0; row 1 unchanged.
    # K * w (fast-transformers' defect) gives exp(0) = 1 everywhere: Y = (1/4, 3/8).
    spec = sr.Spec("aft_full", d_model=1, max_len=2)
    p = simple_params(spec, w_k=[[LN2]], w_q=[[LN3]], pos_bias=[[0, 0], [LN3, 0]])
    check(ns, spec, p, [[[0], [1]]], [[[0 if causal else 1 / 3], [0.3]]], causal=causal)


def test_aft_full_l3_factorized_position_bias(ns):
    # pos_rank = 1: w[t, t'] = u_t v_t'.  u = (0, 1, 2), v = (0, 0, ln2):
    #   w rows (0, 0, 0), (0, 0, ln2), (0, 0, 2 ln2).
    #   K = 0 (w_k = 0), Q = 0 (sigmoid 1/2), V = x = (3, 0, 6).
    #   row 0: (1,1,1)/3 -> 9/3 = 3     -> Y = 3/2
    #   row 1: (1,1,2)/4 -> 15/4        -> Y = 15/8
    #   row 2: (1,1,4)/6 -> 27/6 = 9/2  -> Y = 9/4
    spec = sr.Spec("aft_full", d_model=1, max_len=3, pos_rank=1)
    p = simple_params(spec, w_k=[[0]], w_q=[[0]], pos_u=[[0], [1], [2]], pos_v=[[0], [0], [LN2]])
    check(ns, spec, p, [[[3], [0], [6]]], [[[1.5], [15 / 8], [9 / 4]]])


def test_aft_simple_causal_divides_once(ns):
    # The fast-transformers case: T = 2, K = 0, V = (1, 0), causal.  b_q = 50 makes sigmoid(Q) = 1 in
    # float64 (1 - 2e-22), w_k = 0 makes K = 0.  Row 0: V_0 = 1.  Row 1: (1 + 0)/2 = 0.5.
    # Dividing each term by its own prefix sum gives 1/1 + 0/2 = 1 at row 1.
    spec = sr.Spec("aft_simple", d_model=1, max_len=2)
    p = simple_params(spec, w_q=[[0]], b_q=[50], w_k=[[0]])
    check(ns, spec, p, [[[1], [0]]], [[[1.0], [0.5]]], causal=True)


def test_aft_simple_l3_per_channel(ns):
    # d = 2.  w_k = [[0, 0], [1, 0]]: K[:, 0] = x[:, 1], K[:, 1] = 0.  V = x, Q = 0 (sigmoid 1/2).
    # x[:, 1] = (0, ln2, ln3): channel 0's weights exp(K) = (1, 2, 3)/6; x[:, 0] = (6, 0, 3):
    #   Y[:, 0] = 1/2 (6 + 0 + 9)/6 = 5/4 in every row.
    # Channel 1: K = 0, uniform: Y[:, 1] = 1/2 mean(0, ln2, ln3) = ln6 / 6.
    spec = sr.Spec("aft_simple", d_model=2, max_len=3)
    p = simple_params(spec, w_q=np.zeros((2, 2)), w_k=[[0, 0], [1, 0]])
    check(ns, spec, p, [[[6, 0], [0, LN2], [3, LN3]]], [[[1.25, ln(6) / 6]] * 3])


@pytest.mark.parametrize("window, expected", [
    # pos_bias = ln2 everywhere, K = 0, Q = 0, V = (3, 0, 6).
    # window 1 keeps the diagonal only, 0 (not -inf) elsewhere:
    #   row 0 exp w' (2,1,1)/4 -> 12/4, Y = 3/2;  row 1 (1,2,1)/4 -> 9/4, 9/8;  row 2 (1,1,2)/4 -> 15/4, 15/8.
    #   (With -inf outside, Y_t = V_t / 2 = (3/2, 0, 3).)
    (1, [1.5, 9 / 8, 15 / 8]),
    # window 2 keeps |t - t'| <= 1:
    #   row 0 (2,2,1)/5 -> 12/5, 6/5;  row 1 (2,2,2) -> 9/3, 3/2;  row 2 (1,2,2)/5 -> 15/5, 3/2.
    (2, [1.2, 1.5, 1.5]),
    # window 3 >= l: every bias ln2 -> uniform -> 9/3, 3/2 everywhere (= aft_full).
    (3, [1.5, 1.5, 1.5]),
])
def test_aft_local_zero_outside_window(ns, window, expected):
    spec = sr.Spec("aft_local", d_model=1, max_len=3, window=window)
    p = simple_params(spec, w_k=[[0]], w_q=[[0]], pos_bias=np.full((3, 3), LN2))
    check(ns, spec, p, [[[3], [0], [6]]], [[[e] for e in expected]])


def test_aft_local_l2(ns):
    # window 1 at l = 2, x = (3, 0), pos_bias ln2 (diagonal only), K = Q = 0:
    #   row 0: exp w' (2, 1)/3 -> 6/3 = 2, Y = 1;   row 1: (1, 2)/3 -> 3/3 = 1, Y = 1/2.
    spec = sr.Spec("aft_local", d_model=1, max_len=3, window=1)
    p = simple_params(spec, w_k=[[0]], w_q=[[0]], pos_bias=np.full((3, 3), LN2))
    check(ns, spec, p, [[[3], [0]]], [[[1.0], [0.5]]])


def test_aft_local_causal_window(ns):
    # window 1, causal, as above: row 0 key 0 -> 3, Y = 3/2; row 1 keys (0, 1) exp (1, 2) -> 3/3 = 1, Y = 1/2;
    # row 2 keys (0,1,2) exp (1,1,2)/4 -> 15/4, Y = 15/8.
    spec = sr.Spec("aft_local", d_model=1, max_len=3, window=1)
    p = simple_params(spec, w_k=[[0]], w_q=[[0]], pos_bias=np.full((3, 3), LN2))
    check(ns, spec, p, [[[3], [0], [6]]], [[[1.5], [0.5], [15 / 8]]], causal=True)


def _conv_two_heads():
    # h = 2, d = 2, e = 1, s = 3.  Per-head normalisation over each head's own 3 taps:
    # head 0: w = (0, 0, 3): mean 1, var 2, (w - 1)/sqrt(2 + 1e-5) = (-1, -1, 2)/sqrt(2 + 1e-5);
    #   gamma_0 = ln2 sqrt(2 + 1e-5), beta_0 = ln2: w_hat_0 = (0, 0, 3 ln2) -> exp (1, 1, 8).
    # head 1: w = (30, 0, 0): mean 10, var 200: (2, -1, -1) * 10/sqrt(200 + 1e-5);
    #   gamma_1 = ln2 sqrt(200 + 1e-5)/10, beta_1 = 0: w_hat_1 = (2 ln2, -ln2, -ln2) -> exp (4, 1/2, 1/2).
    # Normalising all six taps jointly (ComVEX's defect) gives other kernels.
    spec = sr.Spec("aft_conv", d_model=2, n_heads=2, max_len=3, kernel_size=3)
    p = simple_params(spec, w_q=np.zeros((2, 2)), w_k=np.zeros((2, 2)),
                      conv_w=[[0, 0, 3], [30, 0, 0]],
                      conv_gamma=[LN2 * math.sqrt(2 + 1e-5), LN2 * math.sqrt(200 + 1e-5) / 10],
                      conv_beta=[LN2, 0])
    return spec, p


def test_aft_conv_per_head_centred(ns):
    # Non-causal, c = 1: w'[t, t'] = w_hat[t' - t + 1] for |t' - t| <= 1, else 0.  K = 0, Q = 0 (1/2).
    # x[:, 0] = x[:, 1] = (0, 10, 20).
    # Head 0 (exp (1, 1, 8) at t' = t-1, t, t+1):
    #   row 0: t'=0 -> 1, t'=1 -> 8, t'=2 outside -> 1: (0 + 80 + 20)/10 = 10   -> Y = 5
    #   row 1: (1, 1, 8)/10: (0 + 10 + 160)/10 = 17                                -> Y = 8.5
    #   row 2: t'=0 outside 1, t'=1 -> 1, t'=2 -> 1: 30/3 = 10                     -> Y = 5
    # Head 1 (exp (4, 1/2, 1/2)):
    #   row 0: (1/2, 1/2, 1): (5 + 20)/2 = 12.5 -> Y = 6.25
    #   row 1: (4, 1/2, 1/2)/5: (5 + 10)/5 = 3   -> Y = 1.5
    #   row 2: (1, 4, 1/2)/5.5: (40 + 10)/5.5 = 100/11 -> Y = 50/11
    spec, p = _conv_two_heads()
    check(ns, spec, p, [[[0, 0], [10, 10], [20, 20]]], [[[5, 6.25], [8.5, 1.5], [5, 50 / 11]]])


def test_aft_conv_per_head_l2(ns):
    # As above at l = 2, x columns (0, 10).
    # Head 0: row 0: t'=0 -> 1, t'=1 -> 8: 80/9, Y = 40/9;  row 1: t'=0 (j=0) -> 1, t'=1 -> 1: 5, Y = 5/2.
    # Head 1: row 0: (1/2, 1/2): 5, Y = 5/2;               row 1: (4, 1/2)/4.5: 5/4.5 = 10/9, Y = 5/9.
    spec, p = _conv_two_heads()
    check(ns, spec, p, [[[0, 0], [10, 10]]], [[[40 / 9, 2.5], [2.5, 5 / 9]]])


def test_aft_conv_per_head_causal(ns):
    # Causal, c = s - 1 = 2: w'[t, t'] = w_hat[t' - t + 2] for t - 2 <= t' <= t.
    # Head 0 (exp (1, 1, 8) at t' = t-2, t-1, t):
    #   row 0: key 0 only -> V_0 = 0; row 1: (1, 8)/9 -> 80/9, Y = 40/9; row 2: (1, 1, 8)/10 -> 17, Y = 8.5
    # Head 1 (exp (4, 1/2, 1/2)):
    #   row 0: 0; row 1: (1/2, 1/2) -> 5, Y = 2.5; row 2: (4, 1/2, 1/2)/5 -> 15/5 = 3, Y = 1.5
    spec, p = _conv_two_heads()
    check(ns, spec, p, [[[0, 0], [10, 10], [20, 20]]], [[[0, 0], [40 / 9, 2.5], [8.5, 1.5]]], causal=True)


def test_aft_conv_even_kernel_causal(ns):
    # s = 2, causal: w'[t, t'] = w_hat[t' - t + 1] for t' in (t-1, t); older keys get 0 but still count.
    # w = (0, 2): mean 1, var 1: (-1, 1)/sqrt(1 + 1e-5); gamma = ln2 sqrt(1 + 1e-5), beta = ln2:
    # w_hat = (0, 2 ln2) -> exp (1, 4).  K = 0, Q = 0, x = (6, 0, 12):
    #   row 0: key 0 -> 6, Y = 3;  row 1: (1, 4)/5 -> 6/5, Y = 0.6;
    #   row 2: t'=0 outside the kernel -> 1, so (1, 1, 4)/6 -> (6 + 48)/6 = 9, Y = 4.5
    spec = sr.Spec("aft_conv", d_model=1, max_len=3, kernel_size=2)
    p = simple_params(spec, w_q=[[0]], w_k=[[0]], conv_w=[[0, 2]],
                      conv_gamma=[LN2 * math.sqrt(1 + 1e-5)], conv_beta=[LN2])
    check(ns, spec, p, [[[6], [0], [12]]], [[[3], [0.6], [4.5]]], causal=True)


def test_aft_conv_2d(ns):
    # 2-D, s = 3, c = 1, a 2 x 2 grid (cells (0,0), (0,1), (1,0), (1,1) in row-major order).
    # conv_w zero except tap (1, 2) = 9, i.e. (p' - p, q' - q) = (0, +1): mean 1, var (8 + 64)/9 = 8;
    # gamma = sqrt(8 + 1e-5) ln3 / 9, beta = ln3 / 9: other taps -ln3/9 + ln3/9 = 0,
    # that tap 8 ln3/9 + ln3/9 = ln3.
    # So a cell weighs its right neighbour by 3, everything else by 1.  K = Q = 0, V = (0, 6, 0, 12).
    #   (0,0): right neighbour (0,1): (1,3,1,1)/6 -> (18 + 12)/6 = 5, Y = 2.5
    #   (0,1): no right neighbour: uniform -> 18/4 = 4.5, Y = 2.25
    #   (1,0): right neighbour (1,1): (1,1,1,3)/6 -> (6 + 36)/6 = 7, Y = 3.5
    #   (1,1): uniform -> 4.5, Y = 2.25
    # Swapping the axes (tap (2, 1)) would weigh the cell below instead: (0,0) -> (6 + 0 + 12)/6 = 3.
    spec = sr.Spec("aft_conv", d_model=1, max_len=4, kernel_size=3, spatial_dims=2)
    w = np.zeros((1, 3, 3))
    w[0, 1, 2] = 9
    p = simple_params(spec, w_q=[[0]], w_k=[[0]], conv_w=w,
                      conv_gamma=[math.sqrt(8 + 1e-5) * LN3 / 9], conv_beta=[LN3 / 9])
    x = np.array([0, 6, 0, 12], dtype=float).reshape(1, 2, 2, 1)
    check(ns, spec, p, x, np.array([2.5, 2.25, 3.5, 2.25]).reshape(1, 2, 2, 1))


def test_aft_weights_are_per_channel(ns):
    # attention_weights for AFT: (B, d, l, l), exp(K + w') normalised, before the gate.
    # aft_simple d = 2 as in test_aft_simple_l3_per_channel: channel 0 rows (1, 2, 3)/6, channel 1 uniform.
    spec = sr.Spec("aft_simple", d_model=2, max_len=3)
    p = simple_params(spec, w_q=np.zeros((2, 2)), w_k=[[0, 0], [1, 0]])
    x = [[[6, 0], [0, LN2], [3, LN3]]]
    check(ns, spec, p, x, [[[[1 / 6, 2 / 6, 3 / 6]] * 3, [[1 / 3] * 3] * 3]], weights=True)
