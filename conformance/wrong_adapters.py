"""Deliberately wrong adapters: each reproduces one defect seen in public implementations
(../shared/notes/peers.md) or a classic slip, so that the teeth tests can prove the suite fails it.

Most are small self-contained NumPy implementations of the affected variant, written here without
the spec's internals, with a ``defect`` switch: with the switch off each must pass the suite (so a
catch is the defect's doing, not the harness').  The rest wrap :func:`synth_ref.apply` and corrupt
its spec, params or arguments the way the defect would.  Other variants go to the reference.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import synth_ref as sr
from synth_ref.backends.numpy import NumpyAdapter

# ---------------------------------------------------------------------------------------------
# shared NumPy pieces (all in x's dtype)


def _lin(x, w, b):
    with np.errstate(invalid="ignore", over="ignore"):  # a defect's NaN/Inf flows on, quietly
        return x @ w + b


def _split(t, h):
    B, l, d = t.shape
    return t.reshape(B, l, h, d // h).transpose(0, 2, 1, 3)


def _merge(t):
    B, h, l, e = t.shape
    return t.transpose(0, 2, 1, 3).reshape(B, l, h * e)


def _allowed(B, l, causal, mask, diagonal=True):
    ok = np.ones((B, l, l), dtype=bool)
    if causal:
        ok &= np.tril(np.ones((l, l), dtype=bool), k=0 if diagonal else -1)[None]
    if mask is not None:
        ok &= mask[:, None, :]
    return ok


def _sigmoid(q):
    e = np.exp(-np.abs(q))
    one = np.ones((), q.dtype)
    return np.where(q >= 0, one / (one + e), e / (one + e))


def _normalise(z, ok, axis, stabilise=True, max_over_all=False):
    """exp(z - max) / sum over ``axis`` where ok (0 where nothing is); ``max_over_all``: the max is
    taken over every entry, masked ones included (a slip)."""
    neg = np.asarray(-np.inf, z.dtype)
    zz = np.where(ok, z, neg)
    if stabilise:
        m = np.max(np.broadcast_to(z, zz.shape) if max_over_all else zz, axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, np.zeros((), z.dtype))
    else:
        m = np.zeros((), z.dtype)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        e = np.exp(zz - m)
        den = e.sum(axis=axis, keepdims=True)
        return e / np.where(den > 0, den, np.ones((), z.dtype))


def softmax_layer(spec, p, x, causal, mask, logits, *, softmax=True, axis=-1, max_over_all=False,
                  diagonal=True):
    """y for a softmax variant whose logits (B or 1, h, l, l) are given; normalised over ``axis``
    (-1: the keys), the max over allowed keys (``max_over_all``: over every key), a causal row t
    seeing t' <= t (``diagonal=False``: t' < t)."""
    B, l, d = x.shape
    h = spec.n_heads
    v = _split(_lin(x, p["w_v"], p["b_v"]), h)
    ok = _allowed(B, l, causal, mask, diagonal)[:, None]
    s = np.broadcast_to(logits, (B, h, l, l))
    if softmax:
        P = _normalise(s, ok, axis, max_over_all=max_over_all)
    else:
        P = np.where(ok, s, np.zeros((), s.dtype))
    return _lin(_merge(P @ v), p["w_o"], p["b_o"])


def aft_layer(spec, p, x, causal, mask, w, *, combine="add", stabilise=True, key_max="row",
              denominator="row", no_sum=False, diagonal=True):
    """y for a single-group AFT variant with position matrix w (l, l) (None: zeros)."""
    B, l, d = x.shape
    q, k, v = (_lin(x, p[f"w_{n}"], p[f"b_{n}"]) for n in "qkv")
    if w is None:
        w = np.zeros((l, l), x.dtype)
    ok = _allowed(B, l, causal, mask, diagonal)[..., None]  # (B, t, t', 1)
    kk = k[:, None, :, :]  # (B, 1, t', d)
    ww = w[None, :, :, None]  # (1, t, t', 1)
    z = kk * ww if combine == "mul" else kk + ww  # (B, t, t', d)
    if no_sum:  # never sums over positions: each t sees only its own normalised weight
        a = _normalise(np.broadcast_to(kk, z.shape), ok, 2)
        mixed = np.einsum("btsd,bsd->btd", a * np.eye(l, dtype=x.dtype)[None, :, :, None], v)
    elif denominator == "own_prefix":  # each term divided by its own prefix sum, then summed
        pad = np.ones((B, l, 1), bool) if mask is None else mask[:, :, None]
        kz = np.where(pad, k, -np.inf)
        m = np.max(kz, axis=1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        e = np.where(pad, np.exp(kz - m), 0)  # (B, t', d)
        prefix = np.cumsum(e, axis=1) if causal else np.broadcast_to(e.sum(1, keepdims=True), e.shape)
        term = e * v / np.where(prefix > 0, prefix, 1)  # (B, t', d)
        mixed = np.einsum("bts,bsd->btd", ok[..., 0].astype(x.dtype), term)
    else:
        neg = np.asarray(-np.inf, x.dtype)
        zz = np.where(ok, z, neg)
        if not stabilise:
            m = np.zeros((), x.dtype)
        elif key_max == "global":  # one max over every key, visible or not
            m = np.max(z, axis=2, keepdims=True)
        elif key_max == "rank_one":  # max of w' plus max of K, each over the allowed keys
            mw = np.max(np.where(ok, np.broadcast_to(ww, z.shape), neg), axis=2, keepdims=True)
            mk = np.max(np.where(ok, np.broadcast_to(kk, z.shape), neg), axis=2, keepdims=True)
            m = np.where(np.isfinite(mw) & np.isfinite(mk), mw + mk, np.zeros((), x.dtype))
        else:
            m = np.max(zz, axis=2, keepdims=True)
            m = np.where(np.isfinite(m), m, np.zeros((), x.dtype))
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            e = np.exp(zz - m)
            den = e.sum(axis=2)
            mixed = (e * v[:, None]).sum(axis=2) / np.where(den > 0, den, np.ones((), x.dtype))
    return _lin(_sigmoid(q) * mixed, p["w_o"], p["b_o"])


def _dense_logits(p, x):
    """The dense synthesizer's logits over all max_len columns, (B, h, l, L)."""
    hid = x[:, None] @ p["w_1"][None] + p["b_1"][None, :, None, :]
    hid = np.maximum(hid, np.zeros((), x.dtype))  # (B, h, l, e)
    return hid @ p["w_2"][None] + p["b_2"][None, :, None, :]


