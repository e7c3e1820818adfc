"""Gold values, the reference rerun on a backend in low precision, and the finite-difference check.

* forward gold: :func:`synth_ref.apply` on NumPy float64 arrays (the case's inputs, already rounded
  to the checked dtype and upcast);
* gradient gold: torch autograd of the same reference in float64 on CPU, itself checked against
  central finite differences of the NumPy reference by :func:`finite_difference_check`;
* ``ref_dtype``: the reference run on the backend's own arrays in the checked dtype (torch autograd
  or jax.vjp for its gradient); where the adapter's arrays are of no namespace the reference runs
  on, the reference on torch CPU in that dtype stands in (the report says so);
* sensitivity: gold on inputs perturbed by one unit roundoff (``tolerances`` says why).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib

import numpy as np

import synth_ref as sr

from .cases import Inputs


class GoldUnavailable(RuntimeError):
    """Gradient gold needs torch; raised (with the reason) when it cannot be imported."""


def _torch():
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        raise GoldUnavailable(f"gradient gold needs torch (CPU), not importable here: {exc}") from None
    configure_frameworks()
    return torch


# ---------------------------------------------------------------------------------------------
# pinning full float32 precision (no TF32) in whatever frameworks are loaded


_configured: set[str] = set()


def configure_frameworks() -> list[str]:
    """Set up torch and jax, whichever are imported, for checking (idempotent; called again
    whenever a framework may have been imported since):

    * float32 matmuls at full precision (no TF32), in torch and jax;
    * torch on one CPU thread: the suite's arrays are tiny and threads only add synchronisation
      (x100 slower on a loaded 2-core machine); numbers do not depend on it;
    * jax's persistent compilation cache on (in ``$SYNTH_REF_JAX_CACHE`` or a fresh temporary
      directory): the reference rerun in low precision then reuses the executable the adapter
      compiled whenever both are the very same XLA program, as for the built-in jax adapter.
      The cache only ever returns the executable of an identical program.
    """
    import sys

    done = []
    if "torch" in sys.modules and "torch" not in _configured:
        torch = sys.modules["torch"]
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        torch.set_num_threads(1)
        _configured.add("torch")
        done.append("torch: allow_tf32=False, float32_matmul_precision='highest', 1 CPU thread")
    if "jax" in sys.modules and "jax" not in _configured:
        import os
        import tempfile

        jax = sys.modules["jax"]
        jax.config.update("jax_default_matmul_precision", "highest")
        cache = os.environ.get("SYNTH_REF_JAX_CACHE") or tempfile.mkdtemp(prefix="synth-ref-jax-")
        try:
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        except Exception:  # noqa: BLE001 - an older jax without these options: just slower
            cache = None
        _configured.add("jax")
        done.append(f"jax: default_matmul_precision='highest', compilation cache {cache}")
    return done




# ---------------------------------------------------------------------------------------------
# gold


def gold_forward(inp: Inputs) -> np.ndarray:
    c = inp.case
    return np.asarray(sr.apply(c.spec, inp.params, inp.x, causal=c.causal, key_padding_mask=inp.mask))


def _torch_vjp(torch, spec, params, x, dy, causal, mask):
    names = list(params)
    leaves = [x.detach().requires_grad_(True)] + [params[n].detach().requires_grad_(True) for n in names]
    with torch.enable_grad():
        p = dict(zip(names, leaves[1:], strict=True))
        y = sr.apply(spec, p, leaves[0], causal=causal, key_padding_mask=mask)
        grads = torch.autograd.grad(y, leaves, dy, allow_unused=True)
    grads = [torch.zeros_like(a) if g is None else g for a, g in zip(leaves, grads, strict=True)]
    return grads[0], dict(zip(names, grads[1:], strict=True))


def gold_vjp(inp: Inputs) -> tuple[np.ndarray, dict]:
    """(dx, dparams) of sum(apply(x) * dy): torch autograd in float64 on CPU."""
    torch = _torch()
    c = inp.case
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
    mask = None if inp.mask is None else torch.from_numpy(inp.mask)
    dx, dp = _torch_vjp(
        torch, c.spec, {n: t(a) for n, a in inp.params.items()}, t(inp.x), t(inp.dy), c.causal, mask
    )
    return dx.numpy(), {n: g.numpy() for n, g in dp.items()}


def _perturbed(inp: Inputs, draw: int) -> Inputs:
    """``inp`` with x, every parameter and dy multiplied by (1 + u U[-1, 1]), u the unit roundoff
    of its dtype; deterministic per (case, dtype, draw)."""
    from .tolerances import UNIT_ROUNDOFF

    u = UNIT_ROUNDOFF[inp.dtype]
    rng = np.random.default_rng([inp.case.seed, zlib.crc32(f"{inp.case.id}/{inp.dtype}".encode()), draw])

    def jiggle(a):
        return a * (1.0 + u * rng.uniform(-1.0, 1.0, a.shape))

    return dataclasses.replace(inp, x=jiggle(inp.x), dy=jiggle(inp.dy),
                               params={n: jiggle(a) for n, a in inp.params.items()})


def forward_sensitivity(inp: Inputs, gold: np.ndarray) -> float:
    """max|gold(perturbed inputs) - gold| over the draws (see ``tolerances``)."""
    from .tolerances import SENSITIVITY_DRAWS

    return max(float(np.max(np.abs(gold_forward(_perturbed(inp, k)) - gold), initial=0.0))
               for k in range(SENSITIVITY_DRAWS))


def vjp_sensitivity(inp: Inputs, gdx: np.ndarray, gdp: dict) -> dict:
    """Array name ("dx" or a parameter) -> max|gold gradient(perturbed inputs) - gold gradient|."""
    from .tolerances import SENSITIVITY_DRAWS

    out = dict.fromkeys(["dx", *gdp], 0.0)
    for k in range(SENSITIVITY_DRAWS):
        dx, dp = gold_vjp(_perturbed(inp, k))
        for n, (a, b) in {"dx": (dx, gdx), **{m: (dp[m], gdp[m]) for m in gdp}}.items():
            out[n] = max(out[n], float(np.max(np.abs(a - b), initial=0.0)))
    return out


# ---------------------------------------------------------------------------------------------
# the reference rerun on the backend, in the checked dtype


@functools.cache
def _jax_fns():
    # Named _apply/_vjp like the built-in jax adapter's functions: XLA programs are named after
    # the function, so the reference's program is then byte-identical to the built-in adapter's
    # and comes from the compilation cache instead of being compiled twice.
    import jax

    def _apply(spec, causal, params, x, mask):
        return sr.apply(spec, params, x, causal=causal, key_padding_mask=mask)

    def _vjp(spec, causal, params, x, dy, mask):
        def f(p, xx):
            return sr.apply(spec, p, xx, causal=causal, key_padding_mask=mask)

        _, pull = jax.vjp(f, params, x)
        dparams, dx = pull(dy)
        return dx, dparams

    return jax.jit(_apply, static_argnums=(0, 1)), jax.jit(_vjp, static_argnums=(0, 1))


def _kind(a) -> str:
    import array_api_compat as aac

    if aac.is_torch_array(a):
        return "torch"
    if aac.is_jax_array(a):
        return "jax"
    return "other"


def _torch_inputs(inp: Inputs, device="cpu"):
    torch = _torch()
    dt = getattr(torch, inp.dtype)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)  # noqa: E731
    mask = None if inp.mask is None else torch.from_numpy(inp.mask).to(device)
    return torch, {n: t(a) for n, a in inp.params.items()}, t(inp.x), t(inp.dy), mask


def _to_np(a) -> np.ndarray:
    k = _kind(a)
    if k == "torch":
        a = a.detach().cpu()
        return a.float().numpy().astype(np.float64) if a.dtype.is_floating_point else a.numpy()
    if k == "jax":
        a = np.asarray(a)
        return a.astype(np.float64) if a.dtype.kind in "fV" or a.dtype.name == "bfloat16" else a
    if hasattr(a, "get"):  # cupy
        return np.asarray(a.get(), dtype=np.float64)
    try:
        return np.asarray(a, dtype=np.float64)
    except Exception:  # noqa: BLE001 - array_api_strict and other DLPack producers
        return np.from_dlpack(a).astype(np.float64)


def reference_forward(inp: Inputs, params_a, x_a, mask_a) -> tuple[np.ndarray, str]:
    """ref_dtype for the forward check: (output as float64 NumPy, where it ran)."""
    c = inp.case
    kind = _kind(x_a)
    if kind == "jax":
        return _to_np(_jax_fns()[0](c.spec, c.causal, params_a, x_a, mask_a)), "backend"
    if kind == "torch":
        torch = _torch()
        with torch.no_grad():
            y = sr.apply(c.spec, params_a, x_a, causal=c.causal, key_padding_mask=mask_a)
        return _to_np(y), "backend"
    try:
        y = sr.apply(c.spec, params_a, x_a, causal=c.causal, key_padding_mask=mask_a)
        return _to_np(y), "backend"
    except TypeError:
        pass
    torch, p, x, _, mask = _torch_inputs(inp)
    with torch.no_grad():
        y = sr.apply(c.spec, p, x, causal=c.causal, key_padding_mask=mask)
    return _to_np(y), "torch-cpu (the adapter's arrays are of no Array-API namespace)"


def reference_vjp(inp: Inputs, params_a, x_a, dy_a, mask_a) -> tuple[np.ndarray, dict, str]:
    """ref_dtype for the gradient check: (dx, dparams as float64 NumPy, where it ran)."""
    c = inp.case
    kind = _kind(x_a)
    if kind == "jax":
        dx, dp = _jax_fns()[1](c.spec, c.causal, params_a, x_a, dy_a, mask_a)
        where = "backend"
    elif kind == "torch":
        dx, dp = _torch_vjp(_torch(), c.spec, params_a, x_a, dy_a, c.causal, mask_a)
        where = "backend"
    else:
        torch, p, x, dy, mask = _torch_inputs(inp)
        dx, dp = _torch_vjp(torch, c.spec, p, x, dy, c.causal, mask)
        where = "torch-cpu (no autodiff on the adapter's arrays)"
    return _to_np(dx), {n: _to_np(g) for n, g in dp.items()}, where


# ---------------------------------------------------------------------------------------------
# gold's own check: torch autograd against central finite differences of the NumPy reference


def finite_difference_check(inp: Inputs, step: float = 1e-6) -> dict[str, float]:
    """For x and every parameter: max|autograd - central difference| / max(1, max|autograd|).

    Meant for tiny cases (every element is perturbed twice)."""
    c = inp.case
    dx, dp = gold_vjp(inp)

    def f(params, x):
        y = sr.apply(c.spec, params, x, causal=c.causal, key_padding_mask=inp.mask)
        return float(np.sum(np.asarray(y) * inp.dy))

    def numeric(arr, rebuild):
        g = np.zeros_like(arr)
        flat = arr.reshape(-1)
        for i in range(flat.size):
            plus, minus = flat.copy(), flat.copy()
            plus[i] += step
            minus[i] -= step
            g.reshape(-1)[i] = (rebuild(plus.reshape(arr.shape)) - rebuild(minus.reshape(arr.shape))) / (
                2 * step
            )
        return g

    out = {}
    out["x"] = _rel(numeric(inp.x, lambda a: f(inp.params, a)), dx)
    for n, a in inp.params.items():
        out[n] = _rel(numeric(a, lambda v, n=n: f({**inp.params, n: v}, inp.x)), dp[n])
    return out


def _rel(num: np.ndarray, ad: np.ndarray) -> float:
    return float(np.max(np.abs(num - ad)) / max(1.0, float(np.max(np.abs(ad)))))
