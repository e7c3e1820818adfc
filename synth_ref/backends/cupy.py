"""CuPy adapter: hand-derived forward and backward passes with fused CUDA kernels (issue 6).

``available()`` returns (False, reason) when cupy is missing or no CUDA driver/GPU answers.
"""

from __future__ import annotations

import numpy as np

from . import cupy_impl, cupy_kernels
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

    # Issue 6: apply and vjp run the hand-derived passes (cupy_impl, derived in docs/backward.md)
    # with the fused CUDA kernels (cupy_kernels.ops()); neither imports cupy until called.
    @staticmethod
    def _check_x(x):
        """The kernels run on CuPy arrays only: any other x (a NumPy array, say) would reach them
        half-converted and fail far from the cause.  Params and the mask may be NumPy (converted to
        x's namespace as the reference does); dy is checked by cupy_impl.vjp."""
        cp = _cupy()
        if not isinstance(x, cp.ndarray):
            raise TypeError(f"x: expected a cupy array (the cupy adapter's from_numpy); "
                            f"got {type(x).__module__}.{type(x).__name__}")

    def apply(self, spec, params, x, *, causal=False, key_padding_mask=None):
        self._check_x(x)
        return cupy_impl.apply(spec, params, x, causal=causal, key_padding_mask=key_padding_mask,
                               ops=cupy_kernels.ops())

    def vjp(self, spec, params, x, dy, *, causal=False, key_padding_mask=None):
        self._check_x(x)
        return cupy_impl.vjp(spec, params, x, dy, causal=causal, key_padding_mask=key_padding_mask,
                             ops=cupy_kernels.ops())


adapter = CupyAdapter()
