"""Softmax family (dot_product, dense, random, factorized_*, mixture): forward with residuals and
the hand-derived backward.  The derivations are in docs/backward.md, one section per variant.

Forward: V = x w_v + b_v (heads split); S = sum_c alpha_c S^c; P = masked row-softmax(S);
O = P V; y = merge(O) w_o + b_o.  Backward, given dy:
dO = split(dy w_o^T);  dP = dO V^T;  dV = P^T dO;  dS = P (dP - rowsum(P * dP));
then each component's logits pass dS^c = alpha_c dS back to its own parameters and to x.
"""

from __future__ import annotations

import math

from synth_ref import _common as c

from ._prep import linear, linear_backward, pad_to


def _prefix(spec, comp):
    return f"{comp}." if spec.variant == "mixture" else ""


def _t(xp, a):
    """Swap the last two axes."""
    axes = tuple(range(a.ndim - 2)) + (a.ndim - 1, a.ndim - 2)
    return xp.permute_dims(a, axes)


# --- per-head hidden layer H = relu(x w_1[i] + b_1[i]) (dense, factorized_dense) ------------------

def _stacked(xp, w1):
    """w_1 (h, d, e) as one (d, h*e) matrix: all heads' projections in a single product."""
    h, d, e = w1.shape
    return xp.reshape(xp.permute_dims(w1, (1, 0, 2)), (d, h * e))


def _hidden(xp, x, w1, b1):
    h = w1.shape[0]
    pre = c.split_heads(xp, xp.matmul(x, _stacked(xp, w1)), h) + b1[None, :, None, :]
    return pre, xp.maximum(pre, c.const(xp, 0.0, pre))


def _hidden_backward(xp, x, w1, pre, dh):
    """relu' is taken as 1 where pre > 0 and 0 elsewhere (the kink at exactly 0 included)."""
    h, d, e = w1.shape
    dpre = xp.where(pre > 0, dh, c.const(xp, 0.0, dh))
    dx, dw_st, _ = linear_backward(xp, x, _stacked(xp, w1), c.merge_heads(xp, dpre))
    dw1 = xp.permute_dims(xp.reshape(dw_st, (d, h, e)), (1, 0, 2))
    db1 = xp.sum(dpre, axis=(0, 2))
    return dx, dw1, db1


def _head_affine(xp, hid, w, b):
    """hid (B, h, l, e) times w (h, e, n) plus b (h, n), head by head."""
    return xp.matmul(hid, w[None, ...]) + b[None, :, None, :]


def _head_affine_backward(xp, hid, w, dout):
    """Gradients of _head_affine: (dhid, dw, db), dw and db summed over the batch."""
    dw = xp.sum(xp.matmul(_t(xp, hid), dout), axis=0)
    db = xp.sum(dout, axis=(0, 2))
    dhid = xp.matmul(dout, _t(xp, w)[None, ...])
    return dhid, dw, db


