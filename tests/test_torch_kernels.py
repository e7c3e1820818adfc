"""The Triton kernels against the reference: forward and every gradient, causal and key-padding masks.

With CUDA the kernels run compiled on the GPU.  Without, they run in Triton's interpreter on CPU
tensors, which needs TRITON_INTERPRET=1 set before anything imports triton (Triton decides at
decoration time, and torch._dynamo imports triton): so unless this process started with it, one test
here re-runs this file in a fresh process that does, and the kernel tests of this process say so in
their skip reason.  Blocks are capped at 16 so that the small shapes here still span several blocks:
the online-softmax merges, the causal skips and the AFT diagonal tile are all exercised.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the kernels need torch (pip install synth-ref[torch])")
pytest.importorskip("triton", reason="the kernels need triton (pip install triton; CPU: interpreter mode)")

import synth_ref as sr  # noqa: E402
from synth_ref.backends import torch_triton  # noqa: E402
from synth_ref.backends.torch_nn import MixingLayer  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

#: CPU without the interpreter from the start: the kernel tests run in a child process instead.
DELEGATE = DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1"
in_this_process = pytest.mark.skipif(
    DELEGATE, reason="runs in the fresh TRITON_INTERPRET=1 process of test_kernels_in_interpreter_process")

#: Largest |kernel - reference| allowed, and why.
TOL = {
    # float64 both sides: the kernels sum in another order (blocks, online rescaling); measured
    # <= 4e-14 on outputs and gradients of O(1) at these sizes.
    "float64": 1e-12,
    # float32 kernel vs float64 reference: a few ulps (1.2e-7) of O(1) sums over l <= 20 keys and
    # d = 8 features, through two projections.  The flash backward recomputes P = exp(S - lse), off
    # by ~|S| ulps relative: factorized_dense's logits reach |S| ~ 40 in the mixture here, whose
    # gradients (O(10)) then differ by up to 1.4e-5 (the eager float32 reference: 6e-6).
    "float32": 2e-5,
}

L = 20  # two 16-blocks, the second partial
B = 2

SPECS = {
    "random": sr.Spec("random", d_model=8, n_heads=2, max_len=24),
    "dot_product": sr.Spec("dot_product", d_model=8, n_heads=2, max_len=24),
    "dense": sr.Spec("dense", d_model=8, n_heads=2, max_len=24),
    "factorized_random": sr.Spec("factorized_random", d_model=8, n_heads=2, max_len=24, k=3),
    # gcd(4, 6) = 2: "tile" reads other columns than "outer" for most keys, and l = 20 < a * b.
    "factorized_dense": sr.Spec("factorized_dense", d_model=8, n_heads=2, max_len=24, factors=(4, 6)),
    "factorized_dense_tile": sr.Spec("factorized_dense", d_model=8, n_heads=2, max_len=24, factors=(4, 6),
                                     tiling="tile"),
    "mixture": sr.Spec("mixture", d_model=8, n_heads=2, max_len=24, k=2, factors=(6, 4),
                       components=("dense", "random", "dot_product", "factorized_random",
                                   "factorized_dense")),
    "aft_simple": sr.Spec("aft_simple", d_model=8, max_len=24),
    "aft_full": sr.Spec("aft_full", d_model=8, max_len=24),
    "aft_full_lowrank": sr.Spec("aft_full", d_model=8, max_len=24, pos_rank=3),
    # window 8 at l = 20: a band of 15 offsets, wider than l / 2, takes the dense AFT kernel
    "aft_local_wide": sr.Spec("aft_local", d_model=8, max_len=24, window=8),
}

#: The windowed AFT kernels (_aft_window) at L_WIN = 40: three blocks, the last partial, so that each
#: row block has far key blocks before or after its band (prefix and suffix summaries) and each key
#: block far row blocks.
L_WIN = 40
WIN_SPECS = {
    "aft_local": sr.Spec("aft_local", d_model=8, max_len=48, window=3),
    "aft_local_lowrank": sr.Spec("aft_local", d_model=8, max_len=48, window=3, pos_rank=3),
    "aft_conv": sr.Spec("aft_conv", d_model=8, n_heads=2, max_len=48, kernel_size=5),
    "aft_conv_even": sr.Spec("aft_conv", d_model=8, n_heads=2, max_len=48, kernel_size=4),
    # Bands wider than l (window >= l; taps beyond +-(l - 1) cropped), forced onto the windowed path.
    "aft_local_edge": sr.Spec("aft_local", d_model=8, max_len=24, window=24),
    "aft_conv_edge": sr.Spec("aft_conv", d_model=8, n_heads=2, max_len=24, kernel_size=45),
}
KERNEL = {"random": "random", "aft": "aft"}


@pytest.mark.skipif(not DELEGATE, reason="this process runs the kernel tests itself (CUDA or interpreter)")
def test_kernels_in_interpreter_process():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                         env=env, capture_output=True, text=True, timeout=900)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, (f"kernel tests failed in the interpreter process:\n"
                                 f"{run.stdout[-6000:]}{run.stderr[-2000:]}")
    # The child's only skip is this delegating test itself.
    assert re.match(r"\d+ passed, 1 skipped in", summary), summary


@pytest.fixture(scope="module", autouse=True)
def kernel_mode():
    if DELEGATE:
        yield
        return
    from synth_ref.backends.torch_triton import _common, _kernels

    if DEVICE == "cpu":
        assert _kernels.INTERPRETED, "TRITON_INTERPRET=1 is set but the kernels are not interpreted"
    mp = pytest.MonkeyPatch()
    mp.setattr(_common, "BLOCK_CAP", 16)
    yield
    mp.undo()


def _params(spec, dtype, seed=1):
    """spec.init plus noise, so that zero-initialised biases (pos_bias, b_2, mix_logits) matter."""
    rng = np.random.default_rng(seed)
    return {n: torch.tensor(a + 0.5 * rng.standard_normal(a.shape), dtype=dtype, device=DEVICE,
                            requires_grad=True)
            for n, a in spec.init(seed).items()}


def _inputs(spec, dtype, masked, seed=2, length=L):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, length, spec.d_model, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    mask = None
    if masked:
        mask = torch.rand(B, length, generator=g) > 0.3
        mask[0] = False  # a sequence with no real token: every row empty, output b_o, no NaN
        mask = mask.to(DEVICE)
    return x.requires_grad_(True), mask


def _reference(spec, params, x, causal, mask):
    return sr.apply(spec, params, x, causal=causal, key_padding_mask=mask)


def _compare(spec, dtype, causal, masked, gold_dtype=torch.float64, length=L, kernel=None):
    params = _params(spec, dtype)
    x, mask = _inputs(spec, dtype, masked, length=length)
    y, path = torch_triton.layer_forward(spec, params, x, causal=causal, key_padding_mask=mask,
                                         kernels="always")
    assert path == "triton:" + (kernel or torch_triton.kernel_name(spec, causal))
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(DEVICE)
    leaves = [x, *params.values()]
    grads = torch.autograd.grad(y, leaves, dy.to(dtype))

    gold_params = {n: p.detach().to(gold_dtype).requires_grad_(True) for n, p in params.items()}
    gx = x.detach().to(gold_dtype).requires_grad_(True)
    ref = _reference(spec, gold_params, gx, causal, mask)
    gold = torch.autograd.grad(ref, [gx, *gold_params.values()], dy.to(gold_dtype), allow_unused=True)

    tol = TOL[str(dtype).removeprefix("torch.")]
    assert torch.isfinite(y).all()
    err = (y.double() - ref.double()).abs().max().item()
    assert err <= tol, f"output differs by {err}"
    names = ["x", *params]
    for name, g, want in zip(names, grads, gold, strict=True):
        want = torch.zeros_like(g) if want is None else want
        err = (g.double() - want.double()).abs().max().item()
        assert err <= tol, f"d{name} differs by {err}"


# Some specs run in one mode only: the mixture covers dot_product, factorized_random and
# factorized_dense together in both; factorized_dense alone (no product term: the kernels'
# HAS_QK=False) runs once per tiling.
ONE_MODE = {"dot_product": (True, True), "factorized_random": (True, True),
            "factorized_dense": (False, True), "factorized_dense_tile": (True, True),
            "aft_simple": (True, True)}  # without a causal mask: the reference (next test)
CASES = [(name, causal, masked) for name in SPECS for causal, masked in ((False, True), (True, True))
         if ONE_MODE.get(name, (causal, masked)) == (causal, masked)
         and (name != "aft_local_wide" or not causal)]  # causal: a band of 8 <= l / 2 is windowed
CASES += [(name, False, False) for name in ("random", "dense", "aft_full")]  # the mask-free kernels


@in_this_process
def test_aft_simple_without_causal_mask_takes_the_reference():
    """aft_simple without a causal mask is one softmax over the keys per channel, the same for every
    row: the reference's O(l d) form, exact where the AFT kernel's O(l^2 d) GEMM form is not (dx 86x
    the tolerance with K spread over 1e4).  The path says so; kernels='always' refuses with why; the
    causal form still takes the kernel."""
    spec = SPECS["aft_simple"]
    params = _params(spec, torch.float64)
    x, mask = _inputs(spec, torch.float64, masked=True)
    y, path = torch_triton.layer_forward(spec, params, x, causal=False, key_padding_mask=mask)
    assert path == "eager: aft_simple without a causal mask: the reference's O(l d) form"
    assert torch.equal(y, _reference(spec, params, x, False, mask))
    with pytest.raises(RuntimeError, match="kernels='always': no fused kernel runs here: aft_simple without"):
        torch_triton.layer_forward(spec, params, x, causal=False, key_padding_mask=mask, kernels="always")
    _, path = torch_triton.layer_forward(spec, params, x, causal=True, key_padding_mask=mask)
    assert path == "triton:aft"


@in_this_process
def test_heads_wider_than_a_block_take_the_reference(monkeypatch):
    """The flash kernel holds a head's whole q / k width and value width in one block each (at most
    _plan.BLOCK_CAP = 128): a wider head lost its columns past the block (in the interpreter, errors
    of 5.6 at width 160 and 1e25 at 256).  Such specs take the reference and say why, kernels='always'
    refuses them, flash_mix itself refuses the widths, and a mixture counts its concatenated q / k
    width; the widest covered head still takes the kernel."""
    from synth_ref.backends.torch_triton import _common, _flash, _plan

    monkeypatch.setattr(_common, "BLOCK_CAP", _plan.BLOCK_CAP)  # the real cap, not this module's 16
    wide = sr.Spec("dot_product", d_model=2 * 136, n_heads=2, max_len=8)
    mix = sr.Spec("mixture", d_model=2 * 72, n_heads=2, max_len=8, components=("dense", "dot_product"))
    assert _plan.flash_widths(wide) == (136, 136) and _plan.flash_widths(mix) == (144, 72)
    for spec in (wide, mix):
        params = _params(spec, torch.float64)
        x, mask = _inputs(spec, torch.float64, masked=True, length=8)
        y, path = torch_triton.layer_forward(spec, params, x, causal=True, key_padding_mask=mask)
        assert path.startswith("eager: the flash kernel holds a head's whole width in one block"), path
        assert torch.equal(y, _reference(spec, params, x, True, mask))
        with pytest.raises(RuntimeError, match="kernels='always': no fused kernel runs here: the flash"):
            torch_triton.layer_forward(spec, params, x, causal=True, key_padding_mask=mask, kernels="always")
    with pytest.raises(ValueError, match="the flash kernel takes widths up to 128; got q / k width 136"):
        _flash.flash_mix(*(torch.zeros(1, 1, 8, 136, dtype=torch.float64),) * 2,
                         torch.zeros(1, 1, 8, 8, dtype=torch.float64))
    widest = sr.Spec("dot_product", d_model=2 * 128, n_heads=2, max_len=8)
    params = _params(widest, torch.float64)
    x, mask = _inputs(widest, torch.float64, masked=True, length=8)
    y, path = torch_triton.layer_forward(widest, params, x, causal=True, key_padding_mask=mask)
    assert path == "triton:flash"
    assert torch.allclose(y, _reference(widest, params, x, True, mask), rtol=1e-10, atol=1e-10)


@in_this_process
@pytest.mark.parametrize("name, causal, masked", CASES,
                         ids=[f"{n}-{'causal' if c else 'full'}-{'mask' if m else 'nomask'}"
                              for n, c, m in CASES])
def test_kernel_matches_reference_float64(name, causal, masked):
    if DEVICE == "cuda":
        pytest.skip("float64 takes the reference path on a GPU (torch_triton.GPU_DTYPES): "
                    "see the float32 test")
    _compare(SPECS[name], torch.float64, causal, masked)


@in_this_process
@pytest.mark.parametrize("name", ["random", "mixture"])  # mixture: every softmax component
def test_kernel_float32_against_float64_gold(name):
    _compare(SPECS[name], torch.float32, True, True)


# Between them: both masks and none, causal or not, low rank, heads, cropped bands.  (The even
# kernel's offsets are checked by test_band_is_the_spec_position_bias, without running kernels.)
WIN_CASES = [("aft_local", False, True), ("aft_local", True, True), ("aft_local_lowrank", False, False),
             ("aft_conv", False, False), ("aft_local_edge", False, True), ("aft_conv_edge", True, True)]


@in_this_process
@pytest.mark.parametrize("name, causal, masked", WIN_CASES,
                         ids=[f"{n}-{'causal' if c else 'full'}-{'mask' if m else 'nomask'}"
                              for n, c, m in WIN_CASES])
def test_windowed_aft_matches_reference_float64(name, causal, masked, monkeypatch):
    if DEVICE == "cuda":
        pytest.skip("float64 takes the reference path on a GPU: see the float32 test")
    from synth_ref.backends.torch_triton import _aft_window

    if name.endswith("_edge"):  # the band covers every pair: only forced does it take this path
        monkeypatch.setattr(_aft_window, "WINDOW_MAX_FRACTION", float("inf"))
    length = L if name.endswith("_edge") else L_WIN
    _compare(WIN_SPECS[name], torch.float64, causal, masked, length=length, kernel="aft-window")


@in_this_process
@pytest.mark.parametrize("name", ["aft_local", "aft_local_lowrank", "aft_conv", "aft_conv_even",
                                  "aft_local_edge", "aft_conv_edge"])
def test_band_is_the_spec_position_bias(name):
    """The band the windowed path builds from the parameters, scattered into (G, l, l), is the
    spec's w' exactly (window, tap offsets, cropping, low rank), and w' is 0 outside it."""
    from array_api_compat import array_namespace

    from synth_ref import _aft
    from synth_ref.backends.torch_triton import _aft_window

    spec = WIN_SPECS[name]
    params = {n: p.detach() for n, p in _params(spec, torch.float64).items()}
    for length in (L, L_WIN):
        if length > spec.max_len:
            continue
        for causal in (False, True):
            xp = array_namespace(params["w_q"])
            want = _aft.position_bias(spec, params, xp, length, causal, None, DEVICE)
            wb, lo = _aft_window.band(spec, params, xp, length, causal, DEVICE)
            got = _scatter_band(wb, lo, length)
            if causal:  # offsets after the row are never allowed: the band leaves them out
                tril = torch.ones(length, length, dtype=torch.bool, device=DEVICE).tril()
                want = torch.where(tril, want, 0.0)
            # low rank: the band's dot products round in another order than the matmul's
            tol = 1e-14 if spec.pos_rank else 0.0
            assert (got - want).abs().max().item() <= tol, (name, length, causal)


