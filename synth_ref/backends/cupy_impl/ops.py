"""The steps a fused CUDA kernel may replace, written once in Array-API code.

``XpOps`` is the definition: it runs on any namespace (NumPy in the tests, CuPy on a GPU) and is
what the fused kernels in :mod:`synth_ref.backends.cupy_kernels` are checked against.  Everything
around these steps (projections, chain rules, parameter gradients) is shared code in
``softmax_vjp`` and ``aft_vjp``; only these four methods differ between implementations.

Shapes: softmax logits ``s`` (B or 1, h, l, l); AFT keys/values ``k``, ``v`` (B, l, d) with d split
into G groups of channels (G = 1, or n_heads for aft_conv); ``pos`` the position bias w' as a
``position.Position`` (dense (G, l, l) on demand, and a band where w' has one) or None
(aft_simple); ``kpm`` the key padding mask (B, l) boolean or None.
"""

from __future__ import annotations

from synth_ref import _common as c
from synth_ref import _softmax

#: Elements of one (B, rows, l, d) AFT block temporary; the backward holds about six at once.
#: Any value gives the same numbers (it only sets how many query rows go together).
BLOCK_ELEMENTS = 1 << 22


def allowed_pairs(xp, l, causal, kpm, dev):
    """(B or 1, l, l) boolean of allowed (query t, key t') pairs, or None when all are."""
    allowed = c.causal_allowed(xp, l, dev)[None, :, :] if causal else None
    if kpm is not None:
        kp = kpm[:, None, :]
        allowed = kp if allowed is None else xp.logical_and(allowed, kp)
    return allowed


class XpOps:
    """Reference implementations of the fusable steps (see the module docstring)."""

    name = "xp"

    # --- softmax family ---------------------------------------------------------------------------
    def masked_softmax(self, xp, s, causal, kpm):
        """P = row-softmax of s over allowed keys, 0 on rows with none.  s may have batch 1 (the
        random synthesizers); P keeps batch 1 when no mask makes rows differ by batch element."""
        l = s.shape[-1]
        allowed = allowed_pairs(xp, l, causal, kpm, c._dev(s))
        if allowed is not None:
            allowed = allowed[:, None, :, :]
        m = c.masked_max(xp, s, allowed, axis=-1)
        e = c.masked_exp(xp, s, allowed, m)
        return c.safe_divide(xp, e, xp.sum(e, axis=-1, keepdims=True))

    def softmax_backward(self, xp, p, dp):
        """dS from dP on rows of P (shared logits: P has batch 1), as :func:`synth_ref._softmax.weights_vjp`
        forms it: the row term reduced from the same dP values dS uses, not taken as the cheaper
        sum_e dO * O (equal in exact arithmetic; docs/backward.md, step 4), and the dominant key's dS
        rebuilt from the other keys (step 5).  Masked entries have P = 0, hence dS = 0."""
        return _softmax.weights_vjp(xp, p, dp)

    # --- AFT family -------------------------------------------------------------------------------
    def aft_forward(self, xp, k, v, pos, causal, kpm):
        """R[t, c] = sum_t' P V[t', c] with P = e^(z - mx) inv, z = K[t', c] + w'[t, t'] over allowed
        t', mx[t, c] the max of z and inv = 1 / sum_t' e^(z - mx) (both 0 where nothing is allowed).
        Returns (R, (mx, inv)), each (B, l, d).  The pair, not lse = mx + log(1 / inv): exp(z - lse)
        would carry lse's rounding, |lse| ulps, into every P (docs/backward.md, AFT).

        The stabiliser is the exact per-(t, c) max of z over allowed t', as in the reference, so
        any finite input stays finite in float32 (causal included)."""
        B, l, d = k.shape
        wp = None if pos is None else pos.dense()
        out = ([], [], [])
        for z, ok, vg, rows, _ in _blocks(xp, k, v, wp, causal, kpm):
            m = c.masked_max(xp, z, ok, axis=2)
            e = c.masked_exp(xp, z, ok, m)
            den = xp.sum(e, axis=2)
            inv = c.safe_divide(xp, xp.astype(den > 0, den.dtype), den)  # 0 on an empty row
            r = c.safe_divide(xp, xp.sum(e * vg, axis=2), den)  # divided, as the reference does
            for part, a in zip(out, (r, m[:, :, 0, ...], inv), strict=True):
                part.append(xp.reshape(a, (B, rows, d)))
        r, mx, inv = (_cat(xp, part) for part in out)
        if r.shape[1] != l:  # the row-independent case computed one representative row
            r, mx, inv = (xp.broadcast_to(a, (B, l, d)) for a in (r, mx, inv))
        return r, (mx, inv)

    def aft_backward(self, xp, k, v, pos, causal, kpm, r, stats, dr):
        """Given dR and the forward's (mx, inv), return (dK, dV, dw') with P = e^(z - mx) inv on
        allowed pairs:
        dV[t'] = sum_t P dR[t];  dz = P (V[t'] - R[t]) dR[t];  dK[t'] = sum_t dz;
        dw'[g, t, t'] = sum over batch and group g's channels of dz ((G, l, l); None without w')."""
        B, l, d = k.shape
        wp = None if pos is None else pos.dense()
        need_dw = wp is not None
        dk = dv = None
        dw_blocks = []
        independent = wp is None and not causal
        for z, ok, vg, rows, start in _blocks(xp, k, v, wp, causal, kpm):
            G, eg = z.shape[3], z.shape[4]
            if independent:  # every row has the same P, so only sum_t dR[t] matters
                sl = slice(0, 1)
                dr_b = xp.sum(dr, axis=1, keepdims=True)
            else:
                sl = slice(start, start + rows)
                dr_b = dr[:, sl, :]
            shape = (B, rows, 1, G, eg)
            mx_b, inv_b, r_b = (xp.reshape(a[:, sl, :], shape) for a in (*stats, r))
            p = c.masked_exp(xp, z, ok, mx_b) * inv_b
            pd = p * xp.reshape(dr_b, shape)
            dz = pd * (vg - r_b)
            dv_b, dk_b = xp.sum(pd, axis=1), xp.sum(dz, axis=1)
            dv = dv_b if dv is None else dv + dv_b
            dk = dk_b if dk is None else dk + dk_b
            if need_dw:
                dw_blocks.append(xp.permute_dims(xp.sum(dz, axis=(0, 4)), (2, 0, 1)))
        dwp = _cat(xp, dw_blocks, axis=1) if need_dw else None
        return xp.reshape(dk, (B, l, d)), xp.reshape(dv, (B, l, d)), dwp


