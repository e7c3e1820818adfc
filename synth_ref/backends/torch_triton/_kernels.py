"""Imports Triton and every kernel module together, so that all are built in the same mode."""

from __future__ import annotations

import triton

#: True when Triton's interpreter runs the kernels (TRITON_INTERPRET=1 at import): CPU tensors.
INTERPRETED = bool(triton.knobs.runtime.interpret)
