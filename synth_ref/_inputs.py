"""Checking and converting what a caller hands to ``apply``: x, params, masks.

Everything here fails loudly with the argument's name, what was expected and what came; nothing
is coerced in a way that could change a number.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj, is_jax_array, is_numpy_array
from array_api_compat import device as _device

from ._spec import Spec
from .variants import RANDOM_ARRAYS


def _shape(a) -> tuple:
    return tuple(int(s) if s is not None else s for s in a.shape)


def namespace(x):
    """The Array-API namespace of x, with an error that names x when x is not an array."""
    if not is_array_api_obj(x):
        raise TypeError(f"x: expected an array (numpy, torch, jax, cupy, ...); got {type(x).__name__}")
    return array_namespace(x)


def check_x(spec: Spec, x, xp) -> tuple[int, int]:
    """Validate x's rank, feature size, length and dtype; return (batch, length)."""
    two_d = spec.variant == "aft_conv" and spec.spatial_dims == 2
    want = "(batch, height, width, d_model)" if two_d else "(batch, length, d_model)"
    shape = _shape(x)
    if len(shape) != (4 if two_d else 3):
        raise ValueError(f"x: expected shape {want}; got shape {shape}")
    if shape[-1] != spec.d_model:
        raise ValueError(f"x: expected last axis d_model={spec.d_model}; got shape {shape}")
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"x: expected a real floating dtype; got {x.dtype}")
    length = shape[1] * shape[2] if two_d else shape[1]
    if length < 1 or shape[0] < 1:
        raise ValueError(f"x: expected at least one batch element and one position; got shape {shape}")
    if length > spec.max_len:
        what = "height * width" if two_d else "length"
        raise ValueError(f"x: {what} {length} exceeds max_len={spec.max_len}; got shape {shape}")
    return shape[0], length


def _check_same_namespace(what: str, a, x, xp) -> None:
    """``a`` must be of x's namespace (NumPy arrays are converted before this is asked)."""
    try:
        array_namespace(x, a)
    except TypeError:
        raise TypeError(
            f"{what}: expected an array of x's namespace ({xp.__name__}) or NumPy; "
            f"got {type(a).__module__}.{type(a).__name__}"
        ) from None


def _check_same_device(what: str, a, x) -> None:
    """``a`` (of x's namespace) must be on x's device.  Not asked of JAX, which places arrays itself
    (a committed array on another device is its own error; under jit, and for sharded arrays,
    ``device`` says nothing about where a value may be combined).  Without this, torch's CPU
    matmul with a ``meta`` tensor returns uninitialised memory instead of failing."""
    if is_jax_array(x):
        return
    want, got = _device(x), _device(a)
    if got != want:
        raise ValueError(f"{what}: expected an array on x's device {want}; got one on {got}")


def param_shapes_of(spec: Spec, params) -> dict:
    """``spec.param_shapes()`` once ``params`` is checked to be a dict with exactly those names."""
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict of arrays; got {type(params).__name__}")
    want = spec.param_shapes()
    missing = [n for n in want if n not in params]
    extra = [n for n in params if n not in want]
    if missing or extra:
        raise ValueError(
            f"params: expected exactly the arrays of {spec.variant!r} {list(want)}; "
            f"missing {missing}, unexpected {extra}"
        )
    return want


def convert_params(spec: Spec, params, x, xp) -> dict:
    """Check names and shapes; bring NumPy arrays to x's namespace, dtype and device."""
    want = param_shapes_of(spec, params)
    dev = _device(x)
    out = {}
    for name, shape in want.items():
        a = params[name]
        if is_numpy_array(a):
            if not np.issubdtype(a.dtype, np.floating):
                raise TypeError(f"params[{name!r}]: expected a floating array; got dtype {a.dtype}")
            a = xp.asarray(np.ascontiguousarray(a), dtype=x.dtype, device=dev)
        elif not is_array_api_obj(a):
            raise TypeError(f"params[{name!r}]: expected an array; got {type(a).__name__}")
        else:
            _check_same_namespace(f"params[{name!r}]", a, x, xp)
            if a.dtype != x.dtype:
                raise TypeError(f"params[{name!r}]: expected x's dtype {x.dtype}; got {a.dtype}")
            _check_same_device(f"params[{name!r}]", a, x)
        if _shape(a) != shape:
            raise ValueError(f"params[{name!r}]: expected shape {shape}; got {_shape(a)}")
        out[name] = a
    return out


