"""What gets timed: every implementation as (forward, forward + backward) callables on prepared inputs.

An :class:`Impl` says which variants it covers and builds, for one point (variant, dtype, length),
a :class:`Prepared`: the two callables, how to sync their results and how to read peak memory.
Kinds of implementation:

- ``adapter``: every backend in ``synth_ref.backends`` on this mode's device (the reference on NumPy,
  torch and JAX today; accelerated adapters as they land), forward by ``apply``, forward + backward
  by ``vjp`` where the adapter has one;
- ``same-math``: :mod:`benchmarks.direct_torch`, the spec's math written directly in torch;
- ``baseline``: SDPA dot-product attention (flash on a GPU), the lightweight and dynamic convolution
  layers, and the naive "what users write today" versions (:mod:`benchmarks.naive`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import convolution, direct_torch, measure


@dataclass
class Point:
    """One measured point's inputs, shared by every implementation at that point."""

    settings: object
    variant: str | None  # None for the variant-free baselines (SDPA, convolutions)
    spec: object | None
    dtype: str
    length: int
    params: dict | None  # NumPy, float64 or float32
    x: np.ndarray
    dy: np.ndarray
    cache: dict = field(default_factory=dict)  # what several implementations build alike at this point

    @property
    def causal(self) -> bool:
        return self.settings.causal


@dataclass
class Prepared:
    forward: Callable | None
    forward_backward: Callable | None
    sync: Callable = measure.no_sync
    cuda_events: bool = False  # time with CUDA events (torch on a GPU)
    memory: str = "rss"  # "tracemalloc" | "rss" | "cuda" | "none"
    note: str = ""  # e.g. which SDPA backend ran
    describe: Callable[[], str] | None = None  # after a call: which path ran (an adapter's last_path)


@dataclass
class Impl:
    name: str  # row label in the JSON, table and plots
    role: str  # "adapter" | "same-math" | "baseline"
    build: Callable[[Point], Prepared]
    covers: Callable[[str | None], bool]
    dtypes: tuple[str, ...]
    no_backward: str = ""  # why forward + backward is not measured, when it is not
    no_forward: str = ""  # why forward alone is not measured, when it is not
    floor: bool = True  # whether the point's Spec describes this work (not for the convolutions)
    meta: dict = field(default_factory=dict)


# --- torch helpers ------------------------------------------------------------------------------


def torch_device(settings) -> str:
    return "cuda" if settings.device == "cuda" else "cpu"


def _tensors(arrays: dict, dtype: str, device: str) -> dict:
    import torch

    return {
        k: torch.from_numpy(np.ascontiguousarray(v)).to(device=device, dtype=getattr(torch, dtype))
        for k, v in arrays.items()
    }


def torch_prepared(fn: Callable, params: dict, x, dy, device: str, note: str = "") -> Prepared:
    """Forward under no_grad; forward + backward as autograd.grad of sum(y * dy) for x and every
    parameter (nothing accumulates between calls)."""
    import torch

    leaves = [x] + list(params.values())
    names = list(params)

    def forward():
        with torch.no_grad():
            return fn(params, x)

    def forward_backward():
        with torch.enable_grad():
            grad_leaves = [t.detach().requires_grad_(True) for t in leaves]
            y = fn(dict(zip(names, grad_leaves[1:], strict=True)), grad_leaves[0])
            return torch.autograd.grad(y, grad_leaves, dy)

    cuda = device == "cuda"
    return Prepared(forward, forward_backward, cuda_events=cuda, memory="cuda" if cuda else "rss", note=note)


def _torch_inputs(pt: Point, params: dict):
    dev = torch_device(pt.settings)
    p = _tensors(params, pt.dtype, dev)
    t = _tensors({"x": pt.x, "dy": pt.dy}, pt.dtype, dev)
    return p, t["x"], t["dy"], dev


# --- the spec's math directly in torch ----------------------------------------------------------


def direct_impl(settings) -> Impl:
    def build(pt: Point) -> Prepared:
        p, x, dy, dev = _torch_inputs(pt, pt.params)
        spec, causal = pt.spec, pt.causal
        return torch_prepared(lambda pp, xx: direct_torch.apply(spec, pp, xx, causal=causal), p, x, dy, dev)

    return Impl("torch_direct", "same-math", build, lambda v: v is not None, _torch_dtypes(settings))


def _torch_dtypes(settings) -> tuple[str, ...]:
    return tuple(settings.dtypes)


# --- SDPA: plain dot-product attention, flash on a GPU ------------------------------------------


