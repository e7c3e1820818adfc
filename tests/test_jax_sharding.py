"""The layer under jax.sharding on 8 simulated CPU devices: batch and heads sharded.

XLA fixes the number of host devices when the backend starts, so the check runs in a subprocess
that sets XLA_FLAGS=--xla_force_host_platform_device_count=8 before importing jax (this file,
run as a script).  It checks, for several variants, forward output and every gradient, of the
reference under jit and of the jax adapter wherever its default CPU/GPU path is one of its XLA
rewrites (xla-random, xla-aft for aft_full/aft_local/aft_conv, xla-scan for aft_simple):

1. sharded == unsharded (same jitted function, inputs placed on a 2 x 4 ("batch", "heads") mesh
   versus on one device);
2. the compiled sharded program (``jitted.lower(...).compile().as_text()``) contains no all-gather,
   all-to-all or collective-permute that moves an (l x l) array or a shard of one.

What is grepped, precisely: every HLO instruction whose opcode is all-gather, all-to-all or
collective-permute (or their -start forms); its result shapes (``f32[2,40,40]`` and tuple members)
are read; the instruction is flagged if a result shape has two dimensions in {l, l/2, l/4, l/8}
(the sizes an (l x l) array, or a 2-, 4- or 8-way shard of one, has on this mesh) or a dimension
that is a multiple of l * l / 8 (the same, flattened).  Why this is sound: a collective's result
shape is the shape of the data it delivers, so moving (part of) an (l x l) array shows up as two
such dimensions unless XLA flattens it first, which the second rule catches.  The sizes are
chosen so that no other array of these layers has two such dimensions except factorized_dense's
(B, h, l, a) with a = 5 = l/8: a false alarm there would fail the test loudly, never hide a gather.
The Pallas path is checked under shard_map over the batch (pallas_call is opaque to XLA's
sharding propagation, so that is how its kernels scale out): same results as unsharded.
A control program that does gather an (l x l) array must be flagged, so the matcher is known to
read this XLA version's HLO syntax.  All-reduces are reported, not forbidden: the gradient of a
parameter shared by the batch (R, the position bias) is summed over the batch shards, which is
the one (l x l) collective data parallelism needs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

N_DEVICES = 8
D, H, L = 16, 4, 40  # d_model, heads, max_len = l; l and its shards (40, 20, 10, 5) name no other size
CASES = ("dot_product", "dense", "random", "factorized_random", "factorized_dense", "mixture",
         "aft_full", "aft_conv")
ADAPTER_ONLY = ("aft_local", "aft_simple")  # checked on the adapter's path (the reference's is aft_full's)
COLLECTIVES = ("all-gather", "all-to-all", "collective-permute")
_INSTR = re.compile(r"=\s*(?P<shapes>.*?)\s(?P<op>[a-z-]+)\(")
_SHAPE = re.compile(r"[a-z]+\d*\[(?P<dims>[\d,]*)\]")


def collectives(hlo: str):
    """(opcode, [result shapes]) for every collective instruction in HLO text."""
    out = []
    for line in hlo.splitlines():
        m = _INSTR.search(line)
        if not m:
            continue
        op = m["op"].removesuffix("-start").removesuffix("-done")
        if op in COLLECTIVES + ("all-reduce", "reduce-scatter") and not m["op"].endswith("-done"):
            shapes = [tuple(int(x) for x in s["dims"].split(",") if x) for s in _SHAPE.finditer(m["shapes"])]
            out.append((op, shapes))
    return out


def moves_lxl(shape, l=L) -> bool:
    lish = {l, l // 2, l // 4, l // 8}
    if sum(dim in lish for dim in shape) >= 2:
        return True
    return any(dim >= l * l // 8 and dim % (l * l // 8) == 0 for dim in shape)


def bad_collectives(hlo: str):
    return [(op, shapes) for op, shapes in collectives(hlo)
            if op in COLLECTIVES and any(moves_lxl(s) for s in shapes)]


# ---------------------------------------------------------------------------------------------
# the subprocess


def _specs():
    import synth_ref as sr

    return {
        "dot_product": sr.Spec("dot_product", d_model=D, n_heads=H, max_len=L),
        "dense": sr.Spec("dense", d_model=D, n_heads=H, max_len=L),
        "random": sr.Spec("random", d_model=D, n_heads=H, max_len=L),
        "factorized_random": sr.Spec("factorized_random", d_model=D, n_heads=H, max_len=L, k=3),
        "factorized_dense": sr.Spec("factorized_dense", d_model=D, n_heads=H, max_len=L, factors=(5, 8)),
        "mixture": sr.Spec("mixture", d_model=D, n_heads=H, max_len=L, k=3,
                           components=("dot_product", "dense", "random", "factorized_random")),
        "aft_full": sr.Spec("aft_full", d_model=D, max_len=L),
        "aft_conv": sr.Spec("aft_conv", d_model=D, n_heads=H, max_len=L, kernel_size=5),
        "aft_local": sr.Spec("aft_local", d_model=D, max_len=L, window=6),
        "aft_simple": sr.Spec("aft_simple", d_model=D, max_len=L),
    }


def param_partition(name: str, ndim: int):
    """PartitionSpec of a parameter: head-indexed arrays split over "heads", projections by their
    head-owned columns (w_q, w_k, w_v, their biases) or rows (w_o); the rest replicated.  AFT-full
    has no heads, but its channels are independent, so the same column split shards its channels."""
    from jax.sharding import PartitionSpec as P

    base = name.rsplit(".", 1)[-1]
    if base in ("w_q", "w_k", "w_v"):
        return P(None, "heads")
    if base in ("b_q", "b_k", "b_v", "w_o"):
        return P("heads", *([None] * (ndim - 1)))
    if base in ("w_1", "b_1", "w_2", "b_2", "r", "r_1", "r_2", "w_a", "b_a", "w_b", "b_b",
                "conv_w", "conv_gamma", "conv_beta"):
        return P("heads", *([None] * (ndim - 1)))
    return P()  # b_o, mix_logits, pos_bias, pos_u, pos_v: replicated


def _child():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import synth_ref as sr

    assert jax.device_count() == N_DEVICES, jax.devices()
    # Auto axes: XLA's sharding propagation places the intermediates (the reference has no sharding
    # annotations of its own); Explicit axes would demand an out_sharding on every contraction.
    auto = jax.sharding.AxisType.Auto
    mesh = jax.make_mesh((2, 4), ("batch", "heads"), axis_types=(auto, auto))
    from synth_ref.backends import jax_pallas as jp

    rng = np.random.default_rng(0)
    report = {}
    # The reference under jit, and the jax adapter on this platform's default path wherever that is
    # one of its XLA rewrites (xla-aft, xla-scan, xla-random: the code a CPU or GPU user runs).
    # xla-random takes no key padding, so random's adapter case runs unpadded.
    runs = [(n, "reference", sr.apply, True) for n in CASES]
    probe = jnp.zeros((4, L, D), jnp.float32), jnp.ones((4, L), bool)
    for n in CASES + ADAPTER_ONLY:
        padded = jp.plan_call(_specs()[n], probe[0], True, probe[1]) != "reference"
        if padded or jp.plan_call(_specs()[n], probe[0], True, None) != "reference":
            runs.append((n, "adapter", jp.apply, padded))
    for name, impl, apply_fn, padded in runs:
        spec = _specs()[name]
        # init leaves biases, pos_bias and AFT-conv's gain at 0 (a zero kernel, a zero position
        # term): draw those too, so that a sharding error in their terms changes the numbers.
        params = {k: jnp.asarray(v if np.any(v) else 0.3 * rng.standard_normal(v.shape), jnp.float32)
                  for k, v in spec.init(seed=1).items()}
        x = jnp.asarray(rng.standard_normal((4, L, D)), jnp.float32)
        mask = jnp.asarray(np.arange(L)[None, :] < np.array([L, L - 7, L, 3])[:, None]) if padded else None
        dy = jnp.asarray(rng.standard_normal((4, L, D)), jnp.float32)

        def run(p, xx, m, g, spec=spec, apply_fn=apply_fn):
            y, pull = jax.vjp(lambda a, b: apply_fn(spec, a, b, causal=True, key_padding_mask=m), p, xx)
            dp, dx = pull(g)
            return y, dx, dp

        f = jax.jit(run)
        plain = f(params, x, mask, dy)
        put = jax.device_put
        sp = {k: put(v, NamedSharding(mesh, param_partition(k, v.ndim))) for k, v in params.items()}
        sx = put(x, NamedSharding(mesh, P("batch", None, None)))
        sm = None if mask is None else put(mask, NamedSharding(mesh, P("batch", None)))
        sdy = put(dy, NamedSharding(mesh, P("batch", None, None)))
        # compiled once: the program that runs is the program whose HLO is read
        compiled = f.lower(sp, sx, sm, sdy).compile()
        sharded = compiled(sp, sx, sm, sdy)
        # y on its own scale; gradients on one common scale (the largest gradient entry), since some
        # are exactly 0 in exact arithmetic (d b_k: softmax is shift-invariant) and carry only noise
        diffs = {"y": float(jnp.max(jnp.abs(plain[0] - sharded[0])) / jnp.max(jnp.abs(plain[0])))}
        grads_a = {"x": plain[1], **plain[2]}
        grads_b = {"x": sharded[1], **sharded[2]}
        scale = max(float(jnp.max(jnp.abs(g))) for g in grads_a.values())
        diffs.update({k: float(jnp.max(jnp.abs(grads_a[k] - grads_b[k]))) / scale for k in grads_a})
        hlo = compiled.as_text()
        fwd = jax.jit(lambda p, xx, m, spec=spec, f=apply_fn: f(spec, p, xx, causal=True, key_padding_mask=m))
        fwd_hlo = fwd.lower(sp, sx, sm).compile().as_text()
        report[name if impl == "reference" else f"{name}@adapter"] = {
            "path": jp.plan_call(spec, x, True, mask) if impl == "adapter" else "reference",
            "padded": padded,
            "max_rel_diff": max(diffs.values()),
            "worst": max(diffs, key=diffs.get),
            "y_batch_axis": sharded[0].sharding.spec[0],
            "bad": bad_collectives(hlo) + bad_collectives(fwd_hlo),
            "collectives": sorted({f"{op}{list(s)}" for op, s in collectives(hlo)}),
            "fwd_lxl_any": [c for c in collectives(fwd_hlo) if any(moves_lxl(s) for s in c[1])],
        }

    # The Pallas path: pallas_call is opaque to XLA's sharding propagation (it would gather its
    # operands), so data parallelism goes through shard_map -- each batch shard runs the kernels on
    # its own rows, parameter gradients are summed over the shards.  Interpreted kernels here.
    spec = _specs()["dense"]
    params = {k: jnp.asarray(v, jnp.float32) for k, v in spec.init(seed=1).items()}

    def local(p, xx, m, g):
        y, pull = jax.vjp(lambda a, b: jp.apply(spec, a, b, causal=True, key_padding_mask=m,
                                                path="pallas_interpret", block_q=16, block_k=16), p, xx)
        dp, dx = pull(g)
        return y, dx, jax.lax.psum(dp, "batch")

    smap = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("batch"), P("batch"), P("batch")),
                                 out_specs=(P("batch"), P("batch"), P()), check_vma=False))
    got = smap(params, x, mask, dy)
    want = jax.jit(lambda p, xx, m, g: run(p, xx, m, g, spec=spec, apply_fn=sr.apply))(params, x, mask, dy)
    scale = max(float(jnp.max(jnp.abs(t))) for t in jax.tree.leaves(want))
    report["_pallas_data_parallel"] = {"max_rel_diff": max(
        float(jnp.max(jnp.abs(u - v))) / scale
        for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True))}

    # control: a program that gathers R (h, l, l) sharded over heads must be flagged
    r = put(jnp.ones((H, L, L)), NamedSharding(mesh, P("heads", None, None)))
    gather = jax.jit(lambda a: jax.lax.with_sharding_constraint(a * 2, NamedSharding(mesh, P())) + 1)
    report["_control"] = {"bad": bad_collectives(gather.lower(r).compile().as_text())}
    print("REPORT" + json.dumps(report))


def test_sharded_matches_unsharded_without_lxl_gathers():
    pytest.importorskip("jax", reason="the jax extra is not installed")
    # XLA:CPU's fast-compile flags (noxfile._FAST_COMPILE): they change how the partitioned program
    # is turned into machine code, not its collectives, which are what this checks -- the child's
    # report was the same with and without them (every path, verdict and collective; differences
    # <= 4e-7 either way), in 31 CPU-s instead of 117.
    flags = (f"--xla_force_host_platform_device_count={N_DEVICES} --xla_backend_optimization_level=0 "
             "--xla_cpu_use_fusion_emitters=false")
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [s for s in proc.stdout.splitlines() if s.startswith("REPORT")][-1]
    report = json.loads(line[len("REPORT"):])
    assert report.pop("_control")["bad"], "the matcher must flag a program that gathers an (l x l) array"
    assert report.pop("_pallas_data_parallel")["max_rel_diff"] <= 1e-5
    # the adapter's own rewrites are what is sharded, not the reference under another name
    fused = {n: r["path"] for n, r in report.items() if r["path"] != "reference"}
    want = {f"{n}@adapter" for n in ("random", "aft_full", "aft_conv", "aft_local", "aft_simple")}
    assert want <= set(fused), (sorted(fused), report)
    for name, r in report.items():
        # float32, different reduction order across shards: a few ulps of the largest entry
        assert r["max_rel_diff"] <= 1e-5, (name, r["max_rel_diff"])
        assert r["y_batch_axis"] == "batch", (name, "the output must stay batch-sharded", r["y_batch_axis"])
        assert not r["bad"], (name, r["bad"])
        assert not r["fwd_lxl_any"], (name, "the forward needs no (l x l) communication", r["fwd_lxl_any"])


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    _child()
