#!/usr/bin/env python3
"""Compile every CUDA source the CuPy adapter carries with this machine's nvcc (CI step).

CuPy compiles the kernels with NVRTC only when they first run on a GPU, which CI does not have; this
step makes a source error fail CI instead of a user's first GPU run.  Each ``*.cu`` in
synth_ref/backends/cuda is compiled to a cubin for the target architecture (default sm_90, the H100;
override with NVCC_ARCH) once per dtype the kernels are built for, warnings as errors, and with
ptxas's resource report (-Xptxas -v): a kernel that spills registers to local memory fails the
check (every kernel spills nothing on sm_90 today; the Triton kernels are held to the same in
tests/test_torch_kernels_sm90.py), since a spilling kernel passes every numeric test at a fraction
of its speed.

No nvcc is a failure, not a pass: CI runs on a machine with nvcc (13.x), and a check that passes
because it could not run would let exactly the error it exists for land unseen.  Where there is
truly no CUDA toolkit (a laptop), set SYNTH_REF_NVCC=skip: the step then says loudly that it did
not run and exits 0.  nvcc is looked up as $NVCC, then on PATH, then /usr/local/cuda/bin/nvcc.

Standard library only, so it runs before any environment is set up:  python3 .ci/nvcc_check.py
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CUDA_DIR = ROOT / "synth_ref" / "backends" / "cuda"
SCALARS = ("float", "double")  # float16 is computed in float32; see cupy_kernels._DTYPES


def find_nvcc() -> str | None:
    env = os.environ.get("NVCC")
    if env:
        return env if Path(env).is_file() else None
    return shutil.which("nvcc") or next(
        (p for p in ("/usr/local/cuda/bin/nvcc",) if Path(p).is_file()), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=CUDA_DIR, help="directory of .cu sources")
    ap.add_argument("--list", action="store_true", help="print the sources that would be compiled")
    args = ap.parse_args(argv)
    sources = sorted(args.dir.glob("*.cu"))
    if args.list:
        print("\n".join(p.name for p in sources))
        return 0
    if not sources:
        print(f"nvcc check: FAILED, no .cu sources in {args.dir}", file=sys.stderr)
        return 1
    nvcc = find_nvcc()
    if nvcc is None:
        where = f"NVCC={os.environ['NVCC']}" if os.environ.get("NVCC") else "PATH or /usr/local/cuda/bin"
        if os.environ.get("SYNTH_REF_NVCC") == "skip":
            print(f"!!! nvcc check: NOT RUN. nvcc not found ({where}) and SYNTH_REF_NVCC=skip: "
                  f"{len(sources)} CUDA sources were NOT compiled !!!", file=sys.stderr)
            return 0
        print(f"!!! nvcc check: FAILED. nvcc not found ({where}); the {len(sources)} CUDA sources of the "
              "CuPy adapter cannot be checked.  Install the CUDA toolkit, point NVCC at nvcc, or set "
              "SYNTH_REF_NVCC=skip to skip this step knowingly !!!", file=sys.stderr)
        return 2
    arch = os.environ.get("NVCC_ARCH", "sm_90")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"nvcc check: {nvcc} ({version.splitlines()[-1] if version else 'version unknown'}), -arch={arch}")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            for scalar in SCALARS:
                out = Path(tmp) / f"{src.stem}_{scalar}.cubin"
                cmd = [nvcc, f"-arch={arch}", "--cubin", "-Werror", "all-warnings", "-Xptxas", "-v",
                       f"-Dscalar_t={scalar}", f"-I{args.dir}", "-o", str(out), str(src)]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                dt = time.perf_counter() - t0
                spills = _spills(proc.stdout + proc.stderr)
                if proc.returncode == 0 and not spills:
                    print(f"  ok      {src.name} scalar_t={scalar}  ({out.stat().st_size} bytes, {dt:.1f} s, "
                          "no spills)")
                elif proc.returncode == 0:
                    failed += 1
                    print(f"  FAILED  {src.name} scalar_t={scalar}: registers spilled to local memory on "
                          f"{arch} (bytes of spill stores per thread): {spills}", file=sys.stderr)
                else:
                    failed += 1
                    print(f"  FAILED  {src.name} scalar_t={scalar}\n    {' '.join(cmd)}", file=sys.stderr)
                    print(proc.stdout + proc.stderr, file=sys.stderr)
    if failed:
        print(f"nvcc check: FAILED, {failed} compilation(s) failed", file=sys.stderr)
        return 1
    print(f"nvcc check: all {len(sources) * len(SCALARS)} compilations passed")
    return 0


def _spills(log: str) -> dict[str, int]:
    """{kernel: bytes of spill stores} for each kernel ptxas -v reports a spill for."""
    found, entry = {}, "?"
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            entry = m.group(1)
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and int(m.group(1)):
            found[entry] = int(m.group(1))
    return found


if __name__ == "__main__":
    sys.exit(main())
