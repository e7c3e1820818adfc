"""AFT with a banded position bias (aft_local, 1-D aft_conv) on the Pallas path: O(l (T + NW) d)
work and no (G, l, l) array -- the band exactly, everything outside it through per-block summaries.
The same split as the torch/Triton adapter's ``_aft_window`` (see its docstring for the argument);
here in brief, with the TPU's constraints.

Band.  w'[g, t, t'] is nonzero only for offsets t' - t in [lo, hi] (``_aft_band.band_offsets``) and
is held as wb (G, l, NW), w'[g, t, t'] = wb[g, t, t' - t - lo], built from the parameters
(:func:`band`: a pos_bias gather, u . v row products on the band only, or the conv taps per head).

Split, per query tile i: the key tiles that hold a key of some row's band (band tiles,
``Band.key_of``) run the dense kernel's tile math (:mod:`.jax_pallas_aft`: w' elementwise, 0 where
a pair is outside its row's band; the causal diagonal tile exact by 8-row sub-blocks).  Every other
key tile is outside every row's band (w' = 0 there), so its sums exp(K) V and exp(K) are the same
for all rows of tile i; they come from per-key-tile summaries (m = max of K over allowed keys,
S1 = sum exp(K - m) V, S2 = sum exp(K - m)) scanned into exclusive prefixes and (non-causal)
suffixes with the running-max merge (``lax.associative_scan``), and the kernel's running state
starts from prefix[first band tile] merged with suffix[last band tile + 1].  Nothing is subtracted.

TPU form of the band.  A kernel cannot gather wb with computed indices on the TPU, so XLA gathers
the band tiles once into wt (G, n, nband, T, T), wt[g, i, jj] = the (T, T) tile of w' for query
tile i and its jj-th band key tile (nband <= ceil((T + NW - 1) / T) + 1): O(l (T + NW)) memory per
group, and JAX transposes the gather (a scatter-add onto wb, each band pair in exactly one tile).

Backward, the same split from the keys' side: for key tile j, its band query tiles
(``Band.row_of``) run the dense backward's math in-kernel; the far query rows have
P[t, t'] = exp(K[t']) exp(-mx[t]) inv[t] (the forward's running shift and 1 / den, as in the dense
backward), summarised per query tile as m = max of -mx, A = sum exp(-mx - m) inv dO,
C = sum exp(-mx - m) inv dO O, scanned like the keys, and added in XLA as dV += exp(K + m) A,
dK += V exp(K + m) A - exp(K + m) C.  exp(K + m) <= 1 for an allowed far key (K[t'] <= mx[t]: the
shift is at least the exact max), inv <= e^60 (the rank-one gap's bound), and a product whose factor
underflows is below 1e-38.
dw' (band tiles only) comes from the dense dw kernel run on the band tiles.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import synth_ref._aft as _ref_aft

from . import _aft_band
from . import jax_pallas_aft as _dense

_INF = float("inf")


class Band:
    """Which key tiles intersect which query tiles' bands, for square tiles of T and offsets
    [lo, hi] on a sequence of l (static ints).  The formulas take traced or NumPy integers, so the
    kernels, their index maps and the XLA gathers agree by construction.  The relation is symmetric:
    key tile j is a band tile of query tile i iff i is a band query tile of j."""

    def __init__(self, T, lo, hi, l):
        self.T, self.lo, self.hi, self.l = T, lo, hi, l
        n = -(-l // T)
        self.nband = min(n, -(-(T + hi - lo) // T) + 1)  # band tiles per query (or key) tile

    def __eq__(self, other):  # a static argument of the custom VJP: compared and hashed by value
        return isinstance(other, Band) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def _key(self):
        return self.T, self.lo, self.hi, self.l

    def _div(self, a, xp):
        """a // T for a >= 0 (every use clamps or offsets to that): the truncating division, as
        Mosaic lowers floor division of signed scalars only with a TPU's generation at hand."""
        if xp is np:
            return a // self.T
        return jax.lax.div(a, jnp.asarray(self.T, a.dtype))

    def jlo(self, i, xp=jnp):  # first key tile holding a key >= i T + lo
        return self._div(xp.maximum(i * self.T + self.lo, 0), xp)

    def jhi(self, i, xp=jnp):  # last key tile holding a key <= i T + T - 1 + hi (< l)
        return self._div(xp.minimum(i * self.T + self.T - 1 + self.hi, self.l - 1), xp)

    def ilo(self, j, xp=jnp):
        return self._div(xp.maximum(j * self.T - self.hi, 0), xp)

    def ihi(self, j, xp=jnp):
        return self._div(xp.minimum(j * self.T + self.T - 1 - self.lo, self.l - 1), xp)

    def key_of(self, i, slot):
        """(key tile, whether slot holds a band tile of query tile i)."""
        j = self.jlo(i) + slot
        return j, j <= self.jhi(i)

    def row_of(self, j, slot):
        i = self.ilo(j) + slot
        return i, i <= self.ihi(j)

    def key_clamped(self, i, slot):
        """The key tile an index map fetches: an empty slot repeats the last band tile (no new DMA)."""
        return jnp.minimum(self.jlo(i) + slot, self.jhi(i))

    def row_clamped(self, j, slot):
        return jnp.minimum(self.ilo(j) + slot, self.ihi(j))


