"""Bad input gets a clear error naming the argument (and saying what was expected and what came),
never a wrong answer or a NaN.  One table: (what, call, error type, words the message must contain)."""

from __future__ import annotations

import numpy as np
import pytest

import synth_ref as sr

torch = pytest.importorskip("torch", reason="torch provides the second namespace of the mixing case")


def spec(variant="dense", **kw):
    kw.setdefault("d_model", 4)
    kw.setdefault("max_len", 5)
    return sr.Spec(variant, **kw)


DENSE = spec(n_heads=2)
P = DENSE.init(seed=0)
X = np.zeros((2, 3, 4))
CONV2 = spec("aft_conv", kernel_size=3, spatial_dims=2, max_len=6)
X2 = np.zeros((1, 2, 3, 4))


def call(s=DENSE, p=None, x=X, **kw):
    return lambda: sr.apply(s, s.init(0) if p is None else p, x, **kw)


def without(p, name):
    return {n: a for n, a in p.items() if n != name}


def weights(**kw):
    return lambda: sr.attention_weights(DENSE, P, X, **kw)


CASES = [
    # x
    ("x rank 2", call(x=np.zeros((3, 4))), ValueError, ["x", "shape"]),
    ("x rank 4 for a sequence layer", call(x=np.zeros((1, 2, 3, 4))), ValueError, ["x", "shape"]),
    ("x rank 3 for 2-D aft_conv", call(CONV2, x=np.zeros((1, 6, 4))), ValueError, ["x", "height"]),
    ("x d_model mismatch", call(x=np.zeros((2, 3, 5))), ValueError, ["x", "d_model=4"]),
    ("x longer than max_len", call(x=np.zeros((2, 6, 4))), ValueError, ["x", "max_len=5"]),
    ("2-D grid larger than max_len", call(CONV2, x=np.zeros((1, 3, 3, 4))), ValueError, ["x", "max_len=6"]),
    ("x of length 0", call(x=np.zeros((2, 0, 4))), ValueError, ["x"]),
    ("x integer", call(x=np.zeros((2, 3, 4), dtype=np.int64)), TypeError, ["x", "floating"]),
    ("x complex", call(x=np.zeros((2, 3, 4), dtype=np.complex128)), TypeError, ["x", "floating"]),
    ("x a list", call(x=X.tolist()), TypeError, ["x", "array"]),
    # params
    ("params not a dict", call(p=list(P.values())), TypeError, ["params", "dict"]),
    ("params missing w_v", call(p=without(P, "w_v")), ValueError, ["params", "w_v"]),
    ("params extra array", call(p=dict(P, bogus=np.zeros(3))), ValueError, ["params", "bogus"]),
    ("params misshapen", call(p=dict(P, w_2=np.zeros((2, 2, 4)))), ValueError,
     ["params['w_2']", "(2, 2, 5)", "(2, 2, 4)"]),
    ("params misshapen bias", call(p=dict(P, b_o=np.zeros((1, 4)))), ValueError, ["params['b_o']"]),
    ("params integer", call(p=dict(P, w_v=np.zeros((4, 4), dtype=int))), TypeError, ["params['w_v']"]),
    ("params not arrays", call(p=dict(P, w_v=[[0.0] * 4] * 4)), TypeError, ["params['w_v']"]),
    ("params of another namespace", call(p=dict(P, w_v=torch.zeros(4, 4, dtype=torch.float64))), TypeError,
     ["params['w_v']", "namespace"]),
    ("params of x's namespace, other dtype",
     call(p={n: torch.tensor(a, dtype=torch.float32) for n, a in P.items()},
          x=torch.zeros(2, 3, 4, dtype=torch.float64)), TypeError, ["params['w_v']", "dtype"]),
    # a torch array on the meta device holds no data: torch's CPU matmul with one returned
    # uninitialised memory as y instead of failing
    ("params on another device than x",
     call(p=dict({n: torch.tensor(a) for n, a in P.items()}, w_v=torch.zeros(4, 4, dtype=torch.float64,
                                                                              device="meta")),
          x=torch.zeros(2, 3, 4, dtype=torch.float64)), ValueError, ["params['w_v']", "device", "meta"]),
    ("mixture arrays unprefixed",
     call(spec("mixture", components=("random", "dense")),
          p=dict(spec("random").init(0), mix_logits=np.zeros(2))),
     ValueError, ["params", "random.r"]),
    # key_padding_mask
    ("mask not boolean", call(key_padding_mask=np.ones((2, 3), dtype=int)), TypeError, ["key_padding_mask",
                                                                                        "boolean"]),
    ("mask float", call(key_padding_mask=np.ones((2, 3))), TypeError, ["key_padding_mask", "boolean"]),
    ("mask misshapen", call(key_padding_mask=np.ones((2, 4), dtype=bool)), ValueError, ["key_padding_mask",
                                                                                       "(2, 3)"]),
    ("mask rank 3", call(key_padding_mask=np.ones((2, 3, 3), dtype=bool)), ValueError, ["key_padding_mask"]),
    ("mask a list", call(key_padding_mask=[[True] * 3] * 2), TypeError, ["key_padding_mask"]),
    ("mask of another namespace", call(key_padding_mask=torch.ones(2, 3, dtype=torch.bool)), TypeError,
     ["key_padding_mask", "namespace"]),
    ("mask on another device than x",
     call(x=torch.zeros(2, 3, 4, dtype=torch.float64), key_padding_mask=torch.ones(2, 3, dtype=torch.bool,
                                                                                    device="meta")),
     ValueError, ["key_padding_mask", "device", "meta"]),
    ("mask with 2-D aft_conv", call(CONV2, x=X2, key_padding_mask=np.ones((1, 6), dtype=bool)), ValueError,
     ["key_padding_mask", "spatial_dims=2"]),
    # causal
    ("causal with 2-D aft_conv", call(CONV2, x=X2, causal=True), ValueError, ["causal", "spatial_dims=2"]),
    ("causal not a bool", call(causal="yes"), TypeError, ["causal"]),
    ("causal None", call(causal=None), TypeError, ["causal"]),
    ("even kernel, not causal", call(spec("aft_conv", kernel_size=2)), ValueError, ["kernel_size", "2"]),
    ("weights: mask misshapen", weights(key_padding_mask=np.ones((3, 3), dtype=bool)), ValueError,
     ["key_padding_mask"]),
    ("spec not a Spec", lambda: sr.apply("dense", P, X), TypeError, ["spec"]),
    # Spec
    ("unknown variant", lambda: spec("linformer"), ValueError, ["variant", "linformer"]),
    ("variant not a string", lambda: spec(3), ValueError, ["variant"]),
    ("unknown option", lambda: spec(foo=1), TypeError, ["foo"]),
    ("d_model zero", lambda: spec(d_model=0), ValueError, ["d_model"]),
    ("d_model a float", lambda: spec(d_model=4.0), ValueError, ["d_model"]),
    ("d_model a bool", lambda: spec(d_model=True), ValueError, ["d_model"]),
    ("max_len negative", lambda: spec(max_len=-1), ValueError, ["max_len"]),
    ("n_heads zero", lambda: spec(n_heads=0), ValueError, ["n_heads"]),
    ("n_heads not dividing d_model", lambda: spec(n_heads=3), ValueError, ["n_heads", "d_model=4"]),
    ("heads given to aft_full", lambda: spec("aft_full", n_heads=2), ValueError, ["n_heads", "aft_full"]),
    ("heads given to aft_simple", lambda: spec("aft_simple", n_heads=4), ValueError, ["n_heads"]),
    ("heads given to aft_local", lambda: spec("aft_local", n_heads=2, window=1), ValueError, ["n_heads"]),
    ("a * b != max_len", lambda: spec("factorized_dense", factors=(2, 3)), ValueError,
     ["factors", "max_len=5", "(2, 3)"]),
    ("factors not a pair", lambda: spec("factorized_dense", factors=(5,)), ValueError, ["factors"]),
    ("factors with a zero", lambda: spec("factorized_dense", max_len=4, factors=(0, 4)), ValueError,
     ["factors"]),
    ("tiling unknown", lambda: spec("factorized_dense", tiling="zigzag"), ValueError, ["tiling", "zigzag"]),
    ("k given to dense", lambda: spec(k=2), ValueError, ["k", "dense"]),
    ("window given to aft_full", lambda: spec("aft_full", window=2), ValueError, ["window", "aft_full"]),
    ("pos_rank given to aft_simple", lambda: spec("aft_simple", pos_rank=2), ValueError, ["pos_rank"]),
    ("kernel_size given to random", lambda: spec("random", kernel_size=3), ValueError, ["kernel_size"]),
    ("tiling given to a mixture without factorized_dense",
     lambda: spec("mixture", components=("random", "dense"), tiling="tile"), ValueError, ["tiling"]),
    ("factors given to dot_product", lambda: spec("dot_product", factors=(1, 5)), ValueError, ["factors"]),
    ("k missing", lambda: spec("factorized_random"), ValueError, ["k", "required"]),
    ("k missing in a mixture", lambda: spec("mixture", components=("factorized_random", "random")),
     ValueError, ["k", "required"]),
    ("k zero", lambda: spec("factorized_random", k=0), ValueError, ["k"]),
    ("window missing", lambda: spec("aft_local"), ValueError, ["window", "required"]),
    ("window zero", lambda: spec("aft_local", window=0), ValueError, ["window"]),
    ("pos_rank zero", lambda: spec("aft_full", pos_rank=0), ValueError, ["pos_rank"]),
    ("kernel_size missing", lambda: spec("aft_conv"), ValueError, ["kernel_size", "required"]),
    ("kernel_size zero", lambda: spec("aft_conv", kernel_size=0), ValueError, ["kernel_size"]),
    ("even kernel in 2-D", lambda: spec("aft_conv", kernel_size=2, spatial_dims=2), ValueError,
     ["kernel_size", "odd"]),
    ("spatial_dims a float", lambda: spec("aft_conv", kernel_size=3, spatial_dims=2.0), ValueError,
     ["spatial_dims", "2.0"]),
    ("spatial_dims 3", lambda: spec("aft_conv", kernel_size=3, spatial_dims=3), ValueError, ["spatial_dims"]),
    ("components missing", lambda: spec("mixture"), ValueError, ["components", "required"]),
    ("components a string", lambda: spec("mixture", components="random"), ValueError, ["components"]),
    ("components of one", lambda: spec("mixture", components=("random",)), ValueError, ["components"]),
    ("components repeated", lambda: spec("mixture", components=("random", "random")), ValueError,
     ["components"]),
    ("components unknown", lambda: spec("mixture", components=("random", "linformer")), ValueError,
     ["components", "linformer"]),
    # a set has no order, and mix_logits[i] weighs components[i]: which component got which logit
    # changed from one process to the next (string hashing is randomised per process)
    ("components a set", lambda: spec("mixture", components={"random", "dense"}), ValueError,
     ["components", "tuple"]),
    ("components a generator", lambda: spec("mixture", components=(c for c in ("random", "dense"))),
     ValueError, ["components", "generator"]),
    ("components an int", lambda: spec("mixture", components=3), ValueError, ["components", "3"]),
    ("components with an AFT", lambda: spec("mixture", components=("random", "aft_full")), ValueError,
     ["components", "aft_full"]),
    ("components with a mixture", lambda: spec("mixture", components=("random", "mixture")), ValueError,
     ["components"]),
    ("init dtype integer", lambda: DENSE.init(dtype="int32"), ValueError, ["dtype", "int32"]),
    ("init dtype unknown to NumPy", lambda: DENSE.init(dtype="bfloat16"), ValueError, ["dtype", "bfloat16"]),
    ("init seed a string", lambda: DENSE.init(seed="a"), TypeError, ["seed", "'a'"]),
    ("init seed negative", lambda: DENSE.init(seed=-1), ValueError, ["seed", "-1"]),
    # the cost formulas (Spec.flops of a negative batch was a negative count)
    ("flops batch negative", lambda: DENSE.flops(-1, 3), ValueError, ["batch", "-1"]),
    ("flops batch fractional", lambda: DENSE.flops(1.5, 3), ValueError, ["batch", "1.5"]),
    ("flops length over max_len", lambda: DENSE.flops(1, 6), ValueError, ["length", "max_len=5", "6"]),
    ("memory length zero", lambda: DENSE.memory(1, 0), ValueError, ["length", "0"]),
    ("memory batch a bool", lambda: DENSE.memory(True, 3), ValueError, ["batch", "True"]),
]