def convert_mask(spec: Spec, mask, x, xp, batch: int, length: int):
    """A (batch, length) boolean array in x's namespace, or None."""
    if mask is None:
        return None
    if spec.variant == "aft_conv" and spec.spatial_dims == 2:
        raise ValueError("key_padding_mask: not defined for aft_conv with spatial_dims=2; got a mask")
    if is_numpy_array(mask) and not is_numpy_array(x):
        if mask.dtype != np.bool_:
            raise TypeError(f"key_padding_mask: expected a boolean array; got dtype {mask.dtype}")
        mask = xp.asarray(np.ascontiguousarray(mask), device=_device(x))
    elif not is_array_api_obj(mask):
        raise TypeError(f"key_padding_mask: expected a boolean array; got {type(mask).__name__}")
    else:
        _check_same_namespace("key_padding_mask", mask, x, xp)
        _check_same_device("key_padding_mask", mask, x)
    if mask.dtype != xp.bool:
        raise TypeError(f"key_padding_mask: expected a boolean array; got dtype {mask.dtype}")
    if _shape(mask) != (batch, length):
        raise ValueError(
            f"key_padding_mask: expected shape (batch, length) = {(batch, length)}; got {_shape(mask)}"
        )
    return mask


def check_causal(spec: Spec, causal) -> bool:
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal: expected True or False; got {causal!r}")
    causal = bool(causal)
    if spec.variant == "aft_conv":
        if spec.spatial_dims == 2 and causal:
            raise ValueError("causal: not defined for aft_conv with spatial_dims=2; got causal=True")
        if not causal and spec.kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size: a non-causal aft_conv needs an odd (centred) kernel; got {spec.kernel_size}"
            )
    return causal


def check_layer_options(spec: Spec, dropout, freeze_random) -> tuple[float, bool]:
    """The training options the torch and NNX layers share: (dropout as a float, freeze_random as a
    bool), or an error naming the option when the variant has nothing it could act on."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout: expected a probability in [0, 1); got {dropout!r}")
    if dropout and spec.family != "softmax":
        raise ValueError(
            f"dropout: variant {spec.variant!r} has no attention weights to drop; expected 0, got {dropout}"
        )
    if not isinstance(freeze_random, (bool, np.bool_)):
        raise TypeError(f"freeze_random: expected True or False; got {freeze_random!r}")
    if freeze_random and not any(n.rpartition(".")[2] in RANDOM_ARRAYS for n in spec.param_shapes()):
        raise ValueError(
            f"freeze_random: variant {spec.variant!r} has no random synthesizer arrays "
            f"{RANDOM_ARRAYS} to freeze; got freeze_random=True"
        )
    return float(dropout), bool(freeze_random)


def prepare(spec, params, x, causal, key_padding_mask):
    """Every check :func:`synth_ref.apply` makes, in its order; returns (xp, params in x's namespace,
    dtype and device, causal as a bool, the mask as x's boolean array or None).  The adapters' fused
    paths call it too, so they accept and reject exactly what the reference does."""
    if not isinstance(spec, Spec):
        raise TypeError(f"spec: expected a synth_ref.Spec; got {type(spec).__name__}")
    xp = namespace(x)
    batch, length = check_x(spec, x, xp)
    causal = check_causal(spec, causal)
    p = convert_params(spec, params, x, xp)
    mask = convert_mask(spec, key_padding_mask, x, xp, batch, length)
    return xp, p, causal, mask
