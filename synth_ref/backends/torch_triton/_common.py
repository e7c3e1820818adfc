"""Helpers shared by the kernel wrappers: dtypes, block sizes, mask arguments.

Offsets.  Triton types an integer argument below 2**31, tl.program_id and tl.arange as int32 and
computes index * stride in int32, which wraps past 2**31 elements: a negative offset, so an illegal
address or another tensor's data, never an error.  Arrays reach that at sizes people run: random's R
and AFT's w' (and their gradients) at h * l * l >= 2**31 (l = 16384 with 9 heads; a single (l, l)
slab's row offsets at l = 46341, e.g. aft_full at the benchmarks' l = 65536) and activations of
2**31 elements ((B, l, d) = (64, 8192, 4096)).  So every kernel takes its program's batch, head and
group index as int64 (each offset they enter becomes int64), and the row index wherever it
multiplies the row stride of an (l, l) array; the other row and column terms stay int32 (one
(l, width) slab).  tests/test_torch_kernels.py runs every kernel family on views whose offsets pass
2**31 (``test_offsets_past_2_31_elements``).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

#: An upper bound on every block side (its value lives in _plan, which routes heads wider than it
#: away from the flash kernel); tests lower it to 16 so that small shapes still span several blocks
#: (the online-softmax merges, the causal skips) under the interpreter.
from ._plan import BLOCK_CAP

#: Accumulator dtype per input dtype: float64 inputs (interpreter tests) keep float64 end to end;
#: half types accumulate in float32 as flash attention does.  The wrappers allocate the statistics a
#: forward saves for its backward (row maxima and sums, O kept unrounded) in the same dtype.
STATS = {torch.float64: torch.float64, torch.float32: torch.float32, torch.float16: torch.float32,
         torch.bfloat16: torch.float32}
#: STATS as the kernels' ``ACC`` constant.
ACC = {dt: {torch.float64: tl.float64, torch.float32: tl.float32}[acc] for dt, acc in STATS.items()}

#: Warps per program for the GEMM-shaped kernels (flash, random): with 64-wide tiles, 4 warps spill
#: registers on sm_90 (ptxas -v on the AOT-compiled kernels), 8 do not.
NUM_WARPS = 8

#: Software-pipelining depth (Triton's ``num_stages``) of the GEMM-shaped kernels per input dtype.
#: bfloat16 and float16 run tl.dot on tensor cores and keep Triton's default, 3.  float32 and float64
#: run it exactly (input_precision="ieee": FMA on CUDA cores, not TF32), whose operand layouts hold
#: many more registers per thread: pipelined (3 or 2 deep) the kernels spilled to local memory on
#: sm_90 -- the flash backward's _bwd_dkv 9.5-10.7 KB of spill stores per thread in float32, every
#: form; the random backward's _bwd_dr 296 bytes -- and unpipelined, at the tiles their modules give
#: these dtypes (_flash.SEQ_TILES, _random.SEQ_TILES), none spills but float64's _bwd_dfb, 16 bytes
#: (ptxas -v; the sm_90 test holds every kernel to a budget at its launch configuration).
STAGES = {torch.float64: 1, torch.float32: 1, torch.float16: 3, torch.bfloat16: 3}


def launch_options(dtype: torch.dtype) -> dict:
    """Triton's launch options for a GEMM-shaped kernel on inputs of ``dtype``."""
    return dict(num_warps=NUM_WARPS, num_stages=STAGES[dtype])


#: Warps per program of the AFT kernels (_aft, _aft_window's band kernels), every dtype.  At
#: Triton's default, 4, their (16 x 32) tiles spilled registers on sm_90 (ptxas -v): float64 68-304
#: bytes per thread, and with Triton 3.6 (the GPU machine's) bfloat16 / float32 too, up to 168 (the
#: forward, _fwd and _fwd_win); at 8 the worst is 24 bytes (Triton 3.6 and 3.9, bfloat16 / float32).
#: Eight warps at <= 255 registers fill an SM's register file as two programs of four did.
AFT_WARPS = 8


#: The smallest block side: tl.dot needs at least 16 on NVIDIA GPUs.
MIN_BLOCK = 16


def block(n: int, cap: int) -> int:
    """A power-of-two block side covering n, at least MIN_BLOCK and at most min(cap, BLOCK_CAP)."""
    return max(MIN_BLOCK, min(cap, BLOCK_CAP, triton.next_power_of_2(max(1, n))))


