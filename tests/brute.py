"""An independent brute-force reading of issue 2's math: float64 Python scalars and explicit loops.

Written from the issue's formulas, not from synth_ref's code: nothing here is vectorized, nothing is
stabilized beyond what float64 needs (exp of the plain logits; the tests keep logits far below 709),
and every index is spelled out.  Slow on purpose; only for tiny sizes.

Conventions read from the issue (h heads, e = d / h, head i owns feature columns i*e ... i*e + e - 1):
- softmax variants: y = concat_i(P_i V_i) w_o + b_o with P_i the row-softmax of the logits S_i over the
  allowed keys (causal: t' <= t; key_padding_mask True = real token), 0 on rows with no allowed key;
- AFT: Y[t, c] = sigmoid(Q[t, c]) sum_t' exp(K[t', c] + w'[t, t']) V[t', c] / sum_t' exp(K[t', c] + w'[t, t'])
  over allowed t', 0 when nothing is allowed; y = Y w_o + b_o.
Only the Spec's public fields (variant, sizes, options) are read.
"""

from __future__ import annotations

import math

import numpy as np


def _f(a):
    """Parameters and inputs as float64 NumPy arrays (read element by element below)."""
    return np.asarray(a, dtype=np.float64)


def _linear(x, w, b):
    """rows (n, d_in) -> (n, d_out): out[n][j] = sum_i x[n][i] w[i][j] + b[j], by loops."""
    n_in, n_out = w.shape
    out = []
    for row in x:
        out.append([math.fsum(row[i] * w[i, j] for i in range(n_in)) + b[j] for j in range(n_out)])
    return out


def _softmax_row(logits, allowed):
    """exp(s) / sum exp(s) over the allowed entries; 0 elsewhere and on a row with nothing allowed."""
    ex = [math.exp(s) if ok else 0.0 for s, ok in zip(logits, allowed, strict=True)]
    tot = math.fsum(ex)
    return [v / tot if tot > 0 else 0.0 for v in ex]


def _allowed(t, tp, causal, mask_row):
    if causal and tp > t:
        return False
    return mask_row is None or bool(mask_row[tp])


# --- softmax family ------------------------------------------------------------------------------

