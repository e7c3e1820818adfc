"""AFT's weighted average as Pallas kernels (two-product form), written for the TPU lowering.

For each channel c (in group g, which owns its position bias w_g):

    Y[t, c] = sum_t' exp(w_g[t, t'] + K[t', c]) V[t', c] / sum_t' exp(w_g[t, t'] + K[t', c])

over allowed t'.  aft_full (G = 1, w = pos_bias or U V^T), aft_local (w windowed) and aft_conv
(G = heads, w_g the per-head Toeplitz taps; 2-D grids flattened) all take this form; the caller
builds w' (G, l, l) in XLA, where JAX differentiates its construction.

Two products.  On a (query block x key block) tile the sums are matmuls,
exp(w - alpha) @ (exp(K - beta) * V) and exp(w - alpha) @ exp(K - beta), with alpha[t] the row max of
w over the tile's allowed keys and beta[c] the column max of K over them: a rank-one stabilizer
alpha[t] + beta[c] >= max_t' (w + K).  Tiles are merged flash-style with a running max per (t, c).

Exactness of the stabilizer.  Off the causal diagonal every row of a tile sees the same keys (key
padding removes whole columns), so alpha and beta are maxima over exactly the allowed set, and the
shift exceeds the exact max_t' (w[t, t'] + K[t', c]) by a gap of at most min(range of w[t, .],
range of K[., c]) over the tile: 0 when w is constant, whatever K's spread.  When both spread and
their maxima sit at different keys the gap can pass float32's ~87 and every term of a (t, c) would
underflow.  So each tile first bounds the gap from above, with two lower bounds of the exact max
(w + K at K's argmax key and at w's argmax key, two 0/1-selector matmuls); a tile whose bound
exceeds 60 is computed exactly instead, one key at a time with a per-(t, c) running max (T*T*C
vector work instead of two matmuls; inputs of ordinary spread never take it).  On a causal
diagonal tile rows see different keys, and a key max taken over the whole tile would include
future keys -- the defect the spec warns about (one large future key underflows every visible
term).  There the tile is processed in groups of 8 query rows: keys before the group are allowed
for all 8 rows (the same rank-one-or-exact step, maxima over exactly those keys), and the 8 x 8
block on the diagonal is computed exactly, element by element.  No mask ever lets a disallowed key
into a stabilizer, and every finite input gives the exact result up to rounding.

Backward: recomputation from the forward's running shift mx[t, c] and inv = 1 / den
(a[t, t', c] = exp(w + K - mx) inv), in two kernels: dK / dV per key tile (looping over query tiles)
and dw per (query, key) tile summed over batch and channels inside the kernel.  With G1 = F * dY and
G2 = G1 * Y, F = exp(alpha + beta - mx) inv: dV = eK * (eW^T G1), E = eK * (eW^T G2), dK = V * dV - E,
dw = eW * (G1 (eK V)^T - G2 eK^T).  Not the log-normaliser lse = mx + log(den): exp(. - lse) would
carry lse's rounding, |lse| ulps (mx ~ 100: 4e-6 relative in float32), into every a; the deep
conformance grid's opposed cases had float32 dV 30x the reference's own error from it.

The three kernels take ``band`` (a :class:`.jax_pallas_aft_window.Band`) for the windowed form of
aft_local / 1-D aft_conv: the last grid axis then walks only the band tiles of a query (or key)
tile, the forward starts from the far tiles' summary, and the tile math is unchanged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import synth_ref._aft as _ref_aft
import synth_ref._common as _ref_common

from .jax_pallas_flash import accumulator

_NT = (((1,), (1,)), ((), ()))
_INF = float("inf")
SUB = 8  # query rows per exact sub-block on a causal diagonal (one TPU sublane group)
_F_CAP = 80.0  # exp() cap for the backward factor; see _factor
_SAFE_GAP = 60.0  # largest allowed excess of the rank-one shift over the exact max (float32 underflows ~87)


# ---------------------------------------------------------------------------------------------
# tile math shared by the kernels


def _safe(m):
    return jnp.where(m == -_INF, 0.0, m)


def _rank_one(wz, kz):
    """Stabilized factors of a tile: alpha (R, 1), beta (1, C), eW = exp(wz - alpha) (R, T),
    eK = exp(kz - beta) (T, C).  -inf entries (masked) become exact zeros."""
    alpha = _safe(jnp.max(wz, axis=1, keepdims=True))
    beta = _safe(jnp.max(kz, axis=0, keepdims=True))
    return alpha, beta, jnp.exp(wz - alpha), jnp.exp(kz - beta)


def _rank_one_safe(wz, kz, alpha, beta):
    """Whether the rank-one shift alpha + beta is provably within _SAFE_GAP of the exact
    max_t' (w + K) for every (t, c) of the tile, so that no term that matters can underflow.

    The exact max is bounded below by w + K at K's own argmax key (w averaged over tied argmaxes: an
    average is <= the max) and at w's argmax key; both bounds are matmuls with a 0/1 selector.
    Valid because every row of a tile handed here sees the same keys (-inf columns of wz are -inf
    rows of kz).  A loose bound only sends a tile to the exact path needlessly, never the reverse."""
    acc = wz.dtype
    hi = jax.lax.Precision.HIGHEST
    kfin, wfin = jnp.isfinite(kz), jnp.isfinite(wz)
    ka = jnp.logical_and(kz == beta, kfin).astype(acc)
    ka = ka / jnp.maximum(jnp.sum(ka, axis=0, keepdims=True), 1.0)
    wa = jnp.logical_and(wz == alpha, wfin).astype(acc)
    wa = wa / jnp.maximum(jnp.sum(wa, axis=1, keepdims=True), 1.0)
    lb1 = jnp.dot(jnp.where(wfin, wz, 0.0), ka, precision=hi, preferred_element_type=acc) + beta
    lb2 = alpha + jnp.dot(wa, jnp.where(kfin, kz, 0.0), precision=hi, preferred_element_type=acc)
    has = jnp.logical_and(jnp.any(wfin, axis=1, keepdims=True), jnp.any(kfin, axis=0, keepdims=True))
    gap = jnp.where(has, alpha + beta - jnp.maximum(lb1, lb2), 0.0)
    return jnp.max(gap) <= _SAFE_GAP


def _key(t, j, axis):
    """Row (axis 0) or column (axis 1) j of t, keeping the axis: a masked sum (no dynamic slicing)."""
    idx = jax.lax.broadcasted_iota(jnp.int32, t.shape, axis)
    return jnp.sum(jnp.where(idx == j, t, 0.0), axis=axis, keepdims=True)


def _exact_fwd(wz, kz, vv):
    """(m, num, den) of a tile with the exact per-(t, c) running max, one key at a time: the path
    for tiles where the rank-one shift is not provably safe (w and K both spread, maxima apart)."""
    R, C = wz.shape[0], kz.shape[1]

    def body(j, carry):
        m, num, den = carry
        z = _key(wz, j, 1) + _key(kz, j, 0)  # (R, C); -inf where key j is masked
        m_new = jnp.maximum(m, z)
        s = _safe(m_new)
        a1, e = jnp.exp(m - s), jnp.exp(z - s)
        return m_new, num * a1 + e * _key(vv, j, 0), den * a1 + e

    zero = jnp.zeros((R, C), wz.dtype)
    m, num, den = jax.lax.fori_loop(0, wz.shape[1], body, (jnp.full((R, C), -_INF, wz.dtype), zero, zero))
    return _safe(m), num, den


def _tile_fwd(wz, kz, vv, dt):
    """(shift, num, den) of a tile whose rows all see the same keys: two matmuls under the rank-one
    shift where that is provably safe, else the exact per-key loop."""

    def rank_one():
        alpha, beta, ew, ek = _rank_one(wz, kz)
        return (jnp.broadcast_to(alpha + beta, (wz.shape[0], kz.shape[1])),
                _dot(ew, ek * vv, dt), _dot(ew, ek, dt))

    alpha, beta, _, _ = _rank_one(wz, kz)
    return jax.lax.cond(_rank_one_safe(wz, kz, alpha, beta), rank_one, lambda: _exact_fwd(wz, kz, vv))


def _merge(m, num, den, m_b, num_b, den_b):
    """Online merge of running (m, num, den) with a tile's terms at shift m_b."""
    m_b = jnp.where(den_b > 0, m_b, -_INF)
    m_new = jnp.maximum(m, m_b)
    s = _safe(m_new)
    a1, a2 = jnp.exp(m - s), jnp.exp(m_b - s)
    return m_new, num * a1 + num_b * a2, den * a1 + den_b * a2