def _scatter_band(wb, lo, length):
    """(G, l, l) w' from the band wb (G, l, NW): w'[g, t, t + lo + j] = wb[g, t, j]; differentiable."""
    G, _, nw = wb.shape
    t = torch.arange(length, device=wb.device)[:, None].expand(length, nw)
    key = t + lo + torch.arange(nw, device=wb.device)[None, :]
    inside = (key >= 0) & (key < length)
    dense = wb.new_zeros(G, length, length)
    dense[:, t[inside], key[inside]] = wb[:, inside]
    return dense


@in_this_process
def test_window_dispatch_rule():
    """Windowed iff the band's offsets (2 window - 1, or window under causal; kernel_size) are at
    most l / 2; 2-D aft_conv and aft_full have no band."""
    from synth_ref.backends.torch_triton._aft_window import use_window

    local = sr.Spec("aft_local", d_model=8, max_len=24, window=5)
    assert use_window(local, 18, False) and not use_window(local, 17, False)
    assert use_window(local, 10, True) and not use_window(local, 9, True)
    conv = sr.Spec("aft_conv", d_model=8, n_heads=2, max_len=24, kernel_size=4)
    assert use_window(conv, 8, False) and not use_window(conv, 7, True)
    assert not use_window(SPECS["aft_full"], 24, False)
    assert not use_window(sr.Spec("aft_conv", d_model=8, n_heads=2, max_len=24, kernel_size=3,
                                  spatial_dims=2), 16, False)


