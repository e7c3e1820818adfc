"""Every Triton kernel compiles for an H100 (sm_90) down to a cubin, without a GPU.

The interpreter (tests/test_torch_kernels.py) checks the kernels' numbers but not that Triton's
compiler accepts them: constructs the interpreter runs (Python conditionals on runtime values,
mismatched dtypes in tl.dot, block shapes below tl.dot's minimum) can fail to compile.  Triton's
ahead-of-time path (ASTSource + GPUTarget, with the ptxas that ships in the triton wheel) compiles
them here, with the block sizes, warps and pipelining depth the wrappers launch with, and ptxas -v
reports what each kernel would cost an H100 in registers and spills to local memory -- a kernel
that spills kilobytes per thread runs, and passes every numeric test, at a fraction of its speed.
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


#: Triton's names of the input dtypes, and the torch dtypes the wrappers see.
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp64": "float64"}

#: The dtypes compiled: float16 takes bfloat16's tiles, options and tensor-core layouts (checked once
#: by hand: the same registers and spill stores, kernel for kernel, over all 25 it shares), so
#: bfloat16 stands for both and CI spends its compile time (a minute per dtype) on the others.
COMPILED = ("bf16", "fp32", "fp64")

#: The length the launch configurations are read at: issue 4's target shape (l = 4096), long enough
#: for every tile to take its largest side.
L = 4096


def _cases(dtype, forms=("all",)):
    """(kernel, constexprs, pointers the wrappers pass in the statistics' dtype, launch options) for
    every kernel, with the tiles and options the wrappers launch it with on ``dtype`` at length L
    (``_flash._meta``, ``_random._meta``, the AFT modules' tiles and ``_common.AFT_WARPS``).
    ``forms`` picks the flash kernels' terms: "all" (every optional term, the widest kernels),
    "dot" (dot_product alone), "dense" (a product and a key bias), "mix" (a product and a full bias:
    the benchmarks' mixture of dot_product and random)."""
    import torch

    from synth_ref.backends.torch_triton import _aft, _aft_window, _common, _flash, _random

    tdt = getattr(torch, DTYPES[dtype])
    acc = _common.ACC[tdt]

    def split(meta):  # (constexprs, launch options) of a wrapper's meta dict
        opts = {k: meta.pop(k) for k in ("num_warps", "num_stages")}
        return meta, opts

    cases = []
    exact = tdt in _flash.EXACT_DELTA  # the delta pass and the dominant-key term
    for form in forms:
        # (kb, fb, fd) as the wrapper's _meta reads them: present or None
        kb, fb, fd = {"all": (1, 1, (64, 64, False)), "dot": (None, None, None),
                      "dense": (1, None, None), "mix": (None, 1, None)}[form]
        flash, opts = split(_flash._meta(L, 64, 64, True, True, kb, fb, fd, tdt))
        bwd = dict(flash, DOMINANT=exact)
        cases += [(_flash._fwd, flash, {"o_ptr"}, opts)]  # O unrounded in float32 (EXACT_DELTA)
        if exact:
            cases += [(_flash._bwd_delta, flash, set(), opts)]
        cases += [(_flash._bwd_dkv, bwd, {"dk_ptr", "dv_ptr", "dkb_ptr"}, opts),
                  (_flash._bwd_dq, bwd, {"dq_ptr", "dga_ptr", "dgb_ptr"}, opts)]
        if fb is not None:
            cases += [(_flash._bwd_dfb, bwd, {"dfb_ptr"}, opts)]
    if "all" in forms and dtype == "bf16":
        # factorized_dense alone: no product term, the "tile" column map.  Its pointer types are
        # those of the full case, so one dtype suffices (each compile costs CI seconds).
        fdense, opts = split(_flash._meta(L, 0, 64, True, True, None, None, (64, 64, True), tdt))
        fdense_bwd = dict(fdense, DOMINANT=exact)
        cases += [(_flash._fwd, fdense, {"o_ptr"}, opts),
                  (_flash._bwd_dkv, fdense_bwd, {"dk_ptr", "dv_ptr", "dkb_ptr"}, opts),
                  (_flash._bwd_dq, fdense_bwd, {"dq_ptr", "dga_ptr", "dgb_ptr"}, opts)]
    rand, opts = split(_random._meta(L, 4 * 64, True, True, tdt))  # B = 4 x e = 64 value columns
    cases += [(_random._fwd, rand, {"mx_ptr", "inv_ptr"}, opts),  # row max and 1 / sum
              (_random._bwd_dv, rand, {"mx_ptr", "inv_ptr"}, opts),
              (_random._bwd_dr, rand, {"mx_ptr", "inv_ptr"}, opts)]
    flags = dict(CAUSAL=True, HAS_MASK=True, ACC=acc)
    floor = _aft.FLOOR[_common.STATS[tdt]]
    aft = dict(flags, HAS_W=True, BT=_aft.BT, BN=_aft.BN, FLOOR=floor)
    win = dict(flags, BT=_aft.BT, BN=_aft.BN, FLOOR=floor)
    scan = dict(HAS_MASK=True, ACC=acc, BT=_aft.BT, BN=_aft.BN)
    scans = {"pre_ptr", "suf_ptr"}
    four = {"num_warps": 4}  # the key / row scans launch with Triton's default
    aw = {"num_warps": _common.AFT_WARPS}
    return cases + [
        (_aft._fwd, aft, set(), aw),
        (_aft._bwd_dkv, aft, set(), aw),
        (_aft._bwd_dw, dict(aft, DIAG=False), {"dw_ptr"}, aw),
        (_aft._bwd_dw, dict(aft, DIAG=True), {"dw_ptr"}, aw),
        # keys' summaries (forward) and rows' (backward: score lse, values dO and dO O)
        (_aft_window._scan, dict(scan, SIGN=1, HAS_C=False), scans, four),
        (_aft_window._scan, dict(scan, SIGN=-1, HAS_C=True, HAS_MASK=False), scans | {"s_ptr", "c_ptr"},
         four),
        (_aft_window._fwd_win, win, scans, aw),
        (_aft_window._fwd_win, dict(win, CAUSAL=False), scans, aw),  # merges the suffix too
        (_aft_window._bwd_dkv_win, win, scans, aw),
        (_aft_window._bwd_dkv_win, dict(win, CAUSAL=False), scans, aw),
        (_aft_window._bwd_dw_win, dict(win, DIAG=False), {"dwb_ptr"}, aw),
        (_aft_window._bwd_dw_win, dict(win, DIAG=True), {"dwb_ptr"}, aw),
    ]


def _signature(kernel, dtype, consts, stat_ptrs):
    """Pointer types as the wrappers pass them: inputs and outputs in the layer's dtype; the row
    statistics and the gradients the wrappers accumulate in _common.STATS (float32, float64 for
    float64 inputs); the mask as _common.MASK_DTYPE, the AFT flag and the flash backward's dominant
    key per row as int32."""
    import torch

    from synth_ref.backends.torch_triton import _common

    stat = "*fp" + str(_common.STATS[getattr(torch, DTYPES[dtype])].itemsize * 8)
    sig = {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name == "m_ptr":
            sig[name] = "*i" + str(_common.MASK_DTYPE.itemsize * 8)
        elif name in ("bad_ptr", "idx_ptr"):  # the AFT forward's flag; the dominant key of a row
            sig[name] = "*i32"
        elif name in ("lse_ptr", "delta_ptr", "corr_ptr", "stats_ptr") or name in stat_ptrs:
            sig[name] = stat
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


def _compile(kernel, dtype, consts, stat_ptrs, opts):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=kernel, signature=_signature(kernel, dtype, consts, stat_ptrs), constexprs=consts)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(opts))
    name = _name(kernel, consts)
    assert compiled.asm.get("cubin"), f"{name}: no cubin"
    shared = compiled.metadata.shared
    assert shared <= SM90_SHARED, f"{name}: {shared} bytes of shared memory, over sm_90's {SM90_SHARED}"
    return compiled


def _name(kernel, consts):
    flags = ",".join(f"{k}={int(v)}" for k, v in consts.items() if isinstance(v, bool))
    return f"{kernel.fn.__module__.rsplit('.', 1)[-1]}.{kernel.fn.__name__}({flags})"


@pytest.mark.parametrize("dtype", COMPILED)
def test_widest_flash_blocks_fit_sm90_shared_memory(dtype):
    """The flash kernels at the widest blocks the wrapper launches (a head width up to
    _plan.BLOCK_CAP = 128: BD = BE = 128), at each dtype's tiles and pipelining, fit an H100's
    shared memory; wider heads take the reference (_plan.flash_too_wide)."""
    from synth_ref.backends.torch_triton import _flash, _plan

    for kernel, consts, stat_ptrs, opts in _cases(dtype):
        if kernel in (_flash._fwd, _flash._bwd_delta, _flash._bwd_dkv, _flash._bwd_dq, _flash._bwd_dfb):
            _compile(kernel, dtype, dict(consts, BD=_plan.BLOCK_CAP, BE=_plan.BLOCK_CAP), stat_ptrs, opts)


def _ptxas() -> str:
    """The ptxas Triton itself assembles sm_90 code with (its wheel ships it)."""
    from triton.backends.nvidia import compiler

    try:
        return compiler.get_ptxas(90).path
    except TypeError:  # Triton releases whose get_ptxas takes no architecture
        return compiler.get_ptxas().path


def _spills(compiled, tmp_path) -> tuple[int, int]:
    """(registers per thread, bytes of spill stores per thread) ptxas reports for a compiled kernel."""
    import re
    import subprocess

    ptx = tmp_path / "kernel.ptx"
    ptx.write_text(compiled.asm["ptx"])
    arch = re.search(r"^\.target\s+(\S+)", compiled.asm["ptx"], re.M).group(1)
    out = subprocess.run([_ptxas(), "-v", f"--gpu-name={arch}", str(ptx), "-o", str(tmp_path / "k.cubin")],
                         capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    stores = re.search(r"(\d+) bytes spill stores", out)
    assert regs and stores, out
    return int(regs.group(1)), int(stores.group(1))


#: Spill stores (bytes per thread) a kernel may keep at its launch configuration: a few registers'
#: worth, which L1 absorbs.  What this guards against: the float32 flash backward kernels, pipelined
#: at the half types' tiles, spilled 3.2 KB (_bwd_dfb) to 10.7 KB (_bwd_dkv) per thread
#: (_common.STAGES).  At the launch configurations, with Triton 3.9, the worst left is 48 bytes
#: (bfloat16 _flash._bwd_dkv and _bwd_dq with every term of the mixture); the flash kernels of the
#: benchmarks' targets (dot_product, dense, the mixture of dot_product and random) spill nothing in
#: any dtype.  With Triton 3.6 two kernels no benchmark runs pass the budget: float64 _aft._fwd (120
#: bytes) and bfloat16 _flash._bwd_dkv with every term (176); and the benchmarked mixture's bfloat16
#: _bwd_dkv spills 24 (255 registers; 0 with 3.9).
SPILL_BUDGET = 64


def _benchmarked(kernel, consts) -> bool:
    """Whether a case is a flash kernel of the benchmarks' targets (dot_product, dense, the mixture
    of dot_product and random: the forms "dot", "dense", "mix" of :func:`_cases`), which are held to
    no spill at all; "all" (a key bias and a full bias together) and factorized_dense (HAS_FD) get
    the budget."""
    return (kernel.fn.__module__.endswith("_flash") and not consts["HAS_FD"]
            and not (consts["HAS_KB"] and consts["HAS_FB"]))


def _fp64_operand_widths(compiled) -> set[int]:
    """The ``kWidth`` of every tensor-core operand layout in a compiled kernel's TTGIR: how many
    consecutive K elements one thread holds.  Triton picks it from the narrowest load the operand is
    computed from; Triton 3.6, the GPU machine's, cannot lower a float64 operand wider than 1 (an
    int8 mask made it 4: _common.MASK_DTYPE).  Newer Triton lowers it, so CI checks the width."""
    import re

    return {int(k) for k in re.findall(r"dot_op<\{[^}]*kWidth = (\d+)", compiled.asm["ttgir"])}


@pytest.mark.parametrize("dtype", COMPILED)
def test_every_kernel_compiles_for_sm90_without_spilling(dtype, tmp_path):
    """Every kernel compiles for sm_90 to a cubin within its shared memory, with the tiles and
    launch options its wrapper uses on ``dtype`` (read from the wrappers, so a retuned tile is
    checked as launched), with float64 tensor-core operands of kWidth 1, and keeps its spill stores
    within SPILL_BUDGET (the benchmarked flash kernels, :func:`_benchmarked`: none).  The budget holds for the
    Triton CI pins; with another (``nox -s gpu_triton``: the GPU machine's) a kernel over it skips
    the test, naming the kernels."""
    import triton

    report, over, wide = [], [], []
    for kernel, consts, stat_ptrs, opts in _cases(dtype, forms=("all", "dot", "dense", "mix")):
        compiled = _compile(kernel, dtype, consts, stat_ptrs, opts)
        regs, stores = _spills(compiled, tmp_path)
        name = _name(kernel, consts)
        report.append(f"{name} {opts}: {regs} registers, {stores} bytes of spill stores")
        if stores > (0 if _benchmarked(kernel, consts) else SPILL_BUDGET):
            over.append(report[-1])
        widths = _fp64_operand_widths(compiled) if dtype == "fp64" else set()
        if widths - {1}:
            wide.append(f"{name}: float64 tensor-core operands of kWidth {widths}, which Triton 3.6 cannot "
                        "lower (it needs 1)")
    print("\n".join(report))
    assert not wide, "\n".join(wide)
    budgeted = _pinned("triton")
    if over and triton.__version__ != budgeted:
        pytest.skip(f"spills over the budget with Triton {triton.__version__}, which the budget (measured "
                    f"with {budgeted}, .ci/constraints.txt) does not hold:\n" + "\n".join(over))
    assert not over, "over the spill budget on sm_90:\n" + "\n".join(over)


def _pinned(package: str) -> str:
    """The version of ``package`` CI installs (.ci/constraints.txt)."""
    from pathlib import Path

    for line in (Path(__file__).parents[1] / ".ci" / "constraints.txt").read_text().splitlines():
        if line.startswith(package + "=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{package} is not pinned in .ci/constraints.txt")
