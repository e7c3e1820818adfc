"""The floor: the least time the work can take on the measured device.

floor = max(FLOPs / matrix-product rate, bytes / copy bandwidth), with FLOPs from ``Spec.flops`` and
bytes from ``Spec.memory``: the streaming bytes (inputs, outputs, row statistics) plus the
parameters, each read or written once.  The rates are the device's measured best
(:func:`benchmarks.machine.calibrate`), in the point's dtype.

Forward + backward: ``BACKWARD_FACTOR`` times the forward's FLOPs and ``BACKWARD_BYTES_FACTOR`` times
its bytes.  The backward of a matrix product is two products of the same size, so the arithmetic is at
least 3x the forward's (flash attention's recomputation makes it 3.5x; a lower bound should not assume
it).  The traffic at least doubles: for every tensor the forward reads (x, parameters) the backward
writes a gradient of the same size, and for every tensor it writes (y) it reads one (dy); that it also
re-reads x and the parameters depends on the implementation (a fused one may keep them), so a lower
bound counts 2x, not 3x.
"""

from __future__ import annotations

BACKWARD_FACTOR = 3
BACKWARD_BYTES_FACTOR = 2
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


def floor_fields(spec, batch: int, length: int, dtype: str, pass_: str, calibration: dict) -> dict:
    """{"flops", "bytes", "floor_s", "floor_bound"} for one point; all None without a Spec (the
    convolution baselines are no variant of the spec)."""
    if spec is None:
        return {"flops": None, "bytes": None, "floor_s": None, "floor_bound": None}
    fb = pass_ == "forward_backward"
    flops = spec.flops(batch, length) * (BACKWARD_FACTOR if fb else 1)
    mem = spec.memory(batch, length, ITEMSIZE[dtype])
    nbytes = (mem["streaming"] + mem["parameters"]) * (BACKWARD_BYTES_FACTOR if fb else 1)
    rate = calibration["matmul_flops_per_s"].get(dtype)
    if not rate:
        return {"flops": flops, "bytes": nbytes, "floor_s": None, "floor_bound": None}
    compute, traffic = flops / rate, nbytes / calibration["copy_bytes_per_s"]
    return {
        "flops": flops,
        "bytes": nbytes,
        "floor_s": max(compute, traffic),
        "floor_bound": "compute" if compute >= traffic else "memory",
    }