def _aft_gold(k, v, w, causal, mask):
    """AFT's definition, literally, in float64: the (B, l, l, d) broadcast, fine at this size."""
    k, v = k.double(), v.double()
    l = k.shape[1]
    z = k[:, None, :, :] + (0 if w is None else w.double()[0][None, :, :, None])
    ok = torch.ones(1, l, l, 1, dtype=torch.bool, device=k.device)
    if causal:
        ok = ok & torch.ones(l, l, dtype=torch.bool, device=k.device).tril()[None, :, :, None]
    if mask is not None:
        ok = ok & mask[:, None, :, None]
    z = z.masked_fill(~ok, float("-inf"))
    m = z.amax(2, keepdim=True).nan_to_num(neginf=0.0).detach()  # any shift: gradients need none
    e = torch.exp(z - m)
    den = e.sum(2)
    return torch.where(den > 0, (e * v[:, None]).sum(2) / den.clamp_min(1e-300), 0.0)


@in_this_process
@pytest.mark.parametrize("with_w", [False, True])
def test_aft_kernel_keys_spread_over_80_float32(with_w):
    """K over +-80 in float32 under a causal mask: a global (or block) key maximum underflows every
    visible term of the early rows to 0/0; the kernel's exact diagonal tile must not."""
    from synth_ref.backends.torch_triton._aft import AftMix

    g = torch.Generator().manual_seed(0)
    k = (80 * torch.sign(torch.randn(B, L, 8, generator=g))).to(DEVICE)
    k[:, 0] = -80.0  # row 0 sees only key 0, while later keys of its block sit at +80
    v = torch.randn(B, L, 8, generator=g).to(DEVICE)
    w = (torch.randn(1, L, L, generator=g) * 3).to(DEVICE) if with_w else None
    mask = torch.ones(B, L, dtype=torch.bool, device=DEVICE)
    mask[1, 3] = False
    out = AftMix.apply(k, v, w, True, mask)
    gold = _aft_gold(k, v, w, True, mask)
    assert torch.isfinite(out).all()
    err = (out.double() - gold).abs().max().item()
    assert err <= TOL["float32"], err


