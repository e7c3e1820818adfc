"""PyTorch adapters: CPU (``torch``), CUDA (``torch-cuda``) and the Triton kernels in Triton's
interpreter on CPU (``torch-triton-interpret``).

``apply`` and ``vjp`` go through :func:`synth_ref.backends.torch_triton.layer_forward`: a fused
Triton kernel where one covers the case, the reference otherwise (``adapter.last_path`` says which).
``vjp`` differentiates it with autograd.  torch is imported on first use, never when
this module is imported.

``torch-triton-interpret`` is how CI certifies the kernels without a GPU: it needs
``TRITON_INTERPRET=1`` in the environment before anything imports triton (nox sets it), claims the
interpreter path's dtypes (float64, float32, float16), and raises if a case that a kernel covers ran the
reference instead -- so a pass of that backend is a pass of the kernels, not of the fallback.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ._protocol import import_error_reason


def _torch():
    import torch

    return torch


class TorchAdapter:
    dtypes = ("float64", "float32", "float16", "bfloat16")

    def __init__(self, device="cpu", name="torch", *, interpret=False, block=None):
        self.device = device
        self.name = name
        self.interpret = interpret  # the kernels in Triton's interpreter, or an error
        self.block = block  # the kernels' sequence block side (torch_triton._common.SEQ_BLOCK), None: theirs
        self.last_path = None
        if interpret:
            from .torch_triton import INTERPRETER_DTYPES

            self.dtypes = INTERPRETER_DTYPES

    def available(self):
        try:
            torch = _torch()
        except Exception as exc:  # noqa: BLE001
            return False, import_error_reason("torch", exc)
        if self.device.startswith("cuda"):
            try:
                ok = torch.cuda.is_available()
            except Exception as exc:  # noqa: BLE001
                return False, f"torch.cuda.is_available() raised {exc}"
            if not ok:
                why = "no CUDA device (torch.cuda.is_available() is False)"
                return False, f"torch {torch.__version__}: {why}"
            return True, f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}"
        if self.interpret:
            from .torch_triton import interpreter_state

            ok, why = interpreter_state()
            if not ok:
                return False, why
            return True, f"torch {torch.__version__} on cpu, Triton kernels interpreted"
        return True, f"torch {torch.__version__} on cpu"

    def from_numpy(self, array, dtype=None):
        torch = _torch()
        t = torch.from_numpy(np.ascontiguousarray(array))
        if dtype is not None:
            t = t.to(getattr(torch, dtype))
        return t.to(self.device)

    def to_numpy(self, array):
        torch = _torch()
        t = array.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.to(torch.float32)
        return t.numpy()

    def _forward(self, spec, params, x, causal, key_padding_mask):
        # Issue 4: fused Triton kernels where one covers the case (CUDA tensors; CPU tensors only
        # under TRITON_INTERPRET=1), the reference sr.apply otherwise.  self.last_path records which
        # ran ("triton:<kernel>" or "eager: <why>").  The adapter protocol is unchanged.
        from .torch_triton import kernel_name, layer_forward

        y, self.last_path = layer_forward(spec, params, x, causal=causal, key_padding_mask=key_padding_mask)
        name = kernel_name(spec, causal)
        if self.interpret and name is not None and not self.last_path.startswith("triton:"):
            raise RuntimeError(f"{self.name}: kernel {name!r} covers {spec.variant!r} but "
                               f"the reference ran ({self.last_path})")
        return y

    def _blocks(self):
        if self.block is None:
            return contextlib.nullcontext()
        from .torch_triton._common import sequence_block

        return sequence_block(self.block)

    def apply(self, spec, params, x, *, causal=False, key_padding_mask=None):
        with _torch().no_grad(), self._blocks():
            return self._forward(spec, params, x, causal, key_padding_mask)

    def vjp(self, spec, params, x, dy, *, causal=False, key_padding_mask=None):
        torch = _torch()
        names = list(params)
        with torch.enable_grad(), self._blocks():  # the backward's launches too
            leaves = [x.detach().requires_grad_(True)]
            leaves += [params[n].detach().requires_grad_(True) for n in names]
            p = dict(zip(names, leaves[1:], strict=True))
            y = self._forward(spec, p, leaves[0], causal, key_padding_mask)
            grads = torch.autograd.grad(y, leaves, dy, allow_unused=True)
        grads = [torch.zeros_like(a) if g is None else g for a, g in zip(leaves, grads, strict=True)]
        return grads[0], dict(zip(names, grads[1:], strict=True))


adapter = TorchAdapter("cpu", "torch")
cuda_adapter = TorchAdapter("cuda", "torch-cuda")
# Sequence blocks of 8: the suite's lengths (12, 5, 1) then make two row and key blocks with a
# partial last one, so the online-softmax merges, the causal block skips and the windowed AFT
# kernels' far-block summaries all run (the default blocks, 16 and up, held every case in one).
interpret_adapter = TorchAdapter("cpu", "torch-triton-interpret", interpret=True, block=8)
