"""Timing and peak-memory measurement, one method per kind of array and device.

Time: the median of ``repeats`` calls after ``warmup`` calls (JAX compiles on the first call, torch
warms its allocator and thread pool).  CPU: ``time.perf_counter`` around the call and a sync of its
result (JAX dispatches asynchronously: ``block_until_ready``).  CUDA (torch): a pair of CUDA events
recorded around each call on the current stream, read after a synchronize, so host overhead between
calls is not counted but launch latency inside the call is.

Peak memory, the extra bytes one call needs above what exists before it (inputs, parameters):
- ``tracemalloc`` for NumPy: NumPy registers every data buffer with tracemalloc, so its peak is the
  exact sum of live NumPy arrays, independent of the C allocator's caching.
- ``rss`` for torch and JAX on CPU: neither reports to tracemalloc, and torch has no CPU counterpart
  of ``max_memory_allocated``.  The torch profiler's ``profile_memory`` records per-op allocations
  but its peak timeline is a private API and its overhead is large; so we use the kernel's own
  high-water mark instead: reset it (write 5 to /proc/self/clear_refs), run the call, read
  VmHWM - VmRSS before.  That counts every byte the process touched, whichever library allocated
  it.  For it to see freed-and-reallocated memory, glibc must return large blocks to the kernel on
  free: ``prepare_rss`` fixes the mmap threshold at 64 KiB (glibc otherwise raises it dynamically
  up to 32 MiB and keeps freed blocks resident, which would hide them from the next measurement)
  and every measurement starts with ``malloc_trim``.  Linux only; elsewhere the result is None with
  the reason.

  That setting is for memory only.  Timed under it, every temporary over 64 KiB would be a fresh
  ``mmap`` and page-fault on first touch in every call: a cost of the measurement, not of the code,
  and one that grows with the number of temporaries (at l = 256 it tripled the NumPy reference's
  time and the direct torch code's).  A long-running process does not pay it: glibc's dynamic
  threshold rises to the size of the blocks it frees, so repeated temporaries come from the heap.
  ``time_call`` therefore times CPU calls under ``timing_allocator`` (threshold and trim threshold
  at the ceiling of glibc's own adjustment, 32 and 64 MiB), and ``peak_memory`` switches back.
- ``cuda`` for torch on a GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
  minus ``memory_allocated`` before (the caching allocator's own bookkeeping, exact in bytes).
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable


class NotMeasured(Exception):
    """An implementation declines a point, saying why (recorded as "not measured: why", and the
    series stops there)."""


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Whether this process's allocator is managed by the harness (between prepare_rss and release_rss).
_MANAGED = False
#: What ``timing_allocator`` sets, for the JSON and the report.
TIMING_ALLOCATOR = (
    "glibc mmap threshold 32 MiB, trim threshold 64 MiB while timing (the steady state of glibc's "
    "dynamic adjustment); 64 KiB mmap threshold while measuring memory"
)


def prepare_rss() -> str | None:
    """Make freed large blocks go back to the kernel (see the module docstring); None when RSS
    measurement works here, else why not."""
    global _MANAGED
    if not os.path.exists("/proc/self/clear_refs"):
        return "no /proc/self/clear_refs (not Linux): peak RSS cannot be reset"
    libc = _libc()
    if not libc or not hasattr(libc, "mallopt"):
        return "no glibc mallopt: freed memory may stay resident and hide from the measurement"
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 16)  # 64 KiB, which also turns off its dynamic growth
    libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)  # glibc's default: free heap tops go back at once
    _MANAGED = True
    try:
        _reset_hwm()
    except OSError as exc:
        return f"cannot reset the peak RSS ({exc})"
    return None


def release_rss() -> None:
    """Put glibc's mmap threshold back at its default starting value (128 KiB) after a run, for a
    process that goes on (the smoke test runs inside pytest).  glibc offers no way back to its
    dynamic adjustment; 128 KiB is where that adjustment starts."""
    global _MANAGED
    _MANAGED = False
    libc = _libc()
    if libc and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)


def timing_allocator() -> None:
    """Blocks up to 32 MiB from the heap and kept there after free (see the module docstring); only
    while the harness manages the allocator (after ``prepare_rss``), so a plain caller's process is
    left as it is."""
    libc = _libc()
    if _MANAGED and libc and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)


def _reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status_kib(*keys) -> list[int]:
    out = dict.fromkeys(keys, 0)
    with open("/proc/self/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in out:
                out[name] = int(rest.split()[0])
    return [out[k] for k in keys]


def no_sync(result):
    return result


def time_call(
    fn: Callable, sync: Callable = no_sync, *, warmup: int, repeats: int, cuda: bool = False
) -> tuple[list[float], list[float] | None]:
    """Seconds per call for ``repeats`` calls after ``warmup`` calls: (wall times, process CPU times).

    The CPU times (``time.process_time``, every thread of the process) are None under CUDA.  With the
    libraries single-threaded they are the call's work alone, which other processes competing for
    the cores cannot inflate; the wall times are what a user waits."""
    if not cuda:
        timing_allocator()  # before the warm-up, which fills the heap the timed calls reuse
    for _ in range(warmup):
        sync(fn())
    if cuda:
        import torch

        pairs = []
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            pairs.append((a, b))
        torch.cuda.synchronize()
        return [a.elapsed_time(b) / 1e3 for a, b in pairs], None
    times, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu


def median(times: list[float]) -> float:
    return statistics.median(times)


def peak_memory(fn: Callable, sync: Callable, method: str) -> tuple[int | None, str]:
    """(extra peak bytes of one call, how it was measured or why it was not)."""
    gc.collect()
    if method == "tracemalloc":
        started = not tracemalloc.is_tracing()
        if started:
            tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            sync(fn())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            if started:
                tracemalloc.stop()
        return max(0, peak - base), "tracemalloc"
    if method == "rss":
        why = prepare_rss()
        if why:
            return None, why
        libc = _libc()
        libc.malloc_trim(0)
        _reset_hwm()
        (base,) = _status_kib("VmRSS")
        sync(fn())
        (hwm,) = _status_kib("VmHWM")
        return max(0, hwm - base) * 1024, "rss"
    if method == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        sync(fn())
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - base), "cuda max_memory_allocated"
    return None, f"no memory method for this implementation ({method})"
