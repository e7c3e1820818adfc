"""Imports Triton and every kernel module together, so that all are built in the same mode."""

from __future__ import annotations

from . import _aft, _aft_window, _flash, _random  # noqa: F401  (decorated now, in this mode)


def _interpreted() -> bool:
    """Whether Triton's interpreter runs the kernels (CPU tensors).

    Triton decides at decoration time, separately for its own library functions (tl.max, tl.sum:
    decorated when triton is first imported) and for ours: both must have seen TRITON_INTERPRET=1.
    torch._dynamo imports triton, so a process that touched torch.compile first cannot interpret."""
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.max, InterpretedFunction) and isinstance(_random._fwd, InterpretedFunction)


#: True when Triton's interpreter runs the kernels (TRITON_INTERPRET=1 before triton's first import).
INTERPRETED = _interpreted()
