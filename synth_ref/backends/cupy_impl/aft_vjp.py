"""AFT family (aft_full, aft_simple, aft_local, aft_conv): forward with residuals and the
hand-derived backward.  The derivations are in docs/backward.md, one section per variant.

Forward: Q, K, V = x w_{q,k,v} + b_{q,k,v};  R[t, c] = sum_t' P[t, t', c] V[t', c] with
P = exp(K[t', c] + w'[t, t'] - mx[t, c]) / den[t, c] over allowed t' (mx the exact max, den the
normaliser);  y = (sigmoid(Q) * R) w_o + b_o.
Backward, given dy:  dG = dy w_o^T;  dR = dG sigmoid(Q);  dQ = dG R sigmoid'(Q);
(dK, dV, dw') from ``ops.aft_backward``;  then w' passes dw' back to its parameters.
"""

from __future__ import annotations

from synth_ref import _aft
from synth_ref import _common as c
from synth_ref._aft import flatten_grid, unflatten_grid

from ._prep import linear, linear_backward, pad_to
from .position import Band, BandGrad, Position, band_to_dense

# --- w' and its parameters ----------------------------------------------------------------------

def _conv_taps(spec, p, xp):
    """w_hat (h, S), S = s or s*s, and what its backward needs (the normalised taps and sigma, from
    the spec's ``_aft.conv_normalised``)."""
    norm, sigma = _aft.conv_normalised(spec, p, xp)
    return _aft.conv_kernel(spec, p, xp, norm), {"norm": norm, "sigma": sigma}


def _conv_taps_backward(spec, p, xp, res, dwhat):
    """Through w_hat = gamma n + beta, n = (w - mean) / sigma (a layer norm over each head's taps):
    dgamma = sum dw_hat n;  dbeta = sum dw_hat;  dn = gamma dw_hat;
    dw = (dn - mean(dn) - n mean(dn n)) / sigma.  In the forward's precision (float32 for 16-bit
    parameters), each gradient rounded once to its parameter's dtype."""
    norm, sigma = res["norm"], res["sigma"]
    dwhat = xp.astype(dwhat, norm.dtype)
    dgamma = xp.sum(dwhat * norm, axis=1)
    dbeta = xp.sum(dwhat, axis=1)
    dn = c.widened(xp, p["conv_gamma"])[:, None] * dwhat
    dw = (dn - xp.mean(dn, axis=1, keepdims=True)
          - norm * xp.mean(dn * norm, axis=1, keepdims=True)) / sigma
    dt = p["conv_w"].dtype
    return {"conv_w": xp.astype(xp.reshape(dw, p["conv_w"].shape), dt), "conv_gamma": xp.astype(dgamma, dt),
            "conv_beta": xp.astype(dbeta, dt)}


def _conv_band(spec, xp, l, causal, grid, dev):
    """For each query t and tap j: the key t' that tap j reaches, and whether it exists.
    Returns (flat index t * l + t' of shape (l, S), valid (l, S)).  The adjoint of building w'."""
    s = spec.kernel_size
    t = xp.arange(l, device=dev)[:, None]
    j = xp.arange(s ** (1 if grid is None else 2), device=dev)[None, :]
    if grid is None:
        off = s - 1 if causal else (s - 1) // 2  # w'[t, t'] = w_hat[t' - t + off]
        key = t + j - off
        valid = xp.logical_and(key >= 0, key < l)
    else:
        width = grid[1]
        half = (s - 1) // 2  # w'[(p,q), (p',q')] = w_hat[p' - p + half, q' - q + half]
        kp = t // width + j // s - half
        kq = t % width + j % s - half
        valid = xp.logical_and(xp.logical_and(kp >= 0, kq >= 0),
                               xp.logical_and(kq < width, kp * width + kq < l))
        key = kp * width + kq
    key = xp.where(valid, key, xp.zeros_like(key))
    return t * l + key, valid


