"""Which implementation a JAX call runs, and the fused paths themselves.

Paths (``PATHS``), chosen per call:

``"reference"``
    :func:`synth_ref.apply` itself (XLA compiles it; differentiated by JAX).
``"xla"``
    Rewrites that XLA runs well, the GPU and CPU default: ``random`` without key padding computes
    softmax(R) once per head and one matmul with the batch folded into the value columns (any
    platform); aft_full, aft_local and aft_conv are two GEMMs with a checked rank-one shift
    (:mod:`.jax_xla_aft`, any platform and dtype: O(l^2 d) multiply-adds instead of the reference's
    O(l^2 d) exponentials, with an exact fallback the check selects); on a GPU, softmax variants
    whose logits are a low-rank product plus biases go through :func:`jax.nn.dot_product_attention`
    (cuDNN's fused kernel for float16 / bfloat16 where cuDNN accepts the shapes), else through its
    XLA form written here with :func:`_softmax`, whose backward is the reference's (float64
    excluded: planned to the reference).  ``aft_simple`` is a prefix scan (below; any
    platform, on every fused path).  Everything else: the reference (which XLA compiles; on CPU the
    dot_product_attention rewrite would be the same math).
``"pallas"``
    The Pallas kernels (:mod:`.jax_pallas_flash`: every softmax variant and mixture;
    :mod:`.jax_pallas_aft`: aft_full, aft_local, aft_conv) compiled for the device; written for the
    TPU lowering.  The TPU default.  aft_simple takes the XLA scan here too.  On any other platform
    a call that would compile a kernel raises ValueError (``jax_plan.PALLAS_PLATFORMS``: JAX's GPU
    lowering does not take the kernels' TPU compiler parameters).
``"pallas_interpret"``
    The same kernels under Pallas's interpreter (``interpret=True``): any platform, slow; how CI
    checks the kernels without a TPU.

Default: ``select_path()`` -- the environment variable ``SYNTH_REF_JAX_PATH`` if set (one of
``PATHS``), else by platform (TPU: pallas, GPU and CPU: xla, others: reference).  Per call:
``apply(..., path=...)``.  :func:`plan` says which implementation a call would run (the visible
flag): ``"reference"``, ``"xla-sdpa"``, ``"xla-random"``, ``"xla-scan"``, ``"xla-aft"``, ``"pallas-flash"`` or
``"pallas-aft"`` or ``"pallas-aft-window"`` (aft_local and 1-D aft_conv with a band of w' at most
half the length: :mod:`.jax_pallas_aft_window`, no (G, l, l) array) (the table per platform and
variant: docs/jax-paths.md, generated from it).
Sharding: the reference and XLA paths partition under jax.sharding like any jnp code (batch and
heads; tests/test_jax_sharding.py).  A pallas_call is opaque to XLA's sharding propagation, which
would gather its operands, so on the Pallas path wrap the layer in ``jax.shard_map`` over the batch
axis (parameters replicated, their gradients ``psum``-ed over the axis), as that test does.

Every variant has a fused form: factorized_dense (alone or in a mixture) on the Pallas paths (its
logits built tile by tile in the flash kernel; on the XLA path it runs the reference, as its
Hadamard product of gathers is no q k^T for dot_product_attention) and aft_simple as an XLA scan
on every fused path.  float16 and float64 run the reference on the compiled ``"pallas"`` path,
except the AFT variants, whose scan or GEMMs are plain XLA.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import synth_ref as sr
from synth_ref import _common, _inputs
from synth_ref import _softmax as _spec_softmax

from .jax_pallas_flash import accumulator
from .jax_plan import (  # noqa: F401 - re-exported: the dispatch's public names
    ENV,
    IMPLEMENTATIONS,
    PALLAS_PLATFORMS,
    PATHS,
    check_pallas_platform,
    check_path,
    default_path,
    plan,
    select_path,
)


def apply(spec: sr.Spec, params: dict, x, *, causal: bool = False, key_padding_mask=None,
          path: str | None = None, block_q: int = 128, block_k: int = 128, platform: str | None = None):
    """:func:`synth_ref.apply` through the implementation :func:`plan` picks; same contract (inputs
    checked the same way, same output).  ``block_q`` / ``block_k``: Pallas tile sizes.
    ``platform``: plan as if on this platform (tests run the GPU rewrites' XLA form on CPU)."""
    impl = plan_call(spec, x, causal, key_padding_mask, path=path, platform=platform)
    if impl == "reference":
        return sr.apply(spec, params, x, causal=causal, key_padding_mask=key_padding_mask)
    _, p, causal, mask = _inputs.prepare(spec, params, x, causal, key_padding_mask)
    if impl == "xla-scan":
        return _aft_simple(p, x, causal, mask)
    interpret = select_path(path) == "pallas_interpret"
    if impl.startswith("pallas-") and not interpret:
        check_pallas_platform(platform)
    if impl in ("pallas-aft", "pallas-aft-window", "xla-aft"):
        from . import jax_pallas_aft

        return jax_pallas_aft.apply(spec, p, x, causal, mask, impl=impl, block_q=block_q,
                                    block_k=block_k, interpret=interpret)
    v = _heads(_linear(x, p["w_v"], p["b_v"]), spec.n_heads)
    if impl == "xla-random":
        o = _random_folded(p["r"], v, causal)
    else:
        q, k, key_bias, full_bias = logit_operands(spec, p, x)
        if impl == "xla-sdpa":
            o = _sdpa(q, k, v, key_bias, full_bias, mask, causal)
        else:
            from .jax_pallas_flash import flash_attention

            if key_bias is None:  # the kernel's row vector over keys is always there
                key_bias = jnp.zeros((1, 1, 1, x.shape[1]), accumulator(x.dtype))
            if mask is not None:  # padded keys: -inf in the key bias
                key_bias = key_bias + jnp.where(mask, 0.0, -jnp.inf).astype(key_bias.dtype)[:, None, None, :]
            o = flash_attention(v, key_bias, q=q, k=k, full_bias=full_bias,
                                factorized=factorized_operands(spec, p, x), causal=causal,
                                block_q=block_q, block_k=block_k, interpret=interpret)
    return _linear(_merge(o), p["w_o"], p["b_o"])


def plan_call(spec: sr.Spec, x, causal=False, key_padding_mask=None, *, path=None, platform=None) -> str:
    """:func:`plan` for the arguments of an :func:`apply` call: the implementation that call runs.

    Only a JAX array (or tracer) x goes through the fused implementations: any other x (NumPy,
    torch, a list) runs the reference, which returns x's namespace and dtype (a fused path would
    return a JAX array, in float32 for float64 NumPy x without x64) or rejects x by name.  A
    ``causal`` that is not a Python or NumPy bool (a tracer) is planned as False and then rejected
    by the checks every path makes (``causal: expected True or False``), never converted here."""
    path = select_path(path, platform)  # a bad path is reported even for NumPy x
    if not isinstance(x, jax.Array):
        return "reference"
    shape = x.shape
    flag = bool(causal) if isinstance(causal, (bool, np.bool_)) else False
    return plan(spec, masked=key_padding_mask is not None, path=path, platform=platform,
                dtype=x.dtype, length=shape[1] if len(shape) == 3 else None, causal=flag)


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
    (mixed) logits: q (B or 1, h, l, w) and k likewise or both None; key_bias (1, h, 1, l) in the
    accumulation dtype (float32, or float64 for float64 x), or None where no component has one (only
    dense's b_2 does: cuDNN then gets no (l x l) bias); full_bias (h, l, l) or None.  Masks are not
    included, nor is a factorized_dense component (:func:`factorized_operands`).

    A mixture's weights scale each component's q (or bias), and the q / k pieces are concatenated
    along the feature axis: sum_c alpha_c q_c k_c^T = [alpha_c q_c]_c [k_c]_c^T."""
    B, l, _ = x.shape
    h, e = spec.n_heads, spec.head_dim
    mixture = spec.variant == "mixture"
    alpha = jax.nn.softmax(p["mix_logits"]) if mixture else None
    qs, ks = [], []
    acc = accumulator(x.dtype)
    key_bias = full_bias = None
    for n, comp in enumerate(spec.components_used):
        pre = f"{comp}." if mixture else ""
        a = alpha[n] if mixture else None

        def scaled(t, a=a):
            return t if a is None else a * t

        if comp == "factorized_dense":
            continue  # the flash kernel's factorized term, not q k^T
        if comp == "dot_product":
            qq = _heads(_linear(x, p[pre + "w_q"], p[pre + "b_q"]), h) / math.sqrt(e)
            qs.append(scaled(qq))
            ks.append(_heads(_linear(x, p[pre + "w_k"], p[pre + "b_k"]), h))
        elif comp == "dense":
            hid = _dense_hidden(x, p, pre)
            qs.append(scaled(hid))
            ks.append(jnp.transpose(p[pre + "w_2"][:, :, :l], (0, 2, 1))[None])  # static keys (1, h, l, e)
            b2 = scaled(p[pre + "b_2"][:, :l]).astype(acc)[None, :, None, :]
            key_bias = b2 if key_bias is None else key_bias + b2
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


def _dense_hidden(x, p, pre):
    """H = relu(x w_1 + b_1) per head: (B, h, l, e)."""
    return jax.nn.relu(jnp.einsum("bld,hde->bhle", x, p[pre + "w_1"]) + p[pre + "b_1"][None, :, None, :])


def factorized_operands(spec, p, x):
    """The flash kernel's factorized term for a factorized_dense component (alone or in a mixture),
    or None: (fa, fb, pa, pb) with fa = alpha (H w_a + b_a), fb = H w_b + b_b (B, h, l, a or b,
    zero-padded to the one-hots' widths), alpha the component's mixture weight (1 alone), and the
    one-hots of :func:`.jax_pallas_flash.factor_one_hots`.  Only the per-row factors are arrays
    here; S[t, m] = A[t, p(m)] * Bf[t, q(m)] is formed inside the kernel, tile by tile."""
    from .jax_pallas_flash import factor_one_hots

    comps = spec.components_used
    if "factorized_dense" not in comps:
        return None
    mixture = spec.variant == "mixture"
    pre = "factorized_dense." if mixture else ""
    l = x.shape[1]
    pa, pb = factor_one_hots(l, spec.factors, spec.tiling, x.dtype)
    hid = _dense_hidden(x, p, pre)

    def factor(w, b, width):
        f = jnp.einsum("bhle,hea->bhla", hid, p[pre + w]) + p[pre + b][None, :, None, :]
        return jnp.pad(f, ((0, 0), (0, 0), (0, 0), (0, width - f.shape[-1])))

    fa = factor("w_a", "b_a", pa.shape[1])
    if mixture:
        fa = jax.nn.softmax(p["mix_logits"])[comps.index("factorized_dense")] * fa
    return fa, factor("w_b", "b_b", pb.shape[1]), pa, pb


# ---------------------------------------------------------------------------------------------
# the XLA path


def _aft_simple(p, x, causal, mask):
    """The aft_simple layer: projections, :func:`aft_simple_mix`, the sigmoid gate, the output."""
    q = _linear(x, p["w_q"], p["b_q"])
    mixed = aft_simple_mix(_linear(x, p["w_k"], p["b_k"]), _linear(x, p["w_v"], p["b_v"]), mask,
                           causal=causal)
    return _linear(jax.nn.sigmoid(q) * mixed, p["w_o"], p["b_o"])


def aft_simple_mix(k, v, key_padding_mask=None, *, causal=False):
    """aft_simple's weighted average Y (B, l, d) from K, V (B, l, d), in O(l d): with no position
    bias Y[t, c] = sum_t' softmax_t'(K[:, c]) V[t', c] over allowed t'; key_padding_mask (B, l) or
    None; rows with no allowed key give 0.  Computed in float32 (float64 for float64 inputs).

    Non-causal: one max / exp / two sums per (batch, channel), shared by every row.  Causal: a prefix
    scan over t of (max, num, den) triples, combined with the exact running max (num and den
    rescaled by exp(old max - new max) <= 1), so each row is stabilized by the max over exactly its
    own allowed keys: any finite K gives a finite output, no 0/0 however K is spread.

    Why an XLA scan and not a Pallas kernel: the work is elementwise and memory-bound (no matmul for
    the MXU / tensor cores to take), and ``lax.associative_scan`` does it in O(l d) work and
    O(log l) parallel steps, each level an XLA fusion over the whole (B, l, d) array, on any
    platform (GPU and CPU included, where no Pallas kernel is compiled).  A Pallas kernel would walk
    the key blocks sequentially and still need an in-block cumulative max (the same log-step
    shuffles), to save at most a few passes over an O(l d) array.  Gradients: JAX differentiates the
    scan.  The shift (the max, or the scan's running max) is *not* stop_gradient-ed: as in the
    reference's autodiff, the dominant key's gradient then arrives through the max as minus the
    other keys' (small, relatively exact) terms, instead of as dO (V - Y) / den, a difference of two
    nearly equal numbers on a saturated row (K spread over +-1e4: float32 dx 36x the reference's
    error with the shift stopped, tests/test_jax_pallas.py).  Masked keys enter as exact zeros
    (never exp(-inf - -inf))."""
    dtype = v.dtype
    acc = accumulator(dtype)
    k, v = k.astype(acc), v.astype(acc)
    ok = None if key_padding_mask is None else key_padding_mask[:, :, None]
    if causal:
        kz = k if ok is None else jnp.where(ok, k, 0.0)
        e = jnp.exp(kz - kz)  # 1; K enters through the running max m (see above)
        m = kz
        if ok is not None:
            e = jnp.where(ok, e, 0.0)
            m = jnp.where(ok, kz, -jnp.inf)
        _, num, den = jax.lax.associative_scan(_scan_combine, (m, e * v, e), axis=1)
    else:
        kz = k if ok is None else jnp.where(ok, k, -jnp.inf)
        top = _common.row_max(jnp, kz, 1)  # its gradient reaches one key, never 0/0 (row_max)
        e = jnp.exp(kz - jnp.where(top == -jnp.inf, 0.0, top))  # masked: exp(-inf) = 0
        num, den = jnp.sum(e * v, axis=1, keepdims=True), jnp.sum(e, axis=1, keepdims=True)
    some = den > 0  # rows with no allowed key give 0
    mixed = jnp.where(some, num / jnp.where(some, den, 1.0), 0.0)
    return jnp.broadcast_to(mixed, k.shape).astype(dtype)


def _scan_combine(a, b):
    """(max, num, den) of two runs of keys: rescale both to the larger max (a max of -inf: no keys)."""
    m1, n1, d1 = a
    m2, n2, d2 = b
    # not jnp.maximum: its derivative tests m1 == max(m1, m2), which a recomputed, differently
    # rounded m1 fails (jax-ml/jax#40564), dropping the gradient; where sends it to one side whole
    m = jnp.where(m1 >= m2, m1, m2)
    s = jnp.where(m == -jnp.inf, 0.0, m)
    c1, c2 = jnp.exp(m1 - s), jnp.exp(m2 - s)
    return m, n1 * c1 + n2 * c2, d1 * c1 + d2 * c2


def _random_folded(r, v, causal):
    """softmax(R) once per head (shared by the batch), then one matmul with the batch in the value
    columns: (l x l) @ (l x B*e) per head instead of B softmaxes over (l x l)."""
    l = v.shape[2]
    s = r[:, :l, :l]
    if causal:
        s = jnp.where(jnp.tril(jnp.ones((l, l), bool)), s, -jnp.inf)  # the diagonal is always allowed
    prob = _softmax(s.astype(accumulator(v.dtype))).astype(v.dtype)
    return jnp.einsum("hij,bhje->bhie", prob, v)


@jax.custom_vjp
def _softmax(s):
    """The row softmax over the last axis of logits with -inf at excluded keys; 0 on a row with none.
    Not jax.nn.softmax: its backward is flash attention's form, P (dP - sum P dP) at every key, which
    at a row's dominant key keeps a rounding of dP that large logit weights multiply (float32
    gradients of dense at logits over 1e4: up to 30x the suite's tolerance); this one's is
    :func:`synth_ref._softmax.weights_vjp` (docs/backward.md, step 5)."""
    return _softmax_fwd(s)[0]


def _softmax_fwd(s):
    m = _common.masked_max(jnp, s, s > -jnp.inf, axis=-1)  # 0 on a row with no allowed key
    e = jnp.exp(s - m)  # excluded keys: exp(-inf) = 0
    p = _common.safe_divide(jnp, e, jnp.sum(e, axis=-1, keepdims=True))
    return p, p


def _softmax_bwd(p, dp):
    return (_spec_softmax.weights_vjp(jnp, p, dp),)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


def _xla_attention(q, k, v, bias, allow, causal):
    """dot_product_attention's XLA form on the (B, l, h, width) layout, with :func:`_softmax` (in
    float32 for half-precision inputs, as dot_product_attention's own form computes it)."""
    acc = accumulator(v.dtype)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=acc)
    if bias is not None:
        s = s + bias.astype(acc)
    l = s.shape[-1]
    ok = jnp.ones((1, 1, l, l), bool) if not causal else jnp.tril(jnp.ones((l, l), bool))[None, None]
    if allow is not None:
        ok = ok & allow
    prob = _softmax(jnp.where(ok, s, -jnp.inf)).astype(v.dtype)
    return jnp.einsum("bhqk,bkhe->bqhe", prob, v)


def _sdpa(q, k, v, key_bias, full_bias, mask, causal):
    """jax.nn.dot_product_attention on the (B, l, h, width) layout: cuDNN's fused kernel for float16
    / bfloat16 on a GPU (the first operand form of :func:`_cudnn_operands` it accepts), else the XLA
    form (:func:`_xla_attention`).  Rows with no allowed key come out of a softmax over masked
    logits as a uniform average; the spec wants 0, so they are multiplied by 0 (which also zeroes
    their gradient).  jax's cuDNN wrapper trains even lengths only, so an odd length gets one more
    position for cuDNN (:func:`_one_more_position`)."""
    B, h, l, e = v.shape
    if q is None:
        q = k = jnp.zeros((1, h, l, 0), v.dtype)
    o = None
    if jax.default_backend() == "gpu" and v.dtype in (jnp.float16, jnp.bfloat16):
        operands = (q, k, v, key_bias, full_bias, mask)
        for args in _cudnn_operands(*(_one_more_position(*operands) if l % 2 else operands)):
            try:
                o = jax.nn.dot_product_attention(*args, scale=1.0, is_causal=causal, implementation="cudnn")
                o = o[:, :l]  # (B, l, h, width): the added query row goes
                break
            except Exception:  # noqa: BLE001 - cuDNN refuses some shapes at trace time: the next form
                o = None
    if o is None:
        o = _xla_attention(*_biased_operands(q, k, v, key_bias, full_bias, mask), causal)
    o = jnp.transpose(o[..., :e], (0, 2, 1, 3))
    if mask is not None:
        o = o * rows_with_keys(mask, causal)[:, None, :, None].astype(o.dtype)
    return o


def _one_more_position(q, k, v, key_bias, full_bias, mask):
    """The operands of :func:`_sdpa` with one more position at the end: a key no row sees (the
    padding mask gains a False there, so its logit gets the masked offset) and a query row whose
    output is dropped.  The first l rows' attention is unchanged; their gradients too."""
    B, l = v.shape[0], v.shape[2]

    def pad(t, axes):
        return jnp.pad(t, [(0, int(a in axes)) for a in range(t.ndim)])

    allowed = jnp.ones((B, l), bool) if mask is None else mask
    return (pad(q, (2,)), pad(k, (2,)), pad(v, (2,)), None if key_bias is None else pad(key_bias, (3,)),
            None if full_bias is None else pad(full_bias, (1, 2)), pad(allowed, (1,)))


#: A finite logit offset that removes a key from cuDNN's softmax (its exp underflows to 0 in the
#: float32 accumulation), the values jax's own mask-to-bias conversion uses for these dtypes.
_MASKED_LOGIT = {"bfloat16": -(2.0 ** 41), "float16": -(2.0 ** 15)}


def _layout(t, B, width):
    """(B or 1, h, l, w) -> (B, l, h, width), zero-padded: zero columns add nothing to q k^T."""
    t = jnp.broadcast_to(t, (B,) + t.shape[1:])
    t = jnp.pad(t, ((0, 0), (0, 0), (0, 0), (0, width - t.shape[-1])))
    return jnp.transpose(t, (0, 2, 1, 3))


def _biased_operands(q, k, v, key_bias, full_bias, mask):
    """(q, k, v, bias, mask) for dot_product_attention with the key bias (dense's b_2), R and the
    padding as (l x l) arrays: bias (1, h, l, l) or None, mask (B, 1, 1, l) or None.  What the XLA
    form takes, and cuDNN's fallback form (cuDNN adds the mask into the bias: (B, h, l, l))."""
    B, h, l, e = v.shape
    width = max(e, q.shape[-1])
    bias = None if full_bias is None else full_bias[None]
    if key_bias is not None:
        bias = key_bias if bias is None else key_bias + bias.astype(key_bias.dtype)
    if bias is not None:
        bias = jnp.broadcast_to(bias.astype(v.dtype), (1, h, l, l))  # cast first: no float32 (l x l)
    allow = None if mask is None else mask[:, None, None, :]
    return (_layout(q.astype(v.dtype), B, width), _layout(k.astype(v.dtype), B, width),
            _layout(v, B, width), bias, allow)


def _cudnn_operands(q, k, v, key_bias, full_bias, mask):
    """The operand forms to offer cuDNN, best first, each built when asked for.  cuDNN takes biases
    and masks only as one (l x l) array per call, read for every batch element and head.  So first
    the key terms (dense's b_2, and the padding as a large negative logit) go in as one more column
    of k against a column of ones in q: q' k'^T = q k^T + key terms, with no (l x l) array but R's
    (the width rounded up to cuDNN's multiple of 8, v padded alike); then, should cuDNN refuse that
    width (over its head-dim limit), :func:`_biased_operands`."""
    B, h, l, e = v.shape
    key = key_bias
    if mask is not None:
        masked = jnp.where(mask, 0.0, _MASKED_LOGIT[jnp.dtype(v.dtype).name])[:, None, None, :]
        key = masked if key is None else key + masked
    q2, k2 = q.astype(v.dtype), k.astype(v.dtype)
    if key is not None:  # (B or 1, h or 1, 1, l) -> one more column: k' (B or 1, h, l, w + 1)
        lead = max(k2.shape[0], key.shape[0])
        column = jnp.broadcast_to(jnp.swapaxes(key, -1, -2).astype(v.dtype), (lead, h, l, 1))
        k2 = jnp.concatenate([jnp.broadcast_to(k2, (lead,) + k2.shape[1:]), column], axis=-1)
        q2 = jnp.concatenate([q2, jnp.ones(q2.shape[:-1] + (1,), v.dtype)], axis=-1)
    width = -(-max(e, q2.shape[-1]) // 8) * 8
    bias = None if full_bias is None else jnp.broadcast_to(full_bias[None].astype(v.dtype), (1, h, l, l))
    yield _layout(q2, B, width), _layout(k2, B, width), _layout(v, B, width), bias, None
    # built only if cuDNN refused the first form
    biased = list(_biased_operands(q, k, v, key_bias, full_bias, mask))
    if biased[3] is None and biased[4] is not None:  # cuDNN's bias, hence a lone mask, spans both lengths
        biased[4] = jnp.broadcast_to(biased[4], (B, 1, l, l))
    yield tuple(biased)


def rows_with_keys(key_padding_mask, causal):
    """Which query rows have at least one allowed key, (B, l) booleans from the padding mask (B, l):
    under a causal mask a row sees a key once one at or before it is allowed."""
    kp = key_padding_mask
    if causal:
        return jnp.cumsum(kp, axis=1) > 0
    return jnp.broadcast_to(jnp.any(kp, axis=1, keepdims=True), kp.shape)