@in_this_process
@pytest.mark.parametrize("causal", [False, True])
def test_windowed_aft_keys_spread_over_80_float32(causal):
    """The windowed kernels with K over +-80 in float32, forward and gradients of k, v and the band:
    the exact causal diagonal as above, and far blocks whose summaries hold terms e^-160 below
    their bound (they underflow, harmlessly) must give no 0/0 and no overflow."""
    from synth_ref.backends.torch_triton._aft_window import AftWindowMix

    g = torch.Generator().manual_seed(0)
    lo, nw = -3, 4 if causal else 7
    k = (80 * torch.sign(torch.randn(B, L_WIN, 8, generator=g))).to(DEVICE)
    k[:, 0] = -80.0
    v = torch.randn(B, L_WIN, 8, generator=g).to(DEVICE)
    wb = (torch.randn(1, L_WIN, nw, generator=g) * 3).to(DEVICE)
    mask = torch.ones(B, L_WIN, dtype=torch.bool, device=DEVICE)
    mask[1, 3] = False
    mask[1, 20:23] = False
    leaves = [t.requires_grad_(True) for t in (k, v, wb)]
    out = AftWindowMix.apply(k, v, wb, lo, causal, mask)
    dy = torch.randn(out.shape, generator=g).to(DEVICE)
    grads = torch.autograd.grad(out, leaves, dy)
    gold_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    gk, gv, gwb = gold_leaves
    gold = _aft_gold(gk, gv, _scatter_band(gwb, lo, L_WIN)[:, :, :], causal, mask)
    gold_grads = torch.autograd.grad(gold, gold_leaves, dy.double())
    assert torch.isfinite(out).all()
    err = (out.double() - gold).abs().max().item()
    assert err <= TOL["float32"], err
    for name, got, want in zip("k v wb".split(), grads, gold_grads, strict=True):
        assert torch.isfinite(got).all(), name
        err = (got.double() - want).abs().max().item()
        assert err <= TOL["float32"], (name, err)


