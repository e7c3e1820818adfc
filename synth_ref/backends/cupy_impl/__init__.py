"""Hand-derived forward and backward passes for every variant, on any Array-API namespace.

The CuPy adapter runs these with CuPy arrays and the fused kernels of
:mod:`synth_ref.backends.cupy_kernels` (``ops``); the same functions run with NumPy arrays and
:class:`XpOps`, which is how they are tested without a GPU (against torch autograd of the
reference, in float64).  ``numpy_adapter`` wraps them as a backend adapter with a ``vjp``, so the
conformance suite can check the hand-derived gradients on CPU through the adapter protocol:
``synth_ref.backends.get("synth_ref.backends.cupy_impl:numpy_adapter")``.

>>> import numpy as np, synth_ref as sr
>>> from synth_ref.backends import cupy_impl
>>> spec = sr.Spec("random", d_model=4, max_len=3)
>>> params, x = spec.init(seed=0), np.ones((1, 3, 4))
>>> dx, dparams = cupy_impl.vjp(spec, params, x, np.ones((1, 3, 4)))
>>> dx.shape, dparams["r"].shape
((1, 3, 4), (1, 3, 3))
"""

from __future__ import annotations

import numpy as np

from ..numpy import NumpyAdapter
from . import aft_vjp, softmax_vjp
from ._prep import cast, check_dy, prepare, work_dtype
from .ops import XpOps

__all__ = ["XpOps", "apply", "forward", "vjp", "numpy_adapter"]

_DEFAULT_OPS = XpOps()


def _family(spec):
    return softmax_vjp if spec.family == "softmax" else aft_vjp


def forward(spec, params, x, *, causal=False, key_padding_mask=None, ops=None):
    """(y, residuals): the output in the working dtype and what ``vjp`` needs.  Checks its inputs
    exactly as :func:`synth_ref.apply` does."""
    xp, p, causal, mask = prepare(spec, params, x, causal, key_padding_mask)
    wd = work_dtype(xp, x.dtype)
    xw = cast(xp, x, wd)
    p = {n: cast(xp, a, wd) for n, a in p.items()}
    y, res = _family(spec).forward(spec, p, xw, xp, causal, mask, ops or _DEFAULT_OPS)
    return y, (xp, p, xw, causal, mask, res)


def apply(spec, params, x, *, causal=False, key_padding_mask=None, ops=None):
    """The layer's output, as :func:`synth_ref.apply` (x's namespace, dtype and shape)."""
    y, _ = forward(spec, params, x, causal=causal, key_padding_mask=key_padding_mask, ops=ops)
    return cast(_xp_of(y), y, x.dtype)


def vjp(spec, params, x, dy, *, causal=False, key_padding_mask=None, ops=None):
    """(dx, dparams): the gradient of sum(apply(...) * dy) with respect to x and every parameter,
    as arrays of x's namespace and dtype (dparams has exactly the keys of ``spec.param_shapes()``)."""
    _, (xp, p, xw, causal, mask, res) = forward(
        spec, params, x, causal=causal, key_padding_mask=key_padding_mask, ops=ops)
    check_dy(xp, x, dy)
    dyw = cast(xp, dy, xw.dtype)
    fam = _family(spec)
    ops = ops or _DEFAULT_OPS
    if fam is softmax_vjp:
        dx, grads = fam.backward(spec, p, xw, xp, res, dyw, ops)
    else:
        dx, grads = fam.backward(spec, p, xw, xp, res, dyw, causal, mask, ops)
    missing = set(spec.param_shapes()) ^ set(grads)
    assert not missing, f"internal: gradients missing or extra for {sorted(missing)}"
    dparams = {n: cast(xp, grads[n], x.dtype) for n in spec.param_shapes()}
    return cast(xp, dx, x.dtype), dparams


def _xp_of(a):
    from array_api_compat import array_namespace

    return array_namespace(a)


class NumpyHandVjpAdapter(NumpyAdapter):
    """The hand-derived passes on NumPy arrays, as a backend adapter: the CuPy adapter's code path
    (this package) with ``ops``' fused steps, by default the Array-API ones (:class:`XpOps`) in place
    of the CUDA kernels.  NumPy arrays in and out as the NumPy adapter's."""

    name = "numpy-handvjp"
    dtypes = ("float64", "float32", "float16")

    def __init__(self, ops=None):
        self._ops = ops

    @property
    def ops(self):
        """The fused steps the passes run with, or ``None`` for the Array-API steps."""
        return self._ops

    def available(self):
        return True, "numpy " + np.__version__ + " (hand-derived vjp, no kernels)"

    def apply(self, spec, params, x, *, causal=False, key_padding_mask=None):
        return apply(spec, params, x, causal=causal, key_padding_mask=key_padding_mask, ops=self.ops)

    def vjp(self, spec, params, x, dy, *, causal=False, key_padding_mask=None):
        return vjp(spec, params, x, dy, causal=causal, key_padding_mask=key_padding_mask, ops=self.ops)


numpy_adapter = NumpyHandVjpAdapter()
