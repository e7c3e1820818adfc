"""The reference math under jax.jit: forward and VJP for every variant, option, causal and key padding
setting, in float32, float16, bfloat16 and (with jax_enable_x64) float64.

Forward gold: the NumPy float64 reference.  Gradient gold: torch float64 autograd through the same
reference (a second autodiff system), so a JAX-specific gradient defect cannot cancel out.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the jax extra is not installed")
jnp = jax.numpy
pytest.importorskip("torch", reason="torch provides the float64 gradient gold")

from jax_helpers import CASES, GRAD_TOL, TOL, grad_errors, inputs, options, rel_err, torch_gold_vjp  # noqa: E402

import synth_ref as sr  # noqa: E402

# mixture-flash (four components) is a subset of "mixture" (all five) as far as the reference goes
JIT_CASES = [c for c in CASES if c != "mixture-flash"]


def _fwd_vjp(spec, causal):
    """One jitted function returning (y, dx, dparams): a single compile covers forward and backward."""

    def run(params, x, dy, mask):
        def f(p, xx):
            return sr.apply(spec, p, xx, causal=causal, key_padding_mask=mask)

        y, pull = jax.vjp(f, params, x)
        dparams, dx = pull(dy)
        return y, dx, dparams

    return jax.jit(run)


def _check(spec, dtype, causal, masked):
    params, x, kpm = inputs(spec, batch=3, mask=masked)
    dy = np.random.default_rng(1).standard_normal(x.shape)
    gold_y = sr.apply(spec, params, x, causal=causal, key_padding_mask=kpm)
    gold_dx, gold_dp = torch_gold_vjp(spec, params, x, dy, causal, kpm)
    dt = getattr(jnp, dtype)
    jp = {k: jnp.asarray(v, dtype=dt) for k, v in params.items()}
    y, dx, dp = _fwd_vjp(spec, causal)(jp, jnp.asarray(x, dt), jnp.asarray(dy, dt),
                                       None if kpm is None else jnp.asarray(kpm))
    assert y.dtype == dt and dx.dtype == dt and all(v.dtype == dt for v in dp.values())
    where = f"{spec.variant} causal={causal} masked={masked} {dtype}"
    assert rel_err(y, gold_y) <= TOL[dtype], where
    errs = grad_errors(dx, dp, gold_dx, gold_dp)
    bad = {k: v for k, v in errs.items() if v > GRAD_TOL[dtype]}
    assert not bad, f"{where}: gradient errors {bad}"


@pytest.mark.parametrize("case", JIT_CASES)
def test_every_option_float32(case):
    spec = CASES[case]
    for causal, masked in options(spec):
        _check(spec, "float32", causal, masked)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", JIT_CASES)
def test_half_precisions(case, dtype):
    spec = CASES[case]
    causal, masked = options(spec)[-1]  # the richest setting the spec accepts
    _check(spec, dtype, causal, masked)


@pytest.mark.parametrize("case", JIT_CASES)
def test_float64_with_x64(case):
    spec = CASES[case]
    causal, masked = options(spec)[-1]
    with jax.enable_x64(True):
        _check(spec, "float64", causal, masked)


def test_float64_without_x64_is_not_silently_float32():
    """Without x64, JAX cannot hold float64: asking for it yields float32 arrays, never float64 math
    that quietly lost precision while claiming float64.  The adapter (backends.jax) handles this by
    entering enable_x64 itself; here we only pin what JAX does, so a change in JAX is noticed."""
    with jax.enable_x64(False):
        a = jnp.asarray(np.ones(3), dtype=jnp.float64)
    assert a.dtype == jnp.float32


def test_gradients_survive_a_compiler_that_rounds_a_recomputed_operand_differently():
    """XLA may evaluate one fused operand twice with different rounding (XLA:GPU rematerialization,
    jax-ml/jax#40564).  ``max``'s derivative recounts the entries equal to the max from its operand:
    when the recomputed logits round differently, the count is 0 and the whole gradient is 0/0 = NaN.
    XLA:CPU does this at --xla_backend_optimization_level=0 (the mixture's alpha_1 S_1 + alpha_2 S_2
    gave 84 NaN entries in dx before _common.row_max): the mixture of all five components in every
    setting is checked there, in a fresh process (XLA reads its flags once, at start).  Which other
    programs meet the hazard depends on XLA's fusion choices: the nox jax conformance sessions run
    their whole grid at that level (with ``max``, 12 of the jax grid's mixture gradient checks fail
    there, 11 of them in float64)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    script = (
        "import json, test_jax_jit as t\n"
        "spec = t.CASES['mixture']\n"
        "for causal, masked in t.options(spec):\n"
        "    t._check(spec, 'float32', causal, masked)\n"
        "print(json.dumps({'checked': len(t.options(spec))}))\n"
    )
    path = os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"checked": len(options(CASES["mixture"]))}