def _conv_taps_of_pairs(spec, xp, l, causal, grid, dev):
    """For each (t, t'): which tap of w_hat w'[t, t'] is, and whether any is (both (l, l))."""
    s = spec.kernel_size
    i = xp.arange(l, device=dev)
    if grid is None:
        tap = i[None, :] - i[:, None] + (s - 1 if causal else (s - 1) // 2)
        inside = xp.logical_and(tap >= 0, tap < s)
    else:
        width, half = grid[1], (s - 1) // 2
        dp = (i // width)[None, :] - (i // width)[:, None] + half
        dq = (i % width)[None, :] - (i % width)[:, None] + half
        inside = xp.logical_and(xp.logical_and(dp >= 0, dp < s), xp.logical_and(dq >= 0, dq < s))
        tap = dp * s + dq
    return xp.where(inside, tap, xp.zeros_like(tap)), inside


def position_forward(spec, p, xp, l, causal, grid, dev):
    """w' as a ``Position`` (or None for aft_simple), and residuals for ``position_backward``."""
    var = spec.variant
    if var == "aft_simple":
        return None, {}
    if var in ("aft_full", "aft_local"):
        res = {}
        if spec.pos_rank is None:
            w = p["pos_bias"][:l, :l]
        else:
            u, vv = p["pos_u"][:l, :], p["pos_v"][:l, :]
            w = xp.matmul(u, xp.permute_dims(vv, (1, 0)))
            res.update(u=u, v=vv)
        if var == "aft_full":
            return Position(1, lambda: w[None, :, :]), res
        i = xp.arange(l, device=dev)  # aft_local: zero outside the window, not -inf
        near = xp.abs(i[:, None] - i[None, :]) < spec.window
        res["near"] = near
        reach = min(spec.window, l) - 1
        band = Band(w, sg=0, st=l, sk=1, base=0, a=reach, r=reach)
        return Position(1, lambda: xp.where(near, w, c.const(xp, 0.0, w))[None, :, :], band), res
    # aft_conv: w'[g, t, t'] = w_hat[g, tap(t, t')] inside the kernel's reach, 0 outside
    what, res = _conv_taps(spec, p, xp)
    h, s = what.shape[0], spec.kernel_size
    res["flat"], res["valid"] = _conv_band(spec, xp, l, causal, grid, dev)

    def build():
        tap, inside = _conv_taps_of_pairs(spec, xp, l, causal, grid, dev)
        wp = xp.reshape(xp.take(what, xp.reshape(tap, (l * l,)), axis=1), (h, l, l))
        return xp.where(inside[None, ...], wp, c.const(xp, 0.0, wp))

    band = None
    if grid is None:  # tap j = t' - t + off, so t' runs over t - off ... t - off + s - 1
        off = s - 1 if causal else (s - 1) // 2
        band = Band(what, sg=s, st=-1, sk=1, base=off, a=off, r=s - 1 - off)
    return Position(h, build, band), res


def position_backward(spec, p, xp, res, dwp, l):
    """dw' (G, l, l), or a ``BandGrad``, -> {param name: gradient}."""
    var = spec.variant
    if var == "aft_simple":
        return {}
    L = spec.max_len
    if isinstance(dwp, BandGrad):
        if var == "aft_conv":  # slot i of the band is tap i (a = the kernel's offset)
            return _conv_taps_backward(spec, p, xp, res, xp.sum(dwp.values, axis=1))
        dwp = band_to_dense(xp, dwp, l)
    if var in ("aft_full", "aft_local"):
        dw = dwp[0, ...]
        if var == "aft_local":
            dw = xp.where(res["near"], dw, c.const(xp, 0.0, dw))
        if spec.pos_rank is None:
            return {"pos_bias": pad_to(xp, dw, (L, L))}
        du = xp.matmul(dw, res["v"])
        dv = xp.matmul(xp.permute_dims(dw, (1, 0)), res["u"])
        r = spec.pos_rank
        return {"pos_u": pad_to(xp, du, (L, r)), "pos_v": pad_to(xp, dv, (L, r))}
    h = dwp.shape[0]
    flat, valid = res["flat"], res["valid"]
    band = xp.take(xp.reshape(dwp, (h, l * l)), xp.reshape(flat, (-1,)), axis=1)
    band = xp.reshape(band, (h,) + tuple(flat.shape))
    band = xp.where(valid[None, ...], band, c.const(xp, 0.0, band))
    dwhat = xp.sum(band, axis=1)  # each (t, tap) pair is one entry of w'
    return _conv_taps_backward(spec, p, xp, res, dwhat)


# --- the layer ----------------------------------------------------------------------------------

def _sigmoid_grad(xp, q):
    """sigmoid'(q) = e / (1 + e)^2 with e = exp(-|q|): no 1 - sigmoid cancellation, no overflow."""
    e = xp.exp(-xp.abs(q))
    one = c.const(xp, 1.0, q)
    return e / ((one + e) * (one + e))


def forward(spec, p, x, xp, causal, kpm, ops):
    x, grid = flatten_grid(xp, x)
    l = x.shape[1]
    q = linear(xp, x, p["w_q"], p["b_q"])
    k = linear(xp, x, p["w_k"], p["b_k"])
    v = linear(xp, x, p["w_v"], p["b_v"])
    pos, bres = position_forward(spec, p, xp, l, causal, grid, c._dev(x))
    r, stats = ops.aft_forward(xp, k, v, pos, causal, kpm)
    sg = c.sigmoid(xp, q)
    gated = sg * r
    y = linear(xp, gated, p["w_o"], p["b_o"])
    res = {"grid": grid, "x": x, "q": q, "k": k, "v": v, "pos": pos, "bres": bres, "r": r, "stats": stats,
           "sg": sg, "gated": gated}
    return unflatten_grid(xp, y, grid), res


def backward(spec, p, x, xp, res, dy, causal, kpm, ops):
    grid, xf = res["grid"], res["x"]
    B, l, d = xf.shape
    dy = xp.reshape(dy, (B, l, d))
    dgated, dwo, dbo = linear_backward(xp, res["gated"], p["w_o"], dy)
    dr = dgated * res["sg"]
    dq = dgated * res["r"] * _sigmoid_grad(xp, res["q"])
    pos = res["pos"]
    dk, dv, dwp = ops.aft_backward(xp, res["k"], res["v"], pos, causal, kpm, res["r"], res["stats"], dr)
    dxq, dwq, dbq = linear_backward(xp, xf, p["w_q"], dq)
    dxk, dwk, dbk = linear_backward(xp, xf, p["w_k"], dk)
    dxv, dwv, dbv = linear_backward(xp, xf, p["w_v"], dv)
    dx = dxq + dxk + dxv
    grads = {"w_q": dwq, "b_q": dbq, "w_k": dwk, "b_k": dbk, "w_v": dwv, "b_v": dbv,
             "w_o": dwo, "b_o": dbo}
    if pos is not None:
        grads.update(position_backward(spec, p, xp, res["bres"], dwp, l))
    return (dx if grid is None else xp.reshape(dx, x.shape)), grads
