"""The softmax family: dot_product, dense, random, their factorized forms, and mixtures.

Each head i synthesizes logits S_i (B, h, l, l); masked entries are excluded from the row softmax;
y = concat_i(P_i V_i) w_o + b_o.  Formulas and conventions: ``variants.REGISTRY``.
"""

from __future__ import annotations

import math

from . import _common as c


def _dense_hidden(xp, p, x, pre):
    """H = relu(x w_1[i] + b_1[i]) for every head: (B, h, l, e)."""
    w1, b1 = p[pre + "w_1"], p[pre + "b_1"]
    hid = xp.matmul(x[:, None, :, :], w1[None, ...]) + b1[None, :, None, :]
    return c.relu(xp, hid)


def logits(spec, comp, p, x, xp, l):
    """One component's logits, (B or 1, h, l, l).  ``comp`` names the component; a mixture's
    arrays carry the prefix '<comp>.'."""
    pre = f"{comp}." if spec.variant == "mixture" else ""
    h = spec.n_heads
    if comp == "dot_product":
        q = c.split_heads(xp, c.linear(xp, x, p[pre + "w_q"], p[pre + "b_q"]), h)
        k = c.split_heads(xp, c.linear(xp, x, p[pre + "w_k"], p[pre + "b_k"]), h)
        return xp.matmul(q, xp.permute_dims(k, (0, 1, 3, 2))) / math.sqrt(spec.head_dim)
    if comp == "dense":
        hid = _dense_hidden(xp, p, x, pre)
        s = xp.matmul(hid, p[pre + "w_2"][None, ...]) + p[pre + "b_2"][None, :, None, :]
        return s[..., :l]
    if comp == "random":
        return p[pre + "r"][None, :, :l, :l]
    if comp == "factorized_random":
        r1, r2 = p[pre + "r_1"][:, :l, :], p[pre + "r_2"][:, :l, :]
        return xp.matmul(r1, xp.permute_dims(r2, (0, 2, 1)))[None, ...]
    if comp == "factorized_dense":
        hid = _dense_hidden(xp, p, x, pre)
        a = xp.matmul(hid, p[pre + "w_a"][None, ...]) + p[pre + "b_a"][None, :, None, :]
        b = xp.matmul(hid, p[pre + "w_b"][None, ...]) + p[pre + "b_b"][None, :, None, :]
        na, nb = spec.factors
        if spec.tiling == "outer":  # C[p*b + q] = A[p] B[q]: every pair once
            B_, h_, l_ = a.shape[:3]
            cc = xp.reshape(a[..., :, None] * b[..., None, :], (B_, h_, l_, na * nb))
        else:  # "tile": C[m] = A[m mod a] B[m mod b]
            m = xp.arange(na * nb, device=c._dev(x))
            cc = xp.take(a, m % na, axis=3) * xp.take(b, m % nb, axis=3)
        return cc[..., :l]
    raise AssertionError(comp)  # Spec validation makes this unreachable


def mixed_logits(spec, p, x, xp, l):
    """S = sum_c alpha_c S^(c), alpha = softmax(mix_logits); a single variant is its own logits."""
    if spec.variant != "mixture":
        return logits(spec, spec.variant, p, x, xp, l)
    alpha = c.softmax_1d(xp, p["mix_logits"])
    total = None
    for i, comp in enumerate(spec.components):
        term = alpha[i] * logits(spec, comp, p, x, xp, l)
        total = term if total is None else total + term
    return total


def allowed_mask(xp, l, causal, key_padding_mask, dev):
    """(B or 1, 1, l, l) boolean: which (query, key) pairs take part, or None for all."""
    allowed = None
    if causal:
        allowed = c.causal_allowed(xp, l, dev)[None, None, :, :]
    if key_padding_mask is not None:
        kp = key_padding_mask[:, None, None, :]
        allowed = kp if allowed is None else xp.logical_and(allowed, kp)
    return allowed


def _weights(spec, p, x, xp, causal, key_padding_mask):
    """P as (B or 1, h, l, l): the row-softmax of the logits over allowed keys; 0 on rows with none.

    Batch-independent logits (random, factorized_random) with no padding mask give the same P for
    every batch element; it is computed once and broadcasts in the product with V."""
    l = x.shape[1]
    s = mixed_logits(spec, p, x, xp, l)
    allowed = allowed_mask(xp, l, causal, key_padding_mask, c._dev(x))
    e = c.stable_exp(xp, s, allowed, axis=-1)
    return c.safe_divide(xp, e, xp.sum(e, axis=-1, keepdims=True))


def weights_vjp(xp, p, dp):
    """dL/dS from dL/dP for rows of weights P = softmax(S) (masked entries and empty rows: P = 0),
    as a hand-written or fused backward should form it; the reference itself is differentiated
    through its forward, which gives the same (docs/backward.md, steps 3-5).

    dS = P (dP - delta) with the row term delta = sum P dP reduced from these very dP values, except
    at each row's dominant key m (its largest P, the first on a tie): there dP_m - delta cancels to
    one rounding of dP, large next to the true value once the other keys' weights are small, so
    dS_m = delta * b - a, with a and b the sums of P dP and of P over the other keys (equal because
    the weights sum to 1; no cancellation).  P may be shared by the batch (leading axis 1)."""
    pdp = p * dp
    delta = xp.sum(pdp, axis=-1, keepdims=True)
    dom = xp.arange(p.shape[-1], device=c._dev(p)) == xp.argmax(p, axis=-1, keepdims=True)
    zero = c.const(xp, 0.0, pdp)
    a = xp.sum(xp.where(dom, zero, pdp), axis=-1, keepdims=True)
    b = xp.sum(xp.where(dom, zero, p), axis=-1, keepdims=True)
    return xp.where(dom, delta * b - a, p * (dp - delta))


def weights(spec, p, x, xp, causal, key_padding_mask):
    """P (B, h, l, l): the row-softmax of the logits over allowed keys; 0 on rows with none."""
    B, l, _ = x.shape
    return xp.broadcast_to(_weights(spec, p, x, xp, causal, key_padding_mask), (B, spec.n_heads, l, l))


def mix_values(spec, p, x, xp, weights):
    """y = concat_i(P_i V_i) w_o + b_o for given weights P (B or 1, h, l, l).  Separate from
    ``apply`` so that the layers' dropout, which changes P between the softmax and this product,
    runs the reference's own output step."""
    v = c.split_heads(xp, c.linear(xp, x, p["w_v"], p["b_v"]), spec.n_heads)
    return c.linear(xp, c.merge_heads(xp, xp.matmul(weights, v)), p["w_o"], p["b_o"])


def apply(spec, p, x, xp, causal, key_padding_mask):
    return mix_values(spec, p, x, xp, _weights(spec, p, x, xp, causal, key_padding_mask))