def _col_of(wrow, col):
    """Column ``col`` of wrow (R, T) as (R, 1), by a masked sum (no dynamic lane slicing)."""
    cols = jax.lax.broadcasted_iota(jnp.int32, wrow.shape, 1)
    return jnp.sum(jnp.where(cols == col, wrow, 0.0), axis=1, keepdims=True)


def _micro_logits(wrow, kmic, r0, j):
    """z_j[a, c] = w[r0 + a, r0 + j] + K[r0 + j, c] for the diagonal 8 x 8 block, -inf where a < j."""
    z = _col_of(wrow, r0 + j) + kmic[j:j + 1, :]
    rows = jax.lax.broadcasted_iota(jnp.int32, z.shape, 0)
    return jnp.where(rows >= j, z, -_INF)


def _factor(alpha, beta, mx, inv):
    """F = exp(alpha + beta - mx) / den <= e^gap <= e^_SAFE_GAP on the tiles that use it (the tile's
    shift is at most the running one, and den >= e^-gap); the cap is a guard that keeps 0 * inf out
    of the gradient should a bound ever be violated.  An empty row (mx = +inf, inv = 0) gives 0."""
    return jnp.exp(jnp.minimum(alpha + beta - mx, _F_CAP)) * inv


def _dot(a, b, dt):
    """a @ b with operands in the input dtype (the MXU's), accumulated in a's (the accumulator's)."""
    return jnp.dot(a.astype(dt), b.astype(dt), preferred_element_type=a.dtype)


