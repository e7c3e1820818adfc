"""The CI step .ci/nvcc_check.py: it compiles exactly the adapter's CUDA sources, fails on a broken
one, and fails loudly (not silently passes) when nvcc is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from synth_ref.backends import cupy_kernels as ck

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "nvcc_check.py"


def _run(*args, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("NVCC", "SYNTH_REF_NVCC")}
    full.update(env)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=full)


def test_checks_every_source_the_adapter_loads():
    proc = _run("--list")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == sorted(ck.SOURCES)


def test_missing_nvcc_fails_loudly():
    proc = _run(NVCC="/nonexistent/nvcc")
    assert proc.returncode == 2
    assert "nvcc check: FAILED. nvcc not found (NVCC=/nonexistent/nvcc)" in proc.stderr


def test_missing_nvcc_can_be_skipped_only_knowingly_and_says_so():
    proc = _run(NVCC="/nonexistent/nvcc", SYNTH_REF_NVCC="skip")
    assert proc.returncode == 0
    assert "NOT RUN" in proc.stderr and f"{len(ck.SOURCES)} CUDA sources were NOT compiled" in proc.stderr


def _find_nvcc():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import nvcc_check
    finally:
        sys.path.pop(0)
    return nvcc_check.find_nvcc()


@pytest.mark.skipif(_find_nvcc() is None, reason="no nvcc here: cannot show that a broken source fails")
def test_a_broken_source_fails_the_check(tmp_path):
    (tmp_path / "sr_math.cuh").write_text((ck.CUDA_DIR / "sr_math.cuh").read_text())
    kernel = 'extern "C" __global__ void f(scalar_t* a) { a[0] = undefined_name; }\n'
    (tmp_path / "broken.cu").write_text('#include "sr_math.cuh"\n' + kernel)
    proc = _run("--dir", str(tmp_path))
    assert proc.returncode == 1
    assert "FAILED  broken.cu" in proc.stderr and "undefined_name" in proc.stderr


@pytest.mark.skipif(_find_nvcc() is None, reason="no nvcc here: cannot compile the text CuPy compiles")
@pytest.mark.parametrize("filename", sorted(ck.SOURCES))
def test_the_text_cupy_compiles_is_self_contained(tmp_path, filename):
    """CuPy gets one string per source (header inlined, scalar_t defined, no include path): that
    exact text must compile on its own."""
    text = ck.source_text(filename, "float32")
    assert "#include" not in text
    src = tmp_path / "inlined.cu"
    src.write_text(text)
    cmd = [_find_nvcc(), "-arch=sm_90", "--cubin", "-Werror", "all-warnings", "-o", str(tmp_path / "x.cubin"),
           str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(_find_nvcc() is None, reason="no nvcc here: cannot show that a spilling kernel fails")
def test_a_kernel_that_spills_registers_fails_the_check(tmp_path):
    """A kernel held to 32 registers per thread (launch bounds) with 64 values live spills to local
    memory: ptxas -v reports it, and the check fails naming the kernel and the bytes."""
    (tmp_path / "sr_math.cuh").write_text((ck.CUDA_DIR / "sr_math.cuh").read_text())
    kernel = (
        'extern "C" __global__ void __launch_bounds__(1024, 2) heavy(const scalar_t* a, scalar_t* o) {\n'
        "    scalar_t r[64];\n"
        "#pragma unroll\n"
        "    for (int i = 0; i < 64; ++i) r[i] = a[threadIdx.x + i * 1024] * a[threadIdx.x + i * 1024 + 7];\n"
        "    scalar_t s = 0;\n"
        "#pragma unroll\n"
        "    for (int i = 0; i < 64; ++i) s += r[i] * r[63 - i] + r[(i * 7) % 64];\n"
        "    o[threadIdx.x] = s;\n"
        "}\n")
    (tmp_path / "spills.cu").write_text('#include "sr_math.cuh"\n' + kernel)
    proc = _run("--dir", str(tmp_path))
    assert proc.returncode == 1
    assert "FAILED  spills.cu scalar_t=float: registers spilled to local memory" in proc.stderr
    assert "{'heavy': " in proc.stderr


@pytest.mark.skipif(_find_nvcc() is None, reason="no nvcc here: cannot compile the adapter's sources")
def test_the_adapter_sources_compile_without_spills():
    proc = _run()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("no spills") == 2 * len(ck.SOURCES)
