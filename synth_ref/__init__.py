"""synth-ref: the reference math of Synthesizer and Attention-Free-Transformer layers.

One Array-API implementation of every variant; it runs unchanged on NumPy, array_api_strict,
PyTorch, JAX and CuPy arrays, and is differentiable under torch autograd and jax.grad.

>>> import numpy as np, synth_ref as sr
>>> spec = sr.Spec("dense", d_model=8, n_heads=2, max_len=4)
>>> params = spec.init(seed=0)
>>> y = sr.apply(spec, params, np.ones((1, 3, 8)))
>>> y.shape
(1, 3, 8)
"""

from __future__ import annotations

from . import _aft, _softmax
from ._inputs import prepare
from ._spec import Spec
from .variants import REGISTRY, VARIANTS

__all__ = ["VARIANTS", "REGISTRY", "Spec", "apply", "attention_weights"]
__version__ = "0.1.0"


def _prepare(spec, params, x, causal, key_padding_mask):
    xp, p, causal, mask = prepare(spec, params, x, causal, key_padding_mask)
    family = _softmax if spec.family == "softmax" else _aft
    return family, p, xp, causal, mask


def apply(spec: Spec, params: dict, x, *, causal: bool = False, key_padding_mask=None):
    """The layer's output y for input x.

    Parameters
    ----------
    spec:
        What layer (:class:`Spec`).
    params:
        ``{name: array}`` with exactly ``spec.param_shapes()``; NumPy arrays are converted to x's
        namespace, dtype and device, arrays of x's namespace must have x's dtype and (JAX aside,
        which places arrays itself) x's device.
    x:
        (batch, length, d_model) with length <= max_len; for aft_conv with spatial_dims=2,
        (batch, height, width, d_model) with height * width <= max_len.  Any Array-API array.
    causal:
        Position t sees only t' <= t.  Must be True for aft_conv with an even kernel_size and False
        for aft_conv with spatial_dims=2.
    key_padding_mask:
        (batch, length) boolean, True for real tokens; keys where it is False are ignored.  NumPy,
        or x's namespace on x's device (JAX aside).  Not allowed for aft_conv with spatial_dims=2.

    Returns
    -------
    y
        An array of x's namespace, device, dtype and shape.

    Raises
    ------
    TypeError
        A spec that is not a :class:`Spec`, an x that is not a real floating array, params that are
        not a dict of floating arrays of x's dtype and namespace (or NumPy), a causal that is not a
        bool, a mask that is not a boolean array of x's namespace (or NumPy).
    ValueError
        Any shape, name or size that does not match the spec (x's rank, d_model or length; a
        missing or extra parameter; the mask's shape), an array on another device, and the aft_conv
        cases above.
    """
    family, p, xp, causal, mask = _prepare(spec, params, x, causal, key_padding_mask)
    return family.apply(spec, p, x, xp, causal, mask)


def attention_weights(spec: Spec, params: dict, x, *, causal: bool = False, key_padding_mask=None):
    """The mixing weights the layer applies to the values.

    Softmax variants: P of shape (batch, n_heads, length, length), rows summing to 1 (0 on rows
    with no allowed key).  AFT variants: the effective per-channel weights of shape
    (batch, d_model, length, length), exp(K + w') normalised over allowed keys, before the
    sigmoid(Q) gate.  Arguments as for :func:`apply`.
    """
    family, p, xp, causal, mask = _prepare(spec, params, x, causal, key_padding_mask)
    return family.weights(spec, p, x, xp, causal, mask)