def _pos(spec, p, l):
    if spec.pos_rank is None:
        return p["pos_bias"][:l, :l]
    return p["pos_u"][:l] @ p["pos_v"][:l].T


# ---------------------------------------------------------------------------------------------
# the adapter shell


class WrongAdapter(NumpyAdapter):
    """A NumPy adapter that runs ``forward`` for ``variants`` and the reference for the rest."""

    dtypes = ("float64", "float32", "float16")

    def __init__(self, name, defect, variants, forward, source, enabled=True):
        self.name = name if enabled else f"{name}-control"
        self.defect = defect
        self.variants = tuple(variants)
        self._forward = forward
        self.source = source
        self.enabled = enabled

    def __repr__(self):
        return f"WrongAdapter({self.name})"

    def available(self):
        return True, "numpy (a deliberately wrong adapter)"

    def apply(self, spec, params, x, *, causal=False, key_padding_mask=None):
        if spec.variant in self.variants:
            return self._forward(spec, params, x, causal, key_padding_mask, self.enabled)
        return sr.apply(spec, params, x, causal=causal, key_padding_mask=key_padding_mask)


# --- self-contained implementations with a defect switch -------------------------------------


def _dense_reshape(spec, p, x, causal, mask, bad):
    B, l, _ = x.shape
    # the (batch, length, heads, max_len) layout LRA builds
    blhL = _dense_logits(p, x).transpose(0, 2, 1, 3)
    s = blhL.reshape(B, spec.n_heads, l, -1) if bad else blhL.transpose(0, 2, 1, 3)
    return softmax_layer(spec, p, x, causal, mask, s[..., :l])


