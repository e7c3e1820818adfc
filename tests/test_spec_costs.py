"""Parameter layout and costs: param_shapes against issue 2's table, the papers' parameter counts,
init, and the FLOP and memory reports."""

from __future__ import annotations

import math

import numpy as np
import pytest

import synth_ref as sr

d, h, e, L = 6, 2, 3, 8  # e = d / h
SOFTMAX_PROJ = [("w_v", (d, d)), ("b_v", (d,)), ("w_o", (d, d)), ("b_o", (d,))]
AFT_PROJ = [("w_q", (d, d)), ("b_q", (d,)), ("w_k", (d, d)), ("b_k", (d,))] + SOFTMAX_PROJ
OWN = {  # issue 2's table, variant by variant, in its order
    "dot_product": [("w_q", (d, d)), ("b_q", (d,)), ("w_k", (d, d)), ("b_k", (d,))],
    "dense": [("w_1", (h, d, e)), ("b_1", (h, e)), ("w_2", (h, e, L)), ("b_2", (h, L))],
    "random": [("r", (h, L, L))],
    "factorized_random": [("r_1", (h, L, 3)), ("r_2", (h, L, 3))],  # k = 3
    "factorized_dense": [("w_1", (h, d, e)), ("b_1", (h, e)), ("w_a", (h, e, 2)), ("b_a", (h, 2)),
                         ("w_b", (h, e, 4)), ("b_b", (h, 4))],  # factors (2, 4)
}
OPTS = {"factorized_random": {"k": 3}, "factorized_dense": {"factors": (2, 4)}}

TABLE = [(v, {"n_heads": h, **OPTS.get(v, {})}, SOFTMAX_PROJ + OWN[v]) for v in OWN]
TABLE += [
    ("factorized_dense", {"n_heads": h, "factors": (4, 2), "tiling": "tile"},
     SOFTMAX_PROJ + [("w_1", (h, d, e)), ("b_1", (h, e)), ("w_a", (h, e, 4)), ("b_a", (h, 4)),
                     ("w_b", (h, e, 2)), ("b_b", (h, 2))]),
    ("factorized_dense", {"n_heads": 1},  # default factors: the balanced pair (2, 4)
     SOFTMAX_PROJ + [("w_1", (1, d, d)), ("b_1", (1, d)), ("w_a", (1, d, 2)), ("b_a", (1, 2)),
                     ("w_b", (1, d, 4)), ("b_b", (1, 4))]),
    ("mixture", {"n_heads": h, "components": ("random", "dot_product")},
     SOFTMAX_PROJ + [("mix_logits", (2,)), ("random.r", (h, L, L))]
     + [("dot_product." + n, s) for n, s in OWN["dot_product"]]),
    ("mixture", {"n_heads": h, "components": ("factorized_dense", "dense", "factorized_random"), "k": 3,
                 "factors": (2, 4)},
     SOFTMAX_PROJ + [("mix_logits", (3,))]
     + [("factorized_dense." + n, s) for n, s in OWN["factorized_dense"]]
     + [("dense." + n, s) for n, s in OWN["dense"]]
     + [("factorized_random." + n, s) for n, s in OWN["factorized_random"]]),
    ("aft_full", {}, AFT_PROJ + [("pos_bias", (L, L))]),
    ("aft_full", {"pos_rank": 3}, AFT_PROJ + [("pos_u", (L, 3)), ("pos_v", (L, 3))]),
    ("aft_simple", {}, AFT_PROJ),
    ("aft_local", {"window": 2}, AFT_PROJ + [("pos_bias", (L, L))]),
    ("aft_local", {"window": 2, "pos_rank": 1}, AFT_PROJ + [("pos_u", (L, 1)), ("pos_v", (L, 1))]),
    ("aft_conv", {"n_heads": h, "kernel_size": 3}, AFT_PROJ + [("conv_w", (h, 3)), ("conv_gamma", (h,)),
                                                               ("conv_beta", (h,))]),
    ("aft_conv", {"n_heads": h, "kernel_size": 4, "spatial_dims": 1},
     AFT_PROJ + [("conv_w", (h, 4)), ("conv_gamma", (h,)), ("conv_beta", (h,))]),
    ("aft_conv", {"n_heads": h, "kernel_size": 5, "spatial_dims": 2},
     AFT_PROJ + [("conv_w", (h, 5, 5)), ("conv_gamma", (h,)), ("conv_beta", (h,))]),
]


@pytest.mark.parametrize("variant, opts, want", TABLE, ids=[f"{t[0]}-{i}" for i, t in enumerate(TABLE)])
def test_param_shapes_match_the_issue_table(variant, opts, want):
    spec = sr.Spec(variant, d_model=d, max_len=L, **opts)
    assert list(spec.param_shapes().items()) == want  # names, order and shapes
    assert spec.param_count() == sum(math.prod(s) for _, s in want)