#: When set, the block side of every sequence axis (query rows and keys; feature axes keep
#: ``block``), below MIN_BLOCK if need be: the torch-triton-interpret adapter sets 8 (Triton's
#: interpreter takes 8 x 8 dots), so that the conformance suite's lengths (12, 5) span two row and
#: key blocks, the second partial, as jax-pallas-interpret's tiles of 8 do.  With the default blocks
#: (16 and up) every suite case fit one block, and an online-softmax merge that dropped its rescale,
#: or a windowed AFT kernel that skipped a far key block, passed the whole suite.
SEQ_BLOCK: int | None = None


def seq_side(default: int) -> int:
    """A sequence axis's block side: SEQ_BLOCK when set, else the kernel's own ``default``."""
    return SEQ_BLOCK if SEQ_BLOCK is not None else default


def seq_block(n: int, cap: int) -> int:
    """The block side of a sequence axis of length n: SEQ_BLOCK when set, else ``block(n, cap)``."""
    return seq_side(block(n, cap))


@contextlib.contextmanager
def sequence_block(side: int | None):
    """SEQ_BLOCK = side inside the block (None: the default blocks)."""
    global SEQ_BLOCK
    if side is not None and (side < 1 or side & (side - 1)):
        raise ValueError(f"sequence block: expected a power of two; got {side}")
    old, SEQ_BLOCK = SEQ_BLOCK, side
    try:
        yield
    finally:
        SEQ_BLOCK = old


def acc_dtype(t: torch.Tensor):
    return ACC[t.dtype]


#: The key-padding mask's dtype in the kernels: int32, not one byte per key.  Triton sizes a tensor
#: core operand's registers (its dot-operand ``kWidth``) from the narrowest load in the values it is
#: computed from, and the mask feeds the softmax weights that go into the second product: an int8
#: mask gives float64 operands kWidth 4, which Triton 3.6 (the GPU machine's) cannot lower ("fp64
#: don't support largeK MMA": 19 of the 28 float64 kernels, all masked, failed to compile for
#: sm_90).  (B, l) int32 costs 4 bytes a key.  tests/test_torch_kernels_sm90.py holds float64
#: operands to kWidth 1.
MASK_DTYPE = torch.int32


def mask_args(mask: torch.Tensor | None, like: torch.Tensor):
    """(tensor, batch stride, key stride, has_mask) for a (B, l) boolean key-padding mask, as
    MASK_DTYPE; a dummy one-element tensor when there is none (Triton still wants a pointer)."""
    if mask is None:
        return like.new_zeros(1, dtype=MASK_DTYPE), 0, 0, False
    m = mask.to(MASK_DTYPE)
    return m, m.stride(0), m.stride(1), True


def first_order_only(kernel: str) -> None:
    """Called first in every kernel's backward: raise when autograd records it (create_graph=True,
    as for a gradient penalty or a Hessian-vector product).  The backward runs Triton kernels, which
    autograd cannot differentiate, so a second derivative through it would silently miss the
    kernel's share (AFT-full's d/dw_o of |dL/dx|^2 was off by 95% of its size).  torch's
    @once_differentiable does not catch this: its error node is pruned whenever the second
    derivative also has a path around the kernel, or none at all.  Not checked while torch.compile
    traces the backward."""
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError(
            f"the {kernel} kernel's backward is not differentiable (create_graph=True): use "
            "MixingLayer(..., kernels='never') (the reference) for higher-order derivatives"
        )


#: CUDA's limit on the programs of a launch grid's axes 1 and 2 (axis 0 takes 2**31 - 1).
GRID_YZ_MAX = 65535


def check_grid(kernel: str, grid: tuple[int, ...], what: tuple[str, ...], shape) -> tuple[int, ...]:
    """``grid``, the launch grid of ``kernel``, once checked: an axis 1 or 2 past CUDA's 65535
    programs is refused, naming what it counts (``what``: axis 1, then 2) and the input ``shape``.
    The launch itself would fail with CUDA's bare "invalid argument", and the interpreter has no
    such limit."""
    for counts, n in zip(what, grid[1:], strict=True):
        if n > GRID_YZ_MAX:
            raise ValueError(
                f"the {kernel} kernel launches one program per {counts}: {n} for an input of shape "
                f"{tuple(shape)}, over CUDA's {GRID_YZ_MAX} per grid axis; use kernels='never' (the "
                "reference) or split the batch")
    return grid


@triton.jit
def pairs_in_range(rows, keys, l, CAUSAL: tl.constexpr):
    """(rows, keys) tile of pairs inside the sequence and, causal, with key <= row."""
    ok = (rows[:, None] < l) & (keys[None, :] < l)
    if CAUSAL:
        ok = ok & (keys[None, :] <= rows[:, None])
    return ok
