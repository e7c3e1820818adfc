"""What machine and libraries a run measured, and that device's matrix-product rate and copy bandwidth
(the two ceilings the floor is computed against)."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata

from . import measure

#: JSON key -> the distributions that provide it, first installed wins (CuPy ships one wheel per
#: CUDA major: the lent GPU has cupy-cuda13x, this project's extra names cupy-cuda12x).
_LIBS = {
    "numpy": ("numpy",),
    "torch": ("torch",),
    "jax": ("jax",),
    "jaxlib": ("jaxlib",),
    "array_api_compat": ("array-api-compat",),
    "matplotlib": ("matplotlib",),
    "triton": ("triton",),
    "cupy": ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy"),
    "synth_ref": ("synth-ref",),
}


def _installed(dists) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return None


def versions() -> dict:
    """Installed versions from package metadata (importing triton or cupy just to ask would cost
    seconds); torch's own string, which names its build (+cpu, +cu128); synth_ref's own
    ``__version__`` where it runs from a checkout without being installed (the lent GPU)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for key, dists in _LIBS.items():
        out[key] = _installed(dists)
    if out["synth_ref"] is None:
        import synth_ref

        out["synth_ref"] = synth_ref.__version__
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.version.cuda
    except Exception:  # noqa: BLE001
        pass
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def describe(device: str) -> dict:
    """The device in words and numbers, plus the load while we ran (other processes share CPUs)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = {
        "kind": device,
        "cpu": _cpu_model(),
        "cpu_cores": cores,
        "torch_threads": torch.get_num_threads(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if hasattr(os, "getloadavg"):
        out["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(
            {
                "name": props.name,
                "memory_bytes": props.total_memory,
                "capability": f"{props.major}.{props.minor}",
            }
        )
    else:
        out["name"] = out["cpu"]
    return out


def _torch_dtype(name):
    import torch

    return getattr(torch, name)


def calibrate(device: str, dtypes, *, matmul_n: int, copy_bytes: int, repeats: int = 5) -> dict:
    """Best measured matrix-product rate per dtype (FLOP/s, torch and, on CPU, NumPy; the best of
    them is the device's) and copy bandwidth (bytes read + written per second, torch ``copy_``).
    The fastest of the repeats, not the median: a ceiling is what the device can do, and on a shared
    machine the slower repeats measure the other processes."""
    import torch

    cuda = device == "cuda"
    sync = (lambda r: torch.cuda.synchronize()) if cuda else measure.no_sync
    n = matmul_n
    rates, detail = {}, []
    for dt in dtypes:
        a = torch.randn(n, n, device=device).to(_torch_dtype(dt))
        b = torch.randn(n, n, device=device).to(_torch_dtype(dt))
        t = min(measure.time_call(lambda a=a, b=b: a @ b, sync, warmup=2, repeats=repeats, cuda=cuda)[0])
        best = 2 * n**3 / t
        detail.append({"library": "torch", "dtype": dt, "n": n, "flops_per_s": best})
        if not cuda and dt in ("float32", "float64"):
            an, bn = a.numpy(), b.numpy()
            tn = min(measure.time_call(lambda an=an, bn=bn: an @ bn, warmup=2, repeats=repeats)[0])
            detail.append({"library": "numpy", "dtype": dt, "n": n, "flops_per_s": 2 * n**3 / tn})
            best = max(best, 2 * n**3 / tn)
        rates[dt] = best
        del a, b
    src = torch.empty(copy_bytes // 4, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    t = min(measure.time_call(lambda: dst.copy_(src), sync, warmup=2, repeats=repeats, cuda=cuda)[0])
    return {
        "matmul_flops_per_s": rates,
        "matmul_detail": detail,
        "copy_bytes_per_s": 2 * copy_bytes / t,
        "copy_buffer_bytes": copy_bytes,
    }