def _factorized_wrong_axis(spec, p, x, causal, mask, bad):
    l = x.shape[1]
    r1, r2 = p["r_1"][:, :l], p["r_2"][:, :l]
    if bad:  # contracts the query positions away: every row gets the same logits
        s = np.broadcast_to(np.einsum("hsk,htk->ht", r1, r2)[:, None, :], (spec.n_heads, l, l))
    else:
        s = r1 @ r2.transpose(0, 2, 1)
    return softmax_layer(spec, p, x, causal, mask, s[None])


def _random_no_softmax(spec, p, x, causal, mask, bad):
    return softmax_layer(spec, p, x, causal, mask, _synth_logits(spec, p, x), softmax=not bad)


def _aft_full_k_times_w(spec, p, x, causal, mask, bad):
    return aft_layer(spec, p, x, causal, mask, _pos(spec, p, x.shape[1]), combine="mul" if bad else "add")


def _aft_full_no_max(spec, p, x, causal, mask, bad):
    return aft_layer(spec, p, x, causal, mask, _pos(spec, p, x.shape[1]), stabilise=not bad)


def _aft_causal_denominator(spec, p, x, causal, mask, bad):
    return aft_layer(spec, p, x, causal, mask, None, denominator="own_prefix" if bad else "row")


def _local_bias(spec, p, l, inclusive=False):
    """AFT-local's w' (w inside the window |t - t'| < s, 0 outside) and the window; ``inclusive``:
    |t - t'| <= s (a slip)."""
    i = np.arange(l)
    reach = np.abs(i[:, None] - i[None, :])
    near = reach <= spec.window if inclusive else reach < spec.window
    w = _pos(spec, p, l)
    return np.where(near, w, np.zeros((), w.dtype)), near


def _aft_local_window(spec, p, x, causal, mask, bad):
    l = x.shape[1]
    w, near = _local_bias(spec, p, l)
    if bad:  # -inf outside the window: far tokens are dropped instead of weighted by exp(K)
        mask_far = np.broadcast_to(near, (x.shape[0], l, l))
        allowed = _allowed(x.shape[0], l, causal, mask) & mask_far
        return _aft_with_allowed(spec, p, x, w, allowed)
    return aft_layer(spec, p, x, causal, mask, w)


def _aft_local_window_off_by_one(spec, p, x, causal, mask, bad):
    return aft_layer(spec, p, x, causal, mask, _local_bias(spec, p, x.shape[1], inclusive=bad)[0])


def _aft_with_allowed(spec, p, x, w, allowed):
    q, k, v = (_lin(x, p[f"w_{n}"], p[f"b_{n}"]) for n in "qkv")
    z = k[:, None] + w[None, :, :, None]
    a = _normalise(z, allowed[..., None], 2)
    return _lin(_sigmoid(q) * (a * v[:, None]).sum(2), p["w_o"], p["b_o"])


def _aft_global_key_max(spec, p, x, causal, mask, bad):
    return aft_layer(spec, p, x, causal, mask, _pos(spec, p, x.shape[1]), key_max="global" if bad else "row")


def _aft_rank_one_shift(spec, p, x, causal, mask, bad):
    return aft_layer(spec, p, x, causal, mask, _pos(spec, p, x.shape[1]),
                     key_max="rank_one" if bad else "row")


def _aft_simple_no_sum(spec, p, x, causal, mask, bad):
    return aft_layer(spec, p, x, causal, mask, None, no_sum=bad)


def _synth_logits(spec, p, x):
    """The (B or 1, h, l, l) logits of the dense or random synthesizer."""
    l = x.shape[1]
    return _dense_logits(p, x)[..., :l] if spec.variant == "dense" else p["r"][None, :, :l, :l]


def _dense_trailing_columns(spec, p, x, causal, mask, bad):
    l = x.shape[1]
    s = _dense_logits(p, x)  # (B, h, l, max_len)
    return softmax_layer(spec, p, x, causal, mask, s[..., -l:] if bad else s[..., :l])