def _anti_correlated(l, at, nw=None, lo=None):
    """K and w' anti-correlated by 200 at key ``at``: K is +100 there and -100 elsewhere, w' is 200
    lower there.  A row that sees that key has its exact max near -100 while its tile's rank-one
    bound max w' + max K sits near +100: every GEMM term underflows (the check's job).  nw given: w'
    as a band wb (G, l, nw) with offsets from lo, so only the rows whose band holds ``at``."""
    g = torch.Generator().manual_seed(3)
    k = torch.randn(B, l, 8, generator=g) - 100.0
    k[:, at] += 200.0
    v = torch.randn(B, l, 8, generator=g)
    if nw is None:
        w = torch.randn(1, l, l, generator=g)
        w[0, :, at] -= 200.0
    else:
        w = torch.randn(1, l, nw, generator=g)
        t = torch.arange(l)
        j = at - t - lo  # band index of key `at` for row t
        inside = (j >= 0) & (j < nw)
        w[0, t[inside], j[inside]] -= 200.0
    return k.to(DEVICE), v.to(DEVICE), w.to(DEVICE)


def _mix_and_grads(fn, leaves, dy):
    leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, dy)


@in_this_process
@pytest.mark.parametrize("window", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_aft_tiles_whose_bound_overshoots_are_computed_exactly(causal, window, monkeypatch):
    """w' and K anti-correlated by 200 (float32): the off-diagonal tiles' rank-one bound overshoots
    the exact max by ~200, so every GEMM term of a (t, c) underflows.  The check sends those tiles to
    the exact elementwise form, forward and backward (dK, dV, dw'), dense and windowed kernels;
    with the check disabled (FLOOR 0) the same inputs give wrong numbers, which is what it is for.
    Key 14 sits in key block 0 (blocks of 16), which rows 16 ... of block 1 see off the causal
    diagonal (the diagonal tile is exact anyway)."""
    from synth_ref.backends.torch_triton import _aft
    from synth_ref.backends.torch_triton._aft import AftMix
    from synth_ref.backends.torch_triton._aft_window import AftWindowMix

    l = L_WIN if window else L
    lo, nw = (-3, 4) if causal else (-3, 7)
    k, v, w = _anti_correlated(l, 14, nw if window else None, lo)
    mask = torch.ones(B, l, dtype=torch.bool, device=DEVICE)
    mask[1, 5] = False

    def kernel(kk, vv, ww):
        if window:
            return AftWindowMix.apply(kk, vv, ww, lo, causal, mask)
        return AftMix.apply(kk, vv, ww, causal, mask)

    def gold(kk, vv, ww):
        return _aft_gold(kk, vv, _scatter_band(ww, lo, l) if window else ww, causal, mask)

    dy = torch.randn(B, l, 8, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    want, want_grads = _mix_and_grads(gold, [t.double() for t in (k, v, w)], dy.double())

    def errors():
        out, grads = _mix_and_grads(kernel, [k, v, w], dy)
        return [(a.double() - b).abs().max().item() for a, b in zip([out, *grads], [want, *want_grads],
                                                                      strict=True)]

    errs = errors()
    assert max(errs) <= TOL["float32"], errs
    monkeypatch.setitem(_aft.FLOOR, torch.float32, 0.0)  # the check never fails: GEMMs trusted
    assert max(errors()) > 0.1


@in_this_process
def test_dispatch_says_which_path_ran():
    spec = SPECS["dense"]
    x = torch.randn(B, L, 8, device=DEVICE)
    layer = MixingLayer(spec, seed=0, device=DEVICE)
    y = layer(x, causal=True)
    assert layer.last_path == "triton:flash"
    eager = MixingLayer(spec, seed=0, kernels="never", device=DEVICE)
    y_eager = eager(x, causal=True)
    assert eager.last_path == "eager: kernels='never'"
    assert (y - y_eager).abs().max().item() <= TOL["float32"]
    fd = MixingLayer(SPECS["factorized_dense"], seed=0, device=DEVICE)
    fd(x)
    assert fd.last_path == "triton:flash"
    conv2d = sr.Spec("aft_conv", d_model=8, n_heads=2, max_len=24, kernel_size=3, spatial_dims=2)
    grid = MixingLayer(conv2d, seed=0, device=DEVICE)
    grid(torch.randn(1, 4, 4, 8, device=DEVICE))
    assert grid.last_path.startswith("eager: no fused kernel covers 'aft_conv'")
    with pytest.raises(RuntimeError, match="kernels='always': no fused kernel runs here"):
        MixingLayer(conv2d, kernels="always", device=DEVICE)(torch.randn(1, 4, 4, 8, device=DEVICE))


@in_this_process
@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter runs outside the compiled graph on CPU only")
@pytest.mark.parametrize("variant", ["dense", "aft_full"])
def test_torch_compile_runs_the_interpreted_kernels(variant):
    """torch.compile of a layer whose forward takes a kernel in Triton's interpreter: dynamo cannot
    trace the interpreter (it failed on fake tensors, 'KeyError(torch.uint64)'), so the kernel runs
    outside the graph, with the eager numbers and gradients and the kernel still named in last_path."""
    import warnings

    layer = MixingLayer(SPECS[variant], seed=0, dtype=torch.float64)
    x = torch.randn(B, L, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, -3:] = False
    y = layer(x, causal=True, key_padding_mask=mask)
    grads = torch.autograd.grad(y.square().sum(), list(layer.parameters()))
    torch._dynamo.reset()
    layer.last_path = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lru_cache.*")
        yc = torch.compile(layer, backend="eager")(x, causal=True, key_padding_mask=mask)
    assert layer.last_path == "triton:" + torch_triton.kernel_name(SPECS[variant], True)
    grads_c = torch.autograd.grad(yc.square().sum(), list(layer.parameters()))
    assert torch.equal(yc, y)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_c, strict=True))


