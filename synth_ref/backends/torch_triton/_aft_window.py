"""AFT with a banded position bias (aft_local, 1-D aft_conv) in O(l (BT + NW) d) work and
O(l d + l NW) memory: the band exactly, everything outside it through per-block summaries.

Band.  w'[g, t, t'] is nonzero only for offsets o = t' - t in [lo, lo + NW - 1] (lo <= 0 <= hi), and
is held as wb (G, l, NW): w'[g, t, t'] = wb[g, t, t' - t - lo] inside the band, 0 outside (aft_conv's
wb is its taps broadcast over t with stride 0).  (G, l, l) is never built.

Split into disjoint key sets, per row block R = [r0, r0 + BT): the key blocks that hold a key of some
row's band ("band blocks") are computed exactly as the dense kernel of ``_aft`` computes a tile (w'
elementwise, 0 where a pair is outside its row's band; the causal diagonal tile elementwise with
the exact per-(t, c) maximum).  Every other key block is outside every row's band, so there w' = 0
and its sums, exp(K) V and exp(K), are the same for all rows of R.  Those come from block summaries
(per key block and column: m = max of K over allowed keys, S1 = sum exp(K - m) V, S2 = sum exp(K - m))
scanned into exclusive prefixes and suffixes with the running-maximum merge, so that row block R
merges prefix[first band block] (and, non-causal, suffix[last band block + 1]): one merge each.
Nothing is subtracted (the identity "sum over all keys plus (exp(w) - 1) corrections in the band"
cancels catastrophically), every term is <= 1 at its own bound, and under a causal mask the far
blocks are wholly before R, so all of R's rows see all of their keys.

Backward, the same split from the keys' side.  P[t, t'] = exp(K[t'] + w'[t, t'] - mx[t]) inv[t],
with the forward's bound mx and inv = 1 / den per (t, c) (``_aft._stats``: not exp(. - lse), which
carries lse's rounding into every P); dV[t'] = sum_t P dO[t], dK[t'] = V[t'] dV[t'] - sum_t P (dO O)[t],
dw' = sum over the group's columns of P (dO V - dO O), band only (w' = 0 outside is no parameter).
Band row blocks of a key block run the dense kernel's math; far row blocks t have
P = exp(K[t']) exp(-mx[t]) inv[t], summarised per row block as m = max of -mx over its rows,
A = sum exp(-mx - m) inv dO, C = sum exp(-mx - m) inv dO O (the same scan kernel, score -mx) and
added as exp(K[t'] + m) (A, C): every allowed far key has K[t'] <= mx[t] (the bound is at least the
exact max), so exp(K + m) <= 1 and nothing overflows; inv <= e^40 (the check's floor) in float32; a
product that underflows is below 1e-38 of |dO|.

Kernels: ``_scan`` (block summaries, exclusive prefix and suffix; keys forward, rows backward),
``_fwd_win``, ``_bwd_dkv_win``, ``_bwd_dw_win`` (per (row block, band key block) tile, scattered into
dwb; each (t, o) belongs to exactly one tile).  Block sides as ``_aft`` (square BT tiles).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _aft_band
from ._aft import (
    BN,
    FLOOR,
    NEG,
    _cols,
    _dw_columns,
    _exact_dkv,
    _exact_sums,
    _key_ok,
    _load_bc,
    _merge,
    _store_dkv,
    _store_stats,
    _tile_dkv,
    _tile_sums,
    tile,
)
from ._common import AFT_WARPS, STATS, acc_dtype, check_grid, first_order_only, mask_args, pairs_in_range


@triton.jit
def _wb_tile(wb_ptr, s_wg, s_wt, s_wj, g, rows, keys, l, lo, NW, CAUSAL: tl.constexpr, ACC: tl.constexpr):
    """(w'[rows, keys], allowed) from the band: wb[g, t, t' - t - lo] inside it, 0 outside."""
    ok = pairs_in_range(rows, keys, l, CAUSAL)
    j = keys[None, :] - rows[:, None] - lo
    inb = ok & (j >= 0) & (j < NW)
    w = tl.load(wb_ptr + g * s_wg + rows[:, None] * s_wt + j * s_wj, mask=inb, other=0.0)
    return w.to(ACC), ok


@triton.jit
def _far(ptr, idx, n, col_ok, NBLK, BD):
    """Summary number idx (m, S1, S2 as (BN,) vectors) of a (3, NBLK + 1, B * d) scan array."""
    at = idx * BD + n
    fm = tl.load(ptr + at, mask=col_ok, other=float("-inf"))
    f1 = tl.load(ptr + (NBLK + 1) * BD + at, mask=col_ok, other=0.0)
    f2 = tl.load(ptr + 2 * (NBLK + 1) * BD + at, mask=col_ok, other=0.0)
    return fm, f1, f2


@triton.jit
def _scan_block(s_ptr, s_sb, s_st, s_sc, a_ptr, s_ab, s_at, s_ac, c_ptr, s_cb, s_ct, s_cc,
                m_ptr, s_mb, s_mk, start, b, c, col_ok, l,
                SIGN: tl.constexpr, HAS_C: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr,
                BT: tl.constexpr):
    """One block's summary per column: (max of SIGN * s over valid positions, sum exp(. - max) a,
    sum exp(. - max) c, or of exp(. - max) alone without c).  -inf scores (bound +inf: an empty
    row) add nothing."""
    pos = start + tl.arange(0, BT)
    ok = (pos[:, None] < l) & col_ok[None, :]
    if HAS_MASK:
        ok = ok & (tl.load(m_ptr + b[None, :] * s_mb + pos[:, None] * s_mk, mask=ok, other=0) != 0)
    sc = SIGN * _load_bc(s_ptr, s_sb, s_st, s_sc, pos, b, c, col_ok, l, ACC)
    bm = tl.max(tl.where(ok, sc, NEG), 0)
    e = tl.exp(tl.where(ok, sc - tl.where(bm == NEG, 0.0, bm)[None, :], NEG))
    s1 = tl.sum(e * _load_bc(a_ptr, s_ab, s_at, s_ac, pos, b, c, col_ok, l, ACC), 0)
    if HAS_C:
        s2 = tl.sum(e * _load_bc(c_ptr, s_cb, s_ct, s_cc, pos, b, c, col_ok, l, ACC), 0)
    else:
        s2 = tl.sum(e, 0)
    return bm, s1, s2


@triton.jit
def _scan(s_ptr, s_sb, s_st, s_sc, a_ptr, s_ab, s_at, s_ac, c_ptr, s_cb, s_ct, s_cc, m_ptr, s_mb, s_mk,
          pre_ptr, suf_ptr, l, d, BD, NBLK,
          SIGN: tl.constexpr, HAS_C: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr,
          BT: tl.constexpr, BN: tl.constexpr):
    """pre[j] = blocks 0..j-1 merged, suf[j] = blocks j..NBLK-1 merged (j = 0..NBLK), per column
    n = b * d + c of (B, l, d) tensors; each (3, NBLK + 1, B * d): m, S1, S2."""
    n = (tl.program_id(0) * BN + tl.arange(0, BN)).to(tl.int64)  # int64: B * d * l passes 2**31 (_common)
    col_ok = n < BD
    b, c = n // d, n % d
    m = tl.full([BN], NEG, ACC)
    s1 = tl.zeros([BN], ACC)
    s2 = tl.zeros([BN], ACC)
    for j in range(0, NBLK):
        tl.store(pre_ptr + j * BD + n, m, mask=col_ok)
        tl.store(pre_ptr + (NBLK + 1 + j) * BD + n, s1, mask=col_ok)
        tl.store(pre_ptr + (2 * (NBLK + 1) + j) * BD + n, s2, mask=col_ok)
        bm, b1, b2 = _scan_block(s_ptr, s_sb, s_st, s_sc, a_ptr, s_ab, s_at, s_ac, c_ptr, s_cb, s_ct, s_cc,
                                 m_ptr, s_mb, s_mk, j * BT, b, c, col_ok, l, SIGN, HAS_C, HAS_MASK, ACC, BT)
        m, s1, s2 = _merge(m, s1, s2, bm, b1, b2)
    tl.store(pre_ptr + NBLK * BD + n, m, mask=col_ok)
    tl.store(pre_ptr + (2 * NBLK + 1) * BD + n, s1, mask=col_ok)
    tl.store(pre_ptr + (3 * NBLK + 2) * BD + n, s2, mask=col_ok)
    m = tl.full([BN], NEG, ACC)
    s1 = tl.zeros([BN], ACC)
    s2 = tl.zeros([BN], ACC)
    tl.store(suf_ptr + NBLK * BD + n, m, mask=col_ok)
    tl.store(suf_ptr + (2 * NBLK + 1) * BD + n, s1, mask=col_ok)
    tl.store(suf_ptr + (3 * NBLK + 2) * BD + n, s2, mask=col_ok)
    for jj in range(0, NBLK):
        j = NBLK - 1 - jj  # backwards (a loop with a negative step does not compile everywhere)
        bm, b1, b2 = _scan_block(s_ptr, s_sb, s_st, s_sc, a_ptr, s_ab, s_at, s_ac, c_ptr, s_cb, s_ct, s_cc,
                                 m_ptr, s_mb, s_mk, j * BT, b, c, col_ok, l, SIGN, HAS_C, HAS_MASK, ACC, BT)
        m, s1, s2 = _merge(m, s1, s2, bm, b1, b2)
        tl.store(suf_ptr + j * BD + n, m, mask=col_ok)
        tl.store(suf_ptr + (NBLK + 1 + j) * BD + n, s1, mask=col_ok)
        tl.store(suf_ptr + (2 * (NBLK + 1) + j) * BD + n, s2, mask=col_ok)


@triton.jit
def _fwd_win(k_ptr, s_kb, s_kt, s_kc, v_ptr, s_vb, s_vt, s_vc, wb_ptr, s_wg, s_wt, s_wj, m_ptr, s_mb, s_mk,
             pre_ptr, suf_ptr, o_ptr, mx_ptr, inv_ptr, bad_ptr, l, d, eg, N, NB, BD, lo, NW, NBLK,
             CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr,
             BT: tl.constexpr, BN: tl.constexpr, FLOOR: tl.constexpr):
    pid_t, pid_n, pid_gb = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    g, bidx = pid_gb // NB, pid_gb % NB  # int64: see _common
    BK: tl.constexpr = BT
    r0 = pid_t * BT
    rows = r0 + tl.arange(0, BT)
    b, c, col_ok = _cols(pid_n, bidx, g, eg, N, BN)
    # Band key blocks: those holding a key in [r0 + lo, r0 + BT - 1 + hi] (clamped first, so that
    # the divisions see no negative numbers).
    jlo = tl.maximum(r0 + lo, 0) // BK
    jhi = tl.minimum(r0 + BT - 1 + lo + NW - 1, l - 1) // BK
    n = b * d + c  # column of the scan arrays
    fm, f1, f2 = _far(pre_ptr, jlo, n, col_ok, NBLK, BD)  # key blocks before the band
    m = tl.zeros([BT, BN], ACC) + fm[None, :]
    num = tl.zeros([BT, BN], ACC) + f1[None, :]
    den = tl.zeros([BT, BN], ACC) + f2[None, :]
    if not CAUSAL:  # key blocks after the band
        fm, f1, f2 = _far(suf_ptr, jhi + 1, n, col_ok, NBLK, BD)
        m, num, den = _merge(m, num, den, fm[None, :], f1[None, :], f2[None, :])
    hi = r0 if CAUSAL else (jhi + 1) * BK  # band blocks off the diagonal
    failed = pid_t * 0
    for start in range(jlo * BK, hi, BK):
        keys = start + tl.arange(0, BK)
        kp, kok = _key_ok(m_ptr, s_mb, s_mk, keys, bidx, col_ok, l, HAS_MASK)
        kv = _load_bc(k_ptr, s_kb, s_kt, s_kc, keys, b, c, col_ok, l, ACC)
        vv = _load_bc(v_ptr, s_vb, s_vt, s_vc, keys, b, c, col_ok, l, ACC)
        w, wok = _wb_tile(wb_ptr, s_wg, s_wt, s_wj, g, rows, keys, l, lo, NW, False, ACC)
        bm, bnum, bden, bad = _tile_sums(w, wok & kp[None, :], kv, kok, vv, ACC, FLOOR)
        failed += bad
        m, num, den = _merge(m, num, den, bm, bnum, bden)
    tl.atomic_max(bad_ptr, failed)  # any failed tile: the backward repeats the check
    if CAUSAL:
        keys = r0 + tl.arange(0, BK)
        kp, kok = _key_ok(m_ptr, s_mb, s_mk, keys, bidx, col_ok, l, HAS_MASK)
        kv = _load_bc(k_ptr, s_kb, s_kt, s_kc, keys, b, c, col_ok, l, ACC)
        vv = _load_bc(v_ptr, s_vb, s_vt, s_vc, keys, b, c, col_ok, l, ACC)
        w, wok = _wb_tile(wb_ptr, s_wg, s_wt, s_wj, g, rows, keys, l, lo, NW, True, ACC)
        bm, bnum, bden = _exact_sums(w, wok, kv, kok, vv)
        m, num, den = _merge(m, num, den, bm, bnum, bden)
    has = den > 0
    out = num / tl.where(has, den, 1.0)
    at = b[None, :] * l * d + rows[:, None] * d + c[None, :]
    ok = (rows[:, None] < l) & col_ok[None, :]
    tl.store(o_ptr + at, out.to(o_ptr.dtype.element_ty), mask=ok)
    _store_stats(mx_ptr, inv_ptr, m, den, at, ok)


@triton.jit
def _bwd_dkv_win(k_ptr, s_kb, s_kt, s_kc, v_ptr, s_vb, s_vt, s_vc, wb_ptr, s_wg, s_wt, s_wj,
                 m_ptr, s_mb, s_mk, do_ptr, mx_ptr, inv_ptr, delta_ptr, bad_ptr, pre_ptr, suf_ptr,
                 dk_ptr, dv_ptr,
                 l, d, eg, N, NB, BD, lo, NW, NBLK,
                 CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr,
                 BT: tl.constexpr, BN: tl.constexpr, FLOOR: tl.constexpr):
    """Per key block: dV and dK from the band row blocks (the dense kernel's math) and from the
    row summaries of the far ones (pre/suf: the scan of -mx, inv dO and inv dO O)."""
    pid_k, pid_n, pid_gb = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    g, bidx = pid_gb // NB, pid_gb % NB  # int64: see _common
    BK: tl.constexpr = BT
    k0 = pid_k * BK
    keys = k0 + tl.arange(0, BK)
    b, c, col_ok = _cols(pid_n, bidx, g, eg, N, BN)
    kp, kok = _key_ok(m_ptr, s_mb, s_mk, keys, bidx, col_ok, l, HAS_MASK)
    kv = _load_bc(k_ptr, s_kb, s_kt, s_kc, keys, b, c, col_ok, l, ACC)
    vv = _load_bc(v_ptr, s_vb, s_vt, s_vc, keys, b, c, col_ok, l, ACC)
    # Band row blocks: those holding a row t with t' - t in [lo, hi] for a key t' of this block.
    ilo = tl.maximum(k0 - (lo + NW - 1), 0) // BT
    ihi = tl.minimum(k0 + BK - 1 - lo, l - 1) // BT
    n = b * d + c
    fm, fa, fc = _far(suf_ptr, ihi + 1, n, col_ok, NBLK, BD)  # row blocks after the band
    if not CAUSAL:  # and before it
        pm, pa, pc = _far(pre_ptr, ilo, n, col_ok, NBLK, BD)
        fm, fa, fc = _merge(fm, fa, fc, pm, pa, pc)
    # exp(K + max(-mx)) <= 1 for allowed keys; padded keys get nothing (their K is unbounded).
    ekf = tl.exp(tl.where(kok, kv + fm[None, :], NEG))
    dv = ekf * fa[None, :]
    pd = ekf * fc[None, :]  # sum_t P[t, t'] delta[t]
    check = tl.load(bad_ptr)
    lo_rows = (pid_k + 1) * BT if CAUSAL else ilo * BT
    for start in range(lo_rows, (ihi + 1) * BT, BT):
        rows = start + tl.arange(0, BT)
        w, wok = _wb_tile(wb_ptr, s_wg, s_wt, s_wj, g, rows, keys, l, lo, NW, False, ACC)
        ddv, dpd = _tile_dkv(w, wok, kp, kv, kok, mx_ptr, inv_ptr, do_ptr, delta_ptr, rows, b, c,
                             col_ok, l, d, check, ACC, FLOOR)
        dv += ddv
        pd += dpd
    if CAUSAL:
        rows = k0 + tl.arange(0, BT)
        w, wok = _wb_tile(wb_ptr, s_wg, s_wt, s_wj, g, rows, keys, l, lo, NW, True, ACC)
        ddv, dpd = _exact_dkv(w, wok, kv, kok, mx_ptr, inv_ptr, do_ptr, delta_ptr, rows, b, c, col_ok, l,
                              d, ACC)
        dv += ddv
        pd += dpd
    _store_dkv(dv_ptr, dk_ptr, dv, pd, vv, keys, b, c, col_ok, l, d)


@triton.jit
def _bwd_dw_win(k_ptr, s_kb, s_kt, s_kc, v_ptr, s_vb, s_vt, s_vc, wb_ptr, s_wg, s_wt, s_wj,
                m_ptr, s_mb, s_mk, do_ptr, mx_ptr, inv_ptr, delta_ptr, bad_ptr, dwb_ptr, l, d, eg, N, NB,
                lo, NW,
                CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr,
                BT: tl.constexpr, BN: tl.constexpr, DIAG: tl.constexpr, FLOOR: tl.constexpr):
    """dwb for the tile (row block pid_t, its band key block number pid_k), into the contiguous
    (G, l, NW) dwb.  DIAG=False: the off-diagonal math (causal: only blocks before the diagonal);
    DIAG=True (causal only): the diagonal tile, exactly."""
    pid_t, pid_k, g = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)  # see _common
    BK: tl.constexpr = BT
    r0 = pid_t * BT
    jlo = tl.maximum(r0 + lo, 0) // BK
    jhi = tl.minimum(r0 + BT - 1 + lo + NW - 1, l - 1) // BK
    if DIAG:
        j = pid_t
        run = True
    else:
        j = jlo + pid_k
        run = j <= jhi
        if CAUSAL:
            run = run & (j < pid_t)
    rows = r0 + tl.arange(0, BT)
    keys = j * BK + tl.arange(0, BK)
    w, wok = _wb_tile(wb_ptr, s_wg, s_wt, s_wj, g, rows, keys, l, lo, NW, DIAG, ACC)
    acc = tl.zeros([BT, BK], ACC)
    check = tl.load(bad_ptr)
    n_batch = tl.where(run, NB, 0)
    for bidx in range(0, n_batch):
        kp, _ = _key_ok(m_ptr, s_mb, s_mk, keys, bidx, keys < l, l, HAS_MASK)
        acc += _dw_columns(k_ptr, s_kb, s_kt, s_kc, v_ptr, s_vb, s_vt, s_vc, m_ptr, s_mb, s_mk,
                           do_ptr, mx_ptr, inv_ptr, delta_ptr, w, wok & kp[None, :], rows, keys, bidx, g,
                           l, d, eg, N, check, HAS_MASK, ACC, BT, BN, DIAG, FLOOR)
    jj = keys[None, :] - rows[:, None] - lo
    # A skipped tile stores nothing: its sequence length is taken as 0 (a block-shaped condition;
    # `& scalar` gives an int mask in the interpreter).
    ok = pairs_in_range(rows, keys, tl.where(n_batch > 0, l, 0), CAUSAL) & (jj >= 0) & (jj < NW)
    tl.store(dwb_ptr + g * l * NW + rows[:, None] * NW + jj, acc, mask=ok)


def _scan_launch(s, sign, a, c, mask, nblk, bt):
    """(pre, suf), each (3, nblk + 1, B * d) in the statistics' dtype: see ``_scan``."""
    B, l, d = s.shape
    stat = STATS[a.dtype]
    pre = torch.empty(3, nblk + 1, B * d, device=a.device, dtype=stat)
    suf = torch.empty_like(pre)
    m, smb, smk, has_mask = mask_args(mask, a)
    ct = (c, *c.stride()) if c is not None else (a, 0, 0, 0)
    _scan[(triton.cdiv(B * d, BN),)](
        s, *s.stride(), a, *a.stride(), *ct, m, smb, smk, pre, suf, l, d, B * d, nblk,
        SIGN=sign, HAS_C=c is not None, HAS_MASK=has_mask, ACC=acc_dtype(a), BT=bt, BN=BN)
    return pre, suf


class AftWindowMix(torch.autograd.Function):
    """k, v (B, l, d), wb (G, l, NW) with offset lo -> O (B, l, d); as ``_aft.AftMix`` with
    w'[g, t, t'] = wb[g, t, t' - t - lo] inside the band and 0 outside."""

    @staticmethod
    def forward(ctx, k, v, wb, lo, causal, mask):
        B, l, d = k.shape
        G, _, NW = wb.shape
        if not (lo <= 0 <= lo + NW - 1):
            raise ValueError(f"band: expected offsets lo <= 0 <= lo + NW - 1; got lo={lo}, NW={NW}")
        eg = d // G
        NB, N = (B, eg) if mask is not None else (1, B * eg)
        bt = tile()
        nblk = triton.cdiv(l, bt)
        # checked before the key scan's launch too (its grid, B * d / BN programs, is on axis 0)
        grid = check_grid("aft-window", (nblk, triton.cdiv(N, BN), G * NB),
                          (f"block of {BN} columns (batch x channels)", "(group, batch element)"), v.shape)
        stat = STATS[v.dtype]
        out = torch.empty(B, l, d, device=v.device, dtype=v.dtype)
        mx = torch.empty(B, l, d, device=v.device, dtype=stat)  # per (t, c): bound, 1 / den
        inv = torch.empty_like(mx)
        m, smb, smk, has_mask = mask_args(mask, v)
        pre, suf = _scan_launch(k, 1, v, None, mask, nblk, bt)
        meta = dict(CAUSAL=bool(causal), HAS_MASK=has_mask, ACC=acc_dtype(v), BT=bt, BN=BN,
                    FLOOR=FLOOR[stat], num_warps=AFT_WARPS)
        bad = torch.zeros(1, device=v.device, dtype=torch.int32)  # set if a band tile failed its check
        _fwd_win[grid](
            k, *k.stride(), v, *v.stride(), wb, *wb.stride(), m, smb, smk, pre, suf, out, mx, inv, bad,
            l, d, eg, N, NB, B * d, lo, NW, nblk, **meta)
        ctx.save_for_backward(k, v, wb, m, out, mx, inv, bad)
        ctx.meta, ctx.dims = meta, (smb, smk, G, eg, N, NB, lo, NW, nblk)
        return out

    @staticmethod
    def backward(ctx, dout):
        first_order_only("aft-window")
        k, v, wb, m, out, mx, inv, bad = ctx.saved_tensors
        smb, smk, G, eg, N, NB, lo, NW, nblk = ctx.dims
        meta = ctx.meta
        B, l, d = k.shape
        dout = dout.contiguous()
        delta = (dout.to(mx.dtype) * out.to(mx.dtype)).contiguous()
        common = (k, *k.stride(), v, *v.stride(), wb, *wb.stride(), m, smb, smk, dout, mx, inv, delta, bad)
        dk = dv = dwb = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # Row summaries: score -mx (an empty row's +inf adds nothing), values inv dO, inv dO O.
            pre, suf = _scan_launch(mx, -1, inv * dout.to(inv.dtype), inv * delta, None, nblk, meta["BT"])
            dk = torch.empty(B, l, d, device=k.device, dtype=k.dtype)
            dv = torch.empty(B, l, d, device=k.device, dtype=v.dtype)
            _bwd_dkv_win[(nblk, triton.cdiv(N, BN), G * NB)](
                *common, pre, suf, dk, dv, l, d, eg, N, NB, B * d, lo, NW, nblk, **meta)
        if ctx.needs_input_grad[2]:
            dwb = torch.zeros(G, l, NW, device=k.device, dtype=mx.dtype)
            bt = meta["BT"]
            nband = min(nblk, triton.cdiv(bt + NW - 1, bt) + 1)  # band key blocks per row block
            _bwd_dw_win[(nblk, nband, G)](*common, dwb, l, d, eg, N, NB, lo, NW, DIAG=False, **meta)
            if meta["CAUSAL"]:
                _bwd_dw_win[(nblk, 1, G)](*common, dwb, l, d, eg, N, NB, lo, NW, DIAG=True, **meta)
            dwb = dwb.to(wb.dtype)
        return dk, dv, dwb, None, None, None


#: The dispatch fraction and the band's offsets have one home, shared with the JAX adapter
#: (``synth_ref.backends._aft_band``); tests raise this module's copy to force the windowed path.
WINDOW_MAX_FRACTION = _aft_band.WINDOW_MAX_FRACTION
band_offsets = _aft_band.band_offsets


def use_window(spec, l, causal) -> bool:
    """The dispatch rule (``_aft_band.use_window`` at this module's WINDOW_MAX_FRACTION)."""
    return _aft_band.use_window(spec, l, causal, WINDOW_MAX_FRACTION)


def band(spec, p, xp, l, causal, dev):
    """(wb (G, l, NW), lo): the band of w', from the parameters as ``_aft.position_bias`` builds
    w' (the same window, taps, offsets and low-rank product), without the (l, l) matrix, so that
    autograd carries dwb back to pos_bias, pos_u / pos_v or the conv parameters."""
    from synth_ref import _aft

    lo, hi = band_offsets(spec, l, causal)
    nw = hi - lo + 1
    if spec.variant == "aft_conv":
        off = spec.kernel_size - 1 if causal else (spec.kernel_size - 1) // 2
        taps = _aft.conv_kernel(spec, p, xp)[:, lo + off:hi + off + 1]  # tap j = o + off
        return taps[:, None, :].expand(spec.n_heads, l, nw), lo
    t = torch.arange(l, device=dev)
    key = t[:, None] + lo + torch.arange(nw, device=dev)[None, :]  # t' of wb[t, j]
    inside = (key >= 0) & (key < l)
    key = key.clamp(0, l - 1)
    if spec.pos_rank is None:
        wb = p["pos_bias"][:l, :l].gather(1, key)
    else:  # w[t, t'] = u[t] . v[t'] on the band only: O(l NW rank)
        wb = (p["pos_u"][:l, None, :] * p["pos_v"][key]).sum(-1)
    return torch.where(inside, wb, torch.zeros((), dtype=wb.dtype, device=dev))[None], lo
