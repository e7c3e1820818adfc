"""Helpers shared by the spec tests: running the spec under a namespace, simple parameter sets, and
the Hypothesis strategy that draws a random layer (variant, options, sizes, masks, values)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

import synth_ref as sr

SOFTMAX = ("dot_product", "dense", "random", "factorized_dense", "factorized_random")
HEADLESS = ("aft_full", "aft_simple", "aft_local")


def simple_params(spec, **given):
    """Projections w_v = w_o = w_q = w_k = I, every other array 0, then ``given`` (lists allowed).

    With these, V = Q = K = x and y = the mixed values: hand-worked cases only set what they test."""
    out = {}
    for name, shape in spec.param_shapes().items():
        if name.rsplit(".", 1)[-1] in ("w_v", "w_o", "w_q", "w_k"):  # "dot_product.w_q" too
            out[name] = np.eye(shape[0])
        else:
            out[name] = np.zeros(shape)
    for name, value in given.items():
        name = name.replace("__", ".")  # mixture arrays: random__r -> "random.r"
        value = np.asarray(value, dtype=np.float64)
        assert value.shape == out[name].shape, (name, value.shape, out[name].shape)
        out[name] = value
    return out


def _to_ns(ns, spec, params, x, mask, dtype):
    xa = ns.asarray(np.asarray(x, dtype=np.float64), dtype)
    pa = ns.params(params, dtype)
    ma = None if mask is None else ns.asarray(np.asarray(mask, dtype=bool))
    return xa, pa, ma


def _back(ns, out, xa):
    # the promise of the interface: the result is an array of x's namespace and dtype
    assert type(out) is type(xa), (type(out), type(xa))
    assert out.dtype == xa.dtype, (out.dtype, xa.dtype)
    return np.asarray(ns.to_numpy(out), dtype=np.float64)


def run(ns, spec, params, x, *, causal=False, mask=None, dtype="float64", weights=False):
    """sr.apply (or sr.attention_weights) under namespace ``ns``; the result as float64 NumPy."""
    xa, pa, ma = _to_ns(ns, spec, params, x, mask, dtype)
    fn = sr.attention_weights if weights else sr.apply
    return _back(ns, ns.call(fn, spec, pa, xa, causal=causal, key_padding_mask=ma), xa)


def _both(spec, p, x, *, causal, key_padding_mask):
    kw = dict(causal=causal, key_padding_mask=key_padding_mask)
    return sr.apply(spec, p, x, **kw), sr.attention_weights(spec, p, x, **kw)


def run_both(ns, spec, params, x, *, causal=False, mask=None, dtype="float64"):
    """(sr.apply, sr.attention_weights) under ``ns`` in one call (one jax.jit compile, not two)."""
    xa, pa, ma = _to_ns(ns, spec, params, x, mask, dtype)
    y, w = ns.call(_both, spec, pa, xa, causal=causal, key_padding_mask=ma)
    return _back(ns, y, xa), _back(ns, w, xa)


def random_params(spec, rng, scale=1.0):
    """Every array N(0, scale^2): biases, mix logits and position biases non-zero too, so that a
    term the spec dropped would show."""
    return {n: rng.standard_normal(s) * scale for n, s in spec.param_shapes().items()}


@dataclass
class Case:
    """One drawn layer and input."""

    spec: sr.Spec
    params: dict
    x: np.ndarray
    causal: bool
    mask: np.ndarray | None

    def __repr__(self):  # what Hypothesis prints for a failing example
        m = None if self.mask is None else self.mask.astype(int).tolist()
        return f"Case({self.spec!r}, x.shape={self.x.shape}, causal={self.causal}, mask={m})"


def _divisor_pairs(n):
    return [(a, n // a) for a in range(1, n + 1) if n % a == 0]


@st.composite
def specs(draw, variants=sr.VARIANTS):
    """A valid Spec of a drawn variant with drawn options, at tiny sizes."""
    v = draw(st.sampled_from(variants))
    opts = {}
    comps = (v,)
    if v == "mixture":
        comps = tuple(draw(st.lists(st.sampled_from(SOFTMAX), min_size=2, max_size=3, unique=True)))
        opts["components"] = comps
    if v == "aft_conv":
        dims = draw(st.sampled_from((1, 2)))
        if dims == 2:
            opts.update(spatial_dims=2, kernel_size=draw(st.sampled_from((1, 3))))
        else:
            opts.update(spatial_dims=draw(st.sampled_from((None, 1))), kernel_size=draw(st.integers(1, 4)))
    two_d = opts.get("spatial_dims") == 2
    L = draw(st.integers(2, 9) if two_d else st.integers(1, 6))
    if "factorized_random" in comps:
        opts["k"] = draw(st.integers(1, 3))
    if "factorized_dense" in comps:
        opts["factors"] = draw(st.sampled_from([None] + _divisor_pairs(L)))
        opts["tiling"] = draw(st.sampled_from((None, "outer", "tile")))
    if v in ("aft_full", "aft_local"):
        opts["pos_rank"] = draw(st.sampled_from((None, 1, 2)))
    if v == "aft_local":
        opts["window"] = draw(st.integers(1, L + 1))
    h = 1 if v in HEADLESS else draw(st.sampled_from((1, 2)))
    d = h * draw(st.integers(1, 3 if h == 1 else 2))
    opts = {k: val for k, val in opts.items() if val is not None}
    return sr.Spec(v, d_model=d, n_heads=h, max_len=L, **opts)


@st.composite
def cases(draw, variants=sr.VARIANTS):
    """A spec, random parameters, an input of length <= max_len, a causal flag and maybe a mask."""
    spec = draw(specs(variants))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    B = draw(st.integers(1, 2))
    L = spec.max_len
    two_d = spec.variant == "aft_conv" and spec.spatial_dims == 2
    if two_d:
        H = draw(st.integers(1, L))
        W = draw(st.integers(1, L // H))
        shape = (B, H, W, spec.d_model)
    else:
        shape = (B, draw(st.integers(1, L)), spec.d_model)
    x = rng.standard_normal(shape)
    even_conv = spec.variant == "aft_conv" and spec.kernel_size % 2 == 0
    causal = False if two_d else (True if even_conv else draw(st.booleans()))
    mask = None
    if not two_d and draw(st.booleans()):
        # any pattern, fully-masked batch elements included
        mask = np.array(draw(st.lists(st.lists(st.booleans(), min_size=shape[1], max_size=shape[1]),
                                      min_size=B, max_size=B)), dtype=bool)
    return Case(spec, random_params(spec, rng), x, causal, mask)


def ln(v):
    return math.log(v)