def band(spec, p, l, causal):
    """(wb (G, l, NW), lo): the band of w' from the parameters, as ``_aft.position_bias`` builds w'
    (the same window, taps, offsets and low-rank product) without the (l, l) matrix."""
    lo, hi = _aft_band.band_offsets(spec, l, causal)
    nw = hi - lo + 1
    if spec.variant == "aft_conv":
        off = spec.kernel_size - 1 if causal else (spec.kernel_size - 1) // 2
        taps = _ref_aft.conv_kernel(spec, p, jnp)[:, lo + off:hi + off + 1]  # tap j at t' - t = j - off
        return jnp.broadcast_to(taps[:, None, :], (spec.n_heads, l, nw)), lo
    t = np.arange(l)
    key = t[:, None] + lo + np.arange(nw)[None, :]  # t' of wb[t, j]
    inside = (key >= 0) & (key < l)
    key = np.clip(key, 0, l - 1)
    if spec.pos_rank is None:
        wb = p["pos_bias"][t[:, None], key]
    else:  # w[t, t'] = u[t] . v[t'] on the band only: O(l NW rank)
        wb = jnp.sum(p["pos_u"][:l, None, :] * p["pos_v"][key], axis=-1)
    return jnp.where(inside, wb, 0.0)[None], lo


def band_tiles(wb, lo, bd: Band, lp):
    """wt (G, n, nband, T, T): wt[g, i, jj, a, b] = w'[g, iT + a, (jlo(i) + jj) T + b], from the band
    (0 outside it and beyond l).  A gather with static indices; JAX transposes it."""
    G, l, nw = wb.shape
    T, n = bd.T, lp // bd.T
    i = np.arange(n)[:, None, None, None]
    jj = np.arange(bd.nband)[None, :, None, None]
    t = i * T + np.arange(T)[None, None, :, None]
    tk = (bd.jlo(i, np) + jj) * T + np.arange(T)[None, None, None, :]
    off = tk - t - lo
    inside = (off >= 0) & (off < nw) & (t < l) & (tk < l)
    wt = wb[:, np.clip(t, 0, l - 1), np.clip(off, 0, nw - 1)]
    return jnp.where(inside[None], wt, jnp.zeros((), wb.dtype))


# ---------------------------------------------------------------------------------------------
# block summaries (XLA): running-max merges over tiles, exclusive prefixes and suffixes


def _combine(a, b):
    """Two runs' (m, sums...) rescaled to the larger max; m = -inf marks a run with nothing in it
    (the sums may be any sign, so they cannot mark it: the backward's sum dO O)."""
    m = jnp.maximum(a[0], b[0])
    s = _dense._safe(m)
    ca, cb = jnp.exp(a[0] - s), jnp.exp(b[0] - s)
    return (m,) + tuple(x * ca + y * cb for x, y in zip(a[1:], b[1:], strict=True))


