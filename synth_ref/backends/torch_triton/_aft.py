"""AFT mixing: O[t, c] = sum_t' exp(K[t', c] + w'[t, t']) V[t', c] / sum_t' exp(K[t', c] + w'[t, t'])
over allowed t', as block GEMMs, never forming the (B, l, l, d) broadcast.

Columns are (batch element, channel) pairs; w' is (G, l, l) with G = 1 (aft_full, aft_local,
aft_simple has none) or G = n_heads (aft_conv: channels of head g use w'[g]), so the columns are
grouped by head and group g's columns are n in [0, B * d/G): b = n // (d/G), c = g * d/G + n % (d/G).

Stabilizer.  Inside one (row block, key block) tile, exp(K + w) = exp(w - mw[t]) exp(K - mk[c])
exp(mw[t] + mk[c]), with mw the row maxima of w over the tile's allowed keys and mk the column maxima
of K over them (padded keys excluded from both: under a key-padding mask each program holds one batch
element, so the mask is one key vector per tile).  The tile's sums are then two GEMMs,
exp(w - mw) @ (exp(K - mk) V) and exp(w - mw) @ exp(K - mk), carried at the bound mw[t] + mk[c] and
merged across key blocks with a running maximum per (t, c) -- flash attention's online rescaling.
Both factors are <= 1, so nothing overflows; a term underflows only when it is ~87 (float32) below
the bound, which is harmless while the bound is near the true maximum of K + w over the tile.
Under a causal mask the tile on the diagonal is the one place where that fails: its key maximum may
come from a key after the row (K spread over +-80 makes the visible terms underflow to 0/0), so the
diagonal tile is computed exactly, elementwise in a (rows, keys, columns) block, with the true per-(t, c)
maximum over visible keys.  Off the diagonal the bound can still overshoot the exact max: by up to
min(range of w'[t, .], range of K[., c]) over the tile, and when w' and K are anti-correlated by more
than ~87 (a key with the tile's largest K and a w' far below the row's largest) every term of a
(t, c) underflows.  So each tile's GEMM denominator is checked: den >= exp(-bound + exact max)
always, so den >= FLOOR (e^-40 in float32, e^-600 in float64) proves the overshoot under ~43 (or
~603), where what underflows is below 1e-19 of den; a tile where some allowed (t, c) fails is
recomputed exactly, elementwise like the diagonal (``_tile_sums``).  The forward raises a flag
(``bad_ptr``, one int32) when any tile failed; the backward kernels read it once per program and,
only then, repeat the check per tile (one more GEMM) and take the exact form where it fails, so
ordinary inputs pay nothing in the backward.

aft_local and 1-D aft_conv with a narrow band (``_aft_window.use_window``: at most half the keys)
take ``_aft_window`` instead: the same tiles on the band, block summaries elsewhere, O(l (BT + NW) d)
work and no (G, l, l) w'.  This module's dense kernels serve aft_full, aft_simple and wide bands.

Kernels: ``_fwd`` (O, and per (t, c) the bound and 1 / den: ``_stats``), ``_bwd_dkv`` (per key
block: dV = sum_t P dO and dK = V dV - sum_t P (dO O)), ``_bwd_dw`` (per (row, key) tile: dw' = sum
over the group's columns of P (dO V - dO O), the batch and channel reduction inside the kernel).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common
from ._common import acc_dtype, check_grid, first_order_only, mask_args, pairs_in_range

NEG = tl.constexpr(float("-inf"))  # a constexpr: jit code may read it
#: A tile's GEMM denominator below this proves nothing about its bound (see the docstring): e^-40
#: in float32 (underflow near e^-87), e^-600 in float64 (e^-708).
FLOOR = {torch.float32: 4.248354255291589e-18, torch.float64: 2.6503965530043108e-261}


@triton.jit
def _cols(pid_n, bidx, g, eg, N, BN: tl.constexpr):
    """Column block pid_n of group g: (batch element, channel, in range).  Under a key-padding
    mask each program holds one batch element bidx (N = d/G columns), so that the mask is one key
    vector for the whole tile and the row maxima of w' can skip padded keys; else N = B * d/G."""
    cols = pid_n * BN + tl.arange(0, BN)
    # int64 batch index (and g, from the program id): (B, l, d) passes 2**31 elements (see _common)
    return (cols // eg).to(tl.int64) + bidx, g * eg + cols % eg, cols < N


@triton.jit
def _load_bc(ptr, s_b, s_t, s_c, idx, b, c, col_ok, l, ACC: tl.constexpr):
    """A (len(idx), BN) tile of a (B, l, d) tensor at positions idx and columns (b, c); 0 outside."""
    return tl.load(ptr + b[None, :] * s_b + idx[:, None] * s_t + c[None, :] * s_c,
                   mask=(idx[:, None] < l) & col_ok[None, :], other=0.0).to(ACC)


@triton.jit
def _stats(mx_ptr, inv_ptr, rows, b, c, col_ok, l, d, ACC: tl.constexpr):
    """The forward's (bound, 1 / den) per (t, c) for these rows: P = exp(K + w' - bound) / den.
    Not their log-sum-exp lse = bound + log(den): exp(z - lse) would carry lse's rounding, |lse|
    ulps (bound ~ 100: 4e-6 relative in float32, 30-60x the reference's own error on the dV of the
    conformance suite's opposed cases), into every P; exp(z - bound) * (1 / den) has the rounding of
    z - bound, small where P is.  An empty row has bound +inf and 1 / den = 0, so P = 0 there."""
    mx = _load_bc(mx_ptr, l * d, d, 1, rows, b, c, col_ok, l, ACC)
    inv = _load_bc(inv_ptr, l * d, d, 1, rows, b, c, col_ok, l, ACC)
    return mx, inv


@triton.jit
def _store_stats(mx_ptr, inv_ptr, m, den, at, ok):
    """Store what :func:`_stats` reads: the bound (+inf on an empty row) and 1 / den (0 there)."""
    has = den > 0
    tl.store(mx_ptr + at, tl.where(has, m, float("inf")), mask=ok)
    tl.store(inv_ptr + at, 1.0 / tl.where(has, den, float("inf")), mask=ok)


@triton.jit
def _key_ok(m_ptr, s_mb, s_mk, keys, bidx, col_ok, l, HAS_MASK: tl.constexpr):
    """(allowed keys (BK,), allowed (key, column) pairs (BK, BN)) for batch element bidx."""
    kp = keys < l
    if HAS_MASK:
        kp = kp & (tl.load(m_ptr + bidx * s_mb + keys * s_mk, mask=kp, other=0) != 0)
    return kp, kp[:, None] & col_ok[None, :]


@triton.jit
def _w_tile(w_ptr, s_wg, s_wt, s_wk, g, rows, keys, l, CAUSAL: tl.constexpr, HAS_W: tl.constexpr,
            ACC: tl.constexpr):
    """(w'[rows, keys], allowed) for one tile: allowed = inside l and, causal, key <= row."""
    ok = pairs_in_range(rows, keys, l, CAUSAL)
    if HAS_W:
        # int64 rows: one (l, l) slab passes 2**31 elements at l = 46341 (see _common)
        w = tl.load(w_ptr + g * s_wg + rows.to(tl.int64)[:, None] * s_wt + keys[None, :] * s_wk, mask=ok,
                    other=0.0)
        w = w.to(ACC)
    else:
        w = tl.zeros(ok.shape, ACC)
    return w, ok


@triton.jit
def _factors(w, wok, kv, kok):
    """exp(w - mw), exp(K - mk), and the bound mw[t] + mk[c] (-inf where a side has nothing allowed)."""
    mw = tl.max(tl.where(wok, w, NEG), 1)
    mk = tl.max(tl.where(kok, kv, NEG), 0)
    mw_s = tl.where(mw == NEG, 0.0, mw)
    mk_s = tl.where(mk == NEG, 0.0, mk)
    # masked before exp (exp(-inf) = 0): a masked entry's own value may sit far above the maximum
    # (padding rows load 0 while allowed K are near -100), and exp of it would overflow to inf
    ew = tl.exp(tl.where(wok, w - mw_s[:, None], NEG))
    ek = tl.exp(tl.where(kok, kv - mk_s[None, :], NEG))
    some = (mw != NEG)[:, None] & (mk != NEG)[None, :]
    return ew, ek, tl.where(some, mw_s[:, None] + mk_s[None, :], NEG)


@triton.jit
def _exact_z(w, wok, kv, kok):
    """The diagonal tile, elementwise: z = K + w (rows, keys, columns), -inf where not allowed."""
    ok = wok[:, :, None] & kok[None, :, :]
    return tl.where(ok, kv[None, :, :] + w[:, :, None], NEG)


@triton.jit
def _exact_sums(w, wok, kv, kok, vv):
    """A tile's (bound, num, den) elementwise at the exact per-(t, c) max over its allowed keys."""
    z = _exact_z(w, wok, kv, kok)
    bm = tl.max(z, 1)
    e3 = tl.exp(z - tl.where(bm == NEG, 0.0, bm)[:, None, :])
    return bm, tl.sum(e3 * vv[None, :, :], 1), tl.sum(e3, 1)


@triton.jit
def _unsafe(bm, bden, FLOOR: tl.constexpr):
    """1 if some (t, c) with allowed keys has a GEMM denominator under FLOOR (its rank-one bound not
    proven close to the exact max), else 0: an int32 scalar."""
    bad = tl.where((bm != NEG) & (bden < FLOOR), 1, 0)
    return tl.max(tl.max(bad, 1), 0)


@triton.jit
def _tile_sums(w, wok, kv, kok, vv, ACC: tl.constexpr, FLOOR: tl.constexpr):
    """An off-diagonal tile's (bound, num, den, failed): two GEMMs at the rank-one bound, or the
    exact sums where the check fails (failed = 1)."""
    ew, ek, bm = _factors(w, wok, kv, kok)
    bden = tl.dot(ew, ek, out_dtype=ACC, input_precision="ieee")
    bnum = tl.dot(ew, ek * vv, out_dtype=ACC, input_precision="ieee")
    bad = _unsafe(bm, bden, FLOOR)
    if bad != 0:
        bm, bnum, bden = _exact_sums(w, wok, kv, kok, vv)
    return bm, bnum, bden, bad


@triton.jit
def _merge(m, num, den, bm, bnum, bden):
    """Add a block's sums, carried at bm, into running sums carried at m (per (t, c))."""
    m_new = tl.maximum(m, bm)
    m_s = tl.where(m_new == NEG, 0.0, m_new)
    a_old = tl.exp(m - m_s)
    a_blk = tl.exp(bm - m_s)
    return m_new, num * a_old + bnum * a_blk, den * a_old + bden * a_blk


@triton.jit
def _recheck(check, ew, ek, bm, ACC: tl.constexpr, FLOOR: tl.constexpr):
    """In a backward kernel: 0 when the forward flagged no tile (``check`` = 0, nothing computed),
    else the forward's check repeated on this tile (one GEMM)."""
    bad = check * 0
    if check != 0:
        bad = _unsafe(bm, tl.dot(ew, ek, out_dtype=ACC, input_precision="ieee"), FLOOR)
    return bad


@triton.jit
def _tile_dkv(w, wok, kp, kv, kok, mx_ptr, inv_ptr, do_ptr, delta_ptr, rows, b, c, col_ok, l, d, check,
              ACC: tl.constexpr, FLOOR: tl.constexpr):
    """An off-diagonal (rows, keys) tile's share of dV and of sum_t P (dO O) for its keys, as two
    GEMMs: P = ew ek scale with scale = exp(tile bound - row bound) / den (0 on an empty row); the
    exact form where the forward's check failed on this tile."""
    wok = wok & kp[None, :]
    ew, ek, bm = _factors(w, wok, kv, kok)
    if _recheck(check, ew, ek, bm, ACC, FLOOR) != 0:
        ddv, dpd = _exact_dkv(w, wok, kv, kok, mx_ptr, inv_ptr, do_ptr, delta_ptr, rows, b, c, col_ok, l,
                              d, ACC)
    else:
        mx, inv = _stats(mx_ptr, inv_ptr, rows, b, c, col_ok, l, d, ACC)
        scale = tl.where(bm == NEG, 0.0, tl.exp(bm - mx) * inv)
        do = _load_bc(do_ptr, l * d, d, 1, rows, b, c, col_ok, l, ACC)
        delta = _load_bc(delta_ptr, l * d, d, 1, rows, b, c, col_ok, l, ACC)
        ewt = tl.trans(ew)
        ddv = ek * tl.dot(ewt, scale * do, out_dtype=ACC, input_precision="ieee")
        dpd = ek * tl.dot(ewt, scale * delta, out_dtype=ACC, input_precision="ieee")
    return ddv, dpd


@triton.jit
def _exact_dkv(w, wok, kv, kok, mx_ptr, inv_ptr, do_ptr, delta_ptr, rows, b, c, col_ok, l, d,
               ACC: tl.constexpr):
    """A tile's share of dV and of sum_t P (dO O) for its keys, elementwise with the exact
    z = K + w': the causal diagonal (whose key maximum may lie after the row) and tiles that failed
    the check (see the docstring)."""
    z = _exact_z(w, wok, kv, kok)
    mx, inv = _stats(mx_ptr, inv_ptr, rows, b, c, col_ok, l, d, ACC)
    p3 = tl.exp(z - mx[:, None, :]) * inv[:, None, :]
    do = _load_bc(do_ptr, l * d, d, 1, rows, b, c, col_ok, l, ACC)
    delta = _load_bc(delta_ptr, l * d, d, 1, rows, b, c, col_ok, l, ACC)
    return tl.sum(p3 * do[:, None, :], 0), tl.sum(p3 * delta[:, None, :], 0)


@triton.jit
def _store_dkv(dv_ptr, dk_ptr, dv, pd, vv, keys, b, c, col_ok, l, d):
    """dV and dK = V dV - sum_t P (dO O) for a (keys, columns) block of (B, l, d) gradients."""
    at = b[None, :] * l * d + keys[:, None] * d + c[None, :]
    ok = (keys[:, None] < l) & col_ok[None, :]
    tl.store(dv_ptr + at, dv.to(dv_ptr.dtype.element_ty), mask=ok)
    tl.store(dk_ptr + at, (vv * dv - pd).to(dk_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _fwd(k_ptr, s_kb, s_kt, s_kc, v_ptr, s_vb, s_vt, s_vc, w_ptr, s_wg, s_wt, s_wk, m_ptr, s_mb, s_mk,
         o_ptr, mx_ptr, inv_ptr, bad_ptr, l, d, eg, N, NB,
         CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_W: tl.constexpr, ACC: tl.constexpr,
         BT: tl.constexpr, BN: tl.constexpr, FLOOR: tl.constexpr):
    pid_t, pid_n, pid_gb = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    g, bidx = pid_gb // NB, pid_gb % NB  # int64: see _common
    BK: tl.constexpr = BT  # square tiles: the causal diagonal is exactly one tile
    rows = pid_t * BT + tl.arange(0, BT)
    b, c, col_ok = _cols(pid_n, bidx, g, eg, N, BN)
    m = tl.full([BT, BN], NEG, ACC)
    num = tl.zeros([BT, BN], ACC)
    den = tl.zeros([BT, BN], ACC)
    failed = pid_t * 0  # tiles that failed the check (int32)
    hi = pid_t * BT if CAUSAL else l  # off-diagonal key blocks
    for start in range(0, hi, BK):
        keys = start + tl.arange(0, BK)
        kp, kok = _key_ok(m_ptr, s_mb, s_mk, keys, bidx, col_ok, l, HAS_MASK)
        kv = _load_bc(k_ptr, s_kb, s_kt, s_kc, keys, b, c, col_ok, l, ACC)
        vv = _load_bc(v_ptr, s_vb, s_vt, s_vc, keys, b, c, col_ok, l, ACC)
        w, wok = _w_tile(w_ptr, s_wg, s_wt, s_wk, g, rows, keys, l, False, HAS_W, ACC)
        bm, bnum, bden, bad = _tile_sums(w, wok & kp[None, :], kv, kok, vv, ACC, FLOOR)
        failed += bad
        m, num, den = _merge(m, num, den, bm, bnum, bden)
    tl.atomic_max(bad_ptr, failed)  # any failed tile: the backward repeats the check
    if CAUSAL:
        keys = pid_t * BT + tl.arange(0, BK)
        kp, kok = _key_ok(m_ptr, s_mb, s_mk, keys, bidx, col_ok, l, HAS_MASK)
        kv = _load_bc(k_ptr, s_kb, s_kt, s_kc, keys, b, c, col_ok, l, ACC)
        vv = _load_bc(v_ptr, s_vb, s_vt, s_vc, keys, b, c, col_ok, l, ACC)
        w, wok = _w_tile(w_ptr, s_wg, s_wt, s_wk, g, rows, keys, l, True, HAS_W, ACC)
        bm, bnum, bden = _exact_sums(w, wok, kv, kok, vv)
        m, num, den = _merge(m, num, den, bm, bnum, bden)
    has = den > 0
    out = num / tl.where(has, den, 1.0)  # nothing allowed: num = 0, so out = 0
    at = b[None, :] * l * d + rows[:, None] * d + c[None, :]  # o and the stats are contiguous (B, l, d)
    ok = (rows[:, None] < l) & col_ok[None, :]
    tl.store(o_ptr + at, out.to(o_ptr.dtype.element_ty), mask=ok)
    _store_stats(mx_ptr, inv_ptr, m, den, at, ok)


@triton.jit
def _bwd_dkv(k_ptr, s_kb, s_kt, s_kc, v_ptr, s_vb, s_vt, s_vc, w_ptr, s_wg, s_wt, s_wk, m_ptr, s_mb, s_mk,
             do_ptr, mx_ptr, inv_ptr, delta_ptr, bad_ptr, dk_ptr, dv_ptr, l, d, eg, N, NB,
             CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_W: tl.constexpr, ACC: tl.constexpr,
             BT: tl.constexpr, BN: tl.constexpr, FLOOR: tl.constexpr):
    pid_k, pid_n, pid_gb = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    g, bidx = pid_gb // NB, pid_gb % NB  # int64: see _common
    BK: tl.constexpr = BT
    keys = pid_k * BK + tl.arange(0, BK)
    b, c, col_ok = _cols(pid_n, bidx, g, eg, N, BN)
    kp, kok = _key_ok(m_ptr, s_mb, s_mk, keys, bidx, col_ok, l, HAS_MASK)
    kv = _load_bc(k_ptr, s_kb, s_kt, s_kc, keys, b, c, col_ok, l, ACC)
    vv = _load_bc(v_ptr, s_vb, s_vt, s_vc, keys, b, c, col_ok, l, ACC)
    dv = tl.zeros([BK, BN], ACC)
    pd = tl.zeros([BK, BN], ACC)  # sum_t P[t, t'] delta[t]
    check = tl.load(bad_ptr)
    lo = (pid_k + 1) * BK if CAUSAL else 0  # off-diagonal row blocks: after the keys when causal
    for start in range(lo, l, BT):
        rows = start + tl.arange(0, BT)
        w, wok = _w_tile(w_ptr, s_wg, s_wt, s_wk, g, rows, keys, l, False, HAS_W, ACC)
        ddv, dpd = _tile_dkv(w, wok, kp, kv, kok, mx_ptr, inv_ptr, do_ptr, delta_ptr, rows, b, c,
                             col_ok, l, d, check, ACC, FLOOR)
        dv += ddv
        pd += dpd
    if CAUSAL:
        rows = pid_k * BK + tl.arange(0, BT)
        w, wok = _w_tile(w_ptr, s_wg, s_wt, s_wk, g, rows, keys, l, True, HAS_W, ACC)
        ddv, dpd = _exact_dkv(w, wok, kv, kok, mx_ptr, inv_ptr, do_ptr, delta_ptr, rows, b, c, col_ok, l,
                              d, ACC)
        dv += ddv
        pd += dpd
    _store_dkv(dv_ptr, dk_ptr, dv, pd, vv, keys, b, c, col_ok, l, d)


@triton.jit
def _bwd_dw(k_ptr, s_kb, s_kt, s_kc, v_ptr, s_vb, s_vt, s_vc, w_ptr, s_wg, s_wt, s_wk, m_ptr, s_mb, s_mk,
            do_ptr, mx_ptr, inv_ptr, delta_ptr, bad_ptr, dw_ptr, s_gg, s_gt, s_gk, l, d, eg, N, NB,
            CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_W: tl.constexpr, ACC: tl.constexpr,
            BT: tl.constexpr, BN: tl.constexpr, DIAG: tl.constexpr, FLOOR: tl.constexpr):
    """DIAG=False: every (row, key) tile, off-diagonal math (causal: tiles on or above the diagonal
    are skipped, the diagonal by the DIAG=True launch, which computes it exactly)."""
    pid_t, pid_k, g = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)  # see _common
    BK: tl.constexpr = BT
    if DIAG:
        pid_k = pid_t
    rows = pid_t * BT + tl.arange(0, BT)
    keys = pid_k * BK + tl.arange(0, BK)
    w, wok = _w_tile(w_ptr, s_wg, s_wt, s_wk, g, rows, keys, l, DIAG, HAS_W, ACC)
    acc = tl.zeros([BT, BK], ACC)
    check = tl.load(bad_ptr)
    n_batch = NB
    if CAUSAL and not DIAG:
        n_batch = tl.where(pid_k < pid_t, NB, 0)
    for bidx in range(0, n_batch):
        kp, _ = _key_ok(m_ptr, s_mb, s_mk, keys, bidx, keys < l, l, HAS_MASK)
        acc += _dw_columns(k_ptr, s_kb, s_kt, s_kc, v_ptr, s_vb, s_vt, s_vc, m_ptr, s_mb, s_mk,
                           do_ptr, mx_ptr, inv_ptr, delta_ptr, w, wok & kp[None, :], rows, keys, bidx, g,
                           l, d, eg, N, check, HAS_MASK, ACC, BT, BN, DIAG, FLOOR)
    ok = (rows[:, None] < l) & (keys[None, :] < l)
    if CAUSAL and not DIAG:
        ok = ok & (keys[None, :] < pid_t * BT)  # below the diagonal only: the DIAG launch does it
    tl.store(dw_ptr + g * s_gg + rows.to(tl.int64)[:, None] * s_gt + keys[None, :] * s_gk, acc, mask=ok)


@triton.jit
def _dw_columns(k_ptr, s_kb, s_kt, s_kc, v_ptr, s_vb, s_vt, s_vc, m_ptr, s_mb, s_mk,
                do_ptr, mx_ptr, inv_ptr, delta_ptr, w, wok, rows, keys, bidx, g, l, d, eg, N, check,
                HAS_MASK: tl.constexpr, ACC: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr,
                DIAG: tl.constexpr, FLOOR: tl.constexpr):
    """One (row, key) tile of dw' summed over the columns of batch element bidx (of all batch
    elements at once when there is no mask: then N spans them); exact on the causal diagonal (DIAG)
    and on column blocks that fail the forward's check."""
    BK: tl.constexpr = BT
    acc = tl.zeros([BT, BK], ACC)
    for n0 in range(0, N, BN):
        b, c, col_ok = _cols(n0 // BN, bidx, g, eg, N, BN)
        kp, kok = _key_ok(m_ptr, s_mb, s_mk, keys, bidx, col_ok, l, HAS_MASK)
        kv = _load_bc(k_ptr, s_kb, s_kt, s_kc, keys, b, c, col_ok, l, ACC)
        vv = _load_bc(v_ptr, s_vb, s_vt, s_vc, keys, b, c, col_ok, l, ACC)
        mx, inv = _stats(mx_ptr, inv_ptr, rows, b, c, col_ok, l, d, ACC)
        do = _load_bc(do_ptr, l * d, d, 1, rows, b, c, col_ok, l, ACC)
        delta = _load_bc(delta_ptr, l * d, d, 1, rows, b, c, col_ok, l, ACC)
        if DIAG:
            acc += _exact_dw(w, wok, kv, kok, vv, mx, inv, do, delta)
        else:
            ew, ek, bm = _factors(w, wok, kv, kok)
            if _recheck(check, ew, ek, bm, ACC, FLOOR) != 0:
                acc += _exact_dw(w, wok, kv, kok, vv, mx, inv, do, delta)
            else:
                scale = tl.where(bm == NEG, 0.0, tl.exp(bm - mx) * inv)
                t1 = tl.dot(scale * do, tl.trans(ek * vv), out_dtype=ACC, input_precision="ieee")
                t2 = tl.dot(scale * delta, tl.trans(ek), out_dtype=ACC, input_precision="ieee")
                acc += ew * (t1 - t2)
    return acc


@triton.jit
def _exact_dw(w, wok, kv, kok, vv, mx, inv, do, delta):
    """A tile's dw' over one column block, elementwise with the exact z = K + w'."""
    p3 = tl.exp(_exact_z(w, wok, kv, kok) - mx[:, None, :]) * inv[:, None, :]
    return tl.sum(p3 * (do[:, None, :] * vv[None, :, :] - delta[:, None, :]), 2)


#: Square tile side and column block.  The diagonal tile's elementwise block is BT * BT * BN.
BT, BN = 16, 32


def tile() -> int:
    """The square tile side a launch uses: BT, or ``_common.SEQ_BLOCK`` when that is set."""
    return _common.seq_side(BT)


class AftMix(torch.autograd.Function):
    """k, v (B, l, d), w (G, l, l) or None -> O (B, l, d), the normalised sums before the sigmoid gate."""

    @staticmethod
    def forward(ctx, k, v, w, causal, mask):
        B, l, d = k.shape
        G = 1 if w is None else w.shape[0]
        eg = d // G
        # Under a mask, one batch element per program (see _cols); else the batch folds into columns.
        NB, N = (B, eg) if mask is not None else (1, B * eg)
        stat = _common.STATS[v.dtype]
        out = torch.empty(B, l, d, device=v.device, dtype=v.dtype)
        mx = torch.empty(B, l, d, device=v.device, dtype=stat)  # per (t, c): bound, 1 / den
        inv = torch.empty_like(mx)
        m, smb, smk, has_mask = mask_args(mask, v)
        wt = (w, *w.stride()) if w is not None else (v.new_zeros(1), 0, 0, 0)
        meta = dict(CAUSAL=bool(causal), HAS_MASK=has_mask, HAS_W=w is not None, ACC=acc_dtype(v),
                    BT=tile(), BN=BN, FLOOR=FLOOR[stat], num_warps=_common.AFT_WARPS)
        bad = torch.zeros(1, device=v.device, dtype=torch.int32)  # set if a tile failed its check
        grid = check_grid("aft", (triton.cdiv(l, meta["BT"]), triton.cdiv(N, BN), G * NB),
                          (f"block of {BN} columns (batch x channels)", "(group, batch element)"), v.shape)
        _fwd[grid](
            k, *k.stride(), v, *v.stride(), *wt, m, smb, smk, out, mx, inv, bad, l, d, eg, N, NB, **meta)
        ctx.save_for_backward(k, v, w, m, out, mx, inv, bad)
        ctx.meta, ctx.dims = meta, (smb, smk, G, eg, N, NB)
        return out

    @staticmethod
    def backward(ctx, dout):
        first_order_only("aft")
        k, v, w, m, out, mx, inv, bad = ctx.saved_tensors
        smb, smk, G, eg, N, NB = ctx.dims
        meta = ctx.meta
        B, l, d = k.shape
        dout = dout.contiguous()
        delta = (dout.to(mx.dtype) * out.to(mx.dtype)).contiguous()
        wt = (w, *w.stride()) if w is not None else (v.new_zeros(1), 0, 0, 0)
        common = (k, *k.stride(), v, *v.stride(), *wt, m, smb, smk, dout, mx, inv, delta, bad)
        dk = dv = dw = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dk = torch.empty(B, l, d, device=k.device, dtype=k.dtype)
            dv = torch.empty(B, l, d, device=k.device, dtype=v.dtype)
            _bwd_dkv[(triton.cdiv(l, meta["BT"]), triton.cdiv(N, BN), G * NB)](
                *common, dk, dv, l, d, eg, N, NB, **meta)
        if w is not None and ctx.needs_input_grad[2]:
            dw = torch.zeros(G, l, l, device=k.device, dtype=mx.dtype)
            nb = triton.cdiv(l, meta["BT"])
            _bwd_dw[(nb, nb, G)](*common, dw, *dw.stride(), l, d, eg, N, NB, DIAG=False, **meta)
            if meta["CAUSAL"]:
                _bwd_dw[(nb, 1, G)](*common, dw, *dw.stride(), l, d, eg, N, NB, DIAG=True, **meta)
            dw = dw.to(w.dtype)
        return dk, dv, dw, None, None


def aft_layer(spec, p, x, causal, mask):
    """(y, kernel): the whole AFT layer, projections and gate in torch, the weighted sums in
    :class:`AftMix` ("aft") or, for a narrow band (``_aft_window.use_window``), in
    ``_aft_window.AftWindowMix`` ("aft-window").

    The dense path takes w' from the reference's own ``position_bias`` (as x's tensors), so that its
    construction (band, taps, low rank) is the spec's and autograd carries dw' back to the
    parameters; the windowed path builds only the band, by the same conventions."""
    from array_api_compat import array_namespace

    from synth_ref import _aft

    from . import _aft_window
    from ._plan import autocast_values

    q = x @ p["w_q"] + p["b_q"]
    k = x @ p["w_k"] + p["b_k"]
    v = autocast_values(x @ p["w_v"] + p["b_v"])
    dt = v.dtype
    l = x.shape[1]
    xp = array_namespace(x)
    if _aft_window.use_window(spec, l, causal):
        wb, lo = _aft_window.band(spec, p, xp, l, causal, x.device)
        o = _aft_window.AftWindowMix.apply(k.to(dt), v, wb.to(dt), lo, bool(causal), mask)
        name = "aft-window"
    else:
        w = _aft.position_bias(spec, p, xp, l, causal, None, x.device)
        o = AftMix.apply(k.to(dt), v, None if w is None else w.to(dt), bool(causal), mask)
        name = "aft"
    return (torch.sigmoid(q) * o) @ p["w_o"] + p["b_o"], name
