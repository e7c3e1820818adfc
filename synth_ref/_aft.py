"""The AFT family: aft_full, aft_simple, aft_local, aft_conv.

Y[t, c] = sigmoid(Q[t, c]) * sum_t' exp(K[t', c] + w'[t, t']) V[t', c] / sum_t' exp(K[t', c] + w'[t, t'])
over allowed t' only; y = Y w_o + b_o.  Formulas and conventions: ``variants.REGISTRY``.

The spec computes the definition literally, with the exact stabilizer max_t' (K[t', c] + w'[t, t'])
over allowed t' for every (t, c): any finite input gives a finite output, causal masks included.
To keep memory linear in B * l * d (never a (B, l, l, d) array) the query rows are processed in
blocks sized by ``BLOCK_ELEMENTS``; this is a loop over blocks of rows, each fully vectorized.
"""

from __future__ import annotations

from . import _common as c

#: Elements of one (B, rows, l, d) block temporary; about 64 MB in float32, and the peak is a
#: small multiple of it.  Any value gives the same numbers.
BLOCK_ELEMENTS = 1 << 24


#: The variance epsilon of AFT-conv's kernel normalisation (the registry's convention for aft_conv).
CONV_EPS = 1e-5


def conv_normalised(spec, p, xp):
    """(n, sigma): each head's taps normalised, n = (w - mean) / sigma with sigma = sqrt(var +
    CONV_EPS), mean and population variance over that head's own taps; n is (h, s) or (h, s*s).

    In float32 for float16 / bfloat16 parameters (``_common.widened``): the derivative of n in var
    is -(w - mean) (var + 1e-5)^(-3/2) / 2, whose second factor reaches 1.6e7 at var = 0 -- past
    float16's 65504.  Computed in float16, jax's autodiff gave NaN for conv_w with every single-tap
    kernel (s = 1: w - mean = 0 exactly, so inf * 0) and with nearly equal taps.  The CuPy
    adapter's hand-derived backward (``cupy_impl.aft_vjp``) calls it too and keeps n and sigma."""
    w = xp.reshape(c.widened(xp, p["conv_w"]), (spec.n_heads, -1))
    mean = xp.mean(w, axis=1, keepdims=True)
    var = xp.mean((w - mean) ** 2, axis=1, keepdims=True)
    sigma = xp.sqrt(var + c.const(xp, CONV_EPS, w))
    return (w - mean) / sigma, sigma


def conv_kernel(spec, p, xp, norm=None):
    """Per-head normalised kernel w_hat = gamma n + beta (h, s) or (h, s*s), n from
    ``conv_normalised`` (or ``norm``, where the caller kept it): in n's precision, rounded once to
    the parameters' dtype."""
    if norm is None:
        norm, _ = conv_normalised(spec, p, xp)
    gamma, beta = c.widened(xp, p["conv_gamma"]), c.widened(xp, p["conv_beta"])
    return xp.astype(gamma[:, None] * norm + beta[:, None], p["conv_w"].dtype)


def position_bias(spec, p, xp, l, causal, grid, dev):
    """w' as (G, l, l) with G = 1 or n_heads (aft_conv), or None where it is 0 (aft_simple)."""
    v = spec.variant
    if v == "aft_simple":
        return None
    if v in ("aft_full", "aft_local"):
        if spec.pos_rank is None:
            w = p["pos_bias"][:l, :l]
        else:
            w = xp.matmul(p["pos_u"][:l, :], xp.permute_dims(p["pos_v"][:l, :], (1, 0)))
        if v == "aft_local":  # zero, not -inf, outside the window: far tokens still count
            i = xp.arange(l, device=dev)
            near = xp.abs(i[:, None] - i[None, :]) < spec.window
            w = xp.where(near, w, c.const(xp, 0.0, w))
        return w[None, :, :]
    # aft_conv
    s = spec.kernel_size
    what = conv_kernel(spec, p, xp)
    i = xp.arange(l, device=dev)
    if grid is None:
        off = s - 1 if causal else (s - 1) // 2
        j = i[None, :] - i[:, None] + off  # j = t' - t + off
        valid = xp.logical_and(j >= 0, j < s)
    else:
        _, width = grid
        half = (s - 1) // 2
        pr, qc = i // width, i % width
        dp = pr[None, :] - pr[:, None] + half
        dq = qc[None, :] - qc[:, None] + half
        valid = xp.logical_and(xp.logical_and(dp >= 0, dp < s), xp.logical_and(dq >= 0, dq < s))
        j = dp * s + dq
    j = xp.where(valid, j, xp.zeros_like(j))
    taps = xp.reshape(xp.take(what, xp.reshape(j, (l * l,)), axis=1), (spec.n_heads, l, l))
    return xp.where(valid[None, :, :], taps, c.const(xp, 0.0, taps))


def _allowed(xp, l, causal, key_padding_mask, dev):
    """(B or 1, l, l) boolean of allowed (t, t') pairs, or None for all."""
    allowed = c.causal_allowed(xp, l, dev)[None, :, :] if causal else None
    if key_padding_mask is not None:
        kp = key_padding_mask[:, None, :]
        allowed = kp if allowed is None else xp.logical_and(allowed, kp)
    return allowed


