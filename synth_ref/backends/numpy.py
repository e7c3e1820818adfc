"""NumPy adapter: the reference itself on NumPy arrays (forward only; NumPy cannot differentiate)."""

from __future__ import annotations

import numpy as np

import synth_ref as sr


class NumpyAdapter:
    name = "numpy"
    dtypes = ("float64", "float32", "float16")  # NumPy has no bfloat16

    def available(self):
        return True, "numpy " + np.__version__

    def from_numpy(self, array, dtype=None):
        array = np.asarray(array)
        return array.copy() if dtype is None else array.astype(dtype)

    def to_numpy(self, array):
        return np.asarray(array)

    def apply(self, spec, params, x, *, causal=False, key_padding_mask=None):
        return sr.apply(spec, params, x, causal=causal, key_padding_mask=key_padding_mask)


adapter = NumpyAdapter()
