"""``torch.nn.Module`` layers for every variant, holding the canonical parameters.

>>> import torch, synth_ref as sr
>>> from synth_ref.backends.torch_nn import MixingLayer
>>> layer = MixingLayer(sr.Spec("dense", d_model=8, n_heads=2, max_len=16), seed=0)
>>> layer(torch.ones(2, 5, 8), causal=True).shape
torch.Size([2, 5, 8])

Parameter names are the spec's canonical names, so ``state_dict()`` keys equal
``spec.param_shapes()`` keys and ``spec.init(seed)`` arrays load unchanged.  A mixture's arrays
are named ``"<component>.<name>"`` (``"random.r"``); ``nn.Parameter`` names cannot hold a '.', so each
component's arrays live on a child module named after the component, which gives exactly that
state_dict key.

The forward pass goes through :func:`synth_ref.backends.torch_triton.layer_forward`: a fused Triton
kernel where one covers the case (CUDA tensors; CPU only under ``TRITON_INTERPRET=1``), the
reference :func:`synth_ref.apply` otherwise.  ``layer.last_path`` says which ran.
"""

from __future__ import annotations

import numpy as np
import torch
from array_api_compat import array_namespace
from torch import nn

import synth_ref as sr
from synth_ref import _softmax
from synth_ref._inputs import check_causal, check_layer_options, check_x, convert_mask, param_shapes_of
from synth_ref.variants import RANDOM_ARRAYS

from . import torch_triton

__all__ = ["MixingLayer"]


class _Component(nn.Module):
    """Holds one mixture component's arrays, so that their state_dict keys read '<component>.<name>'."""


def _numpy_to_tensors(module, state_dict, prefix, *_):
    """load_state_dict pre-hook: this layer's canonical entries given as NumPy arrays (as
    ``spec.init`` returns them) become tensors, so that ``load_state_dict(spec.init(seed))`` loads
    (torch itself accepts tensors only); torch then checks keys and shapes and casts to the layer's
    dtype as for any tensor.  Runs before the mixture components' children load their entries."""
    for name in module.spec.param_shapes():
        value = state_dict.get(prefix + name)
        if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
            state_dict[prefix + name] = torch.from_numpy(np.ascontiguousarray(value))


