"""The Flax NNX module: canonical parameter names in, the same names and values out, the reference's
output, and it trains."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the jax extra is not installed")
nnx = pytest.importorskip("flax.nnx", reason="flax (the jax extra) is not installed")
jnp = jax.numpy

from jax_helpers import CASES, TOL, inputs, rel_err  # noqa: E402

import synth_ref as sr  # noqa: E402
from synth_ref.backends import jax_pallas as jp  # noqa: E402
from synth_ref.backends.jax_nnx import SynthLayer  # noqa: E402

NAMED = ["mixture", "dense", "aft_conv", "aft_full-rank"]


@pytest.mark.parametrize("case", NAMED)
def test_state_paths_are_the_canonical_names(case):
    spec = CASES[case]
    params, x, _ = inputs(spec)
    layer = SynthLayer(spec, params)
    flat = nnx.to_flat_state(nnx.state(layer, nnx.Param))
    paths = {".".join(map(str, path)): var[...] for path, var in flat}
    assert sorted(paths) == sorted(spec.param_shapes())
    for name, a in paths.items():
        assert a.shape == spec.param_shapes()[name] and a.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a), params[name].astype(np.float32))


@pytest.mark.parametrize("case", NAMED)
def test_read_back_params_give_the_same_output(case):
    spec = CASES[case]
    params, x, kpm = inputs(spec, batch=2, mask=spec.spatial_dims != 2)
    layer = SynthLayer(spec, params)
    back = layer.params()
    assert set(back) == set(spec.param_shapes())
    xj = jnp.asarray(x, jnp.float32)
    mj = None if kpm is None else jnp.asarray(kpm)
    y = layer(xj, key_padding_mask=mj)
    # identical to the adapter's dispatch on the read-back arrays (the same path: bit for bit) ...
    np.testing.assert_array_equal(np.asarray(y), np.asarray(jp.apply(spec, back, xj, key_padding_mask=mj)))
    # ... and to the float64 NumPy reference on the original arrays
    assert rel_err(y, sr.apply(spec, params, x, key_padding_mask=kpm)) <= TOL["float32"]
    # NumPy copies of the read-back arrays load into a fresh module unchanged
    again = SynthLayer(spec, {k: np.asarray(v) for k, v in back.items()})
    np.testing.assert_array_equal(np.asarray(again(xj, key_padding_mask=mj)), np.asarray(y))


def test_default_init_is_spec_init():
    spec = CASES["random"]
    layer = SynthLayer(spec, seed=3)
    for name, a in spec.init(seed=3).items():
        np.testing.assert_array_equal(np.asarray(layer.params()[name]), a.astype(np.float32))


def test_load_replaces_values_in_place():
    spec = CASES["random"]
    layer = SynthLayer(spec, seed=0)
    new = spec.init(seed=1)
    layer.load(new)
    np.testing.assert_array_equal(np.asarray(layer.r[...]), new["r"].astype(np.float32))


def test_bfloat16_and_float64():
    spec = CASES["dense"]
    params, x, _ = inputs(spec)
    gold = sr.apply(spec, params, x)
    layer = SynthLayer(spec, params, dtype="bfloat16")
    y = layer(jnp.asarray(x, jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and rel_err(y, gold) <= TOL["bfloat16"]
    with jax.enable_x64(True):
        layer64 = SynthLayer(spec, params, dtype="float64")
        y64 = layer64(jnp.asarray(x, jnp.float64))
        assert y64.dtype == jnp.float64 and rel_err(y64, gold) <= TOL["float64"]


@pytest.mark.parametrize("case", ["dense"])  # the casts are the layer's, not the variant's
def test_float32_parameters_with_bfloat16_compute(case):
    """Mixed precision (Flax's dtype / param_dtype): float32 parameters, bfloat16 compute.  The
    output is bfloat16 and within bfloat16's tolerance of float64 gold; the gradients are float32,
    and close to the all-float32 layer's (bfloat16's tolerance: they went through bfloat16 math)."""
    spec = CASES[case]
    params, x, _ = inputs(spec)
    gold = sr.apply(spec, params, x)
    mixed = SynthLayer(spec, params, compute_dtype="bfloat16")
    plain = SynthLayer(spec, params)
    assert mixed.w_v[...].dtype == jnp.float32
    for xin in (jnp.asarray(x, jnp.bfloat16), jnp.asarray(x, jnp.float32)):  # x is cast, as Flax does
        y = mixed(xin)
        assert y.dtype == jnp.bfloat16 and rel_err(y, gold) <= TOL["bfloat16"]

    def loss(m):
        return jnp.sum(m(jnp.asarray(x, jnp.float32), causal=True).astype(jnp.float32) ** 2)

    g_mixed = nnx.grad(loss)(mixed)
    g_plain = nnx.grad(loss)(plain)
    for name in ("w_v", "w_o"):
        gm, gp = getattr(g_mixed, name)[...], getattr(g_plain, name)[...]
        assert gm.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(gm)))
        assert rel_err(gm, np.asarray(gp, np.float64)) <= 4 * TOL["bfloat16"], name
    with pytest.raises(TypeError, match="x: expected a floating-point array"):
        mixed(jnp.ones(x.shape, jnp.int32))
    with pytest.raises(ValueError, match="compute_dtype: expected"):
        SynthLayer(spec, params, compute_dtype="int8")


@pytest.mark.parametrize("bad, match", [
    (lambda p: {k: v for k, v in p.items() if k != "w_v"}, r"params: expected exactly .*missing \['w_v'\]"),
    (lambda p: {**p, "extra": np.zeros(2)}, r"unexpected \['extra'\]"),
    (lambda p: {**p, "r": np.zeros((2, 3, 3))},
     r"params\['r'\]: expected shape \(2, 12, 12\); got \(2, 3, 3\)"),
])
def test_bad_params_name_the_problem(bad, match):
    spec = CASES["random"]
    with pytest.raises(ValueError, match=match):
        SynthLayer(spec, bad(spec.init()))


def test_bad_arguments_name_the_problem():
    spec = CASES["random"]
    with pytest.raises(TypeError, match="spec: expected a synth_ref.Spec"):
        SynthLayer("random")
    with pytest.raises(ValueError, match="path: expected one of"):
        SynthLayer(spec, path="gpu")
    with pytest.raises(ValueError, match="dtype: expected"):
        SynthLayer(spec, dtype="int32")
    with jax.enable_x64(False), pytest.raises(ValueError, match="dtype: float64 needs jax_enable_x64"):
        SynthLayer(spec, dtype="float64")


@pytest.mark.parametrize("case", ["mixture", "aft_full"])
def test_trains(case):
    """A student layer regresses a teacher's outputs with Adam: the loss must fall by 3x in 30 steps.
    The mixture case also trains mix_logits and every component's arrays through '.' names."""
    optax = pytest.importorskip("optax", reason="optax comes with flax")
    spec = CASES[case]
    teacher = SynthLayer(spec, inputs(spec, seed=1)[0])
    student = SynthLayer(spec, spec.init(seed=2))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, spec.max_len, spec.d_model)), jnp.float32)
    target = teacher(x, causal=True)
    opt = nnx.Optimizer(student, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        def loss_fn(m):
            return jnp.mean((m(x, causal=True) - target) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    before = {k: np.asarray(v) for k, v in student.params().items()}
    losses = [float(step(student, opt)) for _ in range(30)]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] / 3, losses
    moved = [k for k, v in student.params().items() if not np.array_equal(np.asarray(v), before[k])]
    assert sorted(moved) == sorted(spec.param_shapes()), "every parameter must receive updates"
