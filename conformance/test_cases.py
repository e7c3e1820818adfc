"""The suite's inputs: deterministic, random where init is not, adversarial where they claim to be."""

from __future__ import annotations

import math

import numpy as np
import pytest

import synth_ref as sr
from synth_ref.conformance import cases as C
from synth_ref.conformance.tolerances import TOLERANCES, markdown_table


def test_make_inputs_is_deterministic_and_rounded():
    case = C.grid("ci")[3]
    a, b = C.make_inputs(case, "float32"), C.make_inputs(case, "float32")
    assert all(np.array_equal(a.params[n], b.params[n]) for n in a.params)
    assert np.array_equal(a.x, b.x)
    assert np.array_equal(a.x, a.x.astype(np.float32).astype(np.float64))
    h = C.make_inputs(case, "float16")
    assert np.array_equal(h.x, h.x.astype(np.float16).astype(np.float64))


def test_bfloat16_rounding_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10_000) * 10.0 ** rng.integers(-8, 8, 10_000)
    want = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16).float().double().numpy()
    assert np.array_equal(C.round_to(x, "bfloat16"), want)


@pytest.mark.parametrize("variant", sr.VARIANTS)
def test_every_parameter_is_drawn_not_initialised(variant):
    case = next(c for c in C.grid("ci") if c.variant == variant)
    inp = C.make_inputs(case, "float64")
    init = case.spec.init(seed=0)
    for n, a in inp.params.items():
        assert a.shape == init[n].shape
        assert np.std(a) > 0 or a.size == 1, n
        assert not np.allclose(a, init[n]), f"{n} equals its init value"
        if n.endswith(("b_q", "b_k", "b_v", "b_o", "conv_gamma", "conv_beta", "pos_bias", "mix_logits")):
            assert np.all(a != 0), n


def _max_logit(case, inp):
    """max |logit| of the case (uses the spec's internals: a check of the suite, not of the spec)."""
    spec = case.spec
    x = inp.x.reshape(inp.x.shape[0], -1, spec.d_model)
    l = x.shape[1]
    if spec.family == "softmax":
        return float(np.max(np.abs(sr._softmax.mixed_logits(spec, inp.params, x, np, l))))
    k = x @ inp.params["w_k"] + inp.params["b_k"]
    grid = case.shape if len(case.shape) == 2 else None
    w = sr._aft.position_bias(spec, inp.params, np, l, case.causal, grid, "cpu")
    w = 0.0 if w is None else np.max(np.abs(w))
    return float(np.max(np.abs(k)) + w)


