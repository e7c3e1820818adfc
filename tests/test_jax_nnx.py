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
from synth_ref.backends.jax_nnx import Frozen, SynthLayer  # noqa: E402

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
    with pytest.raises(ValueError, match=r"dropout: expected a probability in \[0, 1\)"):
        SynthLayer(spec, dropout=1.0)
    with pytest.raises(ValueError, match="dropout: variant 'aft_full' has no attention weights to drop"):
        SynthLayer(CASES["aft_full"], dropout=0.1)
    with pytest.raises(ValueError, match="freeze_random: variant 'dense' has no random synthesizer arrays"):
        SynthLayer(CASES["dense"], freeze_random=True)
    with pytest.raises(TypeError, match="x: expected a jax.Array .*; got ndarray"):
        SynthLayer(spec)(np.zeros((1, 3, spec.d_model), np.float32))


def _opt_step(layer, x):
    """One SGD step on a squared-output loss, updating nnx.Param only; returns the gradient state."""
    optax = pytest.importorskip("optax", reason="optax comes with flax")
    opt = nnx.Optimizer(layer, optax.sgd(0.1), wrt=nnx.Param)
    grads = nnx.grad(lambda m: jnp.sum(m(x, causal=True) ** 2))(layer)
    opt.update(layer, grads)
    return grads


@pytest.mark.parametrize("case", ["random", "factorized_random", "mixture"])
def test_random_r_trains_or_stays_frozen(case):
    """freeze_random holds exactly the random arrays (the paper's "Fixed Random") as Frozen, under
    their canonical paths; they keep their values through a training step that moves the rest, and
    without the flag they train like any parameter."""
    spec = CASES[case]
    r_names = {n for n in spec.param_shapes() if n.rpartition(".")[2] in sr.variants.RANDOM_ARRAYS}
    params, x, _ = inputs(spec)
    x = jnp.asarray(x, jnp.float32)
    for frozen in (False, True):
        layer = SynthLayer(spec, params, freeze_random=frozen)
        paths = {".".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(layer, Frozen))}
        assert paths == (r_names if frozen else set())
        before = {k: np.asarray(v) for k, v in layer.params().items()}
        _opt_step(layer, x)
        moved = {k for k, v in layer.params().items() if not np.array_equal(np.asarray(v), before[k])}
        assert moved == set(spec.param_shapes()) - (r_names if frozen else set())
        # the values still load and read back under the canonical names
        layer.load(params)
        assert all(np.allclose(np.asarray(v), params[k], atol=1e-6) for k, v in layer.params().items())


def test_dropout_is_unbiased_and_only_in_training():
    """E[dropout(P)] = P: over many independent draws (one per batch slot) the mean output is the
    eval-mode output, which is the reference's; the draws differ from call to call, under nnx.jit too."""
    spec = sr.Spec("dense", d_model=4, n_heads=2, max_len=4)
    params = spec.init(seed=0)
    layer = SynthLayer(spec, params, dropout=0.5, seed=1)
    x1 = np.random.default_rng(0).standard_normal((1, 3, 4)).astype(np.float32)
    layer.eval()
    y_eval = np.asarray(layer(jnp.asarray(x1), causal=True))
    np.testing.assert_allclose(y_eval, sr.apply(spec, params, x1.astype(np.float64), causal=True),
                               atol=TOL["float32"], rtol=0)
    layer.train()
    n = 4000
    ys = np.asarray(layer(jnp.asarray(np.broadcast_to(x1, (n, 3, 4))), causal=True), np.float64)
    assert ys.std(0).max() > 0.01  # the draws really differ
    mean, sem = ys.mean(0), ys.std(0) / n**0.5
    assert (np.abs(mean - y_eval[0]) <= 5 * sem + 1e-6).all()  # 5 standard errors
    call = nnx.jit(lambda m, x: m(x, causal=True))
    a, b = call(layer, jnp.asarray(x1)), call(layer, jnp.asarray(x1))
    assert not np.array_equal(np.asarray(a), np.asarray(b))


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
