"""Which kernel covers a spec, and a layer's forward assembled around it.

The projections, the dense hidden layer and the mixture weights are ordinary torch operations
(autograd differentiates them); only the mixing step -- softmax(S) V, or AFT's weighted sums --
runs in a kernel.  The math mirrors ``synth_ref._softmax`` and ``synth_ref._aft`` line by line.
"""

from __future__ import annotations

import math

import torch

#: Softmax components the flash kernel covers: products, biases, and factorized_dense's gathered
#: products A[p] Bf[q] (every softmax component; random alone has its own kernel).
FLASH_COMPONENTS = ("dot_product", "dense", "factorized_random", "random", "factorized_dense")


def reference_form(spec, causal: bool) -> str | None:
    """Why the reference serves ``spec`` although a kernel could, or None.

    aft_simple without a causal mask: every query row is the same softmax over the keys, per
    channel, which the reference computes once per batch element, O(l d), and differentiates
    through its exact maximum.  The AFT kernel would do O(l^2 d) GEMM work, and its GEMM-form
    backward cancels on a channel one key dominates (dx 86x the conformance tolerance with K spread
    over 1e4, docs/conformance.md)."""
    if spec.variant == "aft_simple" and not causal:
        return "aft_simple without a causal mask: the reference's O(l d) form"
    return None


#: The widest block side of any kernel (``_common.block``).  The flash kernel holds a head's whole
#: q / k width and value width in one block each, so it covers widths up to this; wider heads would
#: lose their columns past it (a head width of 160 gave errors of 5.6 in the interpreter, 256 ones
#: of 1e25), so they take the reference (:func:`flash_too_wide`).
BLOCK_CAP = 128


def flash_widths(spec) -> tuple[int, int]:
    """(D, E): the width of the flash kernel's q and k -- the product components' widths side by
    side, as :func:`_flash_operands` concatenates them (dot_product and dense: the head width,
    factorized_random: k) -- and of v, the head width."""
    e = spec.head_dim
    width = {"dot_product": e, "dense": e, "factorized_random": spec.k or 0}
    return sum(width.get(c, 0) for c in spec.components_used), e


def flash_too_wide(spec) -> str | None:
    """Why the flash kernel cannot take ``spec``'s widths, or None."""
    D, E = flash_widths(spec)
    if max(D, E) > BLOCK_CAP:
        return (f"the flash kernel holds a head's whole width in one block, at most {BLOCK_CAP}; "
                f"got q / k width {D}, head width {E}")
    return None


def kernel_choice(spec, causal: bool) -> tuple[str | None, str]:
    """(the kernel that covers ``spec``, "") or (None, why none does)."""
    why = reference_form(spec, causal)
    if why:
        return None, why
    if spec.family == "softmax":
        if spec.variant == "random":
            return "random", ""
        if all(c in FLASH_COMPONENTS for c in spec.components_used):
            why = flash_too_wide(spec)
            return (None, why) if why else ("flash", "")
    elif not (spec.variant == "aft_conv" and spec.spatial_dims == 2):  # grids: the reference
        return "aft", ""
    return None, f"no fused kernel covers {spec.variant!r} with options {spec.options()}"


def _split_heads(t, h):
    B, l, d = t.shape
    return t.reshape(B, l, h, d // h).transpose(1, 2)


def _merge_heads(t):
    B, h, l, e = t.shape
    return t.transpose(1, 2).reshape(B, l, h * e)


def autocast_values(v):
    """v in CUDA autocast's dtype when autocast is on (the kernels cast their other operands to v's
    dtype): the bias additions around the projections promote back to float32, and a float32
    kernel would run its GEMMs without tensor cores.  CPU (the interpreter) keeps v's dtype."""
    if v.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        return v.to(torch.get_autocast_dtype("cuda"))
    return v


def forward(name, spec, p, x, causal, mask):
    """(y, the kernel that ran): ``name``, or for "aft" the one ``aft_layer`` picked."""
    if name == "aft":
        from ._aft import aft_layer

        return aft_layer(spec, p, x, causal, mask)
    h = spec.n_heads
    v = autocast_values(_split_heads(x @ p["w_v"] + p["b_v"], h))
    if name == "random":
        from ._random import random_mix

        o = random_mix(p["r"], v, causal, mask)
    else:
        from ._flash import flash_mix

        q, k, kb, fb, ga, gb = _flash_operands(spec, p, x)
        o = flash_mix(q, k, v, kb, fb, ga, gb, causal=causal, mask=mask, factors=spec.factors,
                      tiling=spec.tiling or "outer")
    return _merge_heads(o) @ p["w_o"] + p["b_o"], name


def _flash_operands(spec, p, x):
    """(q, k, kb, fb, ga, gb) such that scale-free q k^T + ga[p] gb[q] + kb + fb are the (mixed)
    logits; q, k are None when no component is a product, ga, gb when none is factorized_dense."""
    B, l, _ = x.shape
    h, e = spec.n_heads, spec.head_dim
    mixture = spec.variant == "mixture"
    alpha = torch.softmax(p["mix_logits"], 0) if mixture else None
    qs, ks, kb, fb, ga, gb = [], [], None, None, None, None
    for i, comp in enumerate(spec.components_used):
        pre = f"{comp}." if mixture else ""
        a = alpha[i] if mixture else None

        def weighted(t, a=a):
            return t if a is None else a * t

        if comp == "dot_product":
            qs.append(weighted(_split_heads(x @ p[pre + "w_q"] + p[pre + "b_q"], h) / math.sqrt(e)))
            ks.append(_split_heads(x @ p[pre + "w_k"] + p[pre + "b_k"], h))
        elif comp == "dense":
            hid = torch.relu(x[:, None] @ p[pre + "w_1"][None] + p[pre + "b_1"][None, :, None, :])
            qs.append(weighted(hid))
            # Learned static keys: column t' of w_2 is key t' for every batch element (stride 0).
            ks.append(p[pre + "w_2"][:, :, :l].transpose(1, 2)[None].expand(B, h, l, e))
            kb = weighted(p[pre + "b_2"][:, :l])
        elif comp == "factorized_dense":
            # A and Bf stay torch tensors (autograd carries dA, dBf back to w_1, w_a, ...); the
            # kernel reads A[t, p(t')] Bf[t, q(t')] tile by tile, never the (l, l) logits.
            hid = torch.relu(x[:, None] @ p[pre + "w_1"][None] + p[pre + "b_1"][None, :, None, :])
            ga = weighted(hid @ p[pre + "w_a"][None] + p[pre + "b_a"][None, :, None, :])
            gb = hid @ p[pre + "w_b"][None] + p[pre + "b_b"][None, :, None, :]
        elif comp == "factorized_random":
            qs.append(weighted(p[pre + "r_1"][:, :l])[None].expand(B, -1, -1, -1))
            ks.append(p[pre + "r_2"][:, :l][None].expand(B, -1, -1, -1))
        else:  # random, inside a mixture: a bias shared by the batch, read tile by tile
            fb = weighted(p[pre + "r"][:, :l, :l])
    q = k = None
    if qs:
        q = qs[0] if len(qs) == 1 else torch.cat(qs, -1)
        k = ks[0] if len(ks) == 1 else torch.cat(ks, -1)
    return q, k, kb, fb, ga, gb