def _dot_nt(a, b, dt):
    return jax.lax.dot_general(a.astype(dt), b.astype(dt), _NT, preferred_element_type=a.dtype)


def _tile_inputs(w_ref, krow_ref, k_ref, kcol_ref):
    acc = krow_ref.dtype  # the accumulation dtype (float32; float64 for float64 inputs)
    wz = w_ref[...].astype(acc) + krow_ref[...]
    kz = k_ref[...].astype(acc) + kcol_ref[...]
    return wz, kz


def _past_mask(wz, kz, r0):
    """Keep keys before local position r0 only (the keys all rows of a diagonal sub-block see)."""
    cols = jax.lax.broadcasted_iota(jnp.int32, wz.shape, 1)
    rows = jax.lax.broadcasted_iota(jnp.int32, kz.shape, 0)
    return jnp.where(cols < r0, wz, -_INF), jnp.where(rows < r0, kz, -_INF)


def _n_sub(block):
    return block // SUB


def _run_tiles(causal, live, i, j, full_tile, diagonal_tile):
    """Run a tile's step: under a causal mask tiles before the diagonal are full, the diagonal one
    exact by sub-blocks, later ones skipped; ``live`` (None: always) is the windowed kernels' "this
    grid slot holds a band tile"."""
    def when(cond, f):
        pl.when(cond if live is None else jnp.logical_and(live, cond))(f)

    if causal:
        when(j < i, full_tile)
        when(j == i, diagonal_tile)
    elif live is None:
        full_tile()
    else:
        pl.when(live)(full_tile)


# ---------------------------------------------------------------------------------------------
# forward


