"""Fused Triton kernels for the torch layers, and the dispatch that picks kernel or reference.

:func:`layer_forward` runs one layer.  It takes a fused kernel when one covers the case and the
tensors can run it -- CUDA tensors, or CPU tensors while ``TRITON_INTERPRET=1`` is set (Triton's
interpreter, for tests; the kernels must also have been imported with it set, since Triton decides
at decoration time) -- and the reference :func:`synth_ref.apply` otherwise.  It returns the path
it took as a string, ``"triton:<kernel>"`` or ``"eager: <why>"``, so that the choice is visible
(kernel "aft" names the AFT family; the path says "aft-window" where a narrow band took the
windowed kernels of ``_aft_window``).

The kernels fuse the mixing step only (softmax(S) V, or AFT's weighted sums); the projections stay
torch matmuls.  Each kernel has its own backward (``torch.autograd.Function``).  Triton is imported
only when a kernel could run, never at import time.
"""

from __future__ import annotations

import os

import synth_ref as sr
from synth_ref._inputs import prepare

KERNEL_MODES = ("auto", "never", "always")

#: dtypes the kernels take on a GPU (float64 GEMMs have no tensor-core path: the reference serves it).
GPU_DTYPES = ("float32", "float16", "bfloat16")
#: dtypes the CPU interpreter path takes: the tests' gold dtype, float32 and float16 (NumPy's half,
#: so the half-precision code paths -- P cast to the value dtype, O kept in float32 for the backward
#: -- run too).  Not bfloat16: the interpreter's bfloat16 gives garbage (errors ~1e12 on a case the
#: float16 run passes), so its kernels are only compile-checked here (tests/test_torch_kernels_sm90.py)
#: and run on a GPU.
INTERPRETER_DTYPES = ("float64", "float32", "float16")


def kernel_name(spec, causal: bool) -> str | None:
    """The fused kernel that covers ``spec`` with or without a causal mask, or None (aft_simple
    without one: the reference's O(l d) form; softmax variants whose head, or mixed q / k width, is
    over 128: the flash kernel's widest block).  Key padding and dtype support is the same for all."""
    from . import _plan

    return _plan.kernel_choice(spec, bool(causal))[0]


def _triton_state():
    """(importable, interpreted, why-not)."""
    try:
        from . import _kernels
    except ImportError as exc:
        return False, False, f"triton is not importable ({exc})"
    return True, _kernels.INTERPRETED, ""


def interpreter_state() -> tuple[bool, str]:
    """(ok, why not): whether CPU tensors can run the kernels here (Triton's interpreter, set up
    before triton's first import).  Imports triton; call it only where that is wanted."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False, "TRITON_INTERPRET=1 is not set (set it before anything imports triton)"
    ok, interpreted, why = _triton_state()
    if not ok:
        return False, why
    if not interpreted:
        return False, ("triton or the kernels were imported before TRITON_INTERPRET=1 took effect "
                       "(torch._dynamo imports triton)")
    return True, ""


def choose(spec, x, kernels: str = "auto", *, causal: bool = False) -> tuple[str | None, str]:
    """(kernel name or None, why): the decision :func:`layer_forward` takes, without running it."""
    if kernels not in KERNEL_MODES:
        raise ValueError(f"kernels: expected one of {KERNEL_MODES}; got {kernels!r}")
    if kernels == "never":
        return None, "kernels='never'"
    from . import _plan

    name, why = _plan.kernel_choice(spec, bool(causal))
    if name is None:
        return None, why
    dtype = str(x.dtype).removeprefix("torch.")
    if x.device.type == "cuda":
        if dtype not in GPU_DTYPES:
            return None, f"the kernels take {GPU_DTYPES} on a GPU; got {dtype}"
        ok, _, why = _triton_state()
        return (name, "") if ok else (None, why)
    if x.device.type != "cpu":
        return None, f"no kernel for device {x.device.type!r}"
    if os.environ.get("TRITON_INTERPRET") != "1":
        return None, "CPU tensor (kernels run on CPU only under TRITON_INTERPRET=1)"
    if dtype not in INTERPRETER_DTYPES:
        return None, f"the interpreter path is tested in {INTERPRETER_DTYPES}; got {dtype}"
    ok, why = interpreter_state()
    return (name, "") if ok else (None, f"CPU tensor, but {why}")


def layer_forward(spec, params: dict, x, *, causal: bool = False, key_padding_mask=None,
                  kernels: str = "auto"):
    """(y, path): the layer's output and which implementation computed it.

    Arguments as for :func:`synth_ref.apply` (``params`` x's tensors or NumPy arrays under their
    canonical names); the reference's own checks run on either path, with its error messages."""
    if not isinstance(spec, sr.Spec):
        raise TypeError(f"spec: expected a synth_ref.Spec; got {type(spec).__name__}")
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor; got {type(x).__name__}")
    _, params, causal, mask = prepare(spec, params, x, causal, key_padding_mask)  # errors first
    name, why = choose(spec, x, kernels, causal=causal)
    if name is None:
        if kernels == "always":
            raise RuntimeError(f"kernels='always': no fused kernel runs here: {why}")
        y = sr.apply(spec, params, x, causal=causal, key_padding_mask=mask)
        return y, f"eager: {why}"
    from . import _plan

    run = _plan.forward
    if x.device.type == "cpu":
        # Triton's interpreter runs the kernels as NumPy code on the tensors' raw pointers, which
        # torch.compile cannot trace (it fails on fake tensors); run them outside the graph.
        run = torch.compiler.disable(run)
    y, ran = run(name, spec, params, x, causal, mask)
    return y, f"triton:{ran}"
