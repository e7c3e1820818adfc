"""The CuPy adapter's CUDA sources compile with NVRTC, as CuPy compiles them on a GPU.

CuPy builds ``cupy_kernels.source_text(file, dtype)`` with NVRTC at a kernel's first launch, which
CI never reaches (no GPU).  ``.ci/nvcc_check.py`` compiles the same files with nvcc, but NVRTC is a
different front end: no host headers (``<cmath>``), no ``INFINITY`` macro, the header inlined by
``source_text`` rather than found on an include path.  So a source can pass the nvcc check and
still fail at a user's first GPU call.  Here NVRTC itself (the library in NVIDIA's
``nvidia-cuda-nvrtc`` wheel, which runs without a GPU or driver; the ``cpu`` nox environment
installs it on Linux) compiles the exact text CuPy gets, with the options CuPy adds, for sm_90.
"""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from synth_ref.backends import cupy_kernels as ck

ARCH = "sm_90"  # the H100 the GPU runs use (as .ci/nvcc_check.py)
#: What CuPy 13/14's RawModule adds to a compile with no options of ours (cupy/cuda/compiler.py:
#: ``_compile_with_cache_cuda`` adds -ftz=true; ``_compile_using_nvrtc_no_warning`` adds -arch and
#: --device-as-default-execution-space).
CUPY_OPTIONS = ("-ftz=true", f"-arch={ARCH}", "--device-as-default-execution-space")


def _find_libnvrtc() -> Path | None:
    """libnvrtc.so from the ``nvidia-cuda-nvrtc`` wheel (package ``nvidia``), or None."""
    try:
        found = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return None
    for root in (found.submodule_search_locations or []) if found else []:
        # nvidia/cu13/lib (CUDA 13 wheels), nvidia/cuda_nvrtc/lib (CUDA 12); not libnvrtc-builtins
        libs = [p for p in sorted(Path(root).glob("*/lib/libnvrtc.so*")) if "builtins" not in p.name]
        if libs:
            return libs[0]
    return None


LIB = _find_libnvrtc()
pytestmark = pytest.mark.skipif(
    LIB is None,
    reason="no libnvrtc (pip install nvidia-cuda-nvrtc; the nox 'cpu' environment has it on Linux)")


class _Nvrtc:
    """The few NVRTC calls a compile needs, through ctypes."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def version(self) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        return major.value, minor.value

    def compile(self, source: str, name: str, options) -> tuple[bool, str, bytes]:
        """(compiled, log, cubin) of ``source``."""
        prog = ctypes.c_void_p()
        status = self.lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None,
                                             None)
        self._check(status, "nvrtcCreateProgram")
        try:
            opts = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
            status = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self._check(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
            log = ctypes.create_string_buffer(size.value)
            self._check(self.lib.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
            if status != 0:
                return False, log.value.decode(errors="replace"), b""
            self._check(self.lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
            cubin = ctypes.create_string_buffer(size.value)
            self._check(self.lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
            return True, log.value.decode(errors="replace"), cubin.raw
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))

    def _check(self, status: int, call: str) -> None:
        if status != 0:
            raise RuntimeError(f"{call}: {self.lib.nvrtcGetErrorString(status).decode()}")


@pytest.fixture(scope="module")
def nvrtc():
    return _Nvrtc(LIB)


@pytest.mark.parametrize("dtype", ck._DTYPES)
@pytest.mark.parametrize("filename", sorted(ck.SOURCES))
def test_source_compiles_as_cupy_compiles_it(nvrtc, filename, dtype):
    """Compiles without error or warning, and the cubin defines every kernel the adapter launches
    from it, under its unmangled name (``RawModule.get_function`` looks it up by that name)."""
    ok, log, cubin = nvrtc.compile(ck.source_text(filename, dtype), filename, CUPY_OPTIONS)
    assert ok, f"NVRTC {nvrtc.version()} failed on {filename} ({dtype}):\n{log}"
    assert "warning" not in log.lower(), f"NVRTC warned on {filename} ({dtype}):\n{log}"
    assert cubin[:4] == b"\x7fELF", f"{filename} ({dtype}): NVRTC returned no ELF cubin"
    missing = [name for name in ck.SOURCES[filename] if b"\0" + name.encode() + b"\0" not in cubin]
    assert not missing, f"{filename} ({dtype}): no symbol for kernel(s) {missing} in the cubin"


def test_check_rejects_what_nvcc_accepts(nvrtc, tmp_path):
    """Why this check exists beside the nvcc one: a kernel using INFINITY passes .ci/nvcc_check.py
    (nvcc's implicit host headers define it; shown where nvcc is here) and fails here."""
    kernel = '\nextern "C" __global__ void uses_infinity(scalar_t* a) { a[0] = INFINITY; }\n'
    ok, log, _ = nvrtc.compile(ck.source_text("softmax.cu", "float32") + kernel, "softmax.cu", CUPY_OPTIONS)
    assert not ok and "INFINITY" in log, log
    script = Path(__file__).resolve().parent.parent / ".ci" / "nvcc_check.py"
    if shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").is_file():
        (tmp_path / "sr_math.cuh").write_text((ck.CUDA_DIR / "sr_math.cuh").read_text())
        (tmp_path / "softmax.cu").write_text((ck.CUDA_DIR / "softmax.cu").read_text() + kernel)
        proc = subprocess.run([sys.executable, str(script), "--dir", str(tmp_path)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