def _fwd_kernel(k_ref, v_ref, w_ref, krow_ref, kcol_ref, *rest, causal, dt, band=None):
    """Grid (b, g, c tile, query tile i, key slot).  Dense (band None): slot j is key tile j.
    Windowed: slot jj is band key tile band.key_of(i, jj), and the running (m, num, den) starts from
    the far key tiles' summary (three more row-tile inputs, ahead of the outputs)."""
    i, slot = pl.program_id(3), pl.program_id(4)
    if band is None:
        o_ref, mx_ref, inv_ref, m_sc, num_sc, den_sc = rest
        j, live = slot, None
    else:
        fm_ref, fn_ref, fd_ref, o_ref, mx_ref, inv_ref, m_sc, num_sc, den_sc = rest
        j, live = band.key_of(i, slot)
    T = w_ref.shape[-1]
    acc = krow_ref.dtype

    @pl.when(slot == 0)
    def _init():
        if band is None:
            m_sc[...] = jnp.full(m_sc.shape, -_INF, acc)
            num_sc[...] = jnp.zeros(num_sc.shape, acc)
            den_sc[...] = jnp.zeros(den_sc.shape, acc)
        else:
            m_sc[...], num_sc[...], den_sc[...] = fm_ref[...], fn_ref[...], fd_ref[...]

    def full_tile():
        wz, kz = _tile_inputs(w_ref, krow_ref, k_ref, kcol_ref)
        m_b, num_b, den_b = _tile_fwd(wz, kz, v_ref[...].astype(acc), dt)
        m_sc[...], num_sc[...], den_sc[...] = _merge(m_sc[...], num_sc[...], den_sc[...], m_b, num_b, den_b)

    def diagonal_tile():
        wz, kz = _tile_inputs(w_ref, krow_ref, k_ref, kcol_ref)
        vv = v_ref[...].astype(acc)
        for r in range(_n_sub(T)):  # static: T / 8 sub-blocks
            r0 = r * SUB
            rows = pl.ds(r0, SUB)
            wrow = wz[r0:r0 + SUB, :]
            # keys before the sub-block: allowed for all of its rows
            wp, kp = _past_mask(wrow, kz, r0)
            state = _merge(m_sc[rows, :], num_sc[rows, :], den_sc[rows, :], *_tile_fwd(wp, kp, vv, dt))
            # the 8 x 8 diagonal block, exact per (t, c)
            kmic, vmic = kz[r0:r0 + SUB, :], vv[r0:r0 + SUB, :]
            zs = [_micro_logits(wrow, kmic, r0, jj) for jj in range(SUB)]
            mm = functools.reduce(jnp.maximum, zs)
            s = _safe(mm)
            es = [jnp.exp(z - s) for z in zs]
            num_m = functools.reduce(jnp.add, [e * vmic[jj:jj + 1, :] for jj, e in enumerate(es)])
            den_m = functools.reduce(jnp.add, es)
            m_sc[rows, :], num_sc[rows, :], den_sc[rows, :] = _merge(*state, s, num_m, den_m)

    _run_tiles(causal, live, i, j, full_tile, diagonal_tile)

    @pl.when(slot == pl.num_programs(4) - 1)
    def _finish():
        den = den_sc[...]
        some = den > 0
        safe_den = jnp.where(some, den, 1.0)
        o_ref[...] = jnp.where(some, num_sc[...] / safe_den, 0.0).astype(o_ref.dtype)
        # the running shift and 1 / den (see the module docstring); (+inf, 0) on an empty row
        mx_ref[...] = jnp.where(some, m_sc[...], _INF)
        inv_ref[...] = jnp.where(some, 1.0 / safe_den, 0.0)


# ---------------------------------------------------------------------------------------------
# backward


def _exact_bwd(wz, kz, vv, o, do, mx, inv):
    """The exact path's contributions, one key at a time: a = exp(w + K - mx) inv needs no shift."""
    T, C = kz.shape
    rows = jax.lax.broadcasted_iota(jnp.int32, (T, C), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, wz.shape, 1)

    def body(j, carry):
        dv, e, dw = carry
        ad = jnp.exp(_key(wz, j, 1) + _key(kz, j, 0) - mx) * inv * do  # (R, C)
        dv = dv + jnp.where(rows == j, jnp.sum(ad, axis=0, keepdims=True), 0.0)
        e = e + jnp.where(rows == j, jnp.sum(ad * o, axis=0, keepdims=True), 0.0)
        dw = dw + jnp.where(cols == j, jnp.sum(ad * (_key(vv, j, 0) - o), axis=1, keepdims=True), 0.0)
        return dv, e, dw

    zero = jnp.zeros((T, C), kz.dtype)
    return jax.lax.fori_loop(0, T, body, (zero, zero, jnp.zeros(wz.shape, wz.dtype)))


def _bwd_full(wz, kz, vv, o, do, mx, inv, dt):
    """One tile's contributions (rows all seeing the same keys): (dV part (T, C), E part (T, C),
    dw part (R, T)); rank-one or exact, decided exactly as in the forward pass."""
    alpha, beta, ew, ek = _rank_one(wz, kz)

    def rank_one():
        g1 = _factor(alpha, beta, mx, inv) * do
        g2 = g1 * o
        ewt = ew.T
        dv = ek * _dot(ewt, g1, dt)
        e = ek * _dot(ewt, g2, dt)
        dw = ew * (_dot_nt(g1, ek * vv, dt) - _dot_nt(g2, ek, dt))
        return dv, e, dw

    return jax.lax.cond(_rank_one_safe(wz, kz, alpha, beta), rank_one,
                        lambda: _exact_bwd(wz, kz, vv, o, do, mx, inv))


