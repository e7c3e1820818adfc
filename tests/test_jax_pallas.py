"""The JAX dispatch and its fused paths: Pallas kernels (run by Pallas's interpreter on CPU, and lowered
for TPU to catch Mosaic lowering errors without one) and the XLA rewrites.

Kernel-level tests compare with plain float64 formulas (forward in NumPy, gradients by JAX autodiff
of the plain formula in float64); layer-level tests compare with the reference (float64 NumPy
forward, torch float64 autograd gradients).  Small blocks (8, 16) make several tiles out of short
inputs so the tile loops, the online merges and the causal diagonal all run; TPU-sized blocks are
checked by the lowering test.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the jax extra is not installed")
jnp = jax.numpy

from jax_helpers import CASES, GRAD_TOL, TOL, grad_errors, inputs, rel_err, torch_gold_vjp  # noqa: E402

import synth_ref as sr  # noqa: E402
from synth_ref.backends import jax_pallas as jp  # noqa: E402
from synth_ref.backends.jax_pallas_aft import aft_mix  # noqa: E402
from synth_ref.backends.jax_pallas_aft_window import aft_window_mix  # noqa: E402
from synth_ref.backends.jax_pallas_flash import factor_one_hots, flash_attention  # noqa: E402

INTERP = "pallas_interpret"


# ---------------------------------------------------------------------------------------------
# dispatch


def test_platform_decides_the_path(monkeypatch):
    monkeypatch.delenv(jp.ENV, raising=False)
    assert jp.select_path(platform="tpu") == "pallas"
    assert jp.select_path(platform="gpu") == "xla"
    assert jp.select_path(platform="cpu") == "xla"
    assert jp.select_path(platform="other") == "reference"
    assert jp.select_path() == "xla"  # this CPU test process
    monkeypatch.setenv(jp.ENV, INTERP)
    assert jp.select_path(platform="tpu") == INTERP  # the environment forces a path
    assert jp.select_path("xla") == "xla"  # an explicit argument wins
    monkeypatch.setenv(jp.ENV, "fast")
    with pytest.raises(ValueError, match=f"{jp.ENV}: expected one of .*; got 'fast'"):
        jp.select_path()
    with pytest.raises(ValueError, match="path: expected one of .*; got 'tpu'"):
        jp.select_path("tpu")


@pytest.mark.parametrize("case", ["dense", "factorized_dense-outer", "aft_full"])
def test_compiled_pallas_path_is_refused_off_tpu(case):
    """path="pallas" compiles kernels written for the TPU lowering: on this CPU, and planned as on a
    GPU, a call that would compile one is refused by name (JAX's own errors: "Only interpret mode is
    supported on CPU backend", and on a GPU a misleading "install jaxlib GPU"); the interpreter path
    and the kernel-free implementations still run."""
    spec = CASES[case]
    params = jax.tree.map(jnp.asarray, spec.init(seed=0))
    x = jnp.ones((1, 8, spec.d_model), jnp.float32)
    here = jax.default_backend()  # "cpu" in CI; the GPU run's tests-jax stage runs this too
    if here in jp.PALLAS_PLATFORMS:
        pytest.skip(f"on {here} the kernels compile")
    for platform in (None, "gpu"):
        where = here if platform is None else platform
        refused = f"path: 'pallas' compiles .* got path 'pallas' on platform '{where}'"
        with pytest.raises(ValueError, match=refused):
            jp.apply(spec, params, x, path="pallas", platform=platform)
    with pytest.raises(ValueError, match=f"'pallas' on platform '{here}'"):
        jax.jit(lambda xx: jp.apply(spec, params, xx, path="pallas"))(x)  # under jit too
    assert jp.apply(spec, params, x, path=INTERP).shape == x.shape
    # float16 is no TPU matmul dtype: the compiled path hands it to XLA or the reference, no kernel
    assert jp.apply(spec, jax.tree.map(lambda a: a.astype(jnp.float16), params), x.astype(jnp.float16),
                    path="pallas").dtype == jnp.float16
    jp.check_pallas_platform("tpu")  # where they lower: no error


@pytest.mark.parametrize("case, masked, pallas, xla", [
    ("dense", False, "pallas-flash", "xla-sdpa"),
    ("mixture-flash", True, "pallas-flash", "xla-sdpa"),
    ("random", False, "pallas-flash", "xla-random"),
    ("random", True, "pallas-flash", "xla-sdpa"),
    ("factorized_dense-outer", False, "pallas-flash", "reference"),
    ("mixture", False, "pallas-flash", "reference"),  # has a factorized_dense component
    ("aft_full", True, "pallas-aft", "xla-aft"),
    ("aft_conv-2d", False, "pallas-aft", "xla-aft"),
    ("aft_simple", True, "xla-scan", "xla-scan"),
])
def test_plan_names_the_implementation(case, masked, pallas, xla):
    spec = CASES[case]
    assert jp.plan(spec, masked=masked, path="pallas") == pallas
    assert jp.plan(spec, masked=masked, path=INTERP) == pallas
    assert jp.plan(spec, masked=masked, path="xla", platform="gpu") == xla
    assert jp.plan(spec, masked=masked, path="reference") == "reference"
    # on CPU the xla path keeps the random rewrite, the scan and AFT's GEMMs (dot_product_attention
    # would be the reference's math); float64 never takes dot_product_attention (its XLA form
    # computes in float32)
    cpu = xla if xla in ("xla-random", "xla-scan", "xla-aft") else "reference"
    assert jp.plan(spec, masked=masked, path="xla", platform="cpu") == cpu
    assert jp.plan(spec, masked=masked, path="xla", platform="gpu", dtype="float64") == cpu
    # compiled kernels take float32 / bfloat16 only; the scan and AFT's GEMMs are plain XLA, so any
    # dtype
    assert jp.plan(spec, masked=masked, path="pallas", dtype=jnp.float16) == (
        xla if xla in ("xla-scan", "xla-aft") else "reference")
    assert jp.plan(spec, masked=masked, path=INTERP, dtype="float64") == pallas


def test_adapter_says_which_implementation_ran():
    """The jax adapter's visible flag: ``last_path`` is plan's name for the call just made (here on
    CPU: the xla path's GEMMs for aft_full, the reference for dense; pallas_interpret: the kernel)."""
    from synth_ref.backends.jax import JaxAdapter

    for case, path, expect in [("aft_full", None, "xla-aft"), ("dense", None, "reference"),
                               ("dense", INTERP, "pallas-flash")]:
        spec = CASES[case]
        adapter = JaxAdapter(path=path)
        params, x, _ = inputs(spec, batch=1)
        p = {k: adapter.from_numpy(v, "float32") for k, v in params.items()}
        adapter.apply(spec, p, adapter.from_numpy(x, "float32"))
        assert adapter.last_path == expect, (case, path)


def test_bad_inputs_are_checked_on_fused_paths_too():
    spec = CASES["dense"]
    params, x, _ = inputs(spec)
    with pytest.raises(ValueError, match="x: expected last axis d_model=16"):
        jp.apply(spec, params, jnp.zeros((1, 4, 8)), path=INTERP)
    with pytest.raises(ValueError, match="key_padding_mask: expected shape"):
        jp.apply(spec, params, jnp.asarray(x, jnp.float32), key_padding_mask=jnp.ones((2, 3), bool),
                 path="xla")
    with pytest.raises(ValueError, match="block_q: expected a positive multiple of 8; got 12"):
        flash_attention(jnp.zeros((1, 1, 40, 4)), jnp.zeros((1, 1, 1, 40)), block_q=12)
    with pytest.raises(ValueError, match="block: expected a positive multiple of 8; got 4"):
        aft_mix(jnp.zeros((1, 40, 4)), jnp.zeros((1, 40, 4)), jnp.zeros((1, 40, 40)), block=4)


@pytest.mark.parametrize("case", ["dense", "aft_full", "aft_local"])
def test_bad_block_sizes_name_the_argument(case):
    """jp.apply's block_q / block_k are named as given on every kernel, AFT's included (its one square
    tile is their minimum, but the error names the argument that was wrong, not an internal 'block')."""
    spec = CASES[case]
    params, x, _ = inputs(spec, batch=1)
    p = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    xx = jnp.asarray(x, jnp.float32)
    for kw, name, got in [({"block_q": 12}, "block_q", 12), ({"block_k": 4}, "block_k", 4)]:
        with pytest.raises(ValueError, match=f"^{name}: expected a positive multiple of 8; got {got}$"):
            jp.apply(spec, p, xx, path=INTERP, **kw)



@pytest.mark.parametrize("case, path", [("aft_full", "xla"), ("random", "xla"), ("aft_simple", "xla"),
                                        ("dense", INTERP), ("aft_local", INTERP)])
def test_traced_causal_is_named_on_fused_paths(case, path):
    """causal must be a Python bool (it picks the program); a traced one is rejected with the
    reference's named error on every path, not by JAX's TracerBoolConversionError from the dispatch."""
    spec = CASES[case]
    params, x, _ = inputs(spec, batch=1)
    p = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    xx = jnp.asarray(x, jnp.float32)
    for where in (path, "reference"):
        run = jax.jit(lambda c, where=where: jp.apply(spec, p, xx, causal=c, path=where))
        with pytest.raises(TypeError, match="causal: expected True or False; got"):
            run(True)


@pytest.mark.parametrize("case", ["dense", "random", "aft_full", "aft_simple", "aft_local"])
@pytest.mark.parametrize("path", ["xla", INTERP])
def test_numpy_inputs_get_the_reference_contract(case, path):
    """jp.apply has sr.apply's contract on any path: NumPy x (and parameters) give a NumPy array of
    x's dtype, float64 here, not a JAX array computed in float32.  Only JAX arrays (or tracers) go
    through the fused implementations; anything else runs the reference, and plan_call says so."""
    spec = CASES[case]
    params, x, kpm = inputs(spec, batch=2, mask=True)
    gold = sr.apply(spec, params, x, causal=True, key_padding_mask=kpm)
    y = jp.apply(spec, params, x, causal=True, key_padding_mask=kpm, path=path)
    assert jp.plan_call(spec, x, True, kpm, path=path) == "reference"
    assert isinstance(y, np.ndarray) and y.dtype == np.float64
    np.testing.assert_array_equal(y, gold)
    # a JAX x still takes the fused implementation
    xj = jnp.asarray(x, jnp.float32)
    assert jp.plan_call(spec, xj, True, kpm, path=path) == jp.plan(
        spec, masked=True, path=path, dtype=xj.dtype, length=x.shape[1], causal=True)

# ---------------------------------------------------------------------------------------------
# the flash kernel against the plain formula


def _flash_gold(q, k, v, kb, rb, causal):
    """softmax(q k^T + kb + rb) v with -inf masks and empty rows 0; float64 jnp (differentiable)."""
    l = v.shape[2]
    s = jnp.zeros(v.shape[:2] + (l, l), v.dtype) + kb
    if q is not None:
        s = s + jnp.einsum("bhqw,bhkw->bhqk", q, k)
    if rb is not None:
        s = s + rb[None]
    if causal:
        s = jnp.where(jnp.tril(jnp.ones((l, l), bool)), s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(s - m)
    den = jnp.sum(e, axis=-1, keepdims=True)
    return jnp.einsum("bhqk,bhke->bhqe", e / jnp.where(den > 0, den, 1.0), v)


def _key_mask(B, l):
    """Batch 1 loses its tail, batch 2 (if any) every key: empty rows must give 0 and no NaN."""
    m = np.ones((B, l), bool)
    m[1, l // 2:] = False
    if B > 2:
        m[2] = False
    return m


FLASH_CONFIGS = {
    # name: (q batch, k batch, key bias heads, full bias, causal)
    "dot_product": (3, 3, 1, False, True),
    "static_keys": (3, 1, 2, False, False),  # dense: keys W2^T shared by the batch, bias b2 per head
    "full_bias": (0, 0, 1, True, True),  # random: no q k^T at all
    "shared_qk_and_bias": (1, 1, 2, True, True),  # factorized random + random in a mixture
}


@pytest.mark.parametrize("name", list(FLASH_CONFIGS))
def test_flash_kernel(name):
    bq_, bk_, hb, has_rb, causal = FLASH_CONFIGS[name]
    B, h, l, e, w = 3, 2, 20, 4, 6  # l = 20 -> padded to 24 = 3 tiles of 8
    rng = np.random.default_rng(0)
    q = None if not bq_ else rng.standard_normal((bq_, h, l, w))
    k = None if not bk_ else rng.standard_normal((bk_, h, l, w))
    v = rng.standard_normal((B, h, l, e))
    mask = _key_mask(B, l)
    kb = 0.5 * rng.standard_normal((1, hb, 1, l)) + np.where(mask, 0.0, -np.inf)[:, None, None, :]
    rb = rng.standard_normal((h, l, l)) if has_rb else None
    dy = rng.standard_normal((B, h, l, e))
    args = {"q": q, "k": k, "v": v, "rb": rb}
    diff = [n for n, a in args.items() if a is not None]

    def loss(fn, vals, dtype):
        def f(*xs):
            d = dict(zip(diff, xs, strict=True))
            o = fn(d.get("q"), d.get("k"), d["v"], jnp.asarray(kb), d.get("rb"))
            return jnp.sum(o * dy.astype(dtype)), o
        return jax.value_and_grad(f, argnums=tuple(range(len(diff))), has_aux=True)(*vals)

    with jax.enable_x64(True):
        (_, gold_o), gold_g = loss(lambda q, k, v, kb, rb: _flash_gold(q, k, v, kb, rb, causal),
                                   [jnp.asarray(args[n]) for n in diff], jnp.float64)
        gold_o, gold_g = np.asarray(gold_o), [np.asarray(g) for g in gold_g]

    def kernel(q, k, v, kb, rb):
        return flash_attention(v, kb, q=q, k=k, full_bias=rb, causal=causal, block_q=8, block_k=8,
                               interpret=True)

    (_, o), g = jax.jit(lambda *xs: loss(kernel, xs, jnp.float32))(
        *[jnp.asarray(args[n], jnp.float32) for n in diff])
    assert rel_err(o, gold_o) <= TOL["float32"]
    assert np.all(np.asarray(o)[2] == 0), "rows with no allowed key must be exactly 0"
    errs = grad_errors(g[0], dict(zip(diff[1:], g[1:], strict=True)),
                       gold_g[0], dict(zip(diff[1:], gold_g[1:], strict=True)))
    assert max(errs.values()) <= GRAD_TOL["float32"], errs


# ---------------------------------------------------------------------------------------------
# the AFT kernel against the plain formula


def _aft_gold(k, v, w, mask, causal):
    """Y[t, c] = sum_t' exp(w[g, t, t'] + K[t', c]) V / sum exp(...), allowed t' only; float64 jnp with
    the exact per-(t, c) max (the spec's definition), differentiable."""
    B, l, d = v.shape
    G = w.shape[0]
    kg = jnp.reshape(k, (B, l, G, d // G)).transpose(0, 2, 1, 3)  # (B, G, l, c)
    z = jnp.broadcast_to(w[None, :, :, :, None] + kg[:, :, None], (B, G, l, l, d // G))
    ok = jnp.broadcast_to(mask[:, None, None, :, None], z.shape)
    if causal:
        ok = ok & jnp.tril(jnp.ones((l, l), bool))[None, None, :, :, None]
    z = jnp.where(ok, z, -jnp.inf)
    m = jnp.max(z, axis=3, keepdims=True)
    e = jnp.exp(z - jnp.where(jnp.isfinite(m), m, 0.0))
    vg = jnp.reshape(v, (B, l, G, d // G)).transpose(0, 2, 1, 3)[:, :, None]  # (B, G, 1, l, c)
    den = jnp.sum(e, axis=3)
    y = jnp.sum(e * vg, axis=3) / jnp.where(den > 0, den, 1.0)  # (B, G, l, c)
    return jnp.reshape(y.transpose(0, 2, 1, 3), (B, l, d))


def _band_dense(wb, lo):
    """w' (G, l, l) from a band wb (G, l, NW): w'[g, t, t'] = wb[g, t, t' - t - lo] inside, 0 outside
    (jnp, differentiable: the gold's gradient for wb)."""
    G, l, nw = wb.shape
    t = np.arange(l)
    off = t[None, :] - t[:, None] - lo
    inside = (off >= 0) & (off < nw)
    return jnp.where(inside[None], wb[:, t[:, None], np.clip(off, 0, nw - 1)], 0.0)


def _check_aft(k, v, w, mask, causal, block, dy, tol=TOL["float32"], gtol=GRAD_TOL["float32"], lo=None,
               mix=None):
    """The kernel's output and gradients against the float64 formula; lo given: w is a band wb for
    the windowed kernels (aft_window_mix), else the dense (G, l, l) w' for aft_mix, or for ``mix``
    (k, v, w, mask, causal) if given (the XLA path's jax_xla_aft.mix)."""
    with jax.enable_x64(True):
        def gold_loss(kk, vv, ww):
            y = _aft_gold(kk, vv, ww if lo is None else _band_dense(ww, lo), jnp.asarray(mask), causal)
            return jnp.sum(y * dy), y
        (_, gold_y), gold_g = jax.value_and_grad(gold_loss, argnums=(0, 1, 2), has_aux=True)(
            jnp.asarray(k), jnp.asarray(v), jnp.asarray(w))
        gold_y, gold_g = np.asarray(gold_y), [np.asarray(g) for g in gold_g]

    @jax.jit
    def run(kk, vv, ww):
        def f(kk, vv, ww):
            if mix is not None:
                y = mix(kk, vv, ww, jnp.asarray(mask), causal=causal)
            elif lo is None:
                y = aft_mix(kk, vv, ww, jnp.asarray(mask), causal=causal, block=block, interpret=True)
            else:
                y = aft_window_mix(kk, vv, ww, lo, jnp.asarray(mask), causal=causal, block=block,
                                   interpret=True)
            return jnp.sum(y * dy.astype(np.float32)), y
        return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(kk, vv, ww)

    (_, y), g = run(*[jnp.asarray(a, jnp.float32) for a in (k, v, w)])
    assert rel_err(y, gold_y) <= tol
    errs = grad_errors(g[0], {"v": g[1], "w": g[2]}, gold_g[0], {"v": gold_g[1], "w": gold_g[2]})
    assert max(errs.values()) <= gtol, errs
    return np.asarray(y)


@pytest.mark.parametrize("G, block, causal", [(1, 8, True), (2, 16, True), (2, 16, False)])
def test_aft_kernel(G, block, causal):
    """l = 37 padded to 40 (block 8: 5 tiles) or 48 (block 16: 3 tiles, 2 exact sub-blocks per diagonal)."""
    B, l, d = 3, 37, 8
    rng = np.random.default_rng(1)
    k, v = rng.standard_normal((B, l, d)), rng.standard_normal((B, l, d))
    w = rng.standard_normal((G, l, l))
    mask = _key_mask(B, l)
    y = _check_aft(k, v, w, mask, causal, block, rng.standard_normal((B, l, d)))
    assert np.all(y[2] == 0), "rows with no allowed key must be exactly 0"


def test_aft_kernel_survives_a_spread_of_160_under_a_causal_mask():
    """Within every 16-row tile K rises from -80 to +80: each row's own and past keys are outweighed
    by the tile's future keys by up to e^160, so a stabilizer that took the tile's key max (future
    keys included) would underflow every visible term of the first tile's early rows to 0/0 in float32
    (checked: such a mutant fails here with an error of order 1).  The diagonal tiles' exact 8-row
    sub-blocks keep every row exact."""
    B, l, d = 2, 40, 8
    rng = np.random.default_rng(2)
    saw = -80 + 160 * (np.arange(l) % 16) / 15
    k = saw[None, :, None] + 0.5 * rng.standard_normal((B, l, d))
    v = rng.standard_normal((B, l, d))
    mask = np.ones((B, l), bool)
    dy = rng.standard_normal((B, l, d))
    # small w: the gap of the off-diagonal tiles is bounded by w's range, here < 1
    _check_aft(k, v, 0.1 * rng.standard_normal((1, l, l)), mask, True, 16, dy)


def test_aft_kernel_exact_when_w_and_k_both_spread():
    """w and K both spread over about +-100 with their maxima at different keys: the rank-one shift
    alpha[t] + beta[c] then overshoots the exact max by far more than float32's ~87, so those tiles
    must take the exact per-key path (a mutant that always trusts the rank-one shift fails here).
    Causal: off-diagonal tiles and the diagonal tiles' past keys both go through that decision."""
    B, l, d = 2, 24, 8
    rng = np.random.default_rng(4)
    k, v = 40 * rng.standard_normal((B, l, d)), rng.standard_normal((B, l, d))
    w = 40 * rng.standard_normal((1, l, l))
    mask = _key_mask(B, l)
    dy = rng.standard_normal((B, l, d))
    _check_aft(k, v, w, mask, True, 8, dy)


def test_rank_one_safety_check():
    """The gap bound says safe for ordinary inputs (they keep the two-matmul path) and unsafe where
    the gap is provably large; it is exact on a case worked by hand."""
    from synth_ref.backends.jax_pallas_aft import _rank_one, _rank_one_safe

    rng = np.random.default_rng(5)
    wz, kz = jnp.asarray(rng.standard_normal((8, 8))), jnp.asarray(rng.standard_normal((8, 16)))
    assert bool(_rank_one_safe(wz, kz, *_rank_one(wz, kz)[:2]))
    # w peaks at key 0 (+70), K at key 1 (+70): exact max 70, shift 140, gap 70 > 60
    wz = jnp.zeros((8, 8)).at[:, 0].set(70.0)
    kz = jnp.zeros((8, 16)).at[1, :].set(70.0)
    assert not bool(_rank_one_safe(wz, kz, *_rank_one(wz, kz)[:2]))
    # the same with 50s: gap 50 <= 60, safe
    wz, kz = wz * 50 / 70, kz * 50 / 70
    assert bool(_rank_one_safe(wz, kz, *_rank_one(wz, kz)[:2]))


@pytest.mark.parametrize("causal", [True, False])
def test_xla_aft_two_gemms_and_their_exact_fallback(causal, monkeypatch):
    """The XLA path's AFT (jax_xla_aft.mix): two GEMMs with a rank-one shift, proven safe per call
    by den >= l exp(-GAP), else the exact row-block form.  Ordinary inputs: the GEMMs, to the float64
    formula (rows with no allowed key exactly 0).  w and K spread over +-100 against each other: the
    check must send the call to the exact form -- with the check disabled (GAP huge) the same
    inputs come out wrong, which is what the check is for.  The exact form alone (GAP = -inf, so
    nothing is proven) matches the formula on ordinary inputs too, gradients included."""
    from synth_ref.backends import jax_xla_aft as xa

    B, l, d, G = 3, 13, 8, 2
    rng = np.random.default_rng(6)
    k, v = rng.standard_normal((B, l, d)), rng.standard_normal((B, l, d))
    w = rng.standard_normal((G, l, l))
    mask, dy = _key_mask(B, l), rng.standard_normal((B, l, d))
    y = _check_aft(k, v, w, mask, causal, None, dy, mix=xa.mix)
    assert np.all(y[2] == 0), "rows with no allowed key must be exactly 0"

    spread_k = k.copy()
    spread_k[:, :, :] -= 100.0
    spread_k[:, 0, :] += 200.0  # K peaks at key 0 ...
    spread_w = w.copy()
    spread_w[:, :, 0] -= 200.0  # ... where w is lowest: shift - exact max is about 200
    _check_aft(spread_k, v, spread_w, mask, causal, None, dy, mix=xa.mix)
    monkeypatch.setitem(xa.GAP, "float32", 1e9)  # the check disabled: the GEMMs always trusted
    with pytest.raises(AssertionError):
        _check_aft(spread_k, v, spread_w, mask, causal, None, dy, mix=xa.mix)
    monkeypatch.setitem(xa.GAP, "float32", -float("inf"))  # nothing proven: the exact form always
    monkeypatch.setattr(xa, "FALLBACK_BLOCK_ELEMENTS", B * l * d * 4)  # 4 rows a block: 4 blocks
    y = _check_aft(k, v, w, mask, causal, None, dy, mix=xa.mix)
    assert np.all(y[2] == 0)


def test_aft_kernel_bfloat16():
    B, l, d = 2, 20, 8
    rng = np.random.default_rng(3)
    k, v, w = rng.standard_normal((B, l, d)), rng.standard_normal((B, l, d)), rng.standard_normal((1, l, l))
    mask = np.ones((B, l), bool)
    gold = _aft_gold(*(jnp.asarray(a.astype(np.float32)) for a in (k, v, w)), jnp.asarray(mask), True)
    y = jax.jit(lambda a, b, c: aft_mix(a, b, c, causal=True, block=8, interpret=True))(
        *(jnp.asarray(a, jnp.bfloat16) for a in (k, v, w)))
    assert y.dtype == jnp.bfloat16 and rel_err(y, gold) <= TOL["bfloat16"]


# ---------------------------------------------------------------------------------------------
# the windowed AFT kernels (narrow band: band tiles exact, the rest through block summaries)


def test_aft_window_kernel_survives_a_spread_of_160():
    """Non-causal, band [-3, 4], l = 40 in 8-row tiles: both the prefix and the suffix summaries
    run, and K rises from -80 to +80 within every 16 positions (float32 inputs, so the gold sees the
    same K).  Summaries merged by anything but the running max (e.g. exp(K) summed unshifted, or a
    shared shift across tiles) overflow or underflow in float32; a total-minus-band subtraction
    cancels catastrophically.  w' spread 3 on the band: its zeros outside the band matter."""
    B, l, d, lo = 2, 40, 8, -3
    rng = np.random.default_rng(8)
    saw = -80 + 160 * (np.arange(l) % 16) / 15
    k = (saw[None, :, None] + 0.5 * rng.standard_normal((B, l, d))).astype(np.float32)
    v = rng.standard_normal((B, l, d)).astype(np.float32)
    wb = 3 * rng.standard_normal((1, l, 8)).astype(np.float32)
    mask = np.ones((B, l), bool)
    mask[1, -6:] = False
    _check_aft(k, v, wb, mask, False, 8, rng.standard_normal((B, l, d)), lo=lo)


_BAND_SPECS = [
    sr.Spec("aft_local", d_model=8, max_len=30, window=4),
    sr.Spec("aft_local", d_model=8, max_len=30, window=3, pos_rank=2),
    sr.Spec("aft_conv", d_model=8, n_heads=2, max_len=30, kernel_size=5),
    sr.Spec("aft_conv", d_model=8, n_heads=2, max_len=30, kernel_size=4),
]


@pytest.mark.parametrize("causal", [False, True])
def test_band_from_params_is_position_bias(causal):
    """The windowed path's band, built from the parameters without the (l, l) matrix (pos_bias
    gathered, pos_u . pos_v on the band only, conv taps per head; odd and even kernels), is the
    reference's position_bias: wb[g, t, t' - t - lo] = w'[g, t, t'] on the band, and w' is 0 off it
    (a length below the window and one above, so the band is cropped at both ends or not)."""
    from synth_ref import _aft
    from synth_ref.backends import jax_pallas_aft_window as win

    with jax.enable_x64(True):
        for spec in _BAND_SPECS:
            params, _, _ = inputs(spec)
            p = {n: jnp.asarray(a, jnp.float64) for n, a in params.items()}
            for l in (2, 30):
                wb, lo = win.band(spec, p, l, causal)
                w = np.asarray(_aft.position_bias(spec, p, jnp, l, causal, None, None))
                if causal:
                    w = np.tril(w)  # offsets above 0 are masked: the band stops at 0
                # rtol only: entries off the band must be exactly 0; pos_rank's band products
                # differ from the reference's matmul in summation order
                np.testing.assert_allclose(np.asarray(_band_dense(wb, lo)), w, rtol=1e-13, atol=0)


@pytest.mark.parametrize("spec, causal", [
    (sr.Spec("aft_local", d_model=8, max_len=24, window=3), True),
    (sr.Spec("aft_local", d_model=8, max_len=24, window=3, pos_rank=2), False),
    (sr.Spec("aft_conv", d_model=8, n_heads=2, max_len=24, kernel_size=3), True),
], ids=["local-causal", "local-rank", "conv-heads"])
def test_windowed_layer_through_pallas_interpreter(spec, causal):
    """The whole layer on the windowed path against the reference (float64 forward, torch autograd
    gradients), with key padding (batch 1 loses its tail, batch 2 every key: rows of 0), gradients
    reaching pos_bias, pos_u / pos_v or the conv parameters through the band.  l = 24 in 8-row
    tiles, band [-2, 0] (causal) or [-2, 2]: query tile 2 takes key tile 0 from the prefix
    summaries and (non-causal) tile 0 takes tile 2 from the suffix; likewise for dK / dV with the
    query tiles' summaries.  conv-heads: 2 groups, each with its own taps."""
    assert jp.plan(spec, path=INTERP, length=24, causal=causal) == "pallas-aft-window"
    _layer(spec, INTERP, "float32", causal=causal, masked=True)


def test_plan_window_rule():
    """Narrow bands (NW <= l / 2, the rule shared with the torch/Triton adapter) take the windowed
    kernels; wide ones, aft_full and 2-D aft_conv the dense kernel."""
    local = CASES["aft_local"]  # window 3: NW = 5 (non-causal), 3 (causal)
    assert jp.plan(local, path="pallas", length=10) == "pallas-aft-window"
    assert jp.plan(local, path="pallas", length=9) == "pallas-aft"
    assert jp.plan(local, path="pallas", length=6, causal=True) == "pallas-aft-window"
    assert jp.plan(local, path="pallas", length=5, causal=True) == "pallas-aft"
    assert jp.plan(local, path="pallas") == "pallas-aft"  # no length: the dense kernel
    assert jp.plan(local, path="pallas", length=10, dtype="float64") == "xla-aft"  # not a TPU matmul dtype
    assert jp.plan(CASES["aft_full"], path="pallas", length=100) == "pallas-aft"
    assert jp.plan(CASES["aft_conv-2d"], path="pallas", length=100) == "pallas-aft"


@pytest.mark.parametrize("causal", [True, False])
def test_aft_simple_scan_survives_a_spread_of_160(causal):
    """aft_simple's XLA path (the prefix scan, or one reduction when not causal) against the float64
    formula with w' = 0, K rising from -80 to +80 within every 16 positions (float32 inputs, so
    the gold sees the same K).  Causal rows are outweighed by their future keys by up to e^160: a
    scan stabilized by anything but each row's own running max (e.g. the sequence's max) underflows
    their visible terms to 0/0.  Padding: batch 1 loses its tail, batch 2 every key (rows of 0)."""
    B, l, d = 3, 40, 8
    rng = np.random.default_rng(6)
    saw = -80 + 160 * (np.arange(l) % 16) / 15
    k = (saw[None, :, None] + 0.5 * rng.standard_normal((B, l, d))).astype(np.float32)
    v = rng.standard_normal((B, l, d)).astype(np.float32)
    mask = _key_mask(B, l)
    dy = rng.standard_normal((B, l, d))
    with jax.enable_x64(True):
        def gold_loss(kk, vv):
            y = _aft_gold(kk, vv, jnp.zeros((1, l, l), kk.dtype), jnp.asarray(mask), causal)
            return jnp.sum(y * dy), y
        (_, gold_y), gold_g = jax.jit(jax.value_and_grad(gold_loss, argnums=(0, 1), has_aux=True))(
            jnp.asarray(k, jnp.float64), jnp.asarray(v, jnp.float64))
        gold_y, gold_g = np.asarray(gold_y), [np.asarray(g) for g in gold_g]

    @jax.jit
    def run(kk, vv):
        def f(kk, vv):
            y = jp.aft_simple_mix(kk, vv, jnp.asarray(mask), causal=causal)
            return jnp.sum(y * dy.astype(np.float32)), y
        return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(kk, vv)

    (_, y), g = run(jnp.asarray(k), jnp.asarray(v))
    assert rel_err(y, gold_y) <= TOL["float32"]
    assert np.all(np.asarray(y)[2] == 0), "rows with no allowed key must be exactly 0"
    errs = grad_errors(g[0], {"v": g[1]}, gold_g[0], {"v": gold_g[1]})
    assert max(errs.values()) <= GRAD_TOL["float32"], errs


@pytest.mark.parametrize("causal", [True, False])
def test_aft_simple_scan_gradient_on_saturated_rows(causal):
    """K spread over +-1e4 (float32): nearly every row's weights are one-hot.  The reference's
    autodiff differentiates through its max, so the dominant key's dK arrives as minus the other
    keys' small terms and is exact; with the shift stop_gradient-ed the scan formed it as
    dO (V - Y) / den, two nearly equal numbers (dK off by 1e-7 |dO V|, then multiplied by w_k in a
    layer: dx at 36x the conformance tolerance, causal).  dK here must be within 5x the float32
    error of the same formula differentiated as the reference is (_aft_gold), or 1e-8
    (before: 7e-7 causal, 1e-7 not; the reference: ~0)."""
    B, l, d = 3, 19, 6
    rng = np.random.default_rng(11)
    k = (1e4 * rng.standard_normal((B, l, d))).astype(np.float32)
    v = rng.standard_normal((B, l, d)).astype(np.float32)
    mask = _key_mask(B, l)
    mask[0, :4] = False  # leading padding: causal rows before the first real key are empty
    dy = rng.standard_normal((B, l, d)).astype(np.float32)
    zero_w = np.zeros((1, l, l), np.float32)

    def grad_k(fn, dtype):
        def loss(kk, vv):
            return jnp.sum(fn(kk, vv) * jnp.asarray(dy, dtype))
        return np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(k, dtype), jnp.asarray(v, dtype)), np.float64)

    def ref(kk, vv):
        return _aft_gold(kk, vv, jnp.asarray(zero_w, kk.dtype), jnp.asarray(mask), causal)

    with jax.enable_x64(True):
        gold = grad_k(ref, jnp.float64)
    ref32 = grad_k(ref, jnp.float32)
    scan = grad_k(lambda kk, vv: jp.aft_simple_mix(kk, vv, jnp.asarray(mask), causal=causal), jnp.float32)
    assert np.all(np.isfinite(scan))
    tol = max(1e-8, 5 * float(np.max(np.abs(ref32 - gold))))
    assert float(np.max(np.abs(scan - gold))) <= tol, (float(np.max(np.abs(scan - gold))), tol)


# ---------------------------------------------------------------------------------------------
# whole layers through each path against the reference

# Whole layers through the Pallas interpreter, every variant and option, float64 / float32 /
# bfloat16, forward and gradients: the conformance suite's jax-pallas-interpret backend (tiles of 8,
# so its length-12 cases span two blocks), which nox runs in CI.  Here only what that grid lacks: the
# mixture of all five components (every logit term in one kernel at once), and the windowed AFT at
# l = 24 (three tiles: far-block summaries) in test_windowed_layer_through_pallas_interpreter.
KERNEL_CASES = ["mixture"]
XLA_CASES = [c for c in CASES if jp.plan(CASES[c], path="xla", masked=True, platform="gpu") != "reference"]


def _layer(spec, path, dtype, causal, masked, batch=3, platform=None, length=None):
    params, x, kpm = inputs(spec, batch=batch, mask=masked, length=length)
    dy = np.random.default_rng(1).standard_normal(x.shape)
    gold_y = sr.apply(spec, params, x, causal=causal, key_padding_mask=kpm)
    gold_dx, gold_dp = torch_gold_vjp(spec, params, x, dy, causal, kpm)
    dt = getattr(jnp, dtype)
    m = None if kpm is None else jnp.asarray(kpm)

    @jax.jit
    def run(p, xx, g):
        y, pull = jax.vjp(lambda a, b: jp.apply(spec, a, b, causal=causal, key_padding_mask=m, path=path,
                                                block_q=8, block_k=8, platform=platform), p, xx)
        dp, dx = pull(g)
        return y, dx, dp

    jparams = {k: jnp.asarray(v, dt) for k, v in params.items()}
    y, dx, dp = run(jparams, jnp.asarray(x, dt), jnp.asarray(dy, dt))
    assert y.dtype == dt
    assert rel_err(y, gold_y) <= TOL[dtype]
    errs = grad_errors(dx, dp, gold_dx, gold_dp)
    assert max(errs.values()) <= GRAD_TOL[dtype], errs


@pytest.mark.parametrize("case", KERNEL_CASES)
def test_layer_through_pallas_interpreter(case):
    spec = CASES[case]
    two_d = spec.spatial_dims == 2
    _layer(spec, INTERP, "float32", causal=not two_d, masked=not two_d)


@pytest.mark.parametrize("case, masked", [(c, m) for c in XLA_CASES for m in (False, True)
                                           if not (m and CASES[c].spatial_dims == 2)])
def test_layer_through_xla_path(case, masked):
    """The GPU path's rewrites, planned as on a GPU: dot_product_attention runs its XLA form here
    (cuDNN needs a GPU), so what is checked is the mapping onto it (zero-padded widths, biases,
    masks, empty rows set to 0), the random rewrite and AFT's two GEMMs (a 2-D grid takes neither a
    causal nor a padding mask)."""
    spec = CASES[case]
    _layer(spec, "xla", "float32", causal=spec.spatial_dims != 2, masked=masked, platform="gpu")


SDPA_CASES = [(c, m) for c in CASES for m in (False, True)
              if jp.plan(CASES[c], path="xla", masked=m, platform="gpu") == "xla-sdpa"]


@pytest.mark.parametrize("length, causal", [(None, True), (11, True), (11, False)])
@pytest.mark.parametrize("case, masked", SDPA_CASES)
def test_cudnn_operands_through_xla(monkeypatch, case, masked, length, causal):
    """What the GPU's half-precision path hands cuDNN (the key terms folded into a column of k, the
    width rounded up to 8; an odd length one position longer), run here by jax's own XLA
    implementation of dot_product_attention in its place: the layer's output and gradients against
    float64 gold, and no (l x l) array offered but R (random's full bias).  bfloat16 only: XLA:CPU
    has no float16 product with a float32 result, and float16 differs only in the masked-logit
    constant."""
    import functools

    offered = []

    def xla_in_place_of_cudnn(*args, implementation=None, **kw):
        assert implementation == "cudnn"
        offered.append(args[3] is not None or args[4] is not None)
        return jax.nn.dot_product_attention.__wrapped__(*args, implementation="xla", **kw)

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax.nn, "dot_product_attention",
                        functools.wraps(jax.nn.dot_product_attention)(xla_in_place_of_cudnn))
    spec = CASES[case]
    _layer(spec, "xla", "bfloat16", causal=causal, masked=masked, platform="gpu", length=length)
    assert offered and all(o == ("random" in spec.components_used) for o in offered), offered


class _GpuPlanned:
    """The jax adapter's xla path planned as on a GPU (dot_product_attention's XLA form, as float32
    runs there), as a conformance adapter for float32."""

    name, dtypes = "jax-xla-planned-for-gpu", ("float32",)

    def __init__(self):
        from synth_ref.backends.jax import JaxAdapter

        self._jax = JaxAdapter()
        self.from_numpy, self.to_numpy = self._jax.from_numpy, self._jax.to_numpy

    def _fn(self, spec, x, causal, mask):
        self.last_path = jp.plan_call(spec, x, causal, mask, path="xla", platform="gpu")
        return lambda p, xx: jp.apply(spec, p, xx, causal=causal, key_padding_mask=mask, path="xla",
                                      platform="gpu")

    def apply(self, spec, params, x, *, causal=False, key_padding_mask=None):
        return self._fn(spec, x, causal, key_padding_mask)(params, x)

    def vjp(self, spec, params, x, dy, *, causal=False, key_padding_mask=None):
        _, pull = jax.vjp(self._fn(spec, x, causal, key_padding_mask), params, x)
        dp, dx = pull(dy)
        return dx, dp


def test_xla_path_gradients_on_saturated_rows():
    """The conformance grid's saturated cases (logits over 1e4, a row where one key holds all but
    1e-7..1e-2 of the weight) through the GPU-planned xla path, float32 gradients against float64
    gold by the suite's rule.  With jax.nn.softmax inside dot_product_attention's XLA form, whose
    backward is flash attention's P (dP - sum P dP) at every key, they failed by 3.2-30x the
    tolerance; with jp._softmax's (the dominant key's dS from the other keys), 0.17 at worst."""
    from synth_ref.conformance import cases, check

    adapter = _GpuPlanned()
    # factorized_dense takes the reference on this path (its logits are no q k^T)
    saturated = [c for c in cases.grid("ci") if c.values == "saturated" and c.variant != "factorized_dense"]
    assert {c.variant for c in saturated} == {"dense", "dot_product", "mixture"}
    for case in saturated:
        out = check.check_gradient(adapter, case, "float32")
        assert out.status == "pass", out.message()
        assert adapter.last_path == "xla-sdpa", adapter.last_path


def _cudnn_traces() -> bool:
    """Whether jax.nn.dot_product_attention's cuDNN form can be traced here: it asks libcudnn for its
    version first (a CUDA jaxlib and libcudnn: the GPU machine, or a CPU one with both installed)."""
    try:
        from jax._src.cudnn import fused_attention_stablehlo as fa

        fa.check_cudnn_version()
    except Exception:  # noqa: BLE001 - any failure means: not here
        return False
    return True


@pytest.mark.skipif(not _cudnn_traces(), reason="cuDNN attention traces only with a CUDA jaxlib and libcudnn")
@pytest.mark.parametrize("case, masked", [("dot_product", False), ("factorized_random", False),
                                          ("dot_product", True), ("dense", False), ("dense", True),
                                          ("random", True)])
def test_cudnn_path_forms_no_needless_lxl_array(monkeypatch, case, masked):
    """The bfloat16 xla-sdpa program as compiled for a GPU, forward and gradient: cuDNN runs it and
    no (l x l) array is formed but R (random's full bias, a parameter of that size).  Before: a zero
    (1, h, l, l) bias for logits with none (and its float32 twin), dense's b_2 as a (1, h, l, l) one,
    and with padding their (B, h, l, l) sum, each read for every batch element and head."""
    import re

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # plan and trace as on a GPU
    opts = {"k": 8} if case == "factorized_random" else {}
    spec = sr.Spec(case, d_model=128, n_heads=2, max_len=96, **opts)  # l != head width 64
    B, l = 2, 96
    params = {k: jnp.asarray(v, jnp.bfloat16) for k, v in spec.init(seed=0).items()}
    x = jax.ShapeDtypeStruct((B, l, 128), jnp.bfloat16)
    m = jax.ShapeDtypeStruct((B, l), jnp.bool_) if masked else None
    assert jp.plan(spec, masked=masked, dtype=jnp.bfloat16) == "xla-sdpa"

    def loss(p, xx, mm):
        return jp.apply(spec, p, xx, causal=True, key_padding_mask=mm).astype(jnp.float32).sum()

    traced = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(params, x, m)
    text = traced.lower(lowering_platforms=("cuda",)).as_text()
    assert sum("custom_call" in ln and "cudnn" in ln for ln in text.splitlines()) >= 2  # forward, backward
    lxl = {tuple(int(n) for n in t.split("x")[:-1])
           for t in re.findall(rf"tensor<((?:\d+x)*{l}x{l}x\w+)>", text)}
    if case == "random":
        assert lxl and all(t[-3] in (1, spec.n_heads) and (len(t) < 4 or t[0] == 1) for t in lxl), lxl
    else:
        assert not lxl, lxl


def _batched_lxl(jaxpr, l):
    """Shapes of (B, h, l, l)-like values (4-D, last two axes l or its 8-padding) a program forms
    outside any pallas_call."""
    sizes = {l, -(-l // 8) * 8}
    return [v.aval.shape for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name != "pallas_call"
            for v in eqn.outvars if v.aval.ndim == 4 and set(v.aval.shape[-2:]) <= sizes]


@pytest.mark.parametrize("case", ["dense", "mixture"])
def test_the_kernel_really_runs(case):
    """The fused path is not the reference in disguise: its traced program contains the Pallas kernel
    (by the name given to pallas_call), and the reference's does not; no per-batch (l x l) array
    is formed outside the kernel (the reference forms several), factorized_dense's logits included."""
    spec = CASES[case]
    params, x, _ = inputs(spec, batch=1)
    p = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    xx = jnp.asarray(x, jnp.float32)
    fused = jax.make_jaxpr(lambda a, b: jp.apply(spec, a, b, path=INTERP))(p, xx)
    plain = jax.make_jaxpr(lambda a, b: jp.apply(spec, a, b, path="reference"))(p, xx)
    assert "synth_flash_fwd" in str(fused) and "synth_flash" not in str(plain)
    assert _batched_lxl(plain, x.shape[1]) and not _batched_lxl(fused, x.shape[1])


# ---------------------------------------------------------------------------------------------
# TPU lowering without a TPU


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_kernels_lower_for_tpu(dtype):
    """Each kernel, forward and backward, at TPU-sized tiles (128), lowered to Mosaic for TPU: this
    runs the Pallas TPU lowering, which rejects block shapes that are not multiples of (8, 128) (or
    the whole axis) and operations Mosaic cannot express.  It stops before Mosaic's own compiler
    (part of the TPU runtime), so a TPU must still confirm layouts and VMEM fit."""
    dt = getattr(jnp, dtype)
    B, h, l, e = 2, 2, 256, 64
    v = jnp.ones((B, h, l, e), dt)
    kb = jnp.zeros((B, 1, 1, l), jnp.float32)
    rb = jnp.ones((h, l, l), dt)
    static_k = jnp.ones((1, h, l, e), dt)

    def flash_loss(q, k, v, rb):
        return flash_attention(v, kb, q=q, k=k, full_bias=rb, causal=True).astype(jnp.float32).sum()

    text = jax.jit(jax.grad(flash_loss, argnums=(0, 1, 2, 3))).trace(v, static_k, v, rb) \
        .lower(lowering_platforms=("tpu",)).as_text()
    # forward, dq, dk/dv/d key bias, d full bias; float32 also the row term (EXACT_DELTA)
    delta = int(dtype == "float32")
    assert text.count("tpu_custom_call") == 4 + delta

    k3 = jnp.ones((B, l, 512), dt)
    w = jnp.ones((8, l, l), dt)  # 8 groups of 64 channels (aft_conv with 8 heads)

    def aft_loss(k, v, w):
        return aft_mix(k, v, w, jnp.ones((B, l), bool), causal=True).astype(jnp.float32).sum()

    traced = jax.jit(jax.grad(aft_loss, argnums=(0, 1, 2))).trace(k3, k3, w)
    text = traced.lower(lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") == 3  # forward, dk/dv, dw

    # the windowed kernels: band [-31, 31] (NW = 63 <= l / 2), 3 band key tiles per query tile
    wb = jnp.ones((8, l, 63), dt)

    def window_loss(k, v, wb):
        return aft_window_mix(k, v, wb, -31, jnp.ones((B, l), bool)).astype(jnp.float32).sum()

    text = jax.jit(jax.grad(window_loss, argnums=(0, 1, 2))).trace(k3, k3, wb) \
        .lower(lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") == 3  # forward, dk/dv (band), dw (band tiles)

    # factorized_dense: per-row factors (l = 256 = 16 x 16, widths padded to 128) and one-hots
    pa, pb = factor_one_hots(l, (16, 16), "tile", dt)
    fa = jnp.ones((B, h, l, pa.shape[1]), dt)

    def fd_loss(fa, fb, v):
        return flash_attention(v, kb, factorized=(fa, fb, pa, pb), causal=True).astype(jnp.float32).sum()

    text = jax.jit(jax.grad(fd_loss, argnums=(0, 1, 2))).trace(fa, fa, v) \
        .lower(lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") == 3 + delta  # forward, (delta,) dq/d fa/d fb, dk/dv/d kb


def test_aft_gradient_precision_matches_the_reference():
    """dV (hence dw_v, db_v) on the deep grid's opposed AFT case: within 3x the reference's own float32
    error.  With P recomputed as exp(z - lse) it was 27x (dw_v) and 48x (db_v)."""
    from kernel_precision import AFT_LSE_CASE, gradient_errors, reference_errors

    from synth_ref import backends

    adapter = backends.get("jax-pallas-interpret")
    names = ("w_v", "b_v")
    got = gradient_errors(adapter, AFT_LSE_CASE, names)
    assert adapter.last_path == "pallas-aft"
    ref = reference_errors(AFT_LSE_CASE, names)
    assert all(got[n] <= 3 * ref[n] for n in names), (got, ref)