def _max_over_masked(spec, p, x, causal, mask, bad):
    return softmax_layer(spec, p, x, causal, mask, _synth_logits(spec, p, x), max_over_all=bad)


def _random_softmax_over_queries(spec, p, x, causal, mask, bad):
    return softmax_layer(spec, p, x, causal, mask, _synth_logits(spec, p, x), axis=-2 if bad else -1)


def _causal_without_diagonal(spec, p, x, causal, mask, bad):
    if spec.family == "aft":
        return aft_layer(spec, p, x, causal, mask, _pos(spec, p, x.shape[1]), diagonal=not bad)
    return softmax_layer(spec, p, x, causal, mask, _synth_logits(spec, p, x), diagonal=not bad)


# --- wrappers of the reference that corrupt what it is given ----------------------------------


def _tile_for_outer(spec, p, x, causal, mask, bad):
    if bad and spec.tiling == "outer":
        spec = dataclasses.replace(spec, tiling="tile")
    return sr.apply(spec, p, x, causal=causal, key_padding_mask=mask)


def _mask_ignored(spec, p, x, causal, mask, bad):
    return sr.apply(spec, p, x, causal=causal, key_padding_mask=None if bad else mask)


def _r_off_by_one(spec, p, x, causal, mask, bad):
    if bad:  # reads R one row down: r[:, 1:l+1] instead of r[:, :l] (wrapping at the end)
        p = dict(p, r=np.roll(p["r"], -1, axis=1))
    return sr.apply(spec, p, x, causal=causal, key_padding_mask=mask)


def _mask_inverted(spec, p, x, causal, mask, bad):
    if bad and mask is not None:  # True read as "padding" where the spec says "a real key"
        mask = ~mask
    return sr.apply(spec, p, x, causal=causal, key_padding_mask=mask)


def _empty_rows_uniform(spec, p, x, causal, mask, bad):
    y = sr.apply(spec, p, x, causal=causal, key_padding_mask=mask)
    if not bad:
        return y
    # an additive -1e9 mask: a row with no allowed key has every logit at about -1e9, so its
    # softmax is the uniform average over all l keys instead of the spec's empty sum (0)
    B, l, _ = x.shape
    empty = ~_allowed(B, l, causal, mask).any(axis=-1)  # (B, l)
    mean_v = _lin(x, p["w_v"], p["b_v"]).mean(axis=1, keepdims=True)  # (B, 1, d)
    uniform = np.broadcast_to(_lin(mean_v, p["w_o"], p["b_o"]), y.shape)
    return np.where(empty[..., None], uniform, y)


def _conv_kernel_flipped(spec, p, x, causal, mask, bad):
    if bad:  # true convolution where the spec indexes w'[t, t'] = w[t' - t + c]: taps reversed
        spatial = tuple(range(1, p["conv_w"].ndim))
        p = dict(p, conv_w=np.flip(p["conv_w"], axis=spatial))
    return sr.apply(spec, p, x, causal=causal, key_padding_mask=mask)


def _conv_joint_norm(spec, p, x, causal, mask, bad):
    if bad:
        # normalise every head's kernel with one mean/variance over all heads, then feed the
        # reference gamma' = sqrt(var_i + eps), beta' = mean_i so that its per-head normalisation
        # reproduces exactly those kernels
        w = p["conv_w"].reshape(spec.n_heads, -1)
        eps = np.asarray(1e-5, w.dtype)
        joint = (w - w.mean()) / np.sqrt(w.var() + eps)
        what = p["conv_gamma"][:, None] * joint + p["conv_beta"][:, None]
        m = what.mean(axis=1)
        s = np.sqrt(what.var(axis=1) + eps)
        p = dict(p, conv_w=what.reshape(p["conv_w"].shape), conv_gamma=s, conv_beta=m)
    return sr.apply(spec, p, x, causal=causal, key_padding_mask=mask)


_SOFTMAX = ("dot_product", "dense", "random", "factorized_dense", "factorized_random", "mixture")
_MASKED = _SOFTMAX + ("aft_full", "aft_simple", "aft_local", "aft_conv")  # those that take a mask

