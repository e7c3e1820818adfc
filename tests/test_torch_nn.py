"""MixingLayer: canonical parameters, the reference round trip, dropout, frozen R, dtypes,
torch.compile, autocast and input errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch layers need torch (pip install synth-ref[torch])")

import synth_ref as sr  # noqa: E402
from synth_ref.backends.torch_nn import MixingLayer  # noqa: E402

#: Largest |layer - reference| allowed, by the dtype the layer computes in, and why.
TOL = {
    # float64 layer vs float64 reference: the same operations, so only summation order can differ.
    "float64": 1e-12,
    # a compiled float32 graph may fuse and reorder sums: a few ulps of O(1) values over d=8.
    "float32": 1e-5,
    # 8 (bf16) / 11 (fp16) significand bits over ~4 chained products of O(1) values at d=8:
    # a few units of 2^-8 and 2^-11 respectively.
    "bfloat16": 6e-2,
    "float16": 1e-2,
}

#: One small spec per variant (and a 3-component mixture, whose arrays carry '<component>.' names).
SPECS = {
    "dot_product": dict(n_heads=2),
    "dense": dict(n_heads=2),
    "random": dict(n_heads=2),
    "factorized_dense": dict(n_heads=2, factors=(2, 4)),
    "factorized_random": dict(n_heads=2, k=3),
    "mixture": dict(n_heads=2, components=("dense", "random", "factorized_random"), k=2),
    "aft_full": dict(),
    "aft_simple": dict(),
    "aft_local": dict(window=2),
    "aft_conv": dict(n_heads=2, kernel_size=3),
}


def make_spec(variant, d_model=8, max_len=8):
    return sr.Spec(variant, d_model=d_model, max_len=max_len, **SPECS[variant])


def inputs(batch=2, length=6, d=8, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, d, generator=g, dtype=torch.float64).to(dtype)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, -2:] = False  # padding at the end of the first sequence
    return x, mask


def as_numpy(params):
    return {k: v.detach().cpu().double().numpy() for k, v in params.items()}


@pytest.mark.parametrize("variant", SPECS)
def test_state_dict_keys_are_the_canonical_names(variant):
    spec = make_spec(variant)
    layer = MixingLayer(spec, seed=0)
    assert list(layer.state_dict()) == list(spec.param_shapes())
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == spec.param_shapes()


@pytest.mark.parametrize("variant", SPECS)
def test_init_and_reference_round_trip(variant):
    """A layer built with seed s holds spec.init(s); load_state_dict takes spec.init arrays; the
    reference reading the layer's weights back gives the layer's output."""
    spec = make_spec(variant)
    layer = MixingLayer(spec, seed=3, dtype=torch.float64)
    want = spec.init(seed=3)
    got = as_numpy(layer.canonical_params())
    assert all(np.array_equal(got[k], want[k]) for k in want)

    other = MixingLayer(spec, seed=9, dtype=torch.float64)
    other.load_state_dict({k: torch.from_numpy(v) for k, v in spec.init(seed=5).items()})
    assert all(np.array_equal(v, spec.init(seed=5)[k]) for k, v in as_numpy(other.canonical_params()).items())

    x, mask = inputs()
    for causal, kpm in ((False, None), (True, mask)):
        y = layer(x, causal=causal, key_padding_mask=kpm).detach().numpy()
        ref = sr.apply(spec, as_numpy(layer.canonical_params()), x.numpy(), causal=causal,
                       key_padding_mask=None if kpm is None else kpm.numpy())
        np.testing.assert_allclose(y, ref, rtol=0, atol=TOL["float64"])


@pytest.mark.parametrize("variant", ["dense", "mixture"])
def test_load_state_dict_takes_spec_init_arrays(variant):
    """load_state_dict takes spec.init's NumPy arrays as they come (also inside a bigger model,
    and a mixture's '<component>.<name>' entries), cast to the layer's dtype; a wrong shape is
    still torch's strict error naming the entry."""
    spec = make_spec(variant)
    want = spec.init(seed=5)
    layer = MixingLayer(spec, seed=0)
    layer.load_state_dict(want)
    got = {k: v.detach().numpy() for k, v in layer.canonical_params().items()}
    assert all(np.array_equal(got[k], want[k].astype(np.float32)) for k in want)
    outer = torch.nn.Sequential(MixingLayer(spec, seed=0, dtype=torch.float64))
    outer.load_state_dict({f"0.{k}": v for k, v in want.items()})
    assert all(np.array_equal(as_numpy(outer[0].canonical_params())[k], want[k]) for k in want)
    with pytest.raises(RuntimeError, match="size mismatch for w_v"):
        layer.load_state_dict({**want, "w_v": np.zeros((8, 7))})


def test_float32_layer_holds_float32_init():
    spec = make_spec("mixture")
    layer = MixingLayer(spec, seed=4)
    want = spec.init(seed=4, dtype="float32")
    got = {k: v.detach().numpy() for k, v in layer.canonical_params().items()}
    assert all(got[k].dtype == np.float32 and np.array_equal(got[k], want[k]) for k in want)


