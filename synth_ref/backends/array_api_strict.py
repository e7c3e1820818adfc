"""array_api_strict adapter: the reference on the strict Array-API namespace (forward only).

Proves the reference uses nothing beyond the standard.  The namespace has no float16 or bfloat16.
"""

from __future__ import annotations

import numpy as np

import synth_ref as sr

from ._protocol import import_error_reason


def _xp():
    import array_api_strict

    return array_api_strict


class ArrayApiStrictAdapter:
    name = "array_api_strict"
    dtypes = ("float64", "float32")

    def available(self):
        try:
            xp = _xp()
        except Exception as exc:  # noqa: BLE001
            return False, import_error_reason("array_api_strict", exc)
        return True, "array_api_strict " + getattr(xp, "__version__", "?")

    def from_numpy(self, array, dtype=None):
        xp = _xp()
        array = np.ascontiguousarray(array)
        return xp.asarray(array, dtype=None if dtype is None else getattr(xp, dtype))

    def to_numpy(self, array):
        return np.from_dlpack(array).copy()

    def apply(self, spec, params, x, *, causal=False, key_padding_mask=None):
        return sr.apply(spec, params, x, causal=causal, key_padding_mask=key_padding_mask)


adapter = ArrayApiStrictAdapter()
