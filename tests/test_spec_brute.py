"""The spec against the brute-force loops of tests/brute.py, in float64, under every namespace.

Two layers: an explicit grid that names every variant and option combination once (so coverage does
not depend on what Hypothesis happens to draw), and a Hypothesis property over random variants,
options, shapes, values and masks (fully-masked rows included).
"""

from __future__ import annotations

import brute
import numpy as np
import pytest
from hypothesis import given, settings
from numpy.testing import assert_allclose
from spec_cases import SOFTMAX, Case, cases, random_params, run_both
from spec_tolerances import F64

import synth_ref as sr


def _compare(ns, case: Case):
    y, w = run_both(ns, case.spec, case.params, case.x, causal=case.causal, mask=case.mask)
    kw = dict(causal=case.causal, key_padding_mask=case.mask)
    assert y.shape == case.x.shape
    assert_allclose(y, brute.apply(case.spec, case.params, case.x, **kw), *F64, err_msg=f"apply: {case!r}")
    w_want = brute.attention_weights(case.spec, case.params, case.x, **kw)
    assert_allclose(w, w_want, *F64, err_msg=f"attention_weights: {case!r}")


# (variant, options, n_heads, d_model, max_len, x shape without batch and d, causal, mask kind)
GRID = [
    ("dot_product", {}, 2, 4, 5, (4,), False, "ragged"),
    ("dot_product", {}, 1, 3, 4, (4,), True, "empty"),
    ("dense", {}, 2, 4, 5, (3,), False, None),
    ("dense", {}, 2, 6, 4, (4,), True, "ragged"),
    ("random", {}, 2, 4, 5, (3,), True, "empty"),
    ("factorized_random", {"k": 2}, 2, 4, 5, (5,), False, "ragged"),
    ("factorized_dense", {"factors": (2, 3), "tiling": "outer"}, 2, 4, 6, (5,), False, None),
    ("factorized_dense", {"factors": (2, 3), "tiling": "tile"}, 2, 4, 6, (6,), True, "ragged"),
    ("factorized_dense", {"factors": (2, 4), "tiling": "tile"}, 1, 3, 8, (7,), False, "empty"),
    ("factorized_dense", {"factors": (4, 2)}, 1, 2, 8, (8,), False, None),
    ("mixture", {"components": ("dot_product", "random")}, 2, 4, 4, (4,), True, "ragged"),
    ("mixture", {"components": ("factorized_dense", "factorized_random", "dense"), "k": 1,
                 "factors": (2, 2), "tiling": "tile"}, 2, 4, 4, (3,), False, "empty"),
    ("mixture", {"components": SOFTMAX, "k": 2}, 1, 3, 6, (5,), True, None),
    ("aft_full", {}, 1, 3, 5, (4,), False, "ragged"),
    ("aft_full", {"pos_rank": 2}, 1, 3, 5, (5,), True, "empty"),
    ("aft_simple", {}, 1, 3, 4, (4,), True, "ragged"),
    ("aft_local", {"window": 2}, 1, 3, 6, (5,), False, "empty"),
    ("aft_local", {"window": 1, "pos_rank": 1}, 1, 2, 5, (5,), True, None),
    ("aft_conv", {"kernel_size": 3}, 2, 4, 6, (6,), False, "ragged"),
    ("aft_conv", {"kernel_size": 3}, 2, 4, 6, (5,), True, "empty"),
    ("aft_conv", {"kernel_size": 2}, 1, 2, 5, (5,), True, "ragged"),
    ("aft_conv", {"kernel_size": 4, "spatial_dims": 1}, 2, 2, 6, (6,), True, None),
    ("aft_conv", {"kernel_size": 5}, 1, 2, 7, (7,), False, None),
    ("aft_conv", {"kernel_size": 3, "spatial_dims": 2}, 2, 4, 12, (3, 4), False, None),
    ("aft_conv", {"kernel_size": 1, "spatial_dims": 2}, 1, 2, 9, (3, 2), False, None),
    ("aft_conv", {"kernel_size": 5, "spatial_dims": 2}, 1, 2, 6, (2, 3), False, None),
]


def _mask(kind, B, l, rng):
    if kind is None:
        return None
    m = rng.random((B, l)) < 0.6
    m[0, 0] = True
    if kind == "empty":
        m[-1, :] = False  # a batch element with no real token at all
    else:
        m[-1, -1] = False
    return m


@pytest.mark.parametrize("row", GRID, ids=[f"{g[0]}-{i}" for i, g in enumerate(GRID)])
def test_grid_matches_brute(ns, row):
    variant, opts, h, d, L, pos, causal, mask_kind = row
    spec = sr.Spec(variant, d_model=d, n_heads=h, max_len=L, **opts)
    rng = np.random.default_rng(len(pos) * 100 + L)
    x = rng.standard_normal((2, *pos, d))
    mask = _mask(mask_kind, 2, pos[0], rng)
    _compare(ns, Case(spec, random_params(spec, rng), x, causal, mask))


def _examples(ns):
    """JAX compiles every drawn shape (about a second each on a loaded 2-core machine): a third of
    the profile's examples there; the explicit grid above covers JAX on every option already."""
    n = settings.default.max_examples
    return max(1, n // 3) if ns.jit else n


@pytest.mark.parametrize("variant", sr.VARIANTS)
def test_random_layers_match_brute(ns, variant):
    """Hypothesis: random options, sizes, values, causal flags and masks, per variant."""

    @settings(max_examples=_examples(ns))
    @given(case=cases(variants=(variant,)))
    def prop(case):
        _compare(ns, case)

    prop()