def test_seed_none_follows_torch_manual_seed():
    spec = make_spec("dense")
    torch.manual_seed(0)
    a = MixingLayer(spec).state_dict()
    torch.manual_seed(0)
    b = MixingLayer(spec).state_dict()
    c = MixingLayer(spec).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["w_v"], c["w_v"])


@pytest.mark.parametrize("variant", ["random", "factorized_random", "mixture"])
def test_random_r_trains_or_stays_frozen(variant):
    spec = make_spec(variant)
    r_names = [n for n in spec.param_shapes() if n.rpartition(".")[2] in ("r", "r_1", "r_2")]
    x, _ = inputs(dtype=torch.float32)
    for frozen in (False, True):
        layer = MixingLayer(spec, seed=0, freeze_random=frozen)
        before = {n: t.detach().clone() for n, t in layer.canonical_params().items()}
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        layer(x, causal=True).square().sum().backward()
        opt.step()
        after = layer.canonical_params()
        trainable = {n for n, _ in layer.named_parameters()}
        for n in r_names:
            assert (n in trainable) is not frozen
            assert (not torch.equal(before[n], after[n])) is not frozen
            assert n in layer.state_dict()  # saved either way
        assert not torch.equal(before["w_v"], after["w_v"])  # the rest always trains


def test_mixture_logits_and_component_arrays_get_gradients():
    spec = make_spec("mixture")
    layer = MixingLayer(spec, seed=0)
    x, mask = inputs(dtype=torch.float32)
    layer(x, causal=True, key_padding_mask=mask).square().sum().backward()
    for name, t in layer.canonical_params().items():
        assert t.grad is not None and torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name


def test_dropout_is_unbiased_and_only_in_training():
    """E[dropout(P)] = P, so over many independent draws (one per batch slot) the mean output is
    the eval output; eval mode applies no dropout at all."""
    spec = sr.Spec("dense", d_model=4, n_heads=2, max_len=4)
    layer = MixingLayer(spec, seed=0, dropout=0.5, dtype=torch.float64)
    x1, _ = inputs(batch=1, length=3, d=4)
    layer.eval()
    y_eval = layer(x1, causal=True)
    np.testing.assert_allclose(y_eval.detach().numpy(),
                               sr.apply(spec, as_numpy(layer.canonical_params()), x1.numpy(), causal=True),
                               atol=TOL["float64"], rtol=0)
    layer.train()
    torch.manual_seed(0)
    n = 4000
    ys = layer(x1.expand(n, -1, -1), causal=True).detach()
    assert layer.last_path.startswith("eager: dropout")
    assert ys.std(0).max() > 0.01  # the draws really differ
    mean, sem = ys.mean(0), ys.std(0) / n**0.5
    assert ((mean - y_eval[0]).abs() <= 5 * sem + 1e-12).all()  # 5 standard errors