def _segment_sum(xp, a, n):
    """out[..., j] = sum of a[..., m] over m with m mod n == j (the adjoint of take(., m mod n))."""
    l = a.shape[-1]
    rows = -(-l // n)
    a = pad_to(xp, a, a.shape[:-1] + (rows * n,))
    return xp.sum(xp.reshape(a, a.shape[:-1] + (rows, n)), axis=-2)


# --- one component's logits -------------------------------------------------------------------------

def component_forward(spec, comp, p, x, xp, l):
    """(S^c of shape (B or 1, h, l, l), residuals for the backward)."""
    pre = _prefix(spec, comp)
    h = spec.n_heads
    if comp == "dot_product":
        q = c.split_heads(xp, linear(xp, x, p[pre + "w_q"], p[pre + "b_q"]), h)
        k = c.split_heads(xp, linear(xp, x, p[pre + "w_k"], p[pre + "b_k"]), h)
        return xp.matmul(q, _t(xp, k)) / math.sqrt(spec.head_dim), {"q": q, "k": k}
    if comp == "random":
        return p[pre + "r"][None, :, :l, :l], {}
    if comp == "factorized_random":
        r1, r2 = p[pre + "r_1"][:, :l, :], p[pre + "r_2"][:, :l, :]
        return xp.matmul(r1, _t(xp, r2))[None, ...], {"r1": r1, "r2": r2}
    a_pre, hid = _hidden(xp, x, p[pre + "w_1"], p[pre + "b_1"])
    res = {"pre": a_pre, "hid": hid}
    if comp == "dense":  # only the first l of the L output columns are ever used
        return _head_affine(xp, hid, p[pre + "w_2"][:, :, :l], p[pre + "b_2"][:, :l]), res
    # factorized_dense
    fa = _head_affine(xp, hid, p[pre + "w_a"], p[pre + "b_a"])
    fb = _head_affine(xp, hid, p[pre + "w_b"], p[pre + "b_b"])
    res.update(fa=fa, fb=fb)
    na, nb = spec.factors
    if spec.tiling == "outer":  # C[i*b + j] = A[i] B[j]
        cc = xp.reshape(fa[..., :, None] * fb[..., None, :], fa.shape[:3] + (na * nb,))
        return cc[..., :l], res
    m = xp.arange(l, device=c._dev(x))  # "tile": C[m] = A[m mod a] B[m mod b]
    ta, tb = xp.take(fa, m % na, axis=3), xp.take(fb, m % nb, axis=3)
    res.update(ta=ta, tb=tb)
    return ta * tb, res


def component_backward(spec, comp, p, x, xp, res, ds, l):
    """ds: dL/dS^c (B, h, l, l).  Returns (dx contribution or None, {param name: gradient})."""
    pre = _prefix(spec, comp)
    L = spec.max_len
    if comp == "dot_product":
        q, k = res["q"], res["k"]
        scale = 1.0 / math.sqrt(spec.head_dim)
        dq = xp.matmul(ds, k) * scale
        dk = xp.matmul(_t(xp, ds), q) * scale
        dxq, dwq, dbq = linear_backward(xp, x, p[pre + "w_q"], c.merge_heads(xp, dq))
        dxk, dwk, dbk = linear_backward(xp, x, p[pre + "w_k"], c.merge_heads(xp, dk))
        return dxq + dxk, {pre + "w_q": dwq, pre + "b_q": dbq, pre + "w_k": dwk, pre + "b_k": dbk}
    if comp == "random":  # S = r[:, :l, :l] for every batch element
        g = xp.sum(ds, axis=0)
        return None, {pre + "r": pad_to(xp, g, (spec.n_heads, L, L))}
    if comp == "factorized_random":  # S = R1 R2^T, shared by the batch
        g = xp.sum(ds, axis=0)
        dr1 = xp.matmul(g, res["r2"])
        dr2 = xp.matmul(_t(xp, g), res["r1"])
        k = spec.k
        return None, {pre + "r_1": pad_to(xp, dr1, (spec.n_heads, L, k)),
                      pre + "r_2": pad_to(xp, dr2, (spec.n_heads, L, k))}
    hid = res["hid"]
    if comp == "dense":
        dhid, dw2, db2 = _head_affine_backward(xp, hid, p[pre + "w_2"][:, :, :l], ds)
        grads = {pre + "w_2": pad_to(xp, dw2, p[pre + "w_2"].shape),
                 pre + "b_2": pad_to(xp, db2, p[pre + "b_2"].shape)}
    else:  # factorized_dense
        fa, fb = res["fa"], res["fb"]
        na, nb = spec.factors
        if spec.tiling == "outer":
            dc = pad_to(xp, ds, ds.shape[:3] + (na * nb,))
            dc = xp.reshape(dc, ds.shape[:3] + (na, nb))
            dfa = xp.sum(dc * fb[..., None, :], axis=-1)
            dfb = xp.sum(dc * fa[..., :, None], axis=-2)
        else:
            dfa = _segment_sum(xp, ds * res["tb"], na)
            dfb = _segment_sum(xp, ds * res["ta"], nb)
        dh_a, dwa, dba = _head_affine_backward(xp, hid, p[pre + "w_a"], dfa)
        dh_b, dwb, dbb = _head_affine_backward(xp, hid, p[pre + "w_b"], dfb)
        dhid = dh_a + dh_b
        grads = {pre + "w_a": dwa, pre + "b_a": dba, pre + "w_b": dwb, pre + "b_b": dbb}
    dx, dw1, db1 = _hidden_backward(xp, x, p[pre + "w_1"], res["pre"], dhid)
    grads.update({pre + "w_1": dw1, pre + "b_1": db1})
    return dx, grads


# --- the layer --------------------------------------------------------------------------------------

def forward(spec, p, x, xp, causal, kpm, ops):
    """(y, residuals)."""
    l = x.shape[1]
    h = spec.n_heads
    v = c.split_heads(xp, linear(xp, x, p["w_v"], p["b_v"]), h)
    mixture = spec.variant == "mixture"
    alpha = c.softmax_1d(xp, p["mix_logits"]) if mixture else None
    comps, s = [], None
    for i, comp in enumerate(spec.components_used):
        s_c, res_c = component_forward(spec, comp, p, x, xp, l)
        comps.append((comp, s_c, res_c))
        term = alpha[i] * s_c if mixture else s_c
        s = term if s is None else s + term
    prob = ops.masked_softmax(xp, s, causal, kpm)
    o = xp.matmul(prob, v)
    merged = c.merge_heads(xp, o)
    y = linear(xp, merged, p["w_o"], p["b_o"])
    return y, {"v": v, "alpha": alpha, "comps": comps, "p": prob, "merged": merged}


def backward(spec, p, x, xp, res, dy, ops):
    """(dx, {name: gradient}) for every parameter."""
    l = x.shape[1]
    h = spec.n_heads
    dmerged, dwo, dbo = linear_backward(xp, res["merged"], p["w_o"], dy)
    do = c.split_heads(xp, dmerged, h)
    prob, v = res["p"], res["v"]
    dp = xp.matmul(do, _t(xp, v))
    dv = xp.matmul(_t(xp, prob), do)
    ds = ops.softmax_backward(xp, prob, dp)
    dx, dwv, dbv = linear_backward(xp, x, p["w_v"], c.merge_heads(xp, dv))
    grads = {"w_v": dwv, "b_v": dbv, "w_o": dwo, "b_o": dbo}
    alpha = res["alpha"]
    if alpha is not None:  # S = sum_c alpha_c S^c, alpha = softmax(mix_logits)
        dalpha = xp.stack([xp.sum(ds * s_c) for _, s_c, _ in res["comps"]])
        grads["mix_logits"] = alpha * (dalpha - xp.sum(alpha * dalpha))
    for i, (comp, _, res_c) in enumerate(res["comps"]):
        ds_c = ds if alpha is None else alpha[i] * ds
        dx_c, g = component_backward(spec, comp, p, x, xp, res_c, ds_c, l)
        if dx_c is not None:
            dx = dx + dx_c
        grads.update(g)
    return dx, grads
