"""The spec's math written directly in PyTorch: the comparator of the reference's CPU row.

The issue asks that no variant's reference be more than 3x slower than "the same math written directly
in PyTorch".  These functions compute the same function as :func:`synth_ref.apply` (checked against
it in float64 by tests/test_bench_harness.py) with the same numerics (softmax over materialized
logits; AFT with the exact per-(t, c) stabilizer over allowed keys), written the way a careful
PyTorch programmer would: plain tensor ops, no Array-API layer, no where() where nothing is masked.

One deliberate difference of algorithm, named so the CPU row can say where the time goes:
aft_simple without a mask has the same stabilizer (the per-channel key max) for every query row, so
it is O(l d) here; the reference broadcasts the keys to every row and is O(l^2 d).

Key-padding masks are not benchmarked and not supported here; ``causal`` is.
"""

from __future__ import annotations

import math

import torch


#: Elements of one AFT row-block temporary, as in ``synth_ref._aft.BLOCK_ELEMENTS`` (read at call
#: time so both always block alike).
def _block_elements() -> int:
    from synth_ref import _aft

    return _aft.BLOCK_ELEMENTS


def _split(t, h):
    B, l, d = t.shape
    return t.view(B, l, h, d // h).transpose(1, 2)


def _merge(t):
    B, h, l, e = t.shape
    return t.transpose(1, 2).reshape(B, l, h * e)


def _hidden(p, x, pre):
    # (B, 1, l, d) @ (h, d, e) -> (B, h, l, e)
    return torch.relu(x[:, None] @ p[pre + "w_1"] + p[pre + "b_1"][:, None, :])


def _logits(spec, comp, p, x, l):
    pre = f"{comp}." if spec.variant == "mixture" else ""
    h = spec.n_heads
    if comp == "dot_product":
        q = _split(x @ p[pre + "w_q"] + p[pre + "b_q"], h)
        k = _split(x @ p[pre + "w_k"] + p[pre + "b_k"], h)
        return q @ k.transpose(-1, -2) / math.sqrt(spec.head_dim)
    if comp == "dense":
        hid = _hidden(p, x, pre)
        return (hid @ p[pre + "w_2"] + p[pre + "b_2"][:, None, :])[..., :l]
    if comp == "random":
        return p[pre + "r"][None, :, :l, :l]
    if comp == "factorized_random":
        return (p[pre + "r_1"][:, :l] @ p[pre + "r_2"][:, :l].transpose(1, 2))[None]
    if comp == "factorized_dense":
        hid = _hidden(p, x, pre)
        a = hid @ p[pre + "w_a"] + p[pre + "b_a"][:, None, :]
        b = hid @ p[pre + "w_b"] + p[pre + "b_b"][:, None, :]
        na, nb = spec.factors
        if spec.tiling == "outer":
            c = (a[..., :, None] * b[..., None, :]).flatten(-2)
        else:
            m = torch.arange(na * nb, device=x.device)
            c = a[..., m % na] * b[..., m % nb]
        return c[..., :l]
    raise ValueError(f"variant: expected a softmax component; got {comp!r}")


def _softmax_layer(spec, p, x, causal):
    l = x.shape[1]
    if spec.variant == "mixture":
        alpha = torch.softmax(p["mix_logits"], 0)
        s = sum(alpha[i] * _logits(spec, c, p, x, l) for i, c in enumerate(spec.components))
    else:
        s = _logits(spec, spec.variant, p, x, l)
    if causal:  # the diagonal is always allowed, so no row is empty
        future = torch.ones(l, l, dtype=torch.bool, device=x.device).triu(1)
        s = s.masked_fill(future, -math.inf)
    v = _split(x @ p["w_v"] + p["b_v"], spec.n_heads)
    return _merge(torch.softmax(s, -1) @ v) @ p["w_o"] + p["b_o"]


def _position_bias(spec, p, l, causal, dev):
    """w' as (G, l, l), G = 1 or n_heads (aft_conv), or None for aft_simple."""
    v = spec.variant
    if v == "aft_simple":
        return None
    if v in ("aft_full", "aft_local"):
        w = p["pos_bias"][:l, :l] if spec.pos_rank is None else p["pos_u"][:l] @ p["pos_v"][:l].T
        if v == "aft_local":
            i = torch.arange(l, device=dev)
            w = w * ((i[:, None] - i[None, :]).abs() < spec.window)
        return w[None]
    if spec.spatial_dims != 1:
        raise ValueError(
            f"spatial_dims: expected 1 here (2-D aft_conv is not benchmarked); got {spec.spatial_dims}"
        )
    s = spec.kernel_size
    w = p["conv_w"]
    mean = w.mean(1, keepdim=True)
    var = ((w - mean) ** 2).mean(1, keepdim=True)
    what = p["conv_gamma"][:, None] * (w - mean) / torch.sqrt(var + 1e-5) + p["conv_beta"][:, None]
    i = torch.arange(l, device=dev)
    j = i[None, :] - i[:, None] + (s - 1 if causal else (s - 1) // 2)
    valid = (j >= 0) & (j < s)
    return what[:, j.clamp(0, s - 1)] * valid  # (h, l, l)


def _aft_layer(spec, p, x, causal):
    B, l, d = x.shape
    q = x @ p["w_q"] + p["b_q"]
    k = x @ p["w_k"] + p["b_k"]
    v = x @ p["w_v"] + p["b_v"]
    w = _position_bias(spec, p, l, causal, x.device)
    if w is None and not causal:  # one stabilizer for every row: O(l d)
        e = torch.exp(k - k.amax(1, keepdim=True))
        mixed = (e * v).sum(1, keepdim=True) / e.sum(1, keepdim=True)
        mixed = mixed.expand(B, l, d)
    else:
        G = 1 if w is None else w.shape[0]
        kg, vg = k.view(B, 1, l, G, d // G), v.view(B, 1, l, G, d // G)
        future = torch.ones(l, l, dtype=torch.bool, device=x.device).triu(1) if causal else None
        rows = max(1, _block_elements() // (B * l * d))
        blocks = []
        for a in range(0, l, rows):
            b = min(l, a + rows)
            z = kg if w is None else kg + w[:, a:b].permute(1, 2, 0)[None, :, :, :, None]
            z = z.expand(B, b - a, l, G, d // G)
            if future is not None:
                z = z.masked_fill(future[a:b][None, :, :, None, None], -math.inf)
            e = torch.exp(z - z.amax(2, keepdim=True))  # the diagonal keeps every row's max finite
            blocks.append(((e * vg).sum(2) / e.sum(2)).reshape(B, b - a, d))
        mixed = torch.cat(blocks, 1) if len(blocks) > 1 else blocks[0]
    return (torch.sigmoid(q) * mixed) @ p["w_o"] + p["b_o"]


def apply(spec, p, x, *, causal=False):
    """The layer's output for torch tensors x (B, l, d) and params (a dict of tensors)."""
    if spec.family == "softmax":
        return _softmax_layer(spec, p, x, causal)
    return _aft_layer(spec, p, x, causal)