@pytest.mark.parametrize("variant", ["dense", "aft_local"])
def test_torch_compile_matches_eager(variant):
    spec = make_spec(variant)
    layer = MixingLayer(spec, seed=0)
    x, mask = inputs(dtype=torch.float32)
    y = layer(x, causal=True, key_padding_mask=mask)
    grads = torch.autograd.grad(y.square().sum(), list(layer.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(layer)
    with warnings.catch_warnings():
        # array_api_compat's lru_cache'd namespace lookup: dynamo traces through it, harmlessly.
        warnings.filterwarnings("ignore", message=".*lru_cache.*")
        yc = compiled(x, causal=True, key_padding_mask=mask)
        grads_c = torch.autograd.grad(yc.square().sum(), list(layer.parameters()))
    np.testing.assert_allclose(yc.detach().numpy(), y.detach().numpy(), atol=TOL["float32"], rtol=0)
    for g, gc in zip(grads, grads_c, strict=True):
        np.testing.assert_allclose(gc.numpy(), g.numpy(), atol=10 * TOL["float32"], rtol=1e-5)


def _close(a, b, dtype):
    err = (a.detach().double() - b.detach().double()).abs().max().item()
    assert err <= TOL[dtype], f"{dtype}: max |error| {err} > {TOL[dtype]}"


@pytest.mark.parametrize("variant", SPECS)
def test_autocast_and_half_precision_parameters(variant):
    spec = make_spec(variant)
    x, mask = inputs(dtype=torch.float32)
    layer = MixingLayer(spec, seed=0)
    y = layer(x, causal=True, key_padding_mask=mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = layer(x, causal=True, key_padding_mask=mask)
    _close(ya, y, "bfloat16")
    ya.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.dtype == torch.float32 for p in layer.parameters())
    for dt in (torch.bfloat16, torch.float16):
        low = MixingLayer(spec, seed=0, dtype=dt)
        yl = low(x.to(dt), causal=True, key_padding_mask=mask)
        assert yl.dtype == dt
        _close(yl, y, str(dt).removeprefix("torch."))
        yl.float().square().sum().backward()
        assert all(torch.isfinite(p.grad).all() and p.grad.dtype == dt for p in low.parameters())


def test_autocast_takes_input_in_the_autocast_dtype():
    """Under autocast the layer before (nn.Linear, an earlier MixingLayer's projection) hands over
    bfloat16: the layer takes it as nn.Linear and nn.MultiheadAttention do, with the numbers of the
    same values given in float32 (the cast up is exact).  Outside autocast, or in another dtype than
    autocast's, a dtype other than the layer's is still an error."""
    spec = make_spec("dense")
    layer = MixingLayer(spec, seed=0)
    x, mask = inputs(dtype=torch.float32)
    xb = x.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = layer(xb.float(), causal=True, key_padding_mask=mask)
        got = layer(xb, causal=True, key_padding_mask=mask)
        assert torch.equal(got, want)
        with pytest.raises(TypeError, match="x: expected the layer's dtype torch.float32"):
            layer(x.to(torch.float16))
    with pytest.raises(TypeError, match="x: expected the layer's dtype torch.float32"):
        layer(xb)


def test_cpu_takes_the_reference_path_visibly(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layer = MixingLayer(make_spec("random"), seed=0)
    layer(inputs(dtype=torch.float32)[0])
    assert layer.last_path.startswith("eager: CPU tensor")
    strict = MixingLayer(make_spec("random"), seed=0, kernels="always")
    with pytest.raises(RuntimeError, match="kernels='always'.*CPU tensor"):
        strict(inputs(dtype=torch.float32)[0])


def _layer(variant="dense", **kw):
    return MixingLayer(make_spec(variant), seed=0, **kw)


BAD_CALLS = [
    # (what, call, error type, message fragment)
    ("x not a tensor", lambda: _layer()(np.zeros((2, 3, 8), np.float32)), TypeError,
     "x: expected a torch.Tensor"),
    ("x of rank 2", lambda: _layer()(torch.zeros(3, 8)), ValueError, r"x: expected shape \(batch, length"),
    ("wrong d_model", lambda: _layer()(torch.zeros(2, 3, 6)), ValueError, "d_model=8"),
    ("too long", lambda: _layer()(torch.zeros(2, 9, 8)), ValueError, "exceeds max_len=8"),
    ("integer x", lambda: _layer()(torch.zeros(2, 3, 8, dtype=torch.int64)), TypeError, "real floating"),
    ("x dtype vs layer", lambda: _layer()(torch.zeros(2, 3, 8, dtype=torch.float64)), TypeError,
     "x: expected the layer's dtype torch.float32"),
    ("causal not bool", lambda: _layer()(torch.zeros(2, 3, 8), causal=1), TypeError,
     "causal: expected True or False"),
    ("mask not bool", lambda: _layer()(torch.zeros(2, 3, 8), key_padding_mask=torch.ones(2, 3)), TypeError,
     "key_padding_mask: expected a boolean"),
    ("mask shape",
     lambda: _layer()(torch.zeros(2, 3, 8), key_padding_mask=torch.ones(2, 4, dtype=torch.bool)),
     ValueError, r"key_padding_mask: expected shape \(batch, length\) = \(2, 3\)"),
    ("mask numpy", lambda: _layer()(torch.zeros(2, 3, 8), key_padding_mask=np.ones((2, 3), bool)), TypeError,
     "key_padding_mask: expected a boolean torch.Tensor"),
    ("dropout > 1", lambda: _layer(dropout=1.5), ValueError, r"dropout: expected a probability in \[0, 1\)"),
    ("dropout on AFT", lambda: _layer("aft_full", dropout=0.1), ValueError, "no attention weights to drop"),
    ("freeze nothing", lambda: _layer(freeze_random=True), ValueError,
     r"freeze_random: variant 'dense' has no random synthesizer arrays"),
    ("freeze not bool", lambda: _layer("random", freeze_random="yes"), TypeError,
     "freeze_random: expected True or False"),
    ("kernels mode", lambda: _layer(kernels="yes"), ValueError, "kernels: expected one of"),
    ("kernels always, dropout in training",
     lambda: _layer(kernels="always", dropout=0.1)(torch.zeros(2, 3, 8)), RuntimeError,
     "kernels='always': no fused kernel runs here: dropout on the attention weights"),
    ("spec type", lambda: MixingLayer("dense"), TypeError, "spec: expected a synth_ref.Spec"),
    ("load missing", lambda: _layer().load_canonical({"w_v": np.zeros((8, 8))}), ValueError,
     r"missing \['b_v'"),
    ("load shape", lambda: _layer().load_canonical({**make_spec("dense").init(), "w_v": np.zeros((8, 7))}),
     ValueError, r"params\['w_v'\]: expected shape \(8, 8\); got \(8, 7\)"),
]


@pytest.mark.parametrize("what, call, exc, match", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_input_gets_a_clear_error(what, call, exc, match):
    with pytest.raises(exc, match=match):
        call()
