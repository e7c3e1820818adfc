"""Lightweight and dynamic convolution layers (Wu et al., "Pay Less Attention with Lightweight and
Dynamic Convolutions", 2019): the Synthesizer paper's speed comparison.

The block as Wu et al. define it, on x of shape (B, l, d):

    u = GLU(x W_in + b_in)                     W_in: (d, 2d), GLU(a, g) = a * sigmoid(g)
    lightweight: kernel W (H, k), the same at every position
    dynamic:     kernel(t) = u_t W_dyn + b_dyn   W_dyn: (d, H k), predicted per position
    kernel = softmax over the k taps; head h covers the d/H contiguous channels h*d/H ...
    z[t, c] = sum_j kernel[t, head(c), j] * u[t + j - p, c]   (p = k // 2 centred, k - 1 causal)
    y = z W_o + b_o

Written for clarity and a fair speed: the k-tap windows are a strided view (``unfold``) contracted
with the kernel by one einsum, which is how the Wu et al. reference code's "unfold" path works too.
Checked against a per-position loop in tests/test_bench_harness.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def param_shapes(d_model: int, n_heads: int, kernel_size: int, dynamic: bool) -> dict:
    d, H, k = d_model, n_heads, kernel_size
    if d % H:
        raise ValueError(f"n_heads: expected a divisor of d_model={d}; got {H}")
    shapes = {"w_in": (d, 2 * d), "b_in": (2 * d,), "w_o": (d, d), "b_o": (d,)}
    if dynamic:
        shapes.update({"w_dyn": (d, H * k), "b_dyn": (H * k,)})
    else:
        shapes["w_conv"] = (H, k)
    return shapes


def init(d_model: int, n_heads: int, kernel_size: int, dynamic: bool, seed: int = 0) -> dict:
    """float64 NumPy parameters: weights N(0, 1/fan_in), biases 0, as ``synth_ref.Spec.init``."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in param_shapes(d_model, n_heads, kernel_size, dynamic).items():
        if name.startswith("b_"):
            out[name] = np.zeros(shape)
        else:
            out[name] = rng.standard_normal(shape) / math.sqrt(shape[0] if name != "w_conv" else 1)
    return out


def apply(p: dict, x: torch.Tensor, *, n_heads: int, kernel_size: int, causal: bool) -> torch.Tensor:
    """The block's output (B, l, d); dynamic when ``p`` holds ``w_dyn``, lightweight otherwise."""
    B, l, d = x.shape
    H, k = n_heads, kernel_size
    a, g = (x @ p["w_in"] + p["b_in"]).chunk(2, dim=-1)
    u = a * torch.sigmoid(g)
    if "w_dyn" in p:
        kern = torch.softmax((u @ p["w_dyn"] + p["b_dyn"]).view(B, l, H, k), dim=-1)
    else:
        kern = torch.softmax(p["w_conv"], dim=-1)
    left = k - 1 if causal else k // 2
    padded = F.pad(u, (0, 0, left, k - 1 - left))  # pad the length axis
    windows = padded.unfold(1, k, 1).view(B, l, H, d // H, k)  # windows[b, t, ..., j] = u[t + j - left]
    if kern.dim() == 4:
        z = torch.einsum("blhck,blhk->blhc", windows, kern)
    else:
        z = torch.einsum("blhck,hk->blhc", windows, kern)
    return z.reshape(B, l, d) @ p["w_o"] + p["b_o"]


def apply_loop(p: dict, x: torch.Tensor, *, n_heads: int, kernel_size: int, causal: bool) -> torch.Tensor:
    """The same block by explicit loops over positions, heads and taps: the test's definition."""
    B, l, d = x.shape
    H, k = n_heads, kernel_size
    h = x @ p["w_in"] + p["b_in"]
    u = h[..., :d] * torch.sigmoid(h[..., d:])
    left = k - 1 if causal else k // 2
    z = torch.zeros_like(u)
    for t in range(l):
        if "w_dyn" in p:
            kern = torch.softmax((u[:, t] @ p["w_dyn"] + p["b_dyn"]).view(B, H, k), dim=-1)
        else:
            kern = torch.softmax(p["w_conv"], dim=-1)[None].expand(B, H, k)
        for c in range(d):
            head = c // (d // H)
            for j in range(k):
                src = t + j - left
                if 0 <= src < l:
                    z[:, t, c] += kern[:, head, j] * u[:, src, c]
    return z @ p["w_o"] + p["b_o"]