def _sdpa_backend(q, k, v, causal):
    """The flash kernel where torch offers it for these tensors (CUDA, fp16/bf16); else torch's
    default choice.  Returns (context factory, label)."""
    import contextlib

    import torch.nn.functional as F

    if q.is_cuda:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return (lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION])), "flash"
        except (RuntimeError, ImportError) as exc:
            return contextlib.nullcontext, f"default (flash refused: {str(exc).splitlines()[0][:80]})"
    return contextlib.nullcontext, "default (cpu)"


def sdpa_impl(settings) -> Impl:
    """The whole dot-product layer: projections as in the spec, mixing by scaled_dot_product_attention."""

    def build(pt: Point) -> Prepared:
        import torch.nn.functional as F

        spec = pt.settings.spec("dot_product", pt.length)
        p, x, dy, dev = _torch_inputs(pt, pt.params)
        h, causal = spec.n_heads, pt.causal
        B, l, d = x.shape
        probe = x.new_zeros(B, h, l, d // h)
        ctx, label = _sdpa_backend(probe, probe, probe, causal)

        def layer(pp, xx):
            q, k, v = (xx @ pp[f"w_{n}"] + pp[f"b_{n}"] for n in "qkv")
            q, k, v = (t.view(B, l, h, d // h).transpose(1, 2) for t in (q, k, v))
            with ctx():
                y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return y.transpose(1, 2).reshape(B, l, d) @ pp["w_o"] + pp["b_o"]

        return torch_prepared(layer, p, x, dy, dev, note=f"sdpa backend: {label}")

    return Impl(
        "sdpa",
        "baseline",
        build,
        lambda v: v is None,
        _torch_dtypes(settings),
        meta={"what": "dot-product layer with torch scaled_dot_product_attention"},
    )


def sdpa_params(settings, length: int, dtype: str) -> dict:
    return settings.spec("dot_product", length).init(seed=0, dtype=_np_dtype(dtype))


# --- lightweight and dynamic convolution (Wu et al. 2019) --------------------------------------


def conv_impl(settings, dynamic: bool, *, n_heads=None, kernel_size=None, name=None) -> Impl:
    H = n_heads or settings.n_heads
    k = kernel_size or settings.conv_kernel

    def build(pt: Point) -> Prepared:
        params = convolution.init(pt.x.shape[-1], H, k, dynamic)
        p, x, dy, dev = _torch_inputs(pt, params)
        causal = pt.causal
        return torch_prepared(
            lambda pp, xx: convolution.apply(pp, xx, n_heads=H, kernel_size=k, causal=causal), p, x, dy, dev
        )

    label = name or ("dynamic_conv" if dynamic else "lightweight_conv")
    return Impl(
        label,
        "baseline",
        build,
        lambda v: v is None,
        _torch_dtypes(settings),
        floor=False,
        meta={"kernel_size": k, "n_heads": H, "dynamic": dynamic},
    )


# --- adapters from synth_ref.backends -----------------------------------------------------------


def _np_dtype(dtype: str) -> str:
    return "float64" if dtype == "float64" else "float32"


def _array_platform(a) -> str:
    """ "cpu" or "cuda" for an adapter's array (anything not on a CPU counts as the GPU)."""
    mod = type(a).__module__
    if mod.startswith("torch"):
        return "cuda" if a.is_cuda else "cpu"
    if mod.startswith("jax") or hasattr(a, "devices"):
        return "cpu" if next(iter(a.devices())).platform == "cpu" else "cuda"
    if mod.startswith("cupy"):
        return "cuda"
    return "cpu"


def _sync_for(a) -> Callable:
    mod = type(a).__module__
    if mod.startswith("jax") or hasattr(a, "block_until_ready"):
        import jax

        return jax.block_until_ready
    if mod.startswith("cupy"):
        import cupy

        return lambda r: cupy.cuda.get_current_stream().synchronize()
    return measure.no_sync


def _memory_for(a, platform: str) -> str:
    mod = type(a).__module__
    if mod.startswith("numpy"):
        return "tracemalloc"
    if platform == "cpu":
        return "rss"
    if mod.startswith("torch"):
        return "cuda"
    return "none"


def adapter_impls(settings, skipped: list) -> list[Impl]:
    """Every registered backend usable on this mode's device; the others go to ``skipped`` with why."""
    from synth_ref import backends

    impls = []
    for name in backends.names():
        if settings.backends is not None and name not in settings.backends:
            skipped.append({"what": f"adapter {name}", "why": "not selected (--backends)"})
            continue
        if name == "array_api_strict":
            skipped.append(
                {
                    "what": f"adapter {name}",
                    "why": "a strictness checker for the Array-API "
                    "standard, not an implementation anyone runs for speed",
                }
            )
            continue
        ok, why = backends.available(name)
        if not ok:
            skipped.append({"what": f"adapter {name}", "why": why})
            continue
        adapter = backends.get(name)
        probe = adapter.from_numpy(np.zeros(2, np.float32), "float32")
        platform = _array_platform(probe)
        if platform != settings.device:
            skipped.append(
                {
                    "what": f"adapter {name}",
                    "why": f"runs on {platform}; this run measures "
                    f"{settings.device} (the other mode's run covers it)",
                }
            )
            continue
        dtypes = tuple(d for d in settings.dtypes if d in adapter.dtypes)
        if not dtypes:
            skipped.append({"what": f"adapter {name}", "why": f"claims none of {settings.dtypes}"})
            continue
        impls.append(_adapter_impl(adapter, name, probe, platform, dtypes))
        if name == "jax":
            # Issue 5's comparison: the same adapter forced onto the reference path (synth_ref.apply
            # under jax.jit), what a JAX user gets without the rewrites and kernels.
            from synth_ref.backends.jax import JaxAdapter

            # On a GPU only the variants issue 5's target names: the bench stage of gpu/run.py has
            # minutes, and every other jax-reference series would add its compiles to them.
            from .analysis import REFERENCE_SPEEDUP_VARIANTS

            ref = JaxAdapter("jax-reference", path="reference")
            covers = (lambda v: v in REFERENCE_SPEEDUP_VARIANTS) if settings.device == "cuda" else None
            impls.append(_adapter_impl(ref, "jax-reference", probe, platform, dtypes,
                                       refuse=_unrolled_reference, covers=covers))
    return impls


#: The most query-row blocks of the reference's AFT that jax-reference compiles (see below).
JIT_BLOCK_LIMIT = 256


def _unrolled_reference(pt: Point) -> str | None:
    """Why jax-reference does not measure this point, or None.  Under jax.jit the reference's AFT
    row-block loop (``synth_ref._aft.row_bounds``) unrolls, and compile time grows faster than the
    block count: B=4, d=512 bfloat16 aft_full forward + backward took 15 s to compile at l=1024
    (128 blocks) and 138 s at l=2048 (512 blocks) on the project's CPU machine; at l=4096 it would
    eat a lent GPU's whole time."""
    from synth_ref import _aft

    spec = pt.spec
    if spec.family != "aft":
        return None
    per_row = spec.variant != "aft_simple" or pt.causal
    n = len(_aft.row_bounds(pt.settings.batch, pt.length, spec.d_model, per_row))
    if n <= JIT_BLOCK_LIMIT:
        return None
    return (f"the reference's {n} AFT row blocks at l={pt.length} unroll under jax.jit (more than "
            f"{JIT_BLOCK_LIMIT}: minutes to compile)")


def _adapter_impl(adapter, name, probe, platform, dtypes, refuse=None, covers=None) -> Impl:
    from synth_ref.backends import has_vjp

    sync, memory = _sync_for(probe), _memory_for(probe, platform)
    cuda_events = platform == "cuda" and type(probe).__module__.startswith("torch")
    differentiable = has_vjp(adapter)

    def build(pt: Point) -> Prepared:
        why = refuse(pt) if refuse else None
        if why:
            raise measure.NotMeasured(why)
        spec, causal = pt.spec, pt.causal
        params = {k: adapter.from_numpy(v, pt.dtype) for k, v in pt.params.items()}
        x = adapter.from_numpy(pt.x, pt.dtype)
        dy = adapter.from_numpy(pt.dy, pt.dtype)

        def forward():
            return adapter.apply(spec, params, x, causal=causal, key_padding_mask=None)

        fb = None
        if differentiable:

            def fb():
                return adapter.vjp(spec, params, x, dy, causal=causal, key_padding_mask=None)

        def describe():
            # Adapters that dispatch (a kernel where one covers the case, the reference otherwise)
            # say which ran; torch's does as ``last_path``.
            path = getattr(adapter, "last_path", None)
            return f"path: {path}" if path else ""

        return Prepared(forward, fb, sync=sync, cuda_events=cuda_events, memory=memory, describe=describe)

    return Impl(
        name,
        "adapter",
        build,
        covers or (lambda v: v is not None),
        dtypes,
        no_backward="" if differentiable else f"adapter {name!r} has no vjp (cannot differentiate)",
        meta={"device": platform},
    )
