"""Which implementation a JAX call runs, and the fused paths themselves.

Paths (``PATHS``), chosen per call:

``"reference"``
    :func:`synth_ref.apply` itself (XLA compiles it; differentiated by JAX).  The CPU default.
``"xla"``
    Rewrites that XLA runs well, the GPU default: ``random`` without key padding computes
    softmax(R) once per head and one matmul with the batch folded into the value columns (any
    platform); on a GPU, softmax variants whose logits are a low-rank product plus biases go through
    :func:`jax.nn.dot_product_attention` (cuDNN's fused kernel for float16 / bfloat16 where cuDNN
    accepts the shapes, else its XLA form; float64 excluded: that form computes in float32).
    Everything else: the reference (which XLA compiles; on CPU the rewrite would be the same math).
``"pallas"``
    The Pallas kernels (:mod:`.jax_pallas_flash`, :mod:`.jax_pallas_aft`) compiled for the device;
    written for the TPU lowering.  The TPU default.
``"pallas_interpret"``
    The same kernels under Pallas's interpreter (``interpret=True``): any platform, slow; how CI
    checks the kernels without a TPU.

Default: ``select_path()`` -- the environment variable ``SYNTH_REF_JAX_PATH`` if set (one of
``PATHS``), else by platform (TPU: pallas, GPU: xla, CPU and others: reference).  Per call:
``apply(..., path=...)``.  :func:`plan` says which implementation a call would run (the visible
flag): ``"reference"``, ``"xla-sdpa"``, ``"xla-random"``, ``"pallas-flash"`` or ``"pallas-aft"``.
Sharding: the reference and XLA paths partition under jax.sharding like any jnp code (batch and
heads; tests/test_jax_sharding.py).  A pallas_call is opaque to XLA's sharding propagation, which
would gather its operands, so on the Pallas path wrap the layer in ``jax.shard_map`` over the batch
axis (parameters replicated, their gradients ``psum``-ed over the axis), as that test does.

Variants with no fused form (factorized_dense and mixtures containing it, aft_simple) run the
reference on every path; so do float16 and float64 on the compiled ``"pallas"`` path.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp

import synth_ref as sr
from synth_ref import _inputs

from .jax_pallas_flash import accumulator

PATHS = ("reference", "xla", "pallas", "pallas_interpret")
ENV = "SYNTH_REF_JAX_PATH"
_PLATFORM_PATH = {"tpu": "pallas", "gpu": "xla", "cuda": "xla", "rocm": "xla"}
# Logit components that flash_attention expresses as q k^T + biases (no (B, l, l) array).
_FLASH_COMPONENTS = {"dot_product", "dense", "random", "factorized_random"}
_AFT_KERNEL_VARIANTS = {"aft_full", "aft_local", "aft_conv"}
# Compiled Pallas kernels take the TPU's matmul dtypes; float16 and float64 run the reference there.
# (The interpreter runs every dtype, so conformance checks the kernels' logic in all four.)
_PALLAS_DTYPES = ("float32", "bfloat16")


def check_path(path) -> str:
    if path not in PATHS:
        raise ValueError(f"path: expected one of {', '.join(PATHS)}; got {path!r}")
    return path


def select_path(path: str | None = None, platform: str | None = None) -> str:
    """The path a call takes: ``path`` if given, else $SYNTH_REF_JAX_PATH, else by platform."""
    if path is not None:
        return check_path(path)
    env = os.environ.get(ENV)
    if env:
        if env not in PATHS:
            raise ValueError(f"{ENV}: expected one of {', '.join(PATHS)}; got {env!r}")
        return env
    platform = jax.default_backend() if platform is None else platform
    return _PLATFORM_PATH.get(platform, "reference")


def plan(spec: sr.Spec, *, masked: bool = False, path: str | None = None, platform: str | None = None,
         dtype=None) -> str:
    """The implementation :func:`apply` runs for this spec (``masked``: a key padding mask is given;
    causal or not, the same implementation runs; ``dtype``: x's dtype, None for float32)."""
    path = select_path(path, platform)
    if path == "reference":
        return "reference"
    if path == "pallas" and dtype is not None and jnp.dtype(dtype).name not in _PALLAS_DTYPES:
        return "reference"
    if spec.family == "softmax":
        if not set(spec.components_used) <= _FLASH_COMPONENTS:
            return "reference"
        if path == "xla":
            if spec.components_used == ("random",) and not masked:
                return "xla-random"
            platform = jax.default_backend() if platform is None else platform
            wide = dtype is not None and jnp.dtype(dtype) == jnp.float64
            return "xla-sdpa" if _PLATFORM_PATH.get(platform) == "xla" and not wide else "reference"
        return "pallas-flash"
    if spec.variant in _AFT_KERNEL_VARIANTS and path in ("pallas", "pallas_interpret"):
        return "pallas-aft"
    return "reference"


def apply(spec: sr.Spec, params: dict, x, *, causal: bool = False, key_padding_mask=None,
          path: str | None = None, block_q: int = 128, block_k: int = 128, platform: str | None = None):
    """:func:`synth_ref.apply` through the implementation :func:`plan` picks; same contract (inputs
    checked the same way, same output).  ``block_q`` / ``block_k``: Pallas tile sizes.
    ``platform``: plan as if on this platform (tests run the GPU rewrites' XLA form on CPU)."""
    impl = plan(spec, masked=key_padding_mask is not None, path=path, platform=platform,
                dtype=getattr(x, "dtype", None))
    if impl == "reference":
        return sr.apply(spec, params, x, causal=causal, key_padding_mask=key_padding_mask)
    if not isinstance(spec, sr.Spec):
        raise TypeError(f"spec: expected a synth_ref.Spec; got {type(spec).__name__}")
    xp = _inputs.namespace(x)
    batch, length = _inputs.check_x(spec, x, xp)
    causal = _inputs.check_causal(spec, causal)
    p = _inputs.convert_params(spec, params, x, xp)
    mask = _inputs.convert_mask(spec, key_padding_mask, x, xp, batch, length)
    interpret = select_path(path) == "pallas_interpret"
    if impl == "pallas-aft":
        from . import jax_pallas_aft

        return jax_pallas_aft.apply(spec, p, x, causal, mask, block_q=block_q, block_k=block_k,
                                    interpret=interpret)
    v = _heads(_linear(x, p["w_v"], p["b_v"]), spec.n_heads)
    if impl == "xla-random":
        o = _random_folded(p["r"], v, causal)
    else:
        q, k, key_bias, full_bias = logit_operands(spec, p, x)
        if impl == "xla-sdpa":
            o = _sdpa(q, k, v, key_bias, full_bias, mask, causal)
        else:
            from .jax_pallas_flash import flash_attention

            if mask is not None:  # padded keys: -inf in the key bias
                key_bias = key_bias + jnp.where(mask, 0.0, -jnp.inf).astype(key_bias.dtype)[:, None, None, :]
            o = flash_attention(v, key_bias, q=q, k=k, full_bias=full_bias, causal=causal,
                                block_q=block_q, block_k=block_k, interpret=interpret)
    return _linear(_merge(o), p["w_o"], p["b_o"])


# ---------------------------------------------------------------------------------------------
# logits as q k^T + key bias + full bias


def _linear(x, w, b):
    return jnp.matmul(x, w) + b


def _heads(t, h):
    """(B, l, h*e) -> (B, h, l, e), head i owning columns i*e ... (a transpose, not a reshape)."""
    B, l, d = t.shape
    return jnp.transpose(jnp.reshape(t, (B, l, h, d // h)), (0, 2, 1, 3))


def _merge(t):
    B, h, l, e = t.shape
    return jnp.reshape(jnp.transpose(t, (0, 2, 1, 3)), (B, l, h * e))


def logit_operands(spec, p, x):
    """(q, k, key_bias, full_bias) with S = q k^T + key_bias + full_bias equal to the spec's
    (mixed) logits: q (B or 1, h, l, w) and k likewise or both None; key_bias (1, h or 1, 1, l)
    in the accumulation dtype (float32, or float64 for float64 x); full_bias (h, l, l) or None.  Masks
    are not included.

    A mixture's weights scale each component's q (or bias), and the q / k pieces are concatenated
    along the feature axis: sum_c alpha_c q_c k_c^T = [alpha_c q_c]_c [k_c]_c^T."""
    B, l, _ = x.shape
    h, e = spec.n_heads, spec.head_dim
    mixture = spec.variant == "mixture"
    alpha = jax.nn.softmax(p["mix_logits"]) if mixture else None
    qs, ks = [], []
    acc = accumulator(x.dtype)
    key_bias = jnp.zeros((1, 1, 1, l), acc)
    full_bias = None
    for n, comp in enumerate(spec.components_used):
        pre = f"{comp}." if mixture else ""
        a = alpha[n] if mixture else None

        def scaled(t, a=a):
            return t if a is None else a * t

        if comp == "dot_product":
            qq = _heads(_linear(x, p[pre + "w_q"], p[pre + "b_q"]), h) / math.sqrt(e)
            qs.append(scaled(qq))
            ks.append(_heads(_linear(x, p[pre + "w_k"], p[pre + "b_k"]), h))
        elif comp == "dense":
            hid = jnp.einsum("bld,hde->bhle", x, p[pre + "w_1"]) + p[pre + "b_1"][None, :, None, :]
            hid = jax.nn.relu(hid)
            qs.append(scaled(hid))
            ks.append(jnp.transpose(p[pre + "w_2"][:, :, :l], (0, 2, 1))[None])  # static keys (1, h, l, e)
            key_bias = key_bias + scaled(p[pre + "b_2"][:, :l]).astype(acc)[None, :, None, :]
        elif comp == "factorized_random":
            qs.append(scaled(p[pre + "r_1"][:, :l, :])[None])
            ks.append(p[pre + "r_2"][:, :l, :][None])
        elif comp == "random":
            r = scaled(p[pre + "r"][:, :l, :l])
            full_bias = r if full_bias is None else full_bias + r
        else:
            raise AssertionError(comp)  # plan() routes every other component to the reference
    if not qs:
        return None, None, key_bias, full_bias
    lead = max(t.shape[0] for t in qs + ks)

    def cat(ts):
        if len(ts) == 1:
            return ts[0]
        return jnp.concatenate([jnp.broadcast_to(t, (lead,) + t.shape[1:]) for t in ts], axis=-1)

    return cat(qs), cat(ks), key_bias, full_bias


# ---------------------------------------------------------------------------------------------
# the XLA path


def _random_folded(r, v, causal):
    """softmax(R) once per head (shared by the batch), then one matmul with the batch in the value
    columns: (l x l) @ (l x B*e) per head instead of B softmaxes over (l x l)."""
    l = v.shape[2]
    s = r[:, :l, :l]
    if causal:
        s = jnp.where(jnp.tril(jnp.ones((l, l), bool)), s, -jnp.inf)  # the diagonal is always allowed
    prob = jax.nn.softmax(s.astype(accumulator(v.dtype)), axis=-1).astype(v.dtype)
    return jnp.einsum("hij,bhje->bhie", prob, v)


def _sdpa(q, k, v, key_bias, full_bias, mask, causal):
    """jax.nn.dot_product_attention on the (B, l, h, width) layout.  q / k / v are zero-padded to one
    width (zero columns add nothing to q k^T), bias carries b_2 and R, ``mask`` the padding.  Rows with
    no allowed key come out of dot_product_attention as a uniform average; the spec wants 0, so they
    are multiplied by 0 (which also zeroes their gradient)."""
    B, h, l, e = v.shape
    width = max(e, 0 if q is None else q.shape[-1])

    def layout(t):
        t = jnp.broadcast_to(t, (B,) + t.shape[1:])
        t = jnp.pad(t, ((0, 0), (0, 0), (0, 0), (0, width - t.shape[-1])))
        return jnp.transpose(t, (0, 2, 1, 3))

    if q is None:
        q = k = jnp.zeros((1, h, l, 0), v.dtype)
    bias = key_bias if full_bias is None else key_bias + full_bias[None].astype(key_bias.dtype)
    bias = jnp.broadcast_to(bias, (1, h, l, l)).astype(v.dtype)
    allow = None if mask is None else mask[:, None, None, :]
    args = (layout(q.astype(v.dtype)), layout(k.astype(v.dtype)), layout(v), bias, allow)
    cudnn = jax.default_backend() == "gpu" and v.dtype in (jnp.float16, jnp.bfloat16)
    impl = "cudnn" if cudnn else "xla"
    try:
        o = jax.nn.dot_product_attention(*args, scale=1.0, is_causal=causal, implementation=impl)
    except Exception:  # noqa: BLE001 - cuDNN refuses some shapes at trace time: use the XLA form
        o = jax.nn.dot_product_attention(*args, scale=1.0, is_causal=causal, implementation="xla")
    o = jnp.transpose(o[..., :e], (0, 2, 1, 3))
    if mask is not None:
        seen = jnp.cumsum(mask, axis=1) > 0 if causal else jnp.any(mask, axis=1, keepdims=True)
        o = o * jnp.broadcast_to(seen, (B, l))[:, None, :, None].astype(o.dtype)
    return o
