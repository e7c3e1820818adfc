"""Random synthesizer: O = softmax(R) V with R (h, l, l) shared by the batch.

Because R does not depend on the input, the batch folds into the value columns: without a key
padding mask every batch element has the same weights, so one (l x l) by (l x B*e) product per head
computes all of them, and softmax(R) is evaluated once per column block instead of once per batch
element.  With a mask the weights differ per batch element, and the columns are grouped by batch
element (G = B groups of e columns instead of one group of B*e).

Column n of group g is batch element b = g + n // e, feature c = n % e.

Kernels (flash-style: softmax(R) is never stored):
- ``_fwd``: per (row block, column block, head x group) the online softmax over key blocks; stores
  O and the row max and 1 / (row sum) (one each per head, group and row; see ``_probs``).
- ``_bwd_dv``: dV = P^T dO, per (key block, column block, head x group), looping over row blocks.
- ``_bwd_dr``: dR = sum over groups of P * (dO V^T - delta), per (row block, key block, head),
  looping over groups and column blocks: the batch reduction of dR happens inside the kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    ACC,
    STATS,
    block,
    check_grid,
    first_order_only,
    launch_options,
    mask_args,
    pairs_in_range,
    seq_block,
)


@triton.jit
def _logits(r_ptr, s_rh, s_rt, s_rk, hh, rows, keys, l, m_ptr, s_mb, s_mk, g,
            CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr):
    """R[hh, rows, keys] with -inf where the pair is not allowed (outside l, causal, padding)."""
    ok = pairs_in_range(rows, keys, l, CAUSAL)
    if HAS_MASK:
        kp = tl.load(m_ptr + g * s_mb + keys * s_mk, mask=keys < l, other=0)
        ok = ok & (kp[None, :] != 0)
    # int64 rows: an (l, l) slab passes 2**31 elements at l = 46341 (see _common, "Offsets")
    s = tl.load(r_ptr + hh * s_rh + rows.to(tl.int64)[:, None] * s_rt + keys[None, :] * s_rk, mask=ok,
                other=0.0)
    return tl.where(ok, s.to(ACC), float("-inf"))


@triton.jit
def _fwd(r_ptr, s_rh, s_rt, s_rk,
         v_ptr, s_vb, s_vh, s_vt, s_ve,
         o_ptr, s_ob, s_oh, s_ot, s_oe,
         mx_ptr, inv_ptr, m_ptr, s_mb, s_mk,
         l, e, N, G,
         CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr,
         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    pid_hg = tl.program_id(2).to(tl.int64)  # int64 head and batch offsets (_common, "Offsets")
    hh, g = pid_hg // G, pid_hg % G
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    b, c = g + cols // e, cols % e
    col_ok = cols < N
    m_i = tl.full([BM], float("-inf"), ACC)
    l_i = tl.zeros([BM], ACC)
    acc = tl.zeros([BM, BN], ACC)
    hi = tl.minimum(l, (pid_m + 1) * BM) if CAUSAL else l
    for start in range(0, hi, BK):
        keys = start + tl.arange(0, BK)
        s = _logits(r_ptr, s_rh, s_rt, s_rk, hh, rows, keys, l, m_ptr, s_mb, s_mk, g, CAUSAL, HAS_MASK, ACC)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing allowed yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        v = tl.load(v_ptr + b[None, :] * s_vb + hh * s_vh + keys[:, None] * s_vt + c[None, :] * s_ve,
                    mask=(keys[:, None] < l) & col_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, out_dtype=ACC, input_precision="ieee")
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    out = tl.where(l_i[:, None] > 0, acc / tl.where(l_i > 0, l_i, 1.0)[:, None], 0.0)
    tl.store(o_ptr + b[None, :] * s_ob + hh * s_oh + rows[:, None] * s_ot + c[None, :] * s_oe,
             out.to(o_ptr.dtype.element_ty), mask=(rows[:, None] < l) & col_ok[None, :])
    if pid_n == 0:
        # The row max and 1 / (row sum), not their log-sum-exp: see _probs.  An empty row stores
        # (0, 0), so that P = 0 there in the backward.
        has = l_i > 0
        tl.store(mx_ptr + pid_hg * l + rows, tl.where(has, m_i, 0.0), mask=rows < l)
        tl.store(inv_ptr + pid_hg * l + rows, 1.0 / tl.where(has, l_i, float("inf")), mask=rows < l)


@triton.jit
def _probs(s, mx_ptr, inv_ptr, at, rows, l):
    """P recomputed as exp(S - m) / sum from the forward's row statistics at ``at`` (0 outside l),
    as the eager softmax forms it.  exp(S - lse) with lse = m + log(sum) carries lse's rounding,
    |lse| ulps, into every weight of the row (as in the flash kernel's ``_probs``): with |R| ~ 100
    in float32 that put dV, hence dx and dw_v, at 8-25x the eager float32 error."""
    m = tl.load(mx_ptr + at + rows, mask=rows < l, other=0.0)
    inv = tl.load(inv_ptr + at + rows, mask=rows < l, other=0.0)
    return tl.exp(s - m[:, None]) * inv[:, None]


@triton.jit
def _bwd_dv(r_ptr, s_rh, s_rt, s_rk,
            do_ptr, s_db, s_dh, s_dt, s_de,
            dv_ptr, s_gb, s_gh, s_gt, s_ge,
            mx_ptr, inv_ptr, m_ptr, s_mb, s_mk,
            l, e, N, G,
            CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr,
            BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_k, pid_n = tl.program_id(0), tl.program_id(1)
    pid_hg = tl.program_id(2).to(tl.int64)  # int64 head and batch offsets (_common, "Offsets")
    hh, g = pid_hg // G, pid_hg % G
    keys = pid_k * BK + tl.arange(0, BK)
    cols = pid_n * BN + tl.arange(0, BN)
    b, c = g + cols // e, cols % e
    col_ok = cols < N
    acc = tl.zeros([BK, BN], ACC)
    lo = (pid_k * BK) // BM * BM if CAUSAL else 0  # rows above the keys see none of them
    for start in range(lo, l, BM):
        rows = start + tl.arange(0, BM)
        s = _logits(r_ptr, s_rh, s_rt, s_rk, hh, rows, keys, l, m_ptr, s_mb, s_mk, g, CAUSAL, HAS_MASK, ACC)
        p = _probs(s, mx_ptr, inv_ptr, pid_hg * l, rows, l)
        do = tl.load(do_ptr + b[None, :] * s_db + hh * s_dh + rows[:, None] * s_dt + c[None, :] * s_de,
                     mask=(rows[:, None] < l) & col_ok[None, :], other=0.0)
        acc += tl.dot(tl.trans(p).to(do.dtype), do, out_dtype=ACC, input_precision="ieee")
    tl.store(dv_ptr + b[None, :] * s_gb + hh * s_gh + keys[:, None] * s_gt + c[None, :] * s_ge,
             acc.to(dv_ptr.dtype.element_ty), mask=(keys[:, None] < l) & col_ok[None, :])


@triton.jit
def _bwd_dr(r_ptr, s_rh, s_rt, s_rk,
            v_ptr, s_vb, s_vh, s_vt, s_ve,
            do_ptr, s_db, s_dh, s_dt, s_de,
            dr_ptr, s_gh, s_gt, s_gk,
            mx_ptr, inv_ptr, delta_ptr, m_ptr, s_mb, s_mk,
            l, e, N, G,
            CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr,
            BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m, pid_k = tl.program_id(0), tl.program_id(1)
    hh = tl.program_id(2).to(tl.int64)  # int64 offsets (_common, "Offsets")
    rows = pid_m * BM + tl.arange(0, BM)
    keys = pid_k * BK + tl.arange(0, BK)
    acc = tl.zeros([BM, BK], ACC)
    n_groups = G
    if CAUSAL:  # tiles wholly above the diagonal are 0: run no group for them
        n_groups = tl.where(pid_k * BK > pid_m * BM + BM - 1, 0, G)
    for g in range(0, n_groups):
        s = _logits(r_ptr, s_rh, s_rt, s_rk, hh, rows, keys, l, m_ptr, s_mb, s_mk, g, CAUSAL, HAS_MASK, ACC)
        delta = tl.load(delta_ptr + (hh * G + g) * l + rows, mask=rows < l, other=0.0)
        p = _probs(s, mx_ptr, inv_ptr, (hh * G + g) * l, rows, l)
        dp = tl.zeros([BM, BK], ACC)
        for n0 in range(0, N, BN):
            cols = n0 + tl.arange(0, BN)
            b, c = (cols // e).to(tl.int64) + g, cols % e
            col_ok = cols < N
            do = tl.load(do_ptr + b[None, :] * s_db + hh * s_dh + rows[:, None] * s_dt + c[None, :] * s_de,
                         mask=(rows[:, None] < l) & col_ok[None, :], other=0.0)
            v = tl.load(v_ptr + b[None, :] * s_vb + hh * s_vh + keys[:, None] * s_vt + c[None, :] * s_ve,
                        mask=(keys[:, None] < l) & col_ok[None, :], other=0.0)
            dp += tl.dot(do, tl.trans(v), out_dtype=ACC, input_precision="ieee")
        acc += p * (dp - delta[:, None])
    tl.store(dr_ptr + hh * s_gh + rows.to(tl.int64)[:, None] * s_gt + keys[None, :] * s_gk,
             acc.to(dr_ptr.dtype.element_ty), mask=(rows[:, None] < l) & (keys[None, :] < l))


def _layout(v, mask):
    """(G, N): one group of B*e columns, or one group per batch element under a mask."""
    B, _, _, e = v.shape
    return (B, e) if mask is not None else (1, B * e)


#: The largest (BM, BK) -- query rows and keys of a tile -- per input dtype; value columns take
#: blocks of up to 64.  float64 at BK = 64 spilled 136 bytes per thread in _fwd on sm_90, even
#: unpipelined (_common.STAGES), at 32 none.
SEQ_TILES = {torch.float16: (64, 64), torch.bfloat16: (64, 64), torch.float32: (64, 64),
             torch.float64: (64, 32)}


def _meta(l, N, causal, has_mask, dtype):
    """The kernels' block sizes, flags and launch options for length l, N value columns."""
    bm, bk = SEQ_TILES[dtype]
    return dict(CAUSAL=causal, HAS_MASK=has_mask, ACC=ACC[dtype],
                BM=seq_block(l, bm), BN=block(N, 64), BK=seq_block(l, bk), **launch_options(dtype))


class RandomMix(torch.autograd.Function):
    """softmax(R) V per head: r (h, l, l), v (B, h, l, e) -> (B, h, l, e)."""

    @staticmethod
    def forward(ctx, r, v, causal, mask):
        h, l, _ = r.shape
        e = v.shape[-1]
        G, N = _layout(v, mask)
        out = torch.empty_like(v)
        mx = torch.empty(h, G, l, device=v.device, dtype=STATS[v.dtype])  # per row: max, and 1 / sum in inv
        inv = torch.empty_like(mx)
        m, smb, smk, has_mask = mask_args(mask, v)
        meta = _meta(l, N, causal, has_mask, v.dtype)
        BM, BN = meta["BM"], meta["BN"]
        grid = check_grid("random", (triton.cdiv(l, BM), triton.cdiv(N, BN), h * G),
                          (f"block of {BN} value columns (batch x head width)", "(head, batch element)"),
                          v.shape)
        _fwd[grid](r, *r.stride(), v, *v.stride(), out, *out.stride(), mx, inv, m, smb, smk,
                   l, e, N, G, **meta)
        ctx.save_for_backward(r, v, out, mx, inv, m)
        ctx.meta, ctx.dims = meta, (G, N, smb, smk)
        return out

    @staticmethod
    def backward(ctx, dout):
        first_order_only("random")
        r, v, out, mx, inv, m = ctx.saved_tensors
        meta, (G, N, smb, smk) = ctx.meta, ctx.dims
        h, l, _ = r.shape
        e = v.shape[-1]
        BM, BN, BK = meta["BM"], meta["BN"], meta["BK"]
        dout = dout.contiguous()
        # delta[h, g, t] = sum over the group's columns of dO * O (the softmax backward's row term).
        prod = (dout.to(mx.dtype) * out.to(mx.dtype)).sum(-1)  # (B, h, l)
        grouped = prod if meta["HAS_MASK"] else prod.sum(0, keepdim=True)  # (G, h, l)
        delta = grouped.permute(1, 0, 2).contiguous()
        dr = dv = None
        if ctx.needs_input_grad[1]:
            dv = torch.empty_like(v)
            _bwd_dv[(triton.cdiv(l, BK), triton.cdiv(N, BN), h * G)](
                r, *r.stride(), dout, *dout.stride(), dv, *dv.stride(), mx, inv, m, smb, smk, l, e, N, G,
                **meta)
        if ctx.needs_input_grad[0]:
            dr = torch.empty(r.shape, device=r.device, dtype=r.dtype)
            _bwd_dr[(triton.cdiv(l, BM), triton.cdiv(l, BK), h)](
                r, *r.stride(), v, *v.stride(), dout, *dout.stride(), dr, *dr.stride(),
                mx, inv, delta, m, smb, smk, l, e, N, G, **meta)
        return dr, dv, None, None


def random_mix(r, v, causal: bool, mask):
    """r (h, L, L) (sliced to v's length here), v (B, h, l, e), mask (B, l) bool or None."""
    l = v.shape[2]
    return RandomMix.apply(r[:, :l, :l].to(v.dtype), v, bool(causal), mask)