def test_every_variant_is_in_the_table():
    assert {t[0] for t in TABLE} == set(sr.VARIANTS)


@pytest.mark.parametrize("dm, Lm, ab, k", [(4, 6, (2, 3), 2), (8, 12, (3, 4), 5), (16, 32, (4, 8), 7),
                                           (5, 7, (1, 7), 1)])
def test_paper_param_count_equals_the_papers_table(dm, Lm, ab, k):
    a, b = ab

    def count(v, **o):
        return sr.Spec(v, d_model=dm, max_len=Lm, **o).paper_param_count()

    assert count("dot_product") == 2 * dm ** 2
    assert count("dense") == dm ** 2 + dm * Lm
    assert count("factorized_dense", factors=ab) == dm ** 2 + dm * (a + b)
    assert count("factorized_dense", factors=ab, tiling="tile") == dm ** 2 + dm * (a + b)
    assert count("random") == Lm ** 2
    assert count("factorized_random", k=k) == 2 * Lm * k
    # a mixture counts each component's; AFT counts its position biases / kernels
    assert count("mixture", components=("random", "dense")) == Lm ** 2 + dm ** 2 + dm * Lm
    assert count("aft_full") == Lm ** 2
    assert count("aft_full", pos_rank=k) == 2 * Lm * k
    assert count("aft_local", window=2) == Lm ** 2
    assert count("aft_simple") == 0
    assert count("aft_conv", kernel_size=3) == 3
    heads = 2 if dm % 2 == 0 else 1
    assert count("aft_conv", n_heads=heads, kernel_size=3, spatial_dims=2) == heads * 9


@pytest.mark.parametrize("variant, opts, want", TABLE[:1] + TABLE[-4:])
def test_init(variant, opts, want):
    spec = sr.Spec(variant, d_model=d, max_len=L, **opts)
    p = spec.init(seed=3)
    assert [(n, a.shape) for n, a in p.items()] == want
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float64 for a in p.values())
    q = spec.init(seed=3)
    assert all(np.array_equal(p[n], q[n]) for n in p)  # a seed is a seed
    r = spec.init(seed=4)
    assert any(not np.array_equal(p[n], r[n]) for n in p)
    for dt in ("float32", "float16"):
        assert all(a.dtype == np.dtype(dt) for a in spec.init(seed=3, dtype=dt).values())


def test_flops_and_memory_of_dot_product():
    # Standard count, a multiply-add = 2 FLOPs: four (l x d) by (d x d) projections (q, k, v, o),
    # then per head Q K^T and P V, each 2 l^2 e.
    B, l = 3, 5
    spec = sr.Spec("dot_product", d_model=d, n_heads=h, max_len=L)
    assert spec.flops(B, l) == 4 * 2 * B * l * d * d + 2 * (2 * B * h * l * l * e)
    mem = spec.memory(B, l)
    assert mem["parameters"] == spec.param_count() * 4
    assert mem["materialized"] == B * h * l * l * 4  # the (B, h, l, l) weights in float32
    assert spec.memory(B, l, itemsize=8)["materialized"] == B * h * l * l * 8


def test_flops_and_memory_of_aft_full():
    # Projections q, k, v, o; then exp(w) @ (exp(K) * V) and exp(w) @ exp(K): two (l x l) by (l x d).
    B, l = 2, 7
    spec = sr.Spec("aft_full", d_model=d, max_len=L)
    assert spec.flops(B, l) == 4 * 2 * B * l * d * d + 2 * (2 * B * l * l * d)
    assert spec.memory(B, l)["materialized"] == B * l * l * d * 4  # the (B, l, l, d) broadcast
    # the streaming footprint is linear in l
    long = sr.Spec("aft_full", d_model=d, max_len=200)
    s1, s2 = long.memory(B, 100)["streaming"], long.memory(B, 200)["streaming"]
    assert s2 == 2 * s1


@pytest.mark.parametrize("variant, opts, want", TABLE, ids=[f"{t[0]}-{i}" for i, t in enumerate(TABLE)])
def test_flops_grow_with_length_and_batch(variant, opts, want):
    spec = sr.Spec(variant, d_model=d, max_len=L, **opts)
    assert 0 < spec.flops(1, 2) < spec.flops(1, 4) < spec.flops(2, 4)
    shared = {"random", "factorized_random"} & set(spec.components_used)  # logits shared by the batch
    if not shared:
        assert spec.flops(2, 4) == 2 * spec.flops(1, 4)
