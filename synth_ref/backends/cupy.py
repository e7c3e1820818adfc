"""CuPy adapter: the reference on CuPy arrays (forward only; vjp arrives with its own issue).

``available()`` returns (False, reason) when cupy is missing or no CUDA driver/GPU answers.
"""

from __future__ import annotations

import numpy as np

import synth_ref as sr

from ._protocol import import_error_reason


def _cupy():
    import cupy

    return cupy


class CupyAdapter:
    name = "cupy"
    dtypes = ("float64", "float32", "float16")  # CuPy has no bfloat16

    def available(self):
        try:
            cp = _cupy()
        except Exception as exc:  # noqa: BLE001
            return False, import_error_reason("cupy", exc)
        try:
            n = cp.cuda.runtime.getDeviceCount()
        except Exception as exc:  # noqa: BLE001 - CUDARuntimeError when there is no driver
            return False, f"cupy {cp.__version__}: no usable CUDA driver/GPU ({type(exc).__name__}: {exc})"
        if n < 1:
            return False, f"cupy {cp.__version__}: no CUDA device"
        try:
            name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        except Exception:  # noqa: BLE001
            name = "GPU 0"
        return True, f"cupy {cp.__version__} on {name}"

    def from_numpy(self, array, dtype=None):
        cp = _cupy()
        array = np.ascontiguousarray(array)
        return cp.asarray(array if dtype is None else array.astype(dtype))

    def to_numpy(self, array):
        return _cupy().asnumpy(array)

    def apply(self, spec, params, x, *, causal=False, key_padding_mask=None):
        return sr.apply(spec, params, x, causal=causal, key_padding_mask=key_padding_mask)


adapter = CupyAdapter()