@in_this_process
@pytest.mark.parametrize("variant", ["random", "dense", "aft_full"])
def test_second_derivative_through_a_kernel_is_an_error(variant):
    """A gradient penalty (the derivative of |dL/dx|^2) through a kernel: its backward runs Triton
    kernels, which autograd cannot differentiate, so the kernel's share of the second derivative
    was silently missing (aft_full's d/dw_o off by 95% of its size; dense and random: 'not used
    in the graph').  Taking the first derivative with create_graph=True is an error instead, naming
    the way out: kernels="never" (the reference) differentiates to any order."""
    dtype = torch.float64 if DEVICE == "cpu" else torch.float32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, 8, dtype=torch.float64, generator=g).to(DEVICE, dtype)
    for kernels in ("never", "always"):
        layer = MixingLayer(SPECS[variant], seed=0, dtype=dtype, kernels=kernels, device=DEVICE)
        xx = x.clone().requires_grad_(True)
        loss = layer(xx, causal=True).square().sum()
        if kernels == "never":
            (gx,) = torch.autograd.grad(loss, [xx], create_graph=True)
            (h,) = torch.autograd.grad(gx.square().sum(), [layer.w_o])
            assert torch.isfinite(h).all() and h.abs().max() > 0
        else:
            with pytest.raises(RuntimeError, match="backward is not differentiable.*kernels='never'"):
                torch.autograd.grad(loss, [xx], create_graph=True)
            # first order as before
            (gx,) = torch.autograd.grad(layer(xx, causal=True).square().sum(), [xx])
            assert torch.isfinite(gx).all()


@in_this_process
@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's dtype limit applies to CPU tensors only")
def test_interpreter_leaves_half_precision_to_the_reference():
    layer = MixingLayer(SPECS["random"], seed=0, dtype=torch.bfloat16)
    layer(torch.randn(B, L, 8, dtype=torch.bfloat16))
    assert layer.last_path.startswith("eager: the interpreter path is tested in")


#: Cases the conformance suite's deep profile drew where a softmax row is nearly one-hot in float32
#: (logits spread over +-100) and the logits' inputs are large (|w_2| ~ 60), so an error of one
#: float32 rounding of dP in the row term of dS = P (dP - rowsum) is multiplied up into dw_1.  The
#: flash backward's usual row term rowsum(dO * O) rounds differently from dP and failed these by up to
#: 2.6x the suite's tolerance; the row term sum_t' P dP, from the very dP values dS uses, passes.
SATURATED = [
    (sr.Spec("dense", d_model=12, n_heads=1, max_len=12), 2, (12,), "random", 148),
    (sr.Spec("dense", d_model=12, n_heads=1, max_len=12), 2, (1,), "random", 164),
    (sr.Spec("factorized_dense", d_model=12, n_heads=1, max_len=12, factors=(3, 4)), 3, (5,), "none", 333),
    (sr.Spec("factorized_dense", d_model=12, n_heads=1, max_len=12, factors=(3, 4)), 3, (12,), "none", 311),
]


@in_this_process
@pytest.mark.parametrize("spec, batch, shape, mask, seed", SATURATED,
                         ids=[f"{c[0].variant}-l{c[2][0]}-s{c[4]}" for c in SATURATED])
def test_saturated_softmax_gradient_float32(spec, batch, shape, mask, seed):
    from synth_ref import backends
    from synth_ref.conformance import check
    from synth_ref.conformance.cases import Case

    adapter = backends.get("torch-cuda" if DEVICE == "cuda" else "torch-triton-interpret")
    case = Case(spec, batch, shape, causal=True, mask=mask, values="large", seed=seed)
    out = check.check_gradient(adapter, case, "float32")
    assert out.status == "pass", out.message()
    assert adapter.last_path == "triton:flash"


