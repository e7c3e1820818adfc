"""An example third-party adapter: NumPy, with hand-written fast paths for two variants.

It implements the whole adapter protocol (``name``, ``dtypes``, ``available``, ``from_numpy``,
``to_numpy``, ``apply``) and has the usual shape of an accelerated adapter: its own code for the cases
it speeds up, the reference :func:`synth_ref.apply` for everything else.  Check it with::

    synth-ref-conformance --adapter docs.examples.my_adapter:ADAPTER
"""

from __future__ import annotations

import numpy as np

import synth_ref as sr


class MyAdapter:
    name = "my-numpy"
    dtypes = ("float64", "float32")  # the suite checks every dtype claimed here

    def available(self):
        return True, f"numpy {np.__version__}"  # never raises; (False, reason) when unusable

    def from_numpy(self, array, dtype=None):
        array = np.asarray(array)
        return array.copy() if dtype is None else array.astype(dtype)  # None: masks keep bool

    def to_numpy(self, array):
        return np.asarray(array)

    def apply(self, spec, params, x, *, causal=False, key_padding_mask=None):
        if spec.variant == "random" and key_padding_mask is None:
            return random_synthesizer(spec, params, x, causal)
        if spec.variant == "aft_simple" and key_padding_mask is None and not causal:
            return aft_simple(params, x)
        return sr.apply(spec, params, x, causal=causal, key_padding_mask=key_padding_mask)


def random_synthesizer(spec, p, x, causal):
    """softmax(R) does not depend on x: one (l, l) softmax per head, shared by the whole batch."""
    batch, l, d = x.shape
    h, e = spec.n_heads, spec.head_dim
    s = p["r"][:, :l, :l]  # lengths below max_len use the leading block of R
    if causal:  # the diagonal stays allowed, so every row keeps a finite maximum
        s = np.where(np.tril(np.ones((l, l), dtype=bool)), s, -np.inf)
    w = np.exp(s - s.max(axis=-1, keepdims=True))
    w = w / w.sum(axis=-1, keepdims=True)  # (h, l, l)
    v = (x @ p["w_v"] + p["b_v"]).reshape(batch, l, h, e)  # head i owns columns i*e ... i*e+e-1
    y = np.einsum("hts,bshe->bthe", w, v).reshape(batch, l, d)
    return y @ p["w_o"] + p["b_o"]


def aft_simple(p, x):
    """Without a mask every position sees the same keys: the weighted mean of V over positions is
    computed once per channel, O(l d) instead of O(l^2 d)."""
    q = x @ p["w_q"] + p["b_q"]
    k = x @ p["w_k"] + p["b_k"]
    v = x @ p["w_v"] + p["b_v"]
    wk = np.exp(k - k.max(axis=1, keepdims=True))  # per-channel max over positions: no overflow
    context = (wk * v).sum(axis=1, keepdims=True) / wk.sum(axis=1, keepdims=True)
    gate = 0.5 * (1.0 + np.tanh(0.5 * q))  # sigmoid(q) without overflow for large |q|
    return (gate * context) @ p["w_o"] + p["b_o"]


ADAPTER = MyAdapter()
