"""Which implementation a JAX call runs: the path (``PATHS``) and, per spec, :func:`plan`.

Kept apart from the kernels and importable without JAX (jax is imported only to ask for the default
platform when none is given), so that the docs can generate the table of paths from :func:`plan`
itself.  :mod:`.jax_pallas` re-exports everything here and documents the paths.
"""

from __future__ import annotations

import os

import numpy as np

from . import _aft_band

PATHS = ("reference", "xla", "pallas", "pallas_interpret")
ENV = "SYNTH_REF_JAX_PATH"
#: Every name :func:`plan` returns.
IMPLEMENTATIONS = ("reference", "xla-sdpa", "xla-random", "xla-scan", "xla-aft", "pallas-flash",
                   "pallas-aft", "pallas-aft-window")
_GPU_PLATFORMS = ("gpu", "cuda", "rocm")
# CPU takes the XLA path too: its rewrites (random folded, aft_simple's scan, AFT's two GEMMs) are
# plain XLA and 40-100x faster than the reference there for AFT (fwd + bwd, l = 256 .. 1024).
_PLATFORM_PATH = {"tpu": "pallas", "cpu": "xla", **{p: "xla" for p in _GPU_PLATFORMS}}
# Logit components that dot_product_attention takes as q k^T + biases (no (B, l, l) array).
_SDPA_COMPONENTS = {"dot_product", "dense", "random", "factorized_random"}
# The flash kernel also builds factorized_dense's logits tile by tile (its elementwise product of
# two gathers is no q k^T for dot_product_attention).
_FLASH_COMPONENTS = _SDPA_COMPONENTS | {"factorized_dense"}
_AFT_KERNEL_VARIANTS = {"aft_full", "aft_local", "aft_conv"}
# Compiled Pallas kernels take the TPU's matmul dtypes; float16 and float64 run the reference there.
# (The interpreter runs every dtype; the jax-pallas-interpret backend claims float64, for the
# kernels' logic at gold precision, and these two, which a compiled kernel can meet: jax.py.)
_PALLAS_DTYPES = ("float32", "bfloat16")
#: Where the compiled kernels (path "pallas") lower.  They are written for the TPU lowering (Mosaic:
#: TPU compiler parameters, VMEM scratch), which JAX's GPU lowerings (Triton, Mosaic GPU) do not take:
#: lowered for "cuda" with jax 0.10.2 and its CUDA 13 plugin (no GPU needed to lower), each kernel
#: stops with "Cannot lower pallas_call on platform: gpu. To use Pallas on GPU, install jaxlib GPU",
#: which misleads where jaxlib GPU is installed; CPU lowers Pallas only in interpret mode.  So a call
#: elsewhere is refused by name (:func:`check_pallas_platform`).  gpu/pallas_probe.py widens this to
#: ask JAX itself on a GPU.
PALLAS_PLATFORMS = ("tpu",)


def check_path(path) -> str:
    if path not in PATHS:
        raise ValueError(f"path: expected one of {', '.join(PATHS)}; got {path!r}")
    return path


def _platform(platform):
    if platform is not None:
        return platform
    import jax

    return jax.default_backend()


def check_pallas_platform(platform: str | None = None) -> None:
    """Refuse the compiled Pallas kernels off the platforms they lower on (``PALLAS_PLATFORMS``);
    ``platform`` None: JAX's default backend, the one a call compiles for."""
    where = _platform(platform)
    if where not in PALLAS_PLATFORMS:
        raise ValueError(
            f"path: 'pallas' compiles the Pallas kernels, which are written for the TPU lowering and lower "
            f"on {', '.join(PALLAS_PLATFORMS)} only (JAX's GPU lowering does not take their TPU compiler "
            f"parameters; CPU runs Pallas only interpreted); got path 'pallas' on platform {where!r}. Use "
            f"path='xla' (the default off TPU) or 'pallas_interpret' (the same kernels interpreted, any "
            f"platform, slow)")


def default_path(platform: str) -> str:
    """The path a platform takes when neither an argument nor $SYNTH_REF_JAX_PATH names one."""
    return _PLATFORM_PATH.get(platform, "reference")


def select_path(path: str | None = None, platform: str | None = None) -> str:
    """The path a call takes: ``path`` if given, else $SYNTH_REF_JAX_PATH, else by platform."""
    if path is not None:
        return check_path(path)
    env = os.environ.get(ENV)
    if env:
        if env not in PATHS:
            raise ValueError(f"{ENV}: expected one of {', '.join(PATHS)}; got {env!r}")
        return env
    return default_path(_platform(platform))


def _dtype_name(dtype):
    if dtype is None or isinstance(dtype, str):
        return dtype
    return np.dtype(dtype).name  # jax's bfloat16 is a NumPy dtype once jax (ml_dtypes) is loaded


def plan(spec, *, masked: bool = False, path: str | None = None, platform: str | None = None,
         dtype=None, length: int | None = None, causal: bool = False) -> str:
    """The implementation :func:`apply` runs for this spec, one of ``IMPLEMENTATIONS`` (``masked``: a
    key padding mask is given; ``dtype``: x's dtype, None for float32; ``platform``: as if on that
    platform, None for JAX's default).  ``length`` (the sequence length l) and ``causal`` matter only
    to aft_local and 1-D aft_conv on the Pallas paths: "pallas-aft-window" when their band of w' is
    narrow (``_aft_band.use_window``: at most WINDOW_MAX_FRACTION of l offsets), else "pallas-aft";
    without a length, "pallas-aft"."""
    path = select_path(path, platform)
    if path == "reference":
        return "reference"
    name = _dtype_name(dtype)
    if spec.variant == "aft_simple":  # XLA only (no kernel), so every dtype on every fused path
        return "xla-scan"
    kernel_dtype = not (path == "pallas" and name is not None and name not in _PALLAS_DTYPES)
    if spec.family == "softmax":
        comps = set(spec.components_used)
        if path == "xla":
            if not comps <= _SDPA_COMPONENTS:
                return "reference"
            if comps == {"random"} and not masked:
                return "xla-random"
            gpu = _platform(platform) in _GPU_PLATFORMS
            return "xla-sdpa" if gpu and name != "float64" else "reference"
        return "pallas-flash" if comps <= _FLASH_COMPONENTS and kernel_dtype else "reference"
    if spec.variant in _AFT_KERNEL_VARIANTS and (path == "xla" or not kernel_dtype):
        return "xla-aft"  # two GEMMs in plain XLA: any platform and dtype
    if spec.variant in _AFT_KERNEL_VARIANTS:
        if length is not None and _aft_band.use_window(spec, length, causal):
            return "pallas-aft-window"
        return "pallas-aft"
    return "reference"
