"""Every Triton kernel compiles for an H100 (sm_90) down to a cubin, without a GPU.

The interpreter (tests/test_torch_kernels.py) checks the kernels' numbers but not that Triton's
compiler accepts them: constructs the interpreter runs (Python conditionals on runtime values,
mismatched dtypes in tl.dot, block shapes below tl.dot's minimum) can fail to compile.  Triton's
ahead-of-time path (ASTSource + GPUTarget, with the ptxas that ships in the triton wheel) compiles
them here, with the block sizes and warps the wrappers launch with.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch", reason="the kernels need torch")
pytest.importorskip("triton", reason="the kernels need triton (pip install triton)")

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1",
    reason="TRITON_INTERPRET=1 makes the kernels interpreted functions, which do not compile",
)


def _cases(dtype):
    import triton.language as tl

    from synth_ref.backends.torch_triton import _aft, _aft_window, _common, _flash, _random

    flags = dict(CAUSAL=True, HAS_MASK=True, ACC=tl.float32)
    flash = dict(flags, HAS_KB=True, HAS_FB=True, HAS_QK=True, HAS_FD=True, FD_TILE=False,
                 BM=64, BK=32, BD=64, BE=64)
    # factorized_dense alone: no product term, the "tile" column map.  Its pointer types are those of
    # the full flash case above, so one dtype suffices (each compile costs CI seconds).
    fdense = dict(flash, HAS_KB=False, HAS_FB=False, HAS_QK=False, FD_TILE=True)
    # the backward kernels after the delta pass: the dominant-key term in float32 (EXACT_DELTA) only
    bwd, fdense_bwd = (dict(d, DOMINANT=dtype != "bf16") for d in (flash, fdense))
    rand = dict(flags, BM=64, BN=64, BK=64)
    import torch

    floor = _aft.FLOOR[torch.float32]
    aft = dict(flags, HAS_W=True, BT=_aft.BT, BN=_aft.BN, FLOOR=floor)
    win = dict(flags, BT=_aft.BT, BN=_aft.BN, FLOOR=floor)
    scan = dict(HAS_MASK=True, ACC=tl.float32, BT=_aft.BT, BN=_aft.BN)
    scans = {"pre_ptr", "suf_ptr"}
    nw = _common.NUM_WARPS
    return [
        (_random._fwd, rand, {"mx_ptr", "inv_ptr"}, nw),  # row max and 1 / sum in float32
        (_random._bwd_dv, rand, {"mx_ptr", "inv_ptr"}, nw),
        (_random._bwd_dr, rand, {"mx_ptr", "inv_ptr"}, nw),
        (_flash._fwd, flash, {"o_ptr"}, nw),  # O unrounded in float32 (_flash.EXACT_DELTA)
        (_flash._bwd_delta, flash, set(), nw),  # float32 and float64 only (EXACT_DELTA)
        (_flash._bwd_dkv, bwd, {"dk_ptr", "dv_ptr", "dkb_ptr"}, nw),
        (_flash._bwd_dq, bwd, {"dq_ptr", "dga_ptr", "dgb_ptr"}, nw),
        (_flash._bwd_dfb, bwd, {"dfb_ptr"}, nw),
        (_aft._fwd, aft, set(), 4),
        (_aft._bwd_dkv, aft, set(), 4),
        (_aft._bwd_dw, dict(aft, DIAG=False), {"dw_ptr"}, 4),
        (_aft._bwd_dw, dict(aft, DIAG=True), {"dw_ptr"}, 4),
        # keys' summaries (forward) and rows' (backward: score lse, values dO and dO O)
        (_aft_window._scan, dict(scan, SIGN=1, HAS_C=False), scans, 4),
        (_aft_window._scan, dict(scan, SIGN=-1, HAS_C=True, HAS_MASK=False), scans | {"s_ptr", "c_ptr"}, 4),
        (_aft_window._fwd_win, win, scans, 4),
        (_aft_window._fwd_win, dict(win, CAUSAL=False), scans, 4),  # merges the suffix too
        (_aft_window._bwd_dkv_win, win, scans, 4),
        (_aft_window._bwd_dkv_win, dict(win, CAUSAL=False), scans, 4),
        (_aft_window._bwd_dw_win, dict(win, DIAG=False), {"dwb_ptr"}, 4),
        (_aft_window._bwd_dw_win, dict(win, DIAG=True), {"dwb_ptr"}, 4),
    ] + ([(_flash._fwd, fdense, {"o_ptr"}, nw),
          (_flash._bwd_dkv, fdense_bwd, {"dk_ptr", "dv_ptr", "dkb_ptr"}, nw),
          (_flash._bwd_dq, fdense_bwd, {"dq_ptr", "dga_ptr", "dgb_ptr"}, nw)] if dtype == "bf16" else [])


def _signature(kernel, dtype, consts, fp32_ptrs):
    """Pointer types as the wrappers pass them: inputs and outputs in the layer's dtype; the row
    statistics and the gradients the wrappers accumulate in float32; the mask as int8, the AFT flag
    and the flash backward's dominant key per row as int32."""
    sig = {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name == "m_ptr":
            sig[name] = "*i8"
        elif name in ("bad_ptr", "idx_ptr"):  # the AFT forward's flag; the dominant key of a row
            sig[name] = "*i32"
        elif name in ("lse_ptr", "delta_ptr", "corr_ptr", "stats_ptr") or name in fp32_ptrs:
            sig[name] = "*fp32"
        elif name.endswith("_ptr"):
            sig[name] = "*" + dtype
        elif name == "scale":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


#: Shared memory one thread block may use on an H100 (sm_90): 227 KB.  A kernel over it compiles
#: but fails at launch ("out of resource: shared memory"), so the compile alone does not show it.
SM90_SHARED = 232448


def _compile(kernel, dtype, consts, fp32_ptrs, warps):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=kernel, signature=_signature(kernel, dtype, consts, fp32_ptrs), constexprs=consts)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    name = f"{kernel.fn.__module__}.{kernel.fn.__name__}"
    assert compiled.asm.get("cubin"), f"{name}: no cubin"
    shared = compiled.metadata.shared
    assert shared <= SM90_SHARED, f"{name}: {shared} bytes of shared memory, over sm_90's {SM90_SHARED}"
    return compiled


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_every_kernel_compiles_for_sm90(dtype):
    for kernel, consts, fp32_ptrs, warps in _cases(dtype):
        _compile(kernel, dtype, consts, fp32_ptrs, warps)


def test_widest_flash_blocks_fit_sm90_shared_memory():
    """The flash kernels at the widest blocks the wrapper launches (a head width up to
    _plan.BLOCK_CAP = 128: BD = BE = 128) with float32 tiles, the largest, fit an H100's shared
    memory: 139-205 KB here; at 256 wide they would need 254-401 KB, and wider heads take the
    reference (_plan.flash_too_wide)."""
    from synth_ref.backends.torch_triton import _flash, _plan

    for kernel, consts, fp32_ptrs, warps in _cases("fp32"):
        if kernel in (_flash._fwd, _flash._bwd_delta, _flash._bwd_dkv, _flash._bwd_dq, _flash._bwd_dfb):
            _compile(kernel, "fp32", dict(consts, BD=_plan.BLOCK_CAP, BE=_plan.BLOCK_CAP), fp32_ptrs, warps)
