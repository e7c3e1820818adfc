"""``cupy-emulated``: the CuPy adapter's CUDA kernels run on the CPU, as a conformance backend.

The very sources CuPy compiles (``cuda/*.cu``) are built with the host C++ compiler against a small
emulation of the CUDA execution model (``cuda/emu/emu.h``: blocks run one at a time, a cooperative
kernel gets one host thread per CUDA thread and a real barrier for ``__syncthreads``) and launched
through ctypes by :class:`EmuOps`, the same :class:`~synth_ref.backends.cupy_kernels.KernelOps` glue
the GPU path uses (argument packing, shapes, dtype fallbacks).  Around them the hand-derived passes
of :mod:`~synth_ref.backends.cupy_impl` run on NumPy.  So the conformance suite checks the kernels'
arithmetic, masking, indexing and reductions against the spec on a machine without a GPU, as the
Triton and Pallas interpreters do for the other adapters.  Not shown: NVRTC, warp scheduling and
races between warps, speed -- the ``cupy`` backend on a GPU.

Needs a C++20 compiler (``$CXX``, else ``g++`` or ``c++`` on PATH); ``available()`` says why not.
The build (about 4 s, both dtypes at once) happens once per process, on first use.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import cupy_kernels as ck
from .cupy_impl import NumpyHandVjpAdapter

# Where emu.h lives (a plain comment: as documented module data the API page would print this
# machine's absolute path).
EMU_DIR = ck.CUDA_DIR / "emu"
#: Threads per block of the block-cooperative kernels (the softmax rows), 8, fewer than the
#: conformance grid's full length (12); so that the suite's rows, not only the kernel tests' long
#: ones, exercise the strided loops and the tree reductions.  With one warp (32) every suite row fit
#: one pass, and a softmax backward whose row-term loop lost its stride passed the whole suite.
#: (No colon in the first line: Sphinx's napoleon would read the text before it as the type.)
EMU_THREADS = 8
_C_TYPES = {"ptr": ("void*", ctypes.c_void_p), "i32": ("int", ctypes.c_int),
            "i64": ("long long", ctypes.c_longlong)}
_CTYPES = {"float32": "float", "float64": "double"}


def compiler() -> str | None:
    """The host C++ compiler: ``$CXX``, else ``g++`` or ``c++`` on PATH; None if there is none."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def harness() -> str:
    """One C++ translation unit: the emulation, every CUDA source, and a launcher
    ``emu_<kernel>(grid, block, args...)`` for every kernel in ``cupy_kernels.SIGNATURES``."""
    lines = ['#include "emu.h"'] + [f'#include "{f}"' for f in ck.SOURCES]
    for name, sig in ck.SIGNATURES.items():
        params = ", ".join(f"{_C_TYPES[t][0]} a{i}" for i, t in enumerate(sig))
        args = ", ".join(f"emu_ptr{{a{i}}}" if t == "ptr" else f"a{i}" for i, t in enumerate(sig))
        coop = "true" if name in ck.COOPERATIVE else "false"
        lines.append(f'extern "C" void emu_{name}(unsigned grid, unsigned block, {params}) '
                     f'{{ emu_launch(grid, block, {coop}, [&] {{ {name}({args}); }}); }}')
    return "\n".join(lines) + "\n"


def build(out_dir, cxx: str | None = None, threads: int = EMU_THREADS) -> dict:
    """Compile the harness for float32 and float64 side by side into ``out_dir``: {dtype: CDLL}.
    Warnings are errors (as in the nvcc check); a failed build raises RuntimeError with the
    compiler's message.  -O0: the conformance shapes are tiny, the build is what costs."""
    cxx = cxx or compiler()
    if cxx is None:
        raise RuntimeError("no host C++ compiler ($CXX, g++ or c++) to build the CUDA emulation")
    out = Path(out_dir)
    src = out / "harness.cpp"
    src.write_text(harness())
    procs = {}
    for dtype, ctype in _CTYPES.items():
        so = out / f"emu_{ctype}.so"
        cmd = [cxx, "-std=c++20", "-O0", "-shared", "-fPIC", "-pthread", f"-Dscalar_t={ctype}",
               f"-DSR_SOFTMAX_THREADS={threads}", f"-I{EMU_DIR}", f"-I{ck.CUDA_DIR}", "-Wall", "-Werror",
               "-Wno-unknown-pragmas", str(src), "-o", str(so)]
        procs[dtype] = (so, cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                  text=True))
    libs = {}
    for dtype, (so, cmd, proc) in procs.items():
        _, err = proc.communicate()
        if proc.returncode != 0:
            lines = err.strip().splitlines() or ["(no message)"]
            first = next((ln for ln in lines if "error" in ln), lines[0])
            raise RuntimeError(f"building the CUDA emulation failed: {first}\n{' '.join(cmd)}\n{err}")
        libs[dtype] = ctypes.CDLL(str(so))
    return libs


class EmuOps(ck.KernelOps):
    """KernelOps launching into the CPU emulation: NumPy arrays, passed by pointer through ctypes.
    ``launched`` records every kernel run, so a caller can tell the kernels really ran."""

    name = "emulated-kernels"
    softmax_threads = EMU_THREADS

    def __init__(self, libs: dict):
        self.libs = libs
        self.launched = []

    def _contig(self, a):
        return np.ascontiguousarray(a)

    def _launch(self, name, dtype, grid, block, args):
        fn = getattr(self.libs[dtype], "emu_" + name)
        sig = ck.SIGNATURES[name]
        fn.argtypes = [ctypes.c_uint, ctypes.c_uint] + [_C_TYPES[t][1] for t in sig]
        fn.restype = None
        packed = []
        for a, kind in zip(args, sig, strict=True):
            if kind == "ptr":
                if not a.flags.c_contiguous:
                    raise AssertionError(f"{name}: a non-contiguous array reached the kernel")
                want = np.bool_ if a.dtype == np.bool_ else np.dtype(dtype)
                if a.dtype != want:
                    raise AssertionError(f"{name}: expected {want} arrays; got {a.dtype}")
                packed.append(a.ctypes.data)
            else:
                packed.append(int(a))
        fn(grid, block, *packed)
        self.launched.append(name)


@functools.cache
def _shared_ops() -> EmuOps:
    """This process's EmuOps, built on first use into a temporary folder that lives as long as it."""
    tmp = tempfile.TemporaryDirectory(prefix="synth_ref_cuda_emu_")
    ops = EmuOps(build(tmp.name))
    ops._tmp = tmp  # keep the folder (and the loaded libraries' files) for the process's life
    return ops


class EmulatedAdapter(NumpyHandVjpAdapter):
    """The CuPy adapter's code path on NumPy with its CUDA kernels in the CPU emulation."""

    name = "cupy-emulated"

    @property
    def ops(self):
        return _shared_ops()

    def available(self):
        if compiler() is None:
            return False, "no host C++ compiler ($CXX, g++ or c++) to build the CUDA emulation"
        try:
            self.ops  # noqa: B018 - builds the libraries once; a failed build is the reason
        except Exception as exc:  # noqa: BLE001
            return False, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        return True, (f"the CUDA kernels ({', '.join(ck.SOURCES)}) built by {compiler()} against a CPU "
                      f"emulation ({EMU_THREADS} threads per cooperative block), numpy {np.__version__}")


adapter = EmulatedAdapter()
