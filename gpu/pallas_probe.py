"""Do the JAX Pallas kernels lower and run on this machine's accelerator?  (gpu/run.py, before the
conformance suite spends minutes on a path that cannot compile.)

The kernels (synth_ref/backends/jax_pallas_flash.py, jax_pallas_aft.py) are written for the TPU
lowering (pltpu.VMEM scratch, TPU compiler parameters); whether JAX's GPU lowering accepts them is
what this finds out.  For one flash case (dot_product) and one AFT case (aft_full), float32, it runs
forward and vjp under jax.jit on ``--path`` (default ``pallas``; ``pallas_interpret`` proves the
script on CPU) and checks the output against the float64 NumPy reference.  Prints one JSON line:
``{"platform": ..., "path": ..., "flash": "ok" | "<error>", "aft": ...}``; exit status 0 unless the
script itself breaks, so that the caller reads the verdict from the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _probe(spec, path) -> str:
    import jax
    import jax.numpy as jnp

    import synth_ref as sr
    from synth_ref.backends import jax_pallas as jp

    impl = jp.plan(spec, path=path, dtype=jnp.float32)
    if impl == "reference":
        return f"not a kernel case on path {path!r} (plan says reference)"
    rng = np.random.default_rng(0)
    # init's zero arrays (biases, pos_bias, AFT-conv's gain) drawn too, so every term counts
    params = {k: v if np.any(v) else 0.3 * rng.standard_normal(v.shape) for k, v in spec.init(seed=0).items()}
    x = rng.standard_normal((2, 32, spec.d_model))
    gold = np.asarray(sr.apply(spec, params, x, causal=True))

    @jax.jit
    def run(p, xx):
        y, pull = jax.vjp(lambda a, b: jp.apply(spec, a, b, causal=True, path=path), p, xx)
        return y, pull(jnp.ones_like(y))

    try:
        y, (dp, dx) = run({k: jnp.asarray(v, jnp.float32) for k, v in params.items()},
                          jnp.asarray(x, jnp.float32))
        y = np.asarray(y, np.float64)
        finite = bool(np.isfinite(y).all() and np.isfinite(np.asarray(dx)).all())
    except Exception as exc:  # noqa: BLE001 - the verdict is the error, whatever it is
        # str(exc), not the formatted exception: JAX appends a note about its filtered frames
        msg = " ".join(str(exc).split())
        return f"{impl}: {type(exc).__name__}: {msg[:600]}"
    err = float(np.max(np.abs(y - gold)) / max(np.max(np.abs(gold)), 1e-30))
    if not finite or not err <= 1e-3:  # float32 kernel vs float64 reference: far under this
        return f"{impl}: ran but wrong (max rel. error {err:.3g}, finite={finite})"
    return "ok"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", default="pallas", help="jax_pallas path to probe (pallas, pallas_interpret)")
    args = ap.parse_args(argv)
    import jax

    import synth_ref as sr
    from synth_ref.backends import jax_plan

    # The adapter refuses the compiled kernels off jax_plan.PALLAS_PLATFORMS (TPU) before JAX sees
    # them; lift that here so that the verdict is JAX's own lowering on this platform.  Should one
    # come back "ok", PALLAS_PLATFORMS is what to widen (the suite's run after this one still
    # refuses).
    jax_plan.PALLAS_PLATFORMS = (*jax_plan.PALLAS_PLATFORMS, jax.default_backend())
    out = {"platform": jax.default_backend(), "devices": [str(d) for d in jax.devices()], "path": args.path,
           "jax": jax.__version__}
    cases = {"flash": sr.Spec("dot_product", d_model=16, n_heads=2, max_len=32),
             "aft": sr.Spec("aft_full", d_model=16, max_len=32)}
    for name, spec in cases.items():
        out[name] = _probe(spec, args.path)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