@in_this_process
def test_random_gradient_precision_matches_the_reference():
    """R spread over +-150 in float32: the gradients through P (dV, so dx, dw_v, db_v) within 3x the
    eager float32 reference's own error against float64.  With P recomputed in the backward as
    exp(R - lse) (lse's rounding, |lse| ulps, in every weight) they were 7-25x."""
    spec = SPECS["random"]
    params = _params(spec, torch.float32)
    with torch.no_grad():
        params["r"].mul_(150.0)
    x, mask = _inputs(spec, torch.float32, masked=False)
    dy = torch.randn(B, L, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(DEVICE)
    names = ["x", "w_v", "b_v"]

    def grads(dtype, kernels):
        p = {n: t.detach().to(dtype).requires_grad_(True) for n, t in params.items()}
        xx = x.detach().to(dtype).requires_grad_(True)
        y, path = torch_triton.layer_forward(spec, p, xx, causal=True, kernels=kernels)
        g = torch.autograd.grad(y, [xx, p["w_v"], p["b_v"]], dy.to(dtype))
        return dict(zip(names, g, strict=True)), path

    gold, _ = grads(torch.float64, "never")
    ref, _ = grads(torch.float32, "never")
    got, path = grads(torch.float32, "always")
    assert path == "triton:random"
    err = {n: (got[n].double() - gold[n]).abs().max().item() for n in names}
    ref_err = {n: (ref[n].double() - gold[n]).abs().max().item() for n in names}
    assert all(err[n] <= 3 * ref_err[n] for n in names), (err, ref_err)


@in_this_process
def test_aft_gradient_precision_matches_the_reference():
    """dV (hence dw_v, db_v) on the deep grid's opposed AFT case: within 3x the reference's own float32
    error.  With P recomputed as exp(z - lse) it was 27x (dw_v) and 47x (db_v)."""
    from kernel_precision import AFT_LSE_CASE, gradient_errors, reference_errors

    from synth_ref import backends

    adapter = backends.get("torch-cuda" if DEVICE == "cuda" else "torch-triton-interpret")
    names = ("w_v", "b_v")
    got = gradient_errors(adapter, AFT_LSE_CASE, names)
    assert adapter.last_path == "triton:aft"
    ref = reference_errors(AFT_LSE_CASE, names)
    assert all(got[n] <= 3 * ref[n] for n in names), (got, ref)


#: Triton's int32 offsets wrap at this many elements (synth_ref/backends/torch_triton/_common.py,
#: "Offsets").
I32 = 2**31


def _spread(t, axis, where):
    """t's values in a view on a sparse file mapping, with the stride of ``axis`` such that its last
    index lies past 2**31 elements while the stride itself stays below 2**31 (t.shape[axis] >= 3),
    so that Triton types it int32 and an int32 product index * stride would wrap.  Only the view's
    own pages are ever touched: memory and disk stay small however far the offsets reach."""
    n = t.shape[axis]
    assert n >= 3, f"spread axis {axis} of {tuple(t.shape)}: need 3 or more"
    strides, run = [0] * t.dim(), 1
    for i in reversed(range(t.dim())):
        if i == axis:
            run = max(run, -(-I32 // (n - 1)))
            assert run < I32 <= (n - 1) * run
        strides[i] = run
        run *= t.shape[i]
    path = where / f"spread-{len(list(where.iterdir()))}"
    base = torch.from_file(str(path), shared=True, size=run, dtype=t.dtype)
    path.unlink()  # the mapping stays valid; nothing is left on disk
    view = base.as_strided(t.shape, strides)
    view.copy_(t)
    return view


class _SpreadAlloc:
    """Stands in for ``torch`` in a kernel module: the gradient buffer of shape ``shape`` comes
    spread along ``axis`` (the kernels write it through their strides), everything else is torch."""

    def __init__(self, shape, axis, where):
        self.shape, self.axis, self.where, self.made = tuple(shape), axis, where, 0

    def __getattr__(self, name):
        return getattr(torch, name)

    def _alloc(self, fill, size, kwargs):
        size = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else tuple(size)
        t = fill(size, **kwargs)
        if size == self.shape:
            self.made += 1
            t = _spread(t, self.axis, self.where)
        return t

    def empty(self, *size, **kwargs):
        return self._alloc(torch.empty, size, kwargs)

    def zeros(self, *size, **kwargs):
        return self._alloc(torch.zeros, size, kwargs)


def _offset_case(family, variant):
    """(run(**inputs) -> output, inputs, {input: axis to spread}, (kernel module, gradient shape,
    axis)) for one kernel family: "rows" spreads the (l, l) arrays' rows (and the batch), "heads"
    their head or group axis (and the activations' heads / batch under a mask)."""
    from synth_ref.backends.torch_triton import _aft, _aft_window, _flash, _random

    g = torch.Generator().manual_seed(5)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * scale

    rows = variant == "rows"
    l = 16  # two row and key blocks of 8
    if family == "random":
        h, B, e = (2, 3, 4) if rows else (3, 2, 4)
        mask = None if rows else torch.rand(B, l, generator=g) > 0.3
        x = {"r": rnd(h, l, l, scale=2.0), "v": rnd(B, h, l, e)}
        spread = {"r": 1, "v": 0} if rows else {"r": 0, "v": 1}
        return (lambda r, v: _random.RandomMix.apply(r, v, not rows, mask), x, spread,
                (_random, (h, l, l), 1 if rows else 0))
    if family == "flash":
        H, B, D, E, fa, fb_ = (2, 3, 4, 4, 4, 6) if rows else (3, 2, 4, 4, 4, 6)
        mask = torch.rand(B, l, generator=g) > 0.3
        x = {"q": rnd(B, H, l, D), "k": rnd(B, H, l, D), "v": rnd(B, H, l, E), "kb": rnd(H, l),
             "fb": rnd(H, l, l, scale=2.0), "ga": rnd(B, H, l, fa), "gb": rnd(B, H, l, fb_)}
        ax = 0 if rows else 1
        spread = {n: ax for n in ("q", "k", "v", "ga", "gb")} | {"fb": 1 if rows else 0}
        return (lambda **t: _flash.flash_mix(**t, scale=0.5, causal=rows, mask=mask, factors=(fa, fb_)),
                x, spread, (_flash, (H, l, l), 1 if rows else 0))
    B, d = 3, 6
    mask = None if rows else torch.rand(B, l, generator=g) > 0.3
    if family == "aft":
        G = 1 if rows else 3
        x = {"k": rnd(B, l, d), "v": rnd(B, l, d), "w": rnd(G, l, l, scale=2.0)}
        spread = {"k": 0, "v": 0, "w": 1 if rows else 0}
        return (lambda k, v, w: _aft.AftMix.apply(k, v, w, not rows, mask), x, spread,
                (_aft, (G, l, l), 1 if rows else 0))
    # the windowed kernels ("rows" only): three blocks of 8, a band of NW = 7 offsets from lo = -3,
    # non-causal (the first row block has a far key block after its band, the last one before it)
    l, G, nw, lo = 24, 3, 7, -3
    x = {"k": rnd(B, l, d), "v": rnd(B, l, d), "wb": rnd(G, l, nw, scale=2.0)}
    return (lambda k, v, wb: _aft_window.AftWindowMix.apply(k, v, wb, lo, False, None), x,
            {"k": 0, "v": 0, "wb": 0}, None)


@in_this_process
@pytest.mark.skipif(DEVICE != "cpu", reason="CPU interpreter only: on a GPU every spread input is a real "
                    "allocation of 2**31 elements (8.6 GB in float32)")
# aft-window runs "rows" only: removed one at a time, each int64 cast of _aft_window already
# crashes or fails that case ("heads" added no catch, and 10 s of interpreter time); every one of
# the 24 casts, removed alone, fails one of these 7 cases.
@pytest.mark.parametrize("family, variant",
                         [(f, v) for f in ("random", "flash", "aft") for v in ("rows", "heads")]
                         + [("aft-window", "rows")])
def test_offsets_past_2_31_elements(family, variant, tmp_path, monkeypatch):
    """Every kernel family gives the same output and gradients, to the bit, when its inputs (and the
    (l, l) gradient it writes) are views whose element offsets pass 2**31: the batch, head or group
    index and the rows of (l, l) arrays times their strides wrap in int32 (see _common, "Offsets").
    Before the kernels took those in int64, the first such case crashed the interpreter (segfault:
    R read 8 GB before its buffer); on a GPU, an illegal address or another tensor's numbers."""
    from synth_ref.backends.torch_triton import _common

    run, x, spread, grad_buf = _offset_case(family, variant)
    dy = None

    def forward_backward(inputs):
        nonlocal dy
        leaves = {n: t.requires_grad_(True) for n, t in inputs.items()}
        with _common.sequence_block(8):
            y = run(**leaves)
            dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(6)) if dy is None else dy
            grads = torch.autograd.grad(y, list(leaves.values()), dy)
        return y.detach(), dict(zip(leaves, grads, strict=True))

    want_y, want_grads = forward_backward({n: t.clone() for n, t in x.items()})
    if grad_buf is not None:
        module, shape, axis = grad_buf
        alloc = _SpreadAlloc(shape, axis, tmp_path)
        monkeypatch.setattr(module, "torch", alloc)
    big = {n: _spread(t, spread[n], tmp_path) if n in spread else t.clone() for n, t in x.items()}
    got_y, got_grads = forward_backward(big)
    if grad_buf is not None:
        assert alloc.made == 1, f"the (l, l) gradient buffer {shape} was allocated {alloc.made} times"
    assert torch.isfinite(want_y).all()
    assert torch.equal(got_y, want_y), f"output differs by {(got_y - want_y).abs().max().item()}"
    for n, want in want_grads.items():
        got = got_grads[n]
        assert torch.isfinite(want).all(), n
        assert torch.equal(got, want), f"d{n} differs by {(got - want).abs().max().item()}"


@pytest.mark.parametrize("family", ["flash", "random", "aft", "aft-window"])
def test_grid_past_cuda_limit_is_refused(family):
    """A launch needing more than 65535 programs on grid axis 1 or 2 (here a batch of 65536) is
    refused before it runs, naming the kernel, what the axis counts and the input's shape; CUDA
    would fail with a bare "invalid argument", the interpreter would run it.  No kernel runs, so
    this needs no interpreter."""
    from synth_ref.backends.torch_triton import _aft, _aft_window, _flash, _random

    B = 65536
    if family == "flash":
        v = torch.zeros(B, 1, 1, 2, device=DEVICE)
        call, what = (lambda: _flash.flash_mix(None, None, v)), r"\(batch element, head\): 65536"
    elif family == "random":
        v, r = torch.zeros(B, 1, 1, 2, device=DEVICE), torch.zeros(1, 1, 1, device=DEVICE)
        mask = torch.ones(B, 1, dtype=torch.bool, device=DEVICE)
        call, what = (lambda: _random.RandomMix.apply(r, v, False, mask)), r"\(head, batch element\): 65536"
    else:
        k = torch.zeros(B, 1, 32, device=DEVICE)  # B * d / 32 columns per program: 65536 programs
        what = r"block of 32 columns \(batch x channels\): 65536"
        if family == "aft":
            call = lambda: _aft.AftMix.apply(k, k, None, False, None)  # noqa: E731
        else:
            call = lambda: _aft_window.AftWindowMix.apply(k, k, torch.zeros(1, 1, 1, device=DEVICE), 0,  # noqa: E731
                                                          False, None)
    with pytest.raises(ValueError, match=rf"the {family} kernel launches one program per {what} for an "
                       rf"input of shape \({B}, 1, .*over CUDA's 65535 per grid axis; use kernels='never'"):
        call()
