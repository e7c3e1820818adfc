"""JAX adapters: the layer under ``jax.jit`` on JAX's default device; ``vjp`` by ``jax.vjp``.

``jax`` takes the platform's path (:mod:`.jax_pallas`: XLA rewrites on CPU and GPU, Pallas on TPU;
``SYNTH_REF_JAX_PATH`` overrides).  ``jax-pallas-interpret`` always takes the Pallas
kernels under Pallas's interpreter (path ``pallas_interpret``): how CI certifies the TPU kernels on
CPU.  Variants no kernel covers run the reference on either (``jax_pallas.plan`` says which).

float64: JAX truncates to float32 unless ``jax_enable_x64`` is on.  This adapter does not flip that
switch process-wide; it enters the ``jax.enable_x64(True)`` context only around the calls that
handle float64 arrays (``from_numpy(..., "float64")`` and ``apply``/``vjp`` on float64 inputs), so
float32 users of the same process are not affected.  jax is imported on first use.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from ._protocol import import_error_reason


def _jax():
    import jax

    return jax


def _x64(on: bool):
    """The float64 context where needed, a no-op otherwise."""
    if not on:
        return contextlib.nullcontext()
    jax = _jax()
    enable = getattr(jax, "enable_x64", None)
    if enable is None:  # jax < 0.6
        from jax.experimental import enable_x64 as enable
    return enable(True)


def _apply(spec, causal, path, block, params, x, mask):
    # Dispatch (jax_pallas, issue 5): the platform picks XLA rewrites (CPU, GPU) or Pallas kernels
    # (TPU); SYNTH_REF_JAX_PATH forces one, e.g. pallas_interpret to check the
    # kernels on CPU.  Read at trace time; the protocol is unchanged.
    from .jax_pallas import apply

    kw = {} if block is None else {"block_q": block, "block_k": block}
    return apply(spec, params, x, causal=causal, key_padding_mask=mask, path=path, **kw)


def _vjp(spec, causal, path, block, params, x, dy, mask):
    jax = _jax()

    def f(p, xx):
        return _apply(spec, causal, path, block, p, xx, mask)

    _, pull = jax.vjp(f, params, x)
    dparams, dx = pull(dy)
    return dx, dparams


class JaxAdapter:
    dtypes = ("float64", "float32", "float16", "bfloat16")

    def __init__(self, name="jax", path=None, block=None):
        self.name = name
        self.path = path  # a jax_pallas path, or None: the platform's (or SYNTH_REF_JAX_PATH's)
        self.block = block  # Pallas tile size (rows and keys), None: jax_pallas.apply's default
        self._jitted = None
        self.last_path = None  # the implementation the last apply / vjp ran (jax_pallas.plan's name)
        if path == "pallas_interpret":
            # What the compiled kernels take (jax_plan._PALLAS_DTYPES), and float64: the kernels'
            # logic at gold precision.  float16 never reaches a compiled kernel (the reference
            # serves it), so certifying it in the interpreter would certify nothing that runs.
            from .jax_plan import _PALLAS_DTYPES

            self.dtypes = ("float64", *_PALLAS_DTYPES)

    def available(self):
        try:
            jax = _jax()
            backend = jax.default_backend()
        except Exception as exc:  # noqa: BLE001
            return False, import_error_reason("jax", exc)
        try:  # which implementation path runs (jax_pallas), visible in reports
            from .jax_pallas import select_path

            path = select_path(self.path)
        except ValueError as exc:  # a bad SYNTH_REF_JAX_PATH
            return False, str(exc)
        flags = os.environ.get("XLA_FLAGS", "").strip()  # e.g. CI's optimization level (noxfile)
        note = f", XLA_FLAGS={flags}" if flags else ""
        return True, f"jax {jax.__version__} on {backend}, path {path}{note}"

    def _fns(self):
        if self._jitted is None:
            jax = _jax()
            static = (0, 1, 2, 3)  # spec, causal, path, block
            self._jitted = (jax.jit(_apply, static_argnums=static), jax.jit(_vjp, static_argnums=static))
        return self._jitted

    def from_numpy(self, array, dtype=None):
        jnp = _jax().numpy
        array = np.ascontiguousarray(array)
        wide = (dtype or array.dtype.name) == "float64"
        with _x64(wide):
            return jnp.asarray(array, dtype=None if dtype is None else getattr(jnp, dtype))

    def to_numpy(self, array):
        a = np.asarray(array)
        if a.dtype.name == "bfloat16":
            a = a.astype(np.float32)
        return a

    def _record(self, spec, x, causal, key_padding_mask):
        from .jax_pallas import plan_call

        self.last_path = plan_call(spec, x, causal, key_padding_mask, path=self.path)

    def apply(self, spec, params, x, *, causal=False, key_padding_mask=None):
        self._record(spec, x, causal, key_padding_mask)
        with _x64(x.dtype.name == "float64"):
            return self._fns()[0](spec, bool(causal), self.path, self.block, params, x, key_padding_mask)

    def vjp(self, spec, params, x, dy, *, causal=False, key_padding_mask=None):
        self._record(spec, x, causal, key_padding_mask)
        with _x64(x.dtype.name == "float64"):
            return self._fns()[1](spec, bool(causal), self.path, self.block, params, x, dy,
                                  key_padding_mask)


adapter = JaxAdapter()
# Tiles of 8: the suite's lengths (12, 5, 1) then make two row and key blocks with a partial last
# one, so the tile loops, the online merges and the causal diagonal tile all run (the interpreter
# takes any block shape; the TPU lowering of TPU-sized ones is tests/test_jax_pallas.py's).
pallas_interpret_adapter = JaxAdapter("jax-pallas-interpret", "pallas_interpret", block=8)