class MixingLayer(nn.Module):
    """The token-mixing layer a :class:`synth_ref.Spec` describes (an attention replacement).

    Parameters
    ----------
    spec:
        Which variant, sizes and options.
    dropout:
        Probability of zeroing an entry of the attention weights P (softmax variants only; AFT has
        no weight matrix to drop).  Applied only in training mode; kept entries are scaled by
        1 / (1 - dropout) as ``torch.nn.functional.dropout`` does.
    freeze_random:
        Hold the random synthesizer's R (``r``, or ``r_1`` and ``r_2``; a mixture's random
        components too) as a buffer: never trained, still saved in ``state_dict()``.
    seed:
        Initial parameters are ``spec.init(seed)`` cast to ``dtype``; None draws the seed from
        torch's global generator (so ``torch.manual_seed`` makes layers reproducible).
    kernels:
        ``"auto"`` (a fused kernel where one applies), ``"never"`` (always the reference) or
        ``"always"`` (raise when no kernel applies; for tests and benchmarks).
    device, dtype:
        Where and in what dtype the parameters live (default: torch's defaults).

    Notes
    -----
    ``load_state_dict`` takes ``spec.init(seed)`` as it is (NumPy arrays) as well as tensors.  x must
    have the layer's dtype, except under autocast, where x in autocast's dtype is taken up exactly.
    The fused kernels' backward passes are first-order: ``create_graph=True`` through one raises
    (use ``kernels="never"`` for higher derivatives) rather than miss the kernel's share.
    """

    def __init__(self, spec: sr.Spec, *, dropout: float = 0.0, freeze_random: bool = False,
                 seed: int | None = None, kernels: str = "auto", device=None, dtype=None):
        super().__init__()
        if not isinstance(spec, sr.Spec):
            raise TypeError(f"spec: expected a synth_ref.Spec; got {type(spec).__name__}")
        dropout, freeze_random = check_layer_options(spec, dropout, freeze_random)
        if kernels not in torch_triton.KERNEL_MODES:
            raise ValueError(f"kernels: expected one of {torch_triton.KERNEL_MODES}; got {kernels!r}")
        self.spec = spec
        self.dropout = dropout
        self.freeze_random = freeze_random
        self.kernels = kernels
        #: Which implementation the last forward ran, a string starting "eager" (then why the
        #: reference ran) or "triton" (then the kernel); None before the first call.
        self.last_path: str | None = None
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating torch dtype; got {dtype}")
        for name, shape in spec.param_shapes().items():
            owner, leaf = self._owner(name, create=True)
            value = torch.zeros(shape, device=device, dtype=dtype)
            if self.freeze_random and leaf in RANDOM_ARRAYS:
                owner.register_buffer(leaf, value)
            else:
                owner.register_parameter(leaf, nn.Parameter(value))
        self.reset_parameters(seed)
        self.register_load_state_dict_pre_hook(_numpy_to_tensors)

    # --- canonical parameters ---------------------------------------------------------------------
    def _owner(self, name: str, create: bool = False) -> tuple[nn.Module, str]:
        comp, dot, leaf = name.rpartition(".")
        if not dot:
            return self, name
        if create and not hasattr(self, comp):
            self.add_module(comp, _Component())
        return getattr(self, comp), leaf

    def canonical_params(self) -> dict[str, torch.Tensor]:
        """``{canonical name: tensor}`` in ``spec.param_shapes()`` order: the live parameters (and
        frozen buffers), so the result can be handed to :func:`synth_ref.apply` and differentiated."""
        out = {}
        for name in self.spec.param_shapes():
            owner, leaf = self._owner(name)
            out[name] = getattr(owner, leaf)
        return out

    @torch.no_grad()
    def load_canonical(self, params: dict) -> None:
        """Copy ``{name: array}`` (NumPy arrays or tensors, e.g. ``spec.init(seed)``) into the layer,
        cast to its dtype and device.  Names and shapes must be exactly ``spec.param_shapes()``."""
        want = param_shapes_of(self.spec, params)
        current = self.canonical_params()
        for name, shape in want.items():
            value = params[name]
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(np.ascontiguousarray(value))
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"params[{name!r}]: expected a NumPy array or tensor; got {type(value).__name__}"
                )
            if tuple(value.shape) != tuple(shape):
                raise ValueError(f"params[{name!r}]: expected shape {tuple(shape)}; got {tuple(value.shape)}")
            if not value.dtype.is_floating_point:
                raise TypeError(f"params[{name!r}]: expected a floating array; got dtype {value.dtype}")
            current[name].copy_(value)

    def reset_parameters(self, seed: int | None = None) -> None:
        """Re-draw every array as ``spec.init(seed)`` (see the class docstring for seed=None)."""
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.load_canonical(self.spec.init(seed=seed))

    # --- forward ----------------------------------------------------------------------------------
    def _check_inputs(self, x, causal, key_padding_mask):
        """The reference's own checks (same messages), plus the layer's dtype and device; returns
        (x, causal, mask), x taken in the layer's dtype when it came in autocast's dtype under
        autocast."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor; got {type(x).__name__}")
        xp = array_namespace(x)
        batch, length = check_x(self.spec, x, xp)
        causal = check_causal(self.spec, causal)
        if key_padding_mask is not None and not isinstance(key_padding_mask, torch.Tensor):
            raise TypeError(
                f"key_padding_mask: expected a boolean torch.Tensor; got {type(key_padding_mask).__name__}"
            )
        mask = convert_mask(self.spec, key_padding_mask, x, xp, batch, length)
        ref = self.w_v
        if x.device != ref.device:
            raise ValueError(f"x: expected a tensor on the layer's device {ref.device}; got {x.device}")
        amp = x.device.type
        if (x.dtype != ref.dtype and torch.is_autocast_enabled(amp)
                and x.dtype == torch.get_autocast_dtype(amp)):
            # Under autocast the previous layer hands over its output in autocast's dtype (as
            # nn.Linear does); autocast casts the matmuls' operands to that dtype anyway, so taking
            # x in the layer's dtype changes no number (the cast up is exact).
            x = x.to(ref.dtype)
        if x.dtype != ref.dtype:
            raise TypeError(
                f"x: expected the layer's dtype {ref.dtype} (use autocast, or cast x or the layer); "
                f"got {x.dtype}"
            )
        return x, causal, mask

    def forward(self, x: torch.Tensor, causal: bool = False, key_padding_mask: torch.Tensor | None = None):
        """y of x's shape: (batch, length, d_model), or (batch, height, width, d_model) for a 2-D
        aft_conv.  ``key_padding_mask`` (batch, length) boolean, True for real tokens."""
        x, causal, mask = self._check_inputs(x, causal, key_padding_mask)
        params = self.canonical_params()
        if self.training and self.dropout > 0:
            if self.kernels == "always":
                raise RuntimeError(
                    "kernels='always': no fused kernel runs here: dropout on the attention weights "
                    f"(dropout={self.dropout}, training mode) runs the reference"
                )
            self.last_path = "eager: dropout on the attention weights"
            return self._forward_with_dropout(params, x, causal, mask)
        y, self.last_path = torch_triton.layer_forward(
            self.spec, params, x, causal=causal, key_padding_mask=mask, kernels=self.kernels
        )
        return y

    def _forward_with_dropout(self, params, x, causal, mask):
        """The reference's softmax output step with dropout between P and V (kept here, not in the
        spec, because dropout is a training device and not part of the layer's math)."""
        p = sr.attention_weights(self.spec, params, x, causal=causal, key_padding_mask=mask)
        p = nn.functional.dropout(p, self.dropout, training=True)
        return _softmax.mix_values(self.spec, params, x, array_namespace(x), p)

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.spec.options().items())
        s = (f"{self.spec.variant!r}, d_model={self.spec.d_model}, n_heads={self.spec.n_heads}, "
             f"max_len={self.spec.max_len}")
        s += f", {opts}" if opts else ""
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.freeze_random:
            s += ", freeze_random=True"
        return s
