"""Small Array-API building blocks shared by the softmax and AFT math.

Each is written so that autodiff (torch autograd, jax.grad) never meets inf * 0 or inf - inf:
masked entries go through ``exp(-inf) = 0`` whose derivative is 0, never through a selected-away
branch that overflowed.
"""

from __future__ import annotations


def const(xp, value, like):
    """A 0-d array of ``like``'s dtype and device (some namespaces refuse Python scalars in where)."""
    return xp.asarray(value, dtype=like.dtype, device=_dev(like))


def _dev(a):
    from array_api_compat import device

    return device(a)


def widened(xp, a):
    """``a`` in float32 where its dtype is narrower (float16, bfloat16), else ``a`` itself.  For small
    statistics whose derivatives outgrow a 16-bit type even when the result does not: the
    normalisation of AFT-conv's kernel (``_aft.conv_kernel``)."""
    return xp.astype(a, xp.float32) if xp.finfo(a.dtype).bits < 32 else a


def linear(xp, x, w, b):
    """x @ w + b over the last axis."""
    return xp.matmul(x, w) + b


def split_heads(xp, t, h):
    """(B, l, h*e) -> (B, h, l, e): head i owns feature columns i*e ... i*e + e - 1.

    A transpose, not a reshape: reshaping (B, l, h*e) straight to (B, h, l, e) mixes heads and
    positions (a defect seen in public code)."""
    B, l, d = t.shape
    return xp.permute_dims(xp.reshape(t, (B, l, h, d // h)), (0, 2, 1, 3))


def merge_heads(xp, t):
    """(B, h, l, e) -> (B, l, h*e), the inverse of ``split_heads``."""
    B, h, l, e = t.shape
    return xp.reshape(xp.permute_dims(t, (0, 2, 1, 3)), (B, l, h * e))


def causal_allowed(xp, l, dev):
    """(l, l) boolean: True where key t' <= query t."""
    i = xp.arange(l, device=dev)
    return i[:, None] >= i[None, :]


def row_max(xp, s, axis):
    """The max of s over ``axis`` (kept as a size-1 axis), taken as the one element argmax picks.

    The same value as ``xp.max``, but autodiff sends the max's gradient to exactly that element.
    ``max``'s own derivative (jax, torch) is g * (s == max) / count(s == max), recounted from s: when
    a compiler evaluates s twice with different rounding (XLA:GPU rematerializing a fused operand,
    jax-ml/jax#40564; XLA:CPU at --xla_backend_optimization_level=0, tests/test_jax_jit.py), nothing
    equals the max, the count is 0 and every gradient through the softmax turns into 0/0 = NaN.
    The shift-invariant softmax does not depend on which element takes the gradient, and routing all
    of it through one keeps the dominant key's gradient exact on saturated rows (minus the sum of the
    others' terms), which a stop-gradient shift would lose to cancellation."""
    return xp.take_along_axis(s, xp.argmax(s, axis=axis, keepdims=True), axis=axis)


def masked_max(xp, s, allowed, axis):
    """max over ``axis`` of s where allowed (None: everywhere); 0 where nothing is allowed, so that
    it can be subtracted.  For passes that are never differentiated (the CuPy adapter's, whose
    backward is written out): a plain max, cheaper than ``row_max``'s argmax and gather."""
    if allowed is None:
        return xp.max(s, axis=axis, keepdims=True)
    ninf = const(xp, -float("inf"), s)
    m = xp.max(xp.where(allowed, s, ninf), axis=axis, keepdims=True)
    return xp.where(xp.isfinite(m), m, const(xp, 0.0, s))


def masked_exp(xp, s, allowed, m):
    """exp(s - m) where allowed (None: everywhere), exactly 0 elsewhere (gradient 0 there, never NaN)."""
    if allowed is None:
        return xp.exp(s - m)
    ninf = const(xp, -float("inf"), s)
    return xp.exp(xp.where(allowed, s - m, ninf))


def stable_exp(xp, s, allowed, axis):
    """exp(s - m) where allowed (None: everywhere), exactly 0 elsewhere, with m the max of s over
    ``axis`` among allowed entries (0 where a slice has none): ``masked_exp(s, allowed,
    masked_max(s, allowed))`` in one masking pass instead of two.

    The same numbers: masked entries hold -inf before the subtraction and m is finite, so they give
    exp(-inf) = 0 with gradient 0, and allowed entries see the same s - m."""
    if allowed is None:
        return xp.exp(s - row_max(xp, s, axis))
    z = xp.where(allowed, s, const(xp, -float("inf"), s))
    m = row_max(xp, z, axis)
    # Rebinding z frees the masked copy before exp allocates: at most three arrays of s's size are
    # live at once (s, z, z - m), as with the two-pass form; a fourth costs page faults at scale.
    z = z - xp.where(xp.isfinite(m), m, const(xp, 0.0, s))
    return xp.exp(z)


def safe_divide(xp, num, den):
    """num / den, with 0 where den == 0 (an empty normalizer: nothing was allowed)."""
    one = const(xp, 1.0, den)
    return num / xp.where(den > 0, den, one)


def sigmoid(xp, q):
    """A sigmoid that neither overflows nor NaNs its gradient: 1 / (1 + t) for q >= 0 and
    t / (1 + t) for q < 0, with t = exp(-|q|) <= 1.  The exponent's argument is where-selected
    (-q or q), not -|q|, so that autodiff gives the true slope 1/4 at q = 0, where d|q|/dq would be 0.
    One exp and one division for both branches: the same numbers as evaluating each branch apart."""
    one = const(xp, 1.0, q)
    pos = q >= 0
    t = xp.exp(xp.where(pos, -q, q))
    return xp.where(pos, one, t) / (one + t)


def relu(xp, h):
    """max(h, 0) with slope 0 at h = 0 (``maximum`` would split a tie and give 1/2 under autodiff)."""
    return xp.where(h > 0, h, const(xp, 0.0, h))


def softmax_1d(xp, v):
    m = row_max(xp, v, 0)
    p = xp.exp(v - m)
    return p / xp.sum(p)
