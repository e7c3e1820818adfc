"""AFT's weighted average as two matrix products in plain XLA: plan's "xla-aft", the GPU (and CPU)
path for aft_full, aft_local and aft_conv, where no Pallas kernel is compiled.

For each channel c of group g (which owns the position bias w'_g, (l, l)):

    Y[t, c] = sum_t' exp(w'[t, t'] + K[t', c]) V[t', c] / sum_t' exp(w'[t, t'] + K[t', c])

over allowed t'.  With a rank-one shift alpha[t] + beta[c] (alpha the row max of w' over the keys
the causal mask allows, beta the max of K over the keys the padding allows) both sums are products
of an (l x l) matrix with (l x B*c) columns, which is what tensor cores are for:

    num = exp(w' - alpha) @ (exp(K - beta) * V),   den = exp(w' - alpha) @ exp(K - beta),

O(l^2 d) multiply-adds in two GEMMs per group, against the reference's O(l^2 d) exponentials.  No
(B, l, l) or (B, l, l, d) array is formed; exp(w' - alpha) is (G, l, l), the size of w' itself.

Exactness.  The shift is at least the exact per-(t, c) max of w' + K over allowed keys, so nothing
overflows; it can exceed that max by a gap of up to min(range of w'[t, :], range of K[:, c]) (more
under a causal mask, whose beta includes future keys), and if the gap passes the dtype's underflow
range every term of a (t, c) vanishes.  The terms obey den >= exp(-gap), and den <= l exp(-gap);
so ``den >= l * exp(-GAP)`` proves gap <= GAP, where anything lost to underflow (terms under
exp(-87) in float32 or bfloat16) is below exp(GAP - 87) of den.  GAP = 40 (float32, bfloat16;
1e-20 relative) and 300 (float64), also keeping 1/den^2 in JAX's derivative of the division finite.
When any row with allowed keys fails the check, the whole call takes the exact form instead
(``lax.cond``: only the branch taken runs, and only its derivative): query rows in blocks, each
with the exact per-(t, c) max, as the reference does, under ``lax.map`` with rematerialisation so
memory stays linear in B l d.  Inputs of ordinary spread never take it.

Dtypes: sums and exponentials in float32 (float64 for float64 inputs); bfloat16 inputs multiply
bfloat16 operands (exp values in [0, 1]) with float32 accumulation, float16 ones multiply in float32
(float16's exponent range would lose small terms).  Gradients: JAX differentiates the GEMMs; the
shifts are ``stop_gradient`` (the output does not depend on them).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .jax_pallas import _heads, _merge, rows_with_keys
from .jax_pallas_flash import accumulator

#: Largest proven excess of the rank-one shift over the exact max, per accumulation dtype.
GAP = {"float32": 40.0, "float64": 300.0}
#: Elements of one (B, rows, l, d) block in the exact fallback: the role of synth_ref._aft.BLOCK_ELEMENTS,
#: a quarter of its 2^24.
FALLBACK_BLOCK_ELEMENTS = 1 << 22


def mix(k, v, w, key_padding_mask=None, *, causal=False):
    """The AFT weighted average Y (B, l, d), in v's dtype, from K, V (B, l, d), w' (G, l, l) (G
    divides d; group g owns channels g*d/G ...) and key_padding_mask (B, l) or None; rows with no
    allowed key give 0.  Differentiable in k, v and w."""
    B, l, d = v.shape
    G = w.shape[0]
    dtype = v.dtype
    acc = accumulator(dtype)
    ops = jnp.bfloat16 if dtype == jnp.bfloat16 else acc
    kg, vg = _heads(k.astype(acc), G), _heads(v.astype(acc), G)  # (B, G, l, c)
    w = w.astype(acc)
    keys = None if key_padding_mask is None else key_padding_mask[:, None, :, None]

    wm = jnp.where(jnp.tril(jnp.ones((l, l), bool)), w, -jnp.inf) if causal else w
    alpha = jax.lax.stop_gradient(jnp.max(wm, axis=-1, keepdims=True))  # finite: t' = t is allowed
    ew = jnp.exp(wm - alpha)  # (G, l, l), 0 where the causal mask forbids
    kz = kg if keys is None else jnp.where(keys, kg, -jnp.inf)
    beta = jax.lax.stop_gradient(jnp.max(kz, axis=2, keepdims=True))
    ek = jnp.exp(kz - jnp.where(beta == -jnp.inf, 0.0, beta))  # padded keys: exactly 0

    def product(a):
        return jnp.einsum("gts,bgsc->bgtc", ew.astype(ops), a.astype(ops), preferred_element_type=acc)

    den = product(ek)
    seen = (jnp.ones((1, 1, l, 1), bool) if key_padding_mask is None
            else rows_with_keys(key_padding_mask, causal)[:, None, :, None])
    floor = l * math.exp(-GAP[jnp.dtype(acc).name])
    proven = jnp.all(jnp.where(seen, den >= floor, True))

    def fast(ew_, ek_, vg_, den_):
        num = jnp.einsum("gts,bgsc->bgtc", ew_.astype(ops), (ek_ * vg_).astype(ops),
                         preferred_element_type=acc)
        return jnp.where(seen, num / jnp.where(seen, den_, 1.0), 0.0)

    def exact(ew_, ek_, vg_, den_):
        del ew_, ek_, den_
        return _exact(kg, vg_, w, key_padding_mask, causal)

    y = jax.lax.cond(proven, fast, exact, ew, ek, vg, den)
    return _merge(y).astype(dtype)


def _exact(kg, vg, w, key_padding_mask, causal):
    """The same average with the exact max per (t, c) over allowed keys (the reference's method):
    query rows in blocks, (B, G, rows, l, c) each, under lax.map with the block rematerialised in
    the backward pass (so autodiff keeps no (B, l, l, d) residual).  Returns (B, G, l, c)."""
    B, G, l, c = kg.shape
    rows = max(1, min(l, FALLBACK_BLOCK_ELEMENTS // (B * l * G * c)))
    n = -(-l // rows)
    wp = jnp.pad(w, ((0, 0), (0, n * rows - l), (0, 0)))
    keys = None if key_padding_mask is None else key_padding_mask[:, None, None, :, None]

    @jax.checkpoint
    def block(i):
        start = i * rows
        wr = jax.lax.dynamic_slice_in_dim(wp, start, rows, axis=1)  # (G, rows, l)
        z = kg[:, :, None, :, :] + wr[None, :, :, :, None]  # (B, G, rows, l, c)
        ok = jnp.ones((1, 1, rows, l, 1), bool) if keys is None else keys
        if causal:
            t = start + jnp.arange(rows)
            ok = jnp.logical_and(ok, (jnp.arange(l)[None, :] <= t[:, None])[None, None, :, :, None])
        z = jnp.where(ok, z, -jnp.inf)
        m = jax.lax.stop_gradient(jnp.max(z, axis=3, keepdims=True))
        e = jnp.exp(z - jnp.where(m == -jnp.inf, 0.0, m))  # disallowed: exp(-inf) = 0
        num = jnp.sum(e * vg[:, :, None, :, :], axis=3)
        den = jnp.sum(e, axis=3)
        return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)  # (B, G, rows, c)

    # one block (short inputs): no loop to compile
    out = block(0)[None] if n == 1 else jax.lax.map(block, jnp.arange(n))  # (n, B, G, rows, c)
    out = jnp.reshape(jnp.transpose(out, (1, 2, 0, 3, 4)), (B, G, n * rows, c))
    return out[:, :, :l, :]