@pytest.mark.parametrize("what, fn, kind, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_clear_message(what, fn, kind, words):
    with pytest.raises(kind) as info:
        fn()
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{what}: {w!r} not in {msg!r}"
    if what != "unknown option":  # that one is Python's own dataclass message, which names 'foo'
        # what was expected, in one of the phrasings the spec uses ...
        assert any(w in msg for w in ("expected", "required", "exceeds", "not an option", "not defined",
                                      "needs")), msg
        # ... and what came instead
        assert any(w in msg for w in ("got", "missing", "unexpected")), msg


def test_spec_is_frozen():
    with pytest.raises(AttributeError):
        DENSE.d_model = 8


def test_arrays_on_another_array_api_strict_device_are_refused_by_name():
    # array_api_strict refuses to combine devices, but deep inside the math and without naming the
    # argument ("Arrays from two different devices ... can not be combined")
    xs = pytest.importorskip("array_api_strict")
    other = xs.Device("device1")
    x = xs.asarray(X)
    p = {n: xs.asarray(a) for n, a in P.items()}
    with pytest.raises(ValueError, match=r"params\['w_v'\]: expected .*device"):
        sr.apply(DENSE, dict(p, w_v=xs.asarray(P["w_v"], device=other)), x)
    with pytest.raises(ValueError, match=r"key_padding_mask: expected .*device"):
        sr.apply(DENSE, p, x, key_padding_mask=xs.asarray(np.ones((2, 3), dtype=bool), device=other))
    # x itself on another device is fine: NumPy parameters follow it there
    y = sr.apply(DENSE, P, xs.asarray(X, device=other))
    assert y.device == other