def _bwd_micro(wrow, kz, vv, o, do, mx, inv, r0):
    """The exact 8 x 8 diagonal block of sub-block r0: (dV rows (8, C), E rows (8, C), dw rows (8, T))."""
    acc = kz.dtype
    kmic, vmic = kz[r0:r0 + SUB, :], vv[r0:r0 + SUB, :]
    key_rows = jax.lax.broadcasted_iota(jnp.int32, kmic.shape, 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, wrow.shape, 1)
    dv = jnp.zeros(kmic.shape, acc)
    e = jnp.zeros(kmic.shape, acc)
    dw = jnp.zeros(wrow.shape, acc)
    for jj in range(SUB):
        a = jnp.exp(_micro_logits(wrow, kmic, r0, jj) - mx) * inv  # (8, C): rows r0.., key r0 + jj
        ad = a * do
        dv = dv + jnp.where(key_rows == jj, jnp.sum(ad, axis=0, keepdims=True), 0.0)
        e = e + jnp.where(key_rows == jj, jnp.sum(ad * o, axis=0, keepdims=True), 0.0)
        dwc = jnp.sum(ad * (vmic[jj:jj + 1, :] - o), axis=1, keepdims=True)
        dw = dw + jnp.where(cols == r0 + jj, dwc, 0.0)
    return dv, e, dw


def _dkv_kernel(k_ref, v_ref, w_ref, krow_ref, kcol_ref, o_ref, do_ref, mx_ref, inv_ref, dk_ref, dv_ref,
                dv_sc, e_sc, *, causal, dt, band=None):
    # grid (b, g, c tile, key tile, query slot): query tile i = slot, or (windowed) the slot-th band
    # query tile of key tile j; the windowed kernel sums the band only (the caller adds the rest)
    j, slot = pl.program_id(3), pl.program_id(4)
    i, live = (slot, None) if band is None else band.row_of(j, slot)
    T = w_ref.shape[-1]
    acc = krow_ref.dtype

    @pl.when(slot == 0)
    def _init():
        dv_sc[...] = jnp.zeros(dv_sc.shape, acc)
        e_sc[...] = jnp.zeros(e_sc.shape, acc)

    def full_tile():
        wz, kz = _tile_inputs(w_ref, krow_ref, k_ref, kcol_ref)
        o, do = o_ref[...].astype(acc), do_ref[...].astype(acc)
        dv, e, _ = _bwd_full(wz, kz, v_ref[...].astype(acc), o, do, mx_ref[...], inv_ref[...], dt)
        dv_sc[...] += dv
        e_sc[...] += e

    def diagonal_tile():
        wz, kz = _tile_inputs(w_ref, krow_ref, k_ref, kcol_ref)
        vv = v_ref[...].astype(acc)
        for r in range(_n_sub(T)):
            r0 = r * SUB
            rows = slice(r0, r0 + SUB)
            wrow = wz[rows, :]
            o = o_ref[pl.ds(r0, SUB), :].astype(acc)
            do = do_ref[pl.ds(r0, SUB), :].astype(acc)
            mx, inv = mx_ref[pl.ds(r0, SUB), :], inv_ref[pl.ds(r0, SUB), :]
            wp, kp = _past_mask(wrow, kz, r0)
            dv, e, _ = _bwd_full(wp, kp, vv, o, do, mx, inv, dt)
            dv_sc[...] += dv
            e_sc[...] += e
            dvm, em, _ = _bwd_micro(wrow, kz, vv, o, do, mx, inv, r0)
            dv_sc[pl.ds(r0, SUB), :] += dvm
            e_sc[pl.ds(r0, SUB), :] += em

    _run_tiles(causal, live, i, j, full_tile, diagonal_tile)

    @pl.when(slot == pl.num_programs(4) - 1)
    def _finish():
        dv = dv_sc[...]
        dv_ref[...] = dv
        dk_ref[...] = v_ref[...].astype(acc) * dv - e_sc[...]