def _component_logits(spec, comp, p, xb, l, head):
    """S[t][t'] of one component for one batch element's rows xb (l, d) and one head."""
    pre = comp + "." if spec.variant == "mixture" else ""
    e = spec.d_model // spec.n_heads
    d = spec.d_model
    cols = range(head * e, head * e + e)
    if comp == "dot_product":
        q = _linear(xb, p[pre + "w_q"], p[pre + "b_q"])
        k = _linear(xb, p[pre + "w_k"], p[pre + "b_k"])
        return [[math.fsum(q[t][c] * k[tp][c] for c in cols) / math.sqrt(e) for tp in range(l)]
                for t in range(l)]
    if comp == "random":
        r = p[pre + "r"]
        return [[r[head, t, tp] for tp in range(l)] for t in range(l)]
    if comp == "factorized_random":
        r1, r2 = p[pre + "r_1"], p[pre + "r_2"]
        k = r1.shape[2]
        return [[math.fsum(r1[head, t, j] * r2[head, tp, j] for j in range(k)) for tp in range(l)]
                for t in range(l)]
    # dense and factorized_dense share the hidden layer H = relu(x w_1[head] + b_1[head])
    w1, b1 = p[pre + "w_1"], p[pre + "b_1"]
    hid = []
    for t in range(l):
        hid.append([max(0.0, math.fsum(xb[t][i] * w1[head, i, m] for i in range(d)) + b1[head, m])
                    for m in range(e)])
    if comp == "dense":
        w2, b2 = p[pre + "w_2"], p[pre + "b_2"]
        return [[math.fsum(hid[t][m] * w2[head, m, tp] for m in range(e)) + b2[head, tp]
                 for tp in range(l)] for t in range(l)]
    assert comp == "factorized_dense", comp
    a_n, b_n = spec.factors
    wa, ba, wb, bb = p[pre + "w_a"], p[pre + "b_a"], p[pre + "w_b"], p[pre + "b_b"]
    out = []
    for t in range(l):
        av = [math.fsum(hid[t][m] * wa[head, m, i] for m in range(e)) + ba[head, i] for i in range(a_n)]
        bv = [math.fsum(hid[t][m] * wb[head, m, j] for m in range(e)) + bb[head, j] for j in range(b_n)]
        row = []
        for tp in range(l):
            if spec.tiling == "tile":  # C[m] = A[m mod a] B[m mod b]
                row.append(av[tp % a_n] * bv[tp % b_n])
            else:  # outer: C[p*b + q] = A[p] B[q], so entry m is the pair (m // b, m % b)
                row.append(av[tp // b_n] * bv[tp % b_n])
        out.append(row)
    return out


def _logits(spec, p, xb, l, head):
    if spec.variant != "mixture":
        return _component_logits(spec, spec.variant, p, xb, l, head)
    ml = [float(v) for v in p["mix_logits"]]
    ex = [math.exp(v - max(ml)) for v in ml]
    alpha = [v / math.fsum(ex) for v in ex]
    total = [[0.0] * l for _ in range(l)]
    for a, comp in zip(alpha, spec.components, strict=True):
        s = _component_logits(spec, comp, p, xb, l, head)
        for t in range(l):
            for tp in range(l):
                total[t][tp] += a * s[t][tp]
    return total


def _softmax_weights(spec, p, x, causal, mask):
    B, l, _ = x.shape
    out = np.zeros((B, spec.n_heads, l, l))
    for b in range(B):
        mrow = None if mask is None else mask[b]
        for hd in range(spec.n_heads):
            s = _logits(spec, p, x[b], l, hd)
            for t in range(l):
                ok = [_allowed(t, tp, causal, mrow) for tp in range(l)]
                out[b, hd, t] = _softmax_row(s[t], ok)
    return out


def _softmax_apply(spec, p, x, causal, mask):
    B, l, d = x.shape
    e = d // spec.n_heads
    P = _softmax_weights(spec, p, x, causal, mask)
    y = np.zeros((B, l, d))
    for b in range(B):
        v = _linear(x[b], p["w_v"], p["b_v"])
        mixed = [[math.fsum(P[b, c // e, t, tp] * v[tp][c] for tp in range(l)) for c in range(d)]
                 for t in range(l)]
        y[b] = _linear(mixed, p["w_o"], p["b_o"])
    return y


# --- AFT family ----------------------------------------------------------------------------------

def _conv_hat(spec, p, head):
    """w_hat of one head: gamma (w - mean) / sqrt(var + 1e-5) + beta over that head's own taps."""
    taps = [float(v) for v in np.ravel(p["conv_w"][head])]
    mean = math.fsum(taps) / len(taps)
    var = math.fsum((v - mean) ** 2 for v in taps) / len(taps)  # population variance
    g, bt = float(p["conv_gamma"][head]), float(p["conv_beta"][head])
    return [g * (v - mean) / math.sqrt(var + 1e-5) + bt for v in taps]


def _position_bias(spec, p, l, t, tp, channel, causal, grid):
    """w'[t, t'] for one channel (aft_conv's w' depends on the channel's head)."""
    v = spec.variant
    if v == "aft_simple":
        return 0.0
    if v in ("aft_full", "aft_local"):
        if v == "aft_local" and abs(t - tp) >= spec.window:
            return 0.0  # outside the window: zero, not -inf
        if spec.pos_rank is None:
            return float(p["pos_bias"][t, tp])
        u, w = p["pos_u"], p["pos_v"]
        return math.fsum(u[t, r] * w[tp, r] for r in range(spec.pos_rank))
    head = channel // (spec.d_model // spec.n_heads)
    s = spec.kernel_size
    what = _conv_hat(spec, p, head)
    if grid is None:
        j = tp - t + (s - 1 if causal else (s - 1) // 2)
        return what[j] if 0 <= j < s else 0.0
    _, width = grid
    c = (s - 1) // 2
    (pr, qc), (pr2, qc2) = divmod(t, width), divmod(tp, width)
    jp, jq = pr2 - pr + c, qc2 - qc + c
    return what[jp * s + jq] if 0 <= jp < s and 0 <= jq < s else 0.0


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def _aft_weights_one(spec, p, k, l, causal, mrow, grid):
    """wts[c][t][t'] = exp(K[t', c] + w'[t, t']) / sum over allowed t' (before the sigmoid gate)."""
    d = spec.d_model
    wts = []
    for c in range(d):
        rows = []
        for t in range(l):
            z = [k[tp][c] + _position_bias(spec, p, l, t, tp, c, causal, grid) for tp in range(l)]
            rows.append(_softmax_row(z, [_allowed(t, tp, causal, mrow) for tp in range(l)]))
        wts.append(rows)
    return wts


def _flatten(x):
    if x.ndim == 4:
        B, H, W, d = x.shape
        return x.reshape(B, H * W, d), (H, W)
    return x, None


def _aft_weights(spec, p, x, causal, mask):
    x, grid = _flatten(x)
    B, l, d = x.shape
    out = np.zeros((B, d, l, l))
    for b in range(B):
        k = _linear(x[b], p["w_k"], p["b_k"])
        out[b] = _aft_weights_one(spec, p, k, l, causal, None if mask is None else mask[b], grid)
    return out


def _aft_apply(spec, p, x, causal, mask):
    shape = x.shape
    x, grid = _flatten(x)
    B, l, d = x.shape
    y = np.zeros((B, l, d))
    for b in range(B):
        q = _linear(x[b], p["w_q"], p["b_q"])
        k = _linear(x[b], p["w_k"], p["b_k"])
        v = _linear(x[b], p["w_v"], p["b_v"])
        wts = _aft_weights_one(spec, p, k, l, causal, None if mask is None else mask[b], grid)
        mixed = [[_sigmoid(q[t][c]) * math.fsum(wts[c][t][tp] * v[tp][c] for tp in range(l))
                  for c in range(d)] for t in range(l)]
        y[b] = _linear(mixed, p["w_o"], p["b_o"])
    return y.reshape(shape)


# --- public --------------------------------------------------------------------------------------

def _args(params, x, mask):
    p = {n: _f(a) for n, a in params.items()}
    m = None if mask is None else np.asarray(mask, dtype=bool)
    return p, _f(x), m


def apply(spec, params, x, *, causal=False, key_padding_mask=None):
    """y, float64 NumPy, shape of x."""
    p, x, m = _args(params, x, key_padding_mask)
    fn = _aft_apply if spec.variant.startswith("aft_") else _softmax_apply
    return fn(spec, p, x, causal, m)


def attention_weights(spec, params, x, *, causal=False, key_padding_mask=None):
    """Softmax variants: P (B, h, l, l); AFT: (B, d, l, l) normalised exp(K + w') weights."""
    p, x, m = _args(params, x, key_padding_mask)
    fn = _aft_weights if spec.variant.startswith("aft_") else _softmax_weights
    return fn(spec, p, x, causal, m)