def _summaries(score, vals, T):
    """Per tile (axis 2 of (B, G, n T, c) arrays, score -inf where excluded): (m, sum exp(s - m) x
    for x in vals; x None: sum exp(s - m)) as (B, G, n, c) each."""
    B, G, lp, c = score.shape
    s = jnp.reshape(score, (B, G, lp // T, T, c))
    m = jnp.max(s, axis=3)
    e = jnp.exp(s - _dense._safe(m)[:, :, :, None])  # excluded: exp(-inf) = 0
    return (m,) + tuple(jnp.sum(e if x is None else e * jnp.reshape(x, s.shape), axis=3) for x in vals)


def _scans(summ):
    """(pre, suf), each a triple of (B, G, n + 1, c): pre[j] = tiles < j merged, suf[j] = tiles >= j."""
    m = summ[0]
    empty = (jnp.full(m[:, :, :1].shape, -_INF, m.dtype),) + tuple(
        jnp.zeros(x[:, :, :1].shape, x.dtype) for x in summ[1:])
    inc = jax.lax.associative_scan(_combine, summ, axis=2)
    rinc = jax.lax.associative_scan(_combine, summ, axis=2, reverse=True)
    pre = tuple(jnp.concatenate([e, x], axis=2) for e, x in zip(empty, inc, strict=True))
    suf = tuple(jnp.concatenate([x, e], axis=2) for e, x in zip(empty, rinc, strict=True))
    return pre, suf


def _far(pre, suf, first, after, causal, T):
    """Per tile i: pre[first[i]] merged (non-causal) with suf[after[i]], repeated over its T rows."""
    far = tuple(x[:, :, first] for x in pre)
    if not causal:
        far = _combine(far, tuple(x[:, :, after] for x in suf))
    return tuple(jnp.repeat(x, T, axis=2) for x in far)


# ---------------------------------------------------------------------------------------------
# pallas_call plumbing; as jax_pallas_aft's, with wt (G, n, nband, T, T) for w


def _in_specs(T, tc, at, wslot):
    """Specs for (k, v, wt, krow, kcol); at(*grid) -> (b, g, ct, query tile, key tile), wslot(*grid)
    -> the band slot of that pair."""
    specs = _dense._in_specs(T, tc, at)
    specs[2] = pl.BlockSpec((None, None, None, T, T), lambda *a: (at(*a)[1], at(*a)[3], wslot(*a), 0, 0))
    return specs


def _forward(k, v, wt, krow, kcol, *, bd, causal, T, tc, interpret):
    acc = krow.dtype
    B, G, lp, c = v.shape
    n, nc = lp // T, c // tc
    kok = kcol[:, None, :, :] == 0  # (B, 1, lp, 1)
    summ = _summaries(jnp.where(kok, k.astype(acc), -_INF), (v.astype(acc), None), T)
    pre, suf = _scans(summ)
    i = np.arange(n)
    far = _far(pre, suf, bd.jlo(i, np), bd.jhi(i, np) + 1, causal, T)

    def at(b, g, ct, i, jj):
        return b, g, ct, i, bd.key_clamped(i, jj)

    def wslot(b, g, ct, i, jj):
        return jnp.minimum(jj, bd.jhi(i) - bd.jlo(i))

    row = _dense._row_spec(T, tc, at)
    return pl.pallas_call(
        functools.partial(_dense._fwd_kernel, causal=causal, dt=_dense._operand_dtype(v.dtype), band=bd),
        grid=(B, G, nc, n, bd.nband),
        in_specs=_in_specs(T, tc, at, wslot) + [row] * 3,
        out_specs=[row] * 3,  # o, and the statistics mx, inv
        out_shape=[jax.ShapeDtypeStruct(v.shape, v.dtype)] + [jax.ShapeDtypeStruct(v.shape, acc)] * 2,
        scratch_shapes=[pltpu.VMEM((T, tc), acc) for _ in range(3)],
        compiler_params=_dense._params("parallel", "parallel", "parallel", "parallel", "arbitrary"),
        interpret=interpret,
        name="synth_aft_window_fwd",
    )(k, v, wt, krow, kcol, *far)


def _backward(k, v, wt, krow, kcol, o, mx, inv, do, *, bd, causal, T, tc, interpret):
    acc = krow.dtype
    B, G, lp, c = v.shape
    n, nc = lp // T, c // tc
    dt = _dense._operand_dtype(v.dtype)

    def at_kv(b, g, ct, j, ii):
        return b, g, ct, bd.row_clamped(j, ii), j

    def wslot_kv(b, g, ct, j, ii):
        return j - bd.jlo(bd.row_clamped(j, ii))

    key_out = pl.BlockSpec((None, None, T, tc), lambda b, g, ct, j, i: (b, g, j, ct))
    dk, dv = pl.pallas_call(
        functools.partial(_dense._dkv_kernel, causal=causal, dt=dt, band=bd),
        grid=(B, G, nc, n, bd.nband),
        in_specs=_in_specs(T, tc, at_kv, wslot_kv) + [_dense._row_spec(T, tc, at_kv)] * 4,
        out_specs=[key_out, key_out],
        out_shape=[jax.ShapeDtypeStruct(v.shape, acc)] * 2,
        scratch_shapes=[pltpu.VMEM((T, tc), acc) for _ in range(2)],
        compiler_params=_dense._params("parallel", "parallel", "parallel", "parallel", "arbitrary"),
        interpret=interpret,
        name="synth_aft_window_dkv",
    )(k, v, wt, krow, kcol, o, do, mx, inv)

    # far query rows, summarised per query tile (score -mx; padded rows and empty rows excluded)
    real = (jnp.arange(lp) < bd.l)[None, None, :, None]
    row_ok = jnp.logical_and(real, jnp.isfinite(mx))
    g1 = inv * do.astype(acc)
    summ = _summaries(jnp.where(row_ok, -mx, -_INF), (g1, g1 * o.astype(acc)), T)
    pre, suf = _scans(summ)
    j = np.arange(n)
    fm, fa, fc = _far(suf, pre, bd.ihi(j, np) + 1, bd.ilo(j, np), causal, T)
    kok = kcol[:, None, :, :] == 0
    ekf = jnp.exp(jnp.where(kok, k.astype(acc) + fm, -_INF))  # <= 1 (see the module docstring)
    dv_far = ekf * fa
    dv = dv + dv_far
    dk = dk + v.astype(acc) * dv_far - ekf * fc

    def at_w(g, i, jj, b, ct):
        return b, g, ct, i, bd.key_clamped(i, jj)

    def wslot_w(g, i, jj, b, ct):
        return jnp.minimum(jj, bd.jhi(i) - bd.jlo(i))

    dwt = pl.pallas_call(
        functools.partial(_dense._dw_kernel, causal=causal, dt=dt, band=bd),
        grid=(G, n, bd.nband, B, nc),
        in_specs=_in_specs(T, tc, at_w, wslot_w) + [_dense._row_spec(T, tc, at_w)] * 4,
        # unclamped: empty slots are written once, as zeros
        out_specs=pl.BlockSpec((None, None, None, T, T), lambda g, i, jj, b, ct: (g, i, jj, 0, 0)),
        out_shape=jax.ShapeDtypeStruct(wt.shape, acc),
        compiler_params=_dense._params("parallel", "parallel", "parallel", "arbitrary", "arbitrary"),
        interpret=interpret,
        name="synth_aft_window_dw",
    )(k, v, wt, krow, kcol, o, do, mx, inv)
    return dk, dv, dwt


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _core(k, v, wt, krow, kcol, bd, causal, T, tc, interpret):
    return _forward(k, v, wt, krow, kcol, bd=bd, causal=causal, T=T, tc=tc, interpret=interpret)[0]


def _core_fwd(k, v, wt, krow, kcol, bd, causal, T, tc, interpret):
    o, mx, inv = _forward(k, v, wt, krow, kcol, bd=bd, causal=causal, T=T, tc=tc, interpret=interpret)
    return o, (k, v, wt, krow, kcol, o, mx, inv)


def _core_bwd(bd, causal, T, tc, interpret, res, do):
    k, v, wt, krow, kcol, o, mx, inv = res
    dk, dv, dwt = _backward(k, v, wt, krow, kcol, o, mx, inv, do, bd=bd, causal=causal, T=T, tc=tc,
                            interpret=interpret)
    return (dk.astype(k.dtype), dv.astype(v.dtype), dwt.astype(wt.dtype), jnp.zeros_like(krow),
            jnp.zeros_like(kcol))


_core.defvjp(_core_fwd, _core_bwd)


# ---------------------------------------------------------------------------------------------
# public entry points


def aft_window_mix(k, v, wb, lo, key_padding_mask=None, *, causal=False, block=128, interpret=False):
    """:func:`.jax_pallas_aft.aft_mix` with a banded w': wb (G, l, NW) and offset lo give
    w'[g, t, t'] = wb[g, t, t' - t - lo] for t' - t in [lo, lo + NW - 1], 0 elsewhere (causal: offsets
    above 0 are masked anyway).  Differentiable in k, v and wb."""
    B, l, d = v.shape
    G, lw, nw = wb.shape
    hi = lo + nw - 1
    if lw != l or not (lo <= 0 <= hi):
        raise ValueError(f"wb: expected shape ({G}, {l}, NW) with offsets lo <= 0 <= lo + NW - 1; "
                         f"got shape {tuple(wb.shape)}, lo={lo}")
    T, tc, lp = _dense.tile_sizes(l, d // G, block)
    bd = Band(T, lo, hi, l)
    gk, gv, bias = _dense.grouped_operands(k, v, key_padding_mask, G, lp)
    wt = band_tiles(wb, lo, bd, lp)
    o = _core(gk, gv, wt, bias[:, None, :], bias[:, :, None], bd, bool(causal), T, tc, interpret)
    return _dense.ungrouped(o, l)


def mix(spec, p, k, v, mask, causal, *, block, interpret):
    """The weighted average of a 1-D aft_local / aft_conv layer with the band built from ``p``."""
    wb, lo = band(spec, p, v.shape[1], causal)
    return aft_window_mix(k, v, wb.astype(v.dtype), lo, mask, causal=causal, block=block,
                          interpret=interpret)