def _dw_kernel(k_ref, v_ref, w_ref, krow_ref, kcol_ref, o_ref, do_ref, mx_ref, inv_ref, dw_ref, *,
               causal, dt, band=None):
    # grid (g, query tile, key slot, b, c tile); windowed: the slot-th band key tile
    i, slot = pl.program_id(1), pl.program_id(2)
    j, live = (slot, None) if band is None else band.key_of(i, slot)
    b, ct = pl.program_id(3), pl.program_id(4)
    T = w_ref.shape[-1]
    acc = krow_ref.dtype

    @pl.when(jnp.logical_and(b == 0, ct == 0))
    def _init():
        dw_ref[...] = jnp.zeros(dw_ref.shape, acc)

    def full_tile():
        wz, kz = _tile_inputs(w_ref, krow_ref, k_ref, kcol_ref)
        o, do = o_ref[...].astype(acc), do_ref[...].astype(acc)
        _, _, dw = _bwd_full(wz, kz, v_ref[...].astype(acc), o, do, mx_ref[...], inv_ref[...], dt)
        dw_ref[...] += dw

    def diagonal_tile():
        wz, kz = _tile_inputs(w_ref, krow_ref, k_ref, kcol_ref)
        vv = v_ref[...].astype(acc)
        for r in range(_n_sub(T)):
            r0 = r * SUB
            wrow = wz[r0:r0 + SUB, :]
            o = o_ref[pl.ds(r0, SUB), :].astype(acc)
            do = do_ref[pl.ds(r0, SUB), :].astype(acc)
            mx, inv = mx_ref[pl.ds(r0, SUB), :], inv_ref[pl.ds(r0, SUB), :]
            wp, kp = _past_mask(wrow, kz, r0)
            _, _, dw = _bwd_full(wp, kp, vv, o, do, mx, inv, dt)
            _, _, dwm = _bwd_micro(wrow, kz, vv, o, do, mx, inv, r0)
            dw_ref[pl.ds(r0, SUB), :] += dw + dwm

    _run_tiles(causal, live, i, j, full_tile, diagonal_tile)


# ---------------------------------------------------------------------------------------------
# pallas_call plumbing; arrays: k, v, o, do, mx, inv (B, G, lp, c); w (G, lp, lp);
# krow (B, 1, lp) and kcol (B, lp, 1): 0 or -inf per key


def _operand_dtype(dtype):
    """Matmul operand dtype: the input's, except float16, whose range (65504) the backward's factor
    F (up to e^_SAFE_GAP) would overflow; float16 multiplies in float32 (only the interpreter runs
    float16: the compiled TPU path sends it to the reference)."""
    return jnp.float32 if jnp.dtype(dtype) == jnp.float16 else dtype


def _params(*semantics):
    return pltpu.CompilerParams(dimension_semantics=semantics)


def _key_block(causal, T):
    """Key-tile index for (query tile i, key tile j); under a causal mask tiles above the diagonal
    are skipped, so they map to the diagonal one (no new DMA)."""
    return (lambda i, j: jnp.minimum(i, j)) if causal else (lambda i, j: j)


def _query_block(causal):
    return (lambda j, i: jnp.maximum(i, j)) if causal else (lambda j, i: i)


def _in_specs(T, tc, at):
    """Specs for (k, v, w, krow, kcol) given at(*grid) -> (b, g, ct, query tile, key tile)."""
    return [
        pl.BlockSpec((None, None, T, tc), lambda *a: (at(*a)[0], at(*a)[1], at(*a)[4], at(*a)[2])),
        pl.BlockSpec((None, None, T, tc), lambda *a: (at(*a)[0], at(*a)[1], at(*a)[4], at(*a)[2])),
        pl.BlockSpec((None, T, T), lambda *a: (at(*a)[1], at(*a)[3], at(*a)[4])),
        pl.BlockSpec((None, 1, T), lambda *a: (at(*a)[0], 0, at(*a)[4])),
        pl.BlockSpec((None, T, 1), lambda *a: (at(*a)[0], at(*a)[4], 0)),
    ]


def _row_spec(T, tc, at):
    return pl.BlockSpec((None, None, T, tc), lambda *a: (at(*a)[0], at(*a)[1], at(*a)[3], at(*a)[2]))