def _row_terms(xp, k, w, allowed, start, stop):
    """For query rows start..stop: e = exp(K[t'] + w'[t, t'] - max) over allowed t' (0 elsewhere)
    and its sum over t', the normaliser.  Shapes (B, rows, l, G, d/G) and (B, rows, 1, G, d/G).

    k: (B, 1, l, G, d/G); w: (G, l, l) or None; allowed: (B|1, l, l) or None."""
    B, _, l, G, eg = k.shape
    if w is None:  # no bias: every row starts from the same keys
        z = xp.broadcast_to(k, (B, stop - start, l, G, eg))
    else:
        z = k + xp.permute_dims(w[:, start:stop, :], (1, 2, 0))[None, :, :, :, None]
    if allowed is None:
        ok = None
    else:  # a padding-only mask has one row for all queries
        ok = allowed[:, start:stop, :] if allowed.shape[1] > 1 else allowed
        ok = ok[:, :, :, None, None]
    e = c.stable_exp(xp, z, ok, axis=2)
    return e, xp.sum(e, axis=2, keepdims=True)


def _grouped(xp, t, G):
    B, l, d = t.shape
    return xp.reshape(t, (B, 1, l, G, d // G))


def flatten_grid(xp, x):
    """(x as (B, l, d), grid): a 2-D input (B, H, W, d) becomes the sequence of its H * W positions
    in row-major order (grid = (H, W)); a 1-D one passes through (grid = None)."""
    if x.ndim != 4:
        return x, None
    B, H, W, d = x.shape
    return xp.reshape(x, (B, H * W, d)), (H, W)


def unflatten_grid(xp, y, grid):
    """The inverse of :func:`flatten_grid` for an output (B, l, d)."""
    return y if grid is None else xp.reshape(y, (y.shape[0], *grid, y.shape[-1]))


def _prepare(spec, p, x, xp, causal, key_padding_mask):
    """Flatten a 2-D grid, project, and build w' and the allowed mask."""
    x, grid = flatten_grid(xp, x)
    dev = c._dev(x)
    l = x.shape[1]
    q = c.linear(xp, x, p["w_q"], p["b_q"])
    k = c.linear(xp, x, p["w_k"], p["b_k"])
    v = c.linear(xp, x, p["w_v"], p["b_v"])
    w = position_bias(spec, p, xp, l, causal, grid, dev)
    allowed = _allowed(xp, l, causal, key_padding_mask, dev)
    return grid, q, k, v, w, allowed


def row_bounds(B, l, d, per_row=True):
    """The query-row blocks [(start, stop)] the weighted average is computed in: (B, rows, l, d)
    elements each at most ``BLOCK_ELEMENTS``; one block (0, 1) when every row has the same allowed
    keys and no bias (``per_row`` False: aft_simple without a causal mask), whose mix broadcasts.
    Under jax.jit the blocks unroll, so their number is also what compiling this costs."""
    if not per_row:
        return [(0, 1)]
    rows = max(1, BLOCK_ELEMENTS // (B * l * d))
    return [(start, min(l, start + rows)) for start in range(0, l, rows)]


def _mix(xp, k, v, w, allowed):
    """sum_t' exp(K + w') V / sum_t' exp(K + w') for every query row: (B, l or 1, d)."""
    B, l, d = k.shape
    G = 1 if w is None else w.shape[0]
    kg, vg = _grouped(xp, k, G), _grouped(xp, v, G)
    # No bias and no causal mask: every query row has the same allowed keys, hence the same
    # stabilizer and the same mix; computed once (O(l d)), it broadcasts over rows.
    bounds = row_bounds(B, l, d, per_row=not (w is None and (allowed is None or allowed.shape[1] == 1)))
    blocks = []
    for start, stop in bounds:
        e, den = _row_terms(xp, kg, w, allowed, start, stop)
        # divide after summing: the normaliser is per (row, channel), so this is the same number
        mixed = c.safe_divide(xp, xp.sum(e * vg, axis=2), den[:, :, 0, ...])
        blocks.append(xp.reshape(mixed, (B, stop - start, d)))
    return blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=1)


def apply(spec, p, x, xp, causal, key_padding_mask):
    grid, q, k, v, w, allowed = _prepare(spec, p, x, xp, causal, key_padding_mask)
    y = c.linear(xp, c.sigmoid(xp, q) * _mix(xp, k, v, w, allowed), p["w_o"], p["b_o"])
    return unflatten_grid(xp, y, grid)


def weights(spec, p, x, xp, causal, key_padding_mask):
    """AFT's effective weights (B, d, l, l): row t of channel c is how position t mixes V[:, c]
    (before the sigmoid(Q) gate).  Quadratic in l: for inspection and plots, not for long inputs."""
    _, q, k, v, w, allowed = _prepare(spec, p, x, xp, causal, key_padding_mask)
    B, l, d = q.shape
    G = 1 if w is None else w.shape[0]
    e, den = _row_terms(xp, _grouped(xp, k, G), w, allowed, 0, l)
    wts = c.safe_divide(xp, e, den)
    return xp.permute_dims(xp.reshape(wts, (B, l, l, d)), (0, 3, 1, 2))