@pytest.mark.parametrize("variant", sr.VARIANTS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_large_regime_reaches_the_overflow_range(variant, dtype):
    """float32: logits beyond 88.7 (exp overflows) for a naive kernel; float16: about 10.  The
    upper bound only keeps the regime sane.  factorized_dense's logits are a product of two
    projections of x: calibrated on one probe x, their extremes over the case's own x vary
    several-fold (up to 747 in float32 on the ci grid's cases), hence its wider bound."""
    cases = [c for c in C.grid("ci", [variant]) if c.values == "large" and c.length == C.MAX_LEN]
    peaks = [_max_logit(c, C.make_inputs(c, dtype)) for c in cases]
    lo, hi = (89.0, 400.0) if dtype == "float32" else (9.0, 40.0)
    if variant == "factorized_dense":
        hi *= 2.5
    assert max(peaks) > lo and max(peaks) < hi, peaks


@pytest.mark.parametrize("variant", C.SATURATED_VARIANTS)
def test_saturated_regime_spreads_logits_to_1e4(variant):
    """float32: logits of about 1e4 (the spread 2e4 is calibrated on a probe x, so the case's own
    peak varies, as in the large regime); bfloat16 and float16: the large regime's spread (the
    bounds of test_large_regime_reaches_the_overflow_range)."""
    cases = [c for c in C.grid("deep", [variant]) if c.values == "saturated" and c.length == C.MAX_LEN]
    for dtype, lo, hi in (("float32", 5e3, 1e5), ("bfloat16", 89.0, 1000.0), ("float16", 9.0, 100.0)):
        peaks = [_max_logit(c, C.make_inputs(c, dtype)) for c in cases]
        assert lo < max(peaks) < hi, (dtype, peaks)


def test_saturated_regime_is_for_softmax_variants_only():
    spec = sr.Spec("aft_full", d_model=12, max_len=12)
    with pytest.raises(ValueError, match="values 'saturated': defined for dot_product, .*; got aft_full"):
        C.make_inputs(C.Case(spec, 2, (12,), False, "none", "saturated"), "float32")


def test_mask_regimes():
    rng_cases = {c.mask: c for c in C.grid("ci", ["dense"]) if c.length == C.MAX_LEN}
    m = C.make_inputs(rng_cases["all_masked"], "float64").mask
    assert not m[0].any()
    m = C.make_inputs(rng_cases["all_but_one"], "float64").mask
    assert m[0].sum() == 1
    m = C.make_inputs(rng_cases["left_pad"], "float64").mask
    assert not m[0, : C.MAX_LEN // 2].any() and m[0, C.MAX_LEN // 2 :].all()
    m = C.make_inputs(rng_cases["random"], "float64").mask
    assert not m.all() and m.any()


def test_identical_regime_has_long_runs():
    case = next(c for c in C.grid("ci", ["dense"]) if c.values == "identical" and c.length == C.MAX_LEN)
    x = C.make_inputs(case, "float64").x
    same = np.all(x[:, 1:] == x[:, :-1], axis=-1)
    assert same.sum(axis=1).min() >= C.MAX_LEN // 2


@pytest.mark.parametrize("opts", [{}, {"pos_rank": 2}])
def test_opposed_regime_sets_w_against_k(opts):
    """On batch element 0, K + w' is about 0 for every (t, t', c) while max w' + max K is about 200:
    the exact max is near 0, the rank-one shift about 200 above it."""
    spec = sr.Spec("aft_full", d_model=12, max_len=12, **opts)
    case = C.Case(spec, batch=2, shape=(12,), causal=False, mask="none", values="opposed", seed=3)
    inp = C.make_inputs(case, "float64")
    p, x = inp.params, inp.x
    k = x[0] @ p["w_k"] + p["b_k"]  # (l, d)
    w = p["pos_bias"] if spec.pos_rank is None else p["pos_u"] @ p["pos_v"].T
    z = k[None, :, :] + w[:, :, None]  # (t, t', c)
    assert np.abs(z).max() < 1e-9
    assert w.max(axis=1).min() + k.max(axis=0).min() > 199  # max w' + max K: 200
    with pytest.raises(ValueError, match="values 'opposed': defined for 1-D aft_full and aft_local"):
        conv = sr.Spec("aft_conv", d_model=12, max_len=12, kernel_size=3)
        C.make_inputs(C.Case(conv, batch=1, shape=(12,), causal=False, mask="none", values="opposed"),
                      "float64")


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_opposed_regime_with_one_key_stays_finite(dtype):
    """Length 1 (Hypothesis drew it in the deep profile): one key has nothing to oppose, and scaling
    its zero spread up to +-10 gave w_k ~ 1e14, inf in float16, and a NaN that read as a wrong
    adapter.  The inputs are finite and K + w' is still 0."""
    spec = sr.Spec("aft_full", d_model=1, max_len=1)
    inp = C.make_inputs(C.Case(spec, batch=1, shape=(1,), causal=False, mask="none",
                               values="opposed", seed=0), dtype)
    assert all(np.all(np.isfinite(a)) for a in inp.params.values())
    assert np.abs(inp.params["w_k"]).max() < 100
    k = inp.x[0] @ inp.params["w_k"] + inp.params["b_k"]
    assert np.abs(k + inp.params["pos_bias"][0]).max() < 0.01


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the point
def test_inputs_that_overflow_their_dtype_are_an_error(monkeypatch):
    """A case whose inputs overflow the dtype is the generator's fault, said so, never a NaN."""
    monkeypatch.setattr(C, "_x", lambda rng, case, B, l, d: np.full((B, l, d), 1e6))
    case = C.Case(sr.Spec("random", d_model=4, max_len=4), batch=1, shape=(4,), causal=False,
                  mask="none", values="normal", seed=0)
    assert np.all(C.make_inputs(case, "float32").x == 1e6)
    with pytest.raises(ValueError, match=r"x is not finite in float16 \(largest \|value\| before "
                                         r"rounding: 1e\+06\)"):
        C.make_inputs(case, "float16")


def test_variant_filter_keeps_seeds():
    """A case reproduces with or without --variant: the filter keeps the whole grid's seeds."""
    full = {c.id: c.seed for c in C.grid("ci")}
    part = C.grid("ci", variants=("aft_local", "random"))
    assert {c.variant for c in part} == {"aft_local", "random"}
    assert all(full[c.id] == c.seed for c in part)


@pytest.mark.parametrize("profile", ["ci", "kernels"])
def test_deep_finds_are_the_deep_profiles_own_cases(profile):
    """The regression cases that end the ci and kernels grids (cases._DEEP_FINDS) are cases of the
    deep grid, id for id (so the same inputs: make_inputs seeds from the id), checked in their dtype; a
    change to the deep grid that moved them would fail here rather than quietly check other inputs."""
    deep = {c.id: c for c in C.grid("deep")}
    tail = C.grid(profile)[-len(C._DEEP_FINDS):]
    assert [c.seed for c in tail] == [row[-2] for row in C._DEEP_FINDS]
    for c, row in zip(tail, C._DEEP_FINDS, strict=True):
        assert c.id in deep and deep[c.id].seed == c.seed, c.id
        assert (c.variant, c.causal, c.values, c.grad_dtypes) == (row[0], row[4], row[6], (row[-1],))
        dtype = row[-1]
        assert np.array_equal(C.make_inputs(c, dtype).x, C.make_inputs(deep[c.id], dtype).x)


def test_grid_covers_every_option_and_size():
    g = C.grid("ci")
    assert {c.variant for c in g} == set(sr.VARIANTS)
    for v in sr.VARIANTS:
        lengths = {c.length for c in g if c.variant == v and len(c.shape) == 1}
        assert {1, C.MAX_LEN} <= lengths and any(n % 2 for n in lengths - {1}), (v, lengths)
    for v in ("dot_product", "dense", "random", "factorized_dense", "factorized_random", "aft_conv"):
        assert {c.spec.n_heads for c in g if c.variant == v} >= {1, 3}, v
    assert {c.spec.tiling for c in g if c.variant == "factorized_dense"} == {"outer", "tile"}
    assert {c.spec.pos_rank is None for c in g if c.variant in ("aft_full", "aft_local")} == {True, False}
    windows = {(c.spec.window, c.length) for c in g if c.variant == "aft_local"}
    assert any(w == 1 for w, _ in windows) and any(w >= n > 1 for w, n in windows)
    assert len({c.spec.kernel_size for c in g if c.variant == "aft_conv"}) >= 3
    assert any(c.spec.spatial_dims == 2 for c in g if c.variant == "aft_conv")
    assert any(math.gcd(*c.spec.factors) > 1 for c in g if c.variant == "factorized_dense")
    for mask in ("none", "random", "all_masked", "all_but_one", "left_pad"):
        assert any(c.mask == mask for c in g), mask
    for values in C.VALUES:
        assert any(c.values == values for c in g), values


def test_one_table_of_floors():
    assert list(TOLERANCES) == list(C.DTYPES)
    for f in TOLERANCES.values():
        assert 0 < f.forward <= f.gradient and f.why
    assert markdown_table().count("\n") == len(TOLERANCES) + 1


def test_drawn_cases_are_valid():
    hypothesis = pytest.importorskip("hypothesis")

    @hypothesis.settings(max_examples=60, derandomize=True, deadline=None, database=None)
    @hypothesis.given(C.case_strategy())
    def check(case):
        inp = C.make_inputs(case, "float64")
        assert inp.x.shape == (case.batch, *case.shape, case.spec.d_model)
        assert case.spec.max_len >= case.length

    check()


def test_sensitivity_perturbs_by_one_unit_roundoff_and_widens_only_ill_conditioned_cases():
    from synth_ref.conformance import gold as G
    from synth_ref.conformance.tolerances import UNIT_ROUNDOFF, tolerance

    spec = sr.Spec("dot_product", d_model=12, n_heads=1, max_len=12)
    calm = C.Case(spec, batch=2, shape=(12,), causal=True, mask="all_but_one", values="normal", seed=18)
    steep = C.Case(spec, batch=2, shape=(12,), causal=True, mask="all_but_one", values="large", seed=18)
    inp = C.make_inputs(steep, "float32")
    p1, p2 = G._perturbed(inp, 0), G._perturbed(inp, 0)
    for a, b, c in [(inp.x, p1.x, p2.x), (inp.dy, p1.dy, p2.dy)] + [
            (inp.params[n], p1.params[n], p2.params[n]) for n in inp.params]:
        rel = np.abs(b - a) / np.maximum(np.abs(a), 1e-300)
        assert rel.max() <= UNIT_ROUNDOFF["float32"] and rel.max() > 0.1 * UNIT_ROUNDOFF["float32"]
        assert np.array_equal(b, c)  # deterministic per (case, dtype, draw)
    assert not np.array_equal(G._perturbed(inp, 1).x, p1.x)
    sens = {}
    for c in (calm, steep):
        i = C.make_inputs(c, "float32")
        sens[c.values] = G.forward_sensitivity(i, G.gold_forward(i))
    floor = TOLERANCES["float32"].forward
    # logits of size ~100: one rounding moves the output by ~1e-6..1e-5, above what the floor covers
    # at 5x; an O(1) case stays far below the floor, so the floor still decides there
    assert 5 * sens["large"] > floor > 5 * sens["normal"]
    assert tolerance("float32", "forward", 1e-7, sens["large"]) == 5 * sens["large"]
    assert tolerance("float32", "forward", 1e-7, None) == floor
    vs = G.vjp_sensitivity(inp, *G.gold_vjp(inp))
    assert set(vs) == {"dx", *inp.params} and all(v > 0 for v in vs.values())