def _cat(xp, parts, axis=1):
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=axis)


def _blocks(xp, k, v, wp, causal, kpm):
    """Yield (z, ok, vg, rows, start) for blocks of query rows: z = K + w' of shape
    (B or 1, rows, l, G, d/G), ok the allowed mask broadcastable to it (or None), vg the grouped V.

    Without a bias and without a causal mask every query row sees the same keys with the same
    logits: one representative row is yielded (rows = 1) and the caller broadcasts."""
    B, l, d = k.shape
    G = 1 if wp is None else wp.shape[0]
    kg = xp.reshape(k, (B, 1, l, G, d // G))
    vg = xp.reshape(v, (B, 1, l, G, d // G))
    if wp is None and not causal:
        ok = None if kpm is None else kpm[:, None, :, None, None]
        yield kg, ok, vg, 1, 0
        return
    allowed = allowed_pairs(xp, l, causal, kpm, c._dev(k))
    step = max(1, BLOCK_ELEMENTS // (B * l * d))
    for start in range(0, l, step):
        stop = min(l, start + step)
        z = kg if wp is None else kg + xp.permute_dims(wp[:, start:stop, :], (1, 2, 0))[None, :, :, :, None]
        if z.shape[1] != stop - start:
            z = xp.broadcast_to(z, (B, stop - start, l, G, d // G))
        ok = None
        if allowed is not None:  # a padding-only mask has one row for all queries: no row slice
            ok = allowed if allowed.shape[1] == 1 else allowed[:, start:stop, :]
            ok = ok[:, :, :, None, None]
        yield z, ok, vg, stop - start, start
