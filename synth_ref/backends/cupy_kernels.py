"""Fused CUDA kernels for the CuPy adapter, and the glue that launches them.

The CUDA sources live in ``synth_ref/backends/cuda/*.cu`` (compiled by CuPy's NVRTC at first use,
once per dtype; CI compiles every one of them with nvcc for sm_90, and the text CuPy gets with NVRTC
itself, tests/test_cupy_nvrtc.py).  What they fuse:

- ``masked_softmax_fwd``: the masked row softmax (masks from a causal flag and the key padding
  vector, never an (l, l) mask array; empty rows give 0), one pass instead of six elementwise ones.
- ``softmax_bwd``: dS = P (dP - sum_t' P dP), one block per row (the row term reduced from the
  same dP values dS uses).
- ``aft_fwd``, ``aft_bwd_kv``, ``aft_bwd_w``: the AFT sums with the exact per-(row, channel)
  stabiliser, streamed over keys with an online maximum: linear memory, where the Array-API
  steps need a (B, rows, l, d) block per row group.
- ``aftw_*``: AFT-local and 1-D AFT-conv through the windowed identity (prefix and suffix scans
  for the keys outside the band, the band summed directly): O(l * window) instead of O(l^2) work,
  with the same exact stabiliser; w' is read from its small table, never built as (G, l, l).

The products (P V, dO V^T, projections) stay with cuBLAS through ``xp.matmul``.

``KernelOps`` is everything except the launch itself; ``CupyOps`` launches on a GPU.  The tests
run ``KernelOps`` with a CPU emulation of the same sources (tests/test_cupy_kernels.py), so the
argument packing, the shapes and the kernels' arithmetic are checked without a GPU.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from array_api_compat import device as _device

from .cupy_impl.ops import XpOps
from .cupy_impl.position import BandGrad

#: Where the CUDA sources are.
CUDA_DIR = Path(__file__).with_name("cuda")

#: Every kernel the adapter launches: source file -> kernel names.  The nvcc check compiles every
#: ``*.cu`` in CUDA_DIR; the tests check that this table and that directory agree.
SOURCES = {
    "softmax.cu": ("masked_softmax_fwd", "softmax_bwd"),
    "aft.cu": ("aft_fwd", "aft_bwd_kv", "aft_bwd_w"),
    "aft_window.cu": ("aftw_scan_fwd", "aftw_fwd", "aftw_scan_bwd", "aftw_bwd_kv", "aftw_bwd_w"),
}

#: Each kernel's parameters, in order: "ptr" (an array), "i32" (int), "i64" (long long).
SIGNATURES = {
    "masked_softmax_fwd": ("ptr", "ptr", "ptr", "i64", "i32", "i64", "i32", "i32"),
    "softmax_bwd": ("ptr", "ptr", "ptr", "i32", "i64"),
    "aft_fwd": ("ptr",) * 7 + ("i32",) * 8,
    "aft_bwd_kv": ("ptr",) * 10 + ("i32",) * 8,
    "aft_bwd_w": ("ptr",) * 9 + ("i32",) * 6,
    "aftw_scan_fwd": ("ptr",) * 5 + ("i32",) * 5,
    "aftw_fwd": ("ptr",) * 9 + ("i32",) * 6 + ("i64",) * 4 + ("i32",) * 2,
    "aftw_scan_bwd": ("ptr",) * 6 + ("i32",) * 4,
    "aftw_bwd_kv": ("ptr",) * 12 + ("i32",) * 6 + ("i64",) * 4 + ("i32",) * 2,
    "aftw_bwd_w": ("ptr",) * 9 + ("i32",) * 6 + ("i64",) * 4 + ("i32",) * 2,
}

#: Kernels that synchronise threads within a block (the others are independent per thread).
COOPERATIVE = frozenset({"masked_softmax_fwd", "softmax_bwd"})

_DTYPES = ("float32", "float64")  # what the kernels are compiled for; float16 is computed in float32
_ELEMENTWISE_THREADS = 256
_AFT_THREADS = 128
_MAX_BLOCKS = 1 << 16  # grid-stride loops cover the rest


def source_text(filename: str, dtype: str) -> str:
    """One self-contained source: ``scalar_t`` defined and the shared header inlined (so that
    CuPy's compile cache, keyed by the text, sees a change to the header too)."""
    header = (CUDA_DIR / "sr_math.cuh").read_text()
    header = "\n".join(line for line in header.splitlines() if line.strip() != "#pragma once")
    body = (CUDA_DIR / filename).read_text().replace('#include "sr_math.cuh"', header)
    return f"#define scalar_t {'float' if dtype == 'float32' else 'double'}\n{body}"


def _blocks(n, threads):
    return max(1, min(_MAX_BLOCKS, -(-n // threads)))


class KernelOps(XpOps):
    """The fused steps, with the launch left to a subclass (``_launch``, ``_empty``, ``_contig``).
    Dtypes other than float32/float64 fall back to the Array-API steps."""

    softmax_threads = 256  # must equal SR_SOFTMAX_THREADS the softmax source was compiled with

    def _launch(self, name, dtype, grid, block, args):
        raise NotImplementedError

    def _empty(self, xp, shape, like):
        return xp.empty(shape, dtype=like.dtype, device=_device(like))

    def _contig(self, a):
        raise NotImplementedError

    def _dummy(self, xp, like, dtype=None):
        """A one-element array standing for an absent input (its has_* flag is 0)."""
        return xp.zeros((1,), dtype=like.dtype if dtype is None else dtype, device=_device(like))

    @staticmethod
    def _name(a):
        return str(a.dtype).rsplit(".", 1)[-1]

    # --- softmax family ---------------------------------------------------------------------------
    def masked_softmax(self, xp, s, causal, kpm):
        dt = self._name(s)
        if dt not in _DTYPES:
            return super().masked_softmax(xp, s, causal, kpm)
        bs, h, l, _ = s.shape
        batch = bs if kpm is None else kpm.shape[0]
        s = self._contig(s)
        p = self._empty(xp, (batch, h, l, l), s)
        mask = self._dummy(xp, s, xp.bool) if kpm is None else self._contig(kpm)
        args = (s, p, mask, h * l, l, 0 if bs == 1 else h * l * l, int(causal), int(kpm is not None))
        self._launch("masked_softmax_fwd", dt, batch * h * l, self.softmax_threads, args)
        return p

    def softmax_backward(self, xp, p, dp):
        dt = self._name(dp)
        if dt not in _DTYPES:
            return super().softmax_backward(xp, p, dp)
        p, dp = self._contig(p), self._contig(dp)
        ds = self._empty(xp, dp.shape, dp)
        rows = int(np.prod(dp.shape[:-1]))
        args = (p, dp, ds, dp.shape[-1], int(np.prod(p.shape)))
        self._launch("softmax_bwd", dt, rows, self.softmax_threads, args)
        return ds

    # --- AFT family -------------------------------------------------------------------------------
    def _aft_common(self, xp, k, pos, kpm, causal):
        """Shapes, the dense w' (a dummy without one) and the mask for the aft_* kernels."""
        B, l, d = k.shape
        G = 1 if pos is None else pos.groups
        lq = 1 if (pos is None and not causal) else l  # rows all alike: compute one
        w = self._dummy(xp, k) if pos is None else self._contig(pos.dense())
        mask = self._dummy(xp, k, xp.bool) if kpm is None else self._contig(kpm)
        return B, l, d, G, lq, w, mask

    def aft_forward(self, xp, k, v, pos, causal, kpm):
        dt = self._name(k)
        if dt not in _DTYPES:
            return super().aft_forward(xp, k, v, pos, causal, kpm)
        if pos is not None and pos.band is not None:
            return self._window_forward(xp, dt, k, v, pos, causal, kpm)
        B, l, d, G, lq, w, mask = self._aft_common(xp, k, pos, kpm, causal)
        k, v = self._contig(k), self._contig(v)
        r, mx, inv = (self._empty(xp, (B, lq, d), k) for _ in range(3))
        flags = (int(causal), int(pos is not None), int(kpm is not None))
        args = (k, v, w, mask, r, mx, inv, B, lq, l, d, G) + flags
        self._launch("aft_fwd", dt, _blocks(B * lq * d, _AFT_THREADS), _AFT_THREADS, args)
        if lq != l:
            r, mx, inv = (xp.broadcast_to(a, (B, l, d)) for a in (r, mx, inv))
        return r, (mx, inv)

    def aft_backward(self, xp, k, v, pos, causal, kpm, r, stats, dr):
        dt = self._name(k)
        if dt not in _DTYPES:
            return super().aft_backward(xp, k, v, pos, causal, kpm, r, stats, dr)
        if pos is not None and pos.band is not None:
            return self._window_backward(xp, dt, k, v, pos, causal, kpm, r, stats, dr)
        B, l, d, G, lq, w, mask = self._aft_common(xp, k, pos, kpm, causal)
        mx, inv = stats
        if lq != l:  # one representative row; dR summed over the rows it stands for
            r, mx, inv, dr = r[:, :1, :], mx[:, :1, :], inv[:, :1, :], xp.sum(dr, axis=1, keepdims=True)
        k, v = self._contig(k), self._contig(v)
        r, mx, inv, dr = (self._contig(a) for a in (r, mx, inv, dr))
        dk, dv = self._empty(xp, (B, l, d), k), self._empty(xp, (B, l, d), k)
        args = (k, v, w, mask, r, mx, inv, dr, dk, dv, B, lq, l, d, G, int(causal), int(pos is not None),
                int(kpm is not None))
        self._launch("aft_bwd_kv", dt, _blocks(B * l * d, _AFT_THREADS), _AFT_THREADS, args)
        dwp = None
        if pos is not None:  # only with a bias, hence lq == l
            kt = self._contig(xp.permute_dims(k, (0, 2, 1)))
            vt = self._contig(xp.permute_dims(v, (0, 2, 1)))
            dwp = self._empty(xp, (G, l, l), k)
            args = (kt, vt, w, mask, r, mx, inv, dr, dwp, B, l, d, G, int(causal), int(kpm is not None))
            self._launch("aft_bwd_w", dt, _blocks(G * l * l, _AFT_THREADS), _AFT_THREADS, args)
        return dk, dv, dwp

    # --- AFT-local and 1-D AFT-conv: the windowed identity ---------------------------------------
    def _window_args(self, pos):
        b = pos.band
        return (self._contig(b.table),), (b.sg, b.st, b.sk, b.base, b.a, b.r)

    def _window_forward(self, xp, dt, k, v, pos, causal, kpm):
        B, l, d = k.shape
        k, v = self._contig(k), self._contig(v)
        mask = self._dummy(xp, k, xp.bool) if kpm is None else self._contig(kpm)
        (table,), band = self._window_args(pos)
        pre = self._empty(xp, (3, B, l + 1, d), k)
        suf = self._dummy(xp, k) if causal else self._empty(xp, (3, B, l + 1, d), k)
        flags = (int(causal), int(kpm is not None))
        self._launch("aftw_scan_fwd", dt, _blocks(B * d, _AFT_THREADS), _AFT_THREADS,
                     (k, v, mask, pre, suf, B, l, d) + flags)
        r, mx, inv = (self._empty(xp, (B, l, d), k) for _ in range(3))
        self._launch("aftw_fwd", dt, _blocks(B * l * d, _AFT_THREADS), _AFT_THREADS,
                     (k, v, table, mask, pre, suf, r, mx, inv, B, l, d, pos.groups) + flags + band)
        return r, (mx, inv)

    def _window_backward(self, xp, dt, k, v, pos, causal, kpm, r, stats, dr):
        B, l, d = k.shape
        k, v, r, mx, inv, dr = (self._contig(a) for a in (k, v, r, *stats, dr))
        mask = self._dummy(xp, k, xp.bool) if kpm is None else self._contig(kpm)
        (table,), band = self._window_args(pos)
        bsuf = self._empty(xp, (3, B, l + 1, d), k)
        bpre = self._dummy(xp, k) if causal else self._empty(xp, (3, B, l + 1, d), k)
        self._launch("aftw_scan_bwd", dt, _blocks(B * d, _AFT_THREADS), _AFT_THREADS,
                     (r, mx, inv, dr, bpre, bsuf, B, l, d, int(causal)))
        flags = (int(causal), int(kpm is not None))
        dk, dv = self._empty(xp, (B, l, d), k), self._empty(xp, (B, l, d), k)
        self._launch("aftw_bwd_kv", dt, _blocks(B * l * d, _AFT_THREADS), _AFT_THREADS,
                     (k, v, table, mask, r, mx, inv, dr, bpre, bsuf, dk, dv, B, l, d, pos.groups) + flags
                     + band)
        width = pos.band.a + pos.band.r + 1
        dband = self._empty(xp, (pos.groups, l, width), k)
        self._launch("aftw_bwd_w", dt, _blocks(pos.groups * l * width, _AFT_THREADS), _AFT_THREADS,
                     (k, v, table, mask, r, mx, inv, dr, dband, B, l, d, pos.groups) + flags + band)
        return dk, dv, BandGrad(dband, pos.band.a)


@functools.cache
def _function(name: str, dtype: str):
    import cupy

    filename = next(f for f, names in SOURCES.items() if name in names)
    module = cupy.RawModule(code=source_text(filename, dtype))
    return module.get_function(name)


class CupyOps(KernelOps):
    """The fused steps on a GPU through CuPy (RawModule, compiled by NVRTC on first use)."""

    name = "cupy-kernels"

    def _contig(self, a):
        import cupy

        return cupy.ascontiguousarray(a)

    def _launch(self, name, dtype, grid, block, args):
        packed = []
        for a, kind in zip(args, SIGNATURES[name], strict=True):
            packed.append(np.int32(a) if kind == "i32" else np.int64(a) if kind == "i64" else a)
        _function(name, dtype)((grid,), (block,), tuple(packed))


@functools.lru_cache(maxsize=1)
def ops() -> CupyOps:
    """The shared CupyOps instance the CuPy adapter passes to ``cupy_impl``."""
    return CupyOps()