#: name -> (defect, variants it affects, forward, where it was seen)
DEFECTS = {
    "dense-reshape-not-transpose": (
        "reshapes (B, l, h, L) logits to (B, h, l, L) instead of transposing",
        ("dense",), _dense_reshape, "Long Range Arena (Flax)"),
    "factorized-random-wrong-axis": (
        "contracts R1, R2 over the position axis: every query row gets the same logits",
        ("factorized_random",), _factorized_wrong_axis, "Mesh TensorFlow"),
    "random-softmax-skipped": (
        "raw R multiplies V: the softmax is never applied",
        ("random",), _random_no_softmax, "a PyTorch reimplementation"),
    "factorized-dense-tile-for-outer": (
        "tiles both factors (C[m] = A[m mod a] B[m mod b]) where the outer product is asked for",
        ("factorized_dense", "mixture"), _tile_for_outer, "a PyTorch reimplementation"),
    "aft-full-k-times-w": (
        "exp(K * w) instead of exp(K + w)",
        ("aft_full",), _aft_full_k_times_w, "fast-transformers"),
    "aft-simple-causal-denominator": (
        "causal AFT-simple divides each term by its own prefix sum",
        ("aft_simple",), _aft_causal_denominator, "fast-transformers"),
    "aft-no-max-subtraction": (
        "exp(K + w) without subtracting the maximum first",
        ("aft_full",), _aft_full_no_max, "aft-pytorch"),
    "aft-local-minus-inf-outside-window": (
        "-inf instead of 0 outside the AFT-local window: far tokens dropped",
        ("aft_local",), _aft_local_window, "(the AFT paper's formula misread)"),
    "aft-conv-joint-normalisation": (
        "normalises all heads' kernels jointly instead of per head",
        ("aft_conv",), _conv_joint_norm, "ComVEX"),
    "mask-ignored": (
        "ignores key_padding_mask",
        _MASKED, _mask_ignored,
        "Long Range Arena (masks only with dot-product attention)"),
    "random-r-off-by-one": (
        "slices R one row off (r[:, 1:l+1] for r[:, :l])",
        ("random",), _r_off_by_one, "(a classic slip)"),
    # beyond the required list
    "aft-global-key-max": (
        "takes the key max over all positions, future ones included (underflow under causal)",
        ("aft_full",), _aft_global_key_max, "labml annotated AFT"),
    "aft-rank-one-shift": (
        "shifts exp(K + w') by max w' + max K (the two-GEMM form's stabilizer) without checking that "
        "the terms survive: all underflow when w' and K pull against each other",
        ("aft_full",), _aft_rank_one_shift, "the two-GEMM form (benchmarks/torch_bench.py's naive row)"),
    "aft-simple-no-sum": (
        "never sums over positions",
        ("aft_simple",), _aft_simple_no_sum, "ComVEX"),
    # classic slips of hand-written and fused kernels
    "softmax-max-over-masked-keys": (
        "takes each row's max over every key, masked and future ones included: the visible terms "
        "underflow when a hidden key's logit is far larger",
        ("dense", "random"), _max_over_masked, "(the softmax form of labml's AFT slip)"),
    "random-softmax-over-queries": (
        "normalises R over the query axis instead of the key axis",
        ("random",), _random_softmax_over_queries, "(a classic slip: softmax(R, dim=0))"),
    "causal-mask-excludes-diagonal": (
        "the causal mask hides t' = t as well (strict lower triangle): row 0 sees nothing",
        ("dense", "random", "aft_full"), _causal_without_diagonal, "(a classic slip: tril(k=-1))"),
    "mask-polarity-inverted": (
        "reads key_padding_mask's True as padding, where the spec's True is a real key",
        _MASKED, _mask_inverted,
        "(a classic slip: PyTorch's nn.MultiheadAttention uses the opposite convention)"),
    "empty-rows-uniform": (
        "a row with no allowed key gives the mean of V over all keys (an additive -1e9 mask) "
        "instead of the spec's 0",
        _SOFTMAX, _empty_rows_uniform, "(additive masks; jax.nn.dot_product_attention)"),
    "aft-local-window-off-by-one": (
        "keeps |t - t'| <= s where the spec keeps |t - t'| < s",
        ("aft_local",), _aft_local_window_off_by_one, "(a classic slip)"),
    "dense-trailing-columns": (
        "a length l < max_len reads the last l logits of each dense row (s[..., -l:], as for "
        "right-aligned padding) where the spec reads the first l",
        ("dense",), _dense_trailing_columns, "(a classic slip)"),
    "aft-conv-kernel-flipped": (
        "applies the kernel as a true convolution (taps reversed) where the spec indexes "
        "w'[t, t'] = w[t' - t + c]",
        ("aft_conv",), _conv_kernel_flipped, "(a classic slip: convolution vs correlation)"),
}