def _forward(k, v, w, krow, kcol, *, causal, T, tc, interpret):
    acc = krow.dtype
    B, G, lp, c = v.shape
    n, nc = lp // T, c // tc
    kb = _key_block(causal, T)

    def at(b, g, ct, i, j):
        return b, g, ct, i, kb(i, j)

    return pl.pallas_call(
        functools.partial(_fwd_kernel, causal=causal, dt=_operand_dtype(v.dtype)),
        grid=(B, G, nc, n, n),
        in_specs=_in_specs(T, tc, at),
        out_specs=[_row_spec(T, tc, at)] * 3,  # o, and the statistics mx, inv
        out_shape=[jax.ShapeDtypeStruct(v.shape, v.dtype)] + [jax.ShapeDtypeStruct(v.shape, acc)] * 2,
        scratch_shapes=[pltpu.VMEM((T, tc), acc) for _ in range(3)],
        compiler_params=_params("parallel", "parallel", "parallel", "parallel", "arbitrary"),
        interpret=interpret,
        name="synth_aft_fwd",
    )(k, v, w, krow, kcol)


def _backward(k, v, w, krow, kcol, o, mx, inv, do, *, causal, T, tc, interpret):
    acc = krow.dtype
    B, G, lp, c = v.shape
    n, nc = lp // T, c // tc
    qb = _query_block(causal)

    def at_kv(b, g, ct, j, i):
        return b, g, ct, qb(j, i), j

    key_out = pl.BlockSpec((None, None, T, tc), lambda b, g, ct, j, i: (b, g, j, ct))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, causal=causal, dt=_operand_dtype(v.dtype)),
        grid=(B, G, nc, n, n),
        in_specs=_in_specs(T, tc, at_kv) + [_row_spec(T, tc, at_kv)] * 4,
        out_specs=[key_out, key_out],
        out_shape=[jax.ShapeDtypeStruct(v.shape, acc)] * 2,
        scratch_shapes=[pltpu.VMEM((T, tc), acc) for _ in range(2)],
        compiler_params=_params("parallel", "parallel", "parallel", "parallel", "arbitrary"),
        interpret=interpret,
        name="synth_aft_dkv",
    )(k, v, w, krow, kcol, o, do, mx, inv)

    kb = _key_block(causal, T)

    def at_w(g, i, j, b, ct):
        return b, g, ct, i, kb(i, j)

    dw = pl.pallas_call(
        functools.partial(_dw_kernel, causal=causal, dt=_operand_dtype(v.dtype)),
        grid=(G, n, n, B, nc),
        in_specs=_in_specs(T, tc, at_w) + [_row_spec(T, tc, at_w)] * 4,
        # unclamped: tiles above a causal diagonal are written once, as zeros
        out_specs=pl.BlockSpec((None, T, T), lambda g, i, j, b, ct: (g, i, j)),
        out_shape=jax.ShapeDtypeStruct(w.shape, acc),
        compiler_params=_params("parallel", "parallel", "parallel", "arbitrary", "arbitrary"),
        interpret=interpret,
        name="synth_aft_dw",
    )(k, v, w, krow, kcol, o, do, mx, inv)
    return dk, dv, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _core(k, v, w, krow, kcol, causal, T, tc, interpret):
    return _forward(k, v, w, krow, kcol, causal=causal, T=T, tc=tc, interpret=interpret)[0]


def _core_fwd(k, v, w, krow, kcol, causal, T, tc, interpret):
    o, mx, inv = _forward(k, v, w, krow, kcol, causal=causal, T=T, tc=tc, interpret=interpret)
    return o, (k, v, w, krow, kcol, o, mx, inv)


def _core_bwd(causal, T, tc, interpret, res, do):
    k, v, w, krow, kcol, o, mx, inv = res
    dk, dv, dw = _backward(k, v, w, krow, kcol, o, mx, inv, do, causal=causal, T=T, tc=tc,
                           interpret=interpret)
    return (dk.astype(k.dtype), dv.astype(v.dtype), dw.astype(w.dtype), jnp.zeros_like(krow),
            jnp.zeros_like(kcol))


_core.defvjp(_core_fwd, _core_bwd)


# ---------------------------------------------------------------------------------------------
# public entry points


