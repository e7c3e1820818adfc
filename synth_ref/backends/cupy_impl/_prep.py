"""Input checks, the working dtype, and the linear layer's forward and backward.

The checks are the reference's own (``synth_ref._inputs``), so this implementation accepts and rejects
exactly what :func:`synth_ref.apply` does, with the same messages.
"""

from __future__ import annotations

from array_api_compat import device as _device

from synth_ref import _inputs
from synth_ref._inputs import prepare  # noqa: F401  (the reference's checks, re-exported here)


def check_dy(xp, x, dy):
    """dy must be an array of x's namespace with x's shape (the output has x's shape)."""
    try:
        if _inputs.namespace(dy) is not xp:
            raise TypeError
    except TypeError:
        raise TypeError(f"dy: expected an array of x's namespace ({xp.__name__}); "
                        f"got {type(dy).__module__}.{type(dy).__name__}") from None
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"dy: expected the output's shape {tuple(x.shape)}; got {tuple(dy.shape)}")
    if dy.dtype != x.dtype:
        raise TypeError(f"dy: expected x's dtype {x.dtype}; got {dy.dtype}")


def work_dtype(xp, dtype):
    """float16 is computed in float32 and rounded once at the end: exp() has a range of about
    +-11 in float16, far too little for logits, and sums of l terms lose most digits there."""
    f16 = getattr(xp, "float16", None)  # not every namespace has one (array_api_strict has not)
    return xp.float32 if f16 is not None and dtype == f16 else dtype


def cast(xp, a, dtype):
    return a if a.dtype == dtype else xp.astype(a, dtype)


def dev(a):
    return _device(a)


def zeros(xp, shape, like):
    return xp.zeros(shape, dtype=like.dtype, device=_device(like))


def pad_to(xp, a, shape):
    """a placed at the start of every axis of a zero array of ``shape`` (the gradient of a slice
    ``p[:l, :l]``: positions beyond the input's length get exactly 0)."""
    out = a
    for axis, n in enumerate(shape):
        have = out.shape[axis]
        if have < n:
            pad_shape = list(out.shape)
            pad_shape[axis] = n - have
            out = xp.concat([out, zeros(xp, tuple(pad_shape), out)], axis=axis)
    return out


# --- y = x w + b over the last axis -----------------------------------------------------------------

def linear(xp, x, w, b):
    return xp.matmul(x, w) + b


def linear_backward(xp, x, w, dy):
    """For y = x w + b with x (..., n) and w (n, m): (dx, dw, db)."""
    n, m = w.shape
    x2 = xp.reshape(x, (-1, n))
    dy2 = xp.reshape(dy, (-1, m))
    dw = xp.matmul(xp.permute_dims(x2, (1, 0)), dy2)
    db = xp.sum(dy2, axis=0)
    dx = xp.matmul(dy, xp.permute_dims(w, (1, 0)))
    return dx, dw, db