def make(name: str, enabled: bool = True) -> WrongAdapter:
    defect, variants, forward, source = DEFECTS[name]
    return WrongAdapter(name, defect, variants, forward, source, enabled)


def _r_not_trained(vjp, spec, params, x, dy, causal, mask):
    dx, dp = vjp(spec, params, x, dy, causal=causal, key_padding_mask=mask)
    return dx, ({**dp, "r": dp["r"] * 0} if "r" in dp else dp)


def _backward_without_mask(vjp, spec, params, x, dy, causal, mask):
    return vjp(spec, params, x, dy, causal=causal, key_padding_mask=None)


def _backward_without_causal(vjp, spec, params, x, dy, causal, mask):
    return vjp(spec, params, x, dy, causal=False, key_padding_mask=mask)


#: name -> (defect, variants it affects, vjp(torch vjp, spec, params, x, dy, causal, mask), where
#: seen): backward-pass defects, on the torch adapter (the forward stays right).
VJP_DEFECTS = {
    "random-r-not-a-parameter": (
        "R is a plain tensor, not a parameter: its gradient is never produced",
        ("random",), _r_not_trained, "a PyTorch reimplementation"),
    "backward-drops-key-padding-mask": (
        "the backward pass recomputes P without the key padding mask: padded keys get gradient",
        ("dense", "random", "aft_full", "aft_simple"), _backward_without_mask,
        "(a classic slip of hand-written and fused backward passes)"),
    "backward-drops-causal-mask": (
        "the backward pass recomputes P without the causal mask: future keys get gradient",
        ("dense", "aft_full", "aft_local"), _backward_without_causal,
        "(a classic slip of hand-written and fused backward passes)"),
}


class WrongVjp:
    """The torch adapter with a wrong backward pass (``VJP_DEFECTS``); its forward is right."""

    dtypes = ("float64", "float32")

    def __init__(self, name, enabled=True):
        from synth_ref.backends.torch import TorchAdapter

        self.defect, self.variants, self._vjp, self.source = VJP_DEFECTS[name]
        self._t = TorchAdapter()
        self.enabled = enabled
        self.name = name if enabled else f"{name}-control"

    def __repr__(self):
        return f"WrongVjp({self.name})"

    def available(self):
        return self._t.available()

    def from_numpy(self, array, dtype=None):
        return self._t.from_numpy(array, dtype)

    def to_numpy(self, array):
        return self._t.to_numpy(array)

    def apply(self, spec, params, x, *, causal=False, key_padding_mask=None):
        return self._t.apply(spec, params, x, causal=causal, key_padding_mask=key_padding_mask)

    def vjp(self, spec, params, x, dy, *, causal=False, key_padding_mask=None):
        if self.enabled and spec.variant in self.variants:
            return self._vjp(self._t.vjp, spec, params, x, dy, causal, key_padding_mask)
        return self._t.vjp(spec, params, x, dy, causal=causal, key_padding_mask=key_padding_mask)


#: For ``--adapter conformance.wrong_adapters:RANDOM_SOFTMAX_SKIPPED`` (the CLI test).
RANDOM_SOFTMAX_SKIPPED = make("random-softmax-skipped")