def tile_sizes(length: int, channels: int, block: int, block_c: int = 128) -> tuple[int, int, int]:
    """(T, tc, padded length).  One square tile size (the causal diagonal must be square); short
    inputs use one tile covering the (8-padded) length.  Channel tiles of block_c lanes when the
    group's channels are a multiple of it, else the whole group (a full-axis block)."""
    if block < SUB or block % SUB:
        raise ValueError(f"block: expected a positive multiple of {SUB}; got {block}")
    l8 = -(-length // SUB) * SUB
    T = l8 if l8 <= block else block
    tc = block_c if channels % block_c == 0 else channels
    return T, tc, -(-length // T) * T


def aft_mix(k, v, w, key_padding_mask=None, *, causal=False, block=128, interpret=False):
    """The AFT weighted average Y (B, l, d) from K, V (B, l, d) and w (G, l, l) (G divides d; group g
    owns channels g*d/G ...), key_padding_mask (B, l) or None.  Differentiable in k, v and w."""
    B, l, d = v.shape
    G = w.shape[0]
    T, tc, lp = tile_sizes(l, d // G, block)
    gk, gv, bias = grouped_operands(k, v, key_padding_mask, G, lp)
    wp = jnp.pad(w, ((0, 0), (0, lp - l), (0, lp - l)))
    o = _core(gk, gv, wp, bias[:, None, :], bias[:, :, None], bool(causal), T, tc, interpret)
    return ungrouped(o, l)


def grouped_operands(k, v, key_padding_mask, G, lp):
    """K and V (B, l, d) as (B, G, lp, c), group g owning channels g*c ... and rows padded with 0 to
    lp; and the key bias (B, lp) in the accumulation dtype: 0 for real keys, -inf for padded ones and
    the padding rows."""
    B, l, d = v.shape
    c, pad = d // G, lp - l

    def grouped(t):
        t = jnp.transpose(jnp.reshape(t, (B, l, G, c)), (0, 2, 1, 3))
        return jnp.pad(t, ((0, 0), (0, 0), (0, pad), (0, 0)))

    allowed = jnp.ones((B, l), bool) if key_padding_mask is None else key_padding_mask
    bias = jnp.pad(jnp.where(allowed, 0.0, -_INF), ((0, 0), (0, pad)), constant_values=-_INF)
    return grouped(k), grouped(v), bias.astype(accumulator(v.dtype))


def ungrouped(o, l):
    """(B, G, lp, c) back to (B, l, G*c)."""
    B, G, _, c = o.shape
    return jnp.reshape(jnp.transpose(o[:, :, :l, :], (0, 2, 1, 3)), (B, l, G * c))


def apply(spec, p, x, causal, mask, *, impl="pallas-aft", block_q=128, block_k=128, interpret=False):
    """The whole AFT layer for checked inputs (``jax_pallas.apply`` validates): projections and the
    position bias w' exactly as the reference builds them, the weighted average by ``impl`` (plan's
    name): "pallas-aft", the kernel above; "pallas-aft-window" (a narrow band, 1-D), the windowed
    kernels of :mod:`.jax_pallas_aft_window` with the band built from the parameters (no (G, l, l)
    w'); "xla-aft", the two GEMMs of :mod:`.jax_xla_aft` (no Pallas)."""
    x, grid = _ref_aft.flatten_grid(jnp, x)
    l = x.shape[1]
    q = x @ p["w_q"] + p["b_q"]
    k = x @ p["w_k"] + p["b_k"]
    v = x @ p["w_v"] + p["b_v"]
    for name, b in (("block_q", block_q), ("block_k", block_k)):  # named as the caller gave them
        if b < SUB or b % SUB:
            raise ValueError(f"{name}: expected a positive multiple of {SUB}; got {b}")
    block = min(block_q, block_k)
    if impl == "pallas-aft-window":
        from . import jax_pallas_aft_window

        mixed = jax_pallas_aft_window.mix(spec, p, k, v, mask, causal, block=block, interpret=interpret)
    else:
        w = _ref_aft.position_bias(spec, p, jnp, l, causal, grid, _ref_common._dev(x))
        if impl == "xla-aft":
            from . import jax_xla_aft

            mixed = jax_xla_aft.mix(k, v, w, mask, causal=causal)
        else:
            mixed = aft_mix(k, v, w, mask, causal=causal, block=block, interpret=interpret)
    y = (jax.nn.sigmoid(q) * mixed) @ p["w_o"] + p["b_o"]
    return _ref_aft.unflatten_grid(jnp, y, grid)
