"""The length sweep: every implementation x variant x dtype x pass over powers of two, within budgets.

Points are visited variant by variant, dtype by dtype, length by length, and at each point every
implementation is measured back to back (so all of them see the same machine load).  Each series
(implementation, variant, dtype, pass) stops on its own: see :mod:`benchmarks.settings`.
"""

from __future__ import annotations

import time

import numpy as np

from . import floors, impls, measure

PASSES = ("forward", "forward_backward")
_SHORT = {"forward": "fwd", "forward_backward": "fwd+bwd"}
_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


class Series:
    """Where one series stands: the last two (time, memory) and why it stopped, if it did."""

    def __init__(self):
        self.times: list[float] = []
        self.peaks: list[int] = []
        self.stopped = ""

    def record(self, t: float, peak: int | None):
        self.times.append(t)
        if peak:
            self.peaks.append(peak)

    def check(self, settings) -> None:
        """Stop after a call over budget, or when the next length is predicted over a budget."""
        t = self.times[-1]
        if t > settings.budget_s:
            self.stopped = f"a call took {t:.3g} s > the {settings.budget_s} s budget"
            return
        nxt = t * _growth(self.times)
        if nxt > settings.budget_s:
            self.stopped = f"the next length is predicted at {nxt:.3g} s > the {settings.budget_s} s budget"
            return
        if self.peaks:
            mem = self.peaks[-1] * _growth(self.peaks)
            if mem > settings.memory_budget:
                self.stopped = (
                    f"the next length is predicted to need {mem / 2**30:.3g} GiB > the "
                    f"{settings.memory_budget / 2**30:.3g} GiB budget"
                )


def _growth(values) -> float:
    """Predicted factor from one length to the next: the last observed one, at least 2 (l doubles)."""
    if len(values) < 2 or values[-2] <= 0:
        return 4.0  # nothing to go on yet: assume quadratic
    return max(2.0, values[-1] / values[-2])


def _is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "resource_exhausted" in text


def _free(settings):
    """Hand a device's cached blocks back between implementations (host memory is freed by reference
    counting; measure.peak_memory collects cycles itself)."""
    if settings.device == "cuda":
        import torch

        torch.cuda.empty_cache()


def make_point(settings, variant, dtype, length, rng_seed=0) -> impls.Point:
    spec = settings.spec(variant or "dot_product", length)
    np_dtype = "float64" if dtype == "float64" else "float32"
    rng = np.random.default_rng(rng_seed)
    shape = (settings.batch, length, settings.d_model)
    return impls.Point(
        settings,
        variant,
        spec,
        dtype,
        length,
        spec.init(seed=0, dtype=np_dtype),
        rng.standard_normal(shape).astype(np_dtype),
        rng.standard_normal(shape).astype(np_dtype),
    )


def run(settings, all_impls, calibration, log=print, groups=None) -> tuple[list[dict], list[dict]]:
    """Measure everything; returns (rows, stops): one row per measured or failed call, and why each
    series ended before the longest length."""
    rows, stops = [], []
    t0 = time.perf_counter()
    for variant in groups if groups is not None else list(settings.variants) + [None]:
        group = [i for i in all_impls if i.covers(variant)]
        for dtype in settings.dtypes:
            active = [i for i in group if dtype in i.dtypes]
            series = {(i.name, p): Series() for i in active for p in PASSES}
            for i in active:
                if i.no_backward:
                    series[(i.name, "forward_backward")].stopped = i.no_backward
                if i.no_forward:
                    series[(i.name, "forward")].stopped = i.no_forward
            for length in settings.lengths:
                todo = [i for i in active if any(not series[(i.name, p)].stopped for p in PASSES)]
                if not todo:
                    break
                spec = settings.spec(variant or "dot_product", length)
                param_bytes = spec.param_count() * _ITEMSIZE[dtype]
                if param_bytes * 3 > settings.memory_budget:  # parameters, their gradients, a copy
                    for i in todo:
                        for p in PASSES:
                            s = series[(i.name, p)]
                            s.stopped = s.stopped or (
                                f"parameters alone need {param_bytes / 2**30:.3g} GiB at l={length}"
                            )
                    break
                point = make_point(settings, variant, dtype, length)
                for impl in todo:
                    rows += _measure_impl(settings, impl, point, series, calibration, log, t0)
                    _free(settings)
                del point
            for (name, p), s in series.items():
                if s.stopped:
                    stops.append(
                        {"impl": name, "variant": variant, "dtype": dtype, "pass": p, "why": s.stopped}
                    )
    return rows, stops


def _measure_impl(settings, impl, point, series, calibration, log, t0) -> list[dict]:
    out = []
    try:
        prepared = impl.build(point)
    except Exception as exc:  # noqa: BLE001 - a failure is a result: recorded, never hidden
        for p in PASSES:
            s = series[(impl.name, p)]
            if not s.stopped:
                s.stopped = _failure(exc)
                out.append(_row(settings, impl, point, p, status=s.stopped))
        return out
    for p in PASSES:
        s = series[(impl.name, p)]
        if s.stopped:
            continue
        fn = prepared.forward if p == "forward" else prepared.forward_backward
        try:
            times, cpu = measure.time_call(
                fn, prepared.sync, warmup=settings.warmup, repeats=settings.repeats, cuda=prepared.cuda_events
            )
            peak, how = measure.peak_memory(fn, prepared.sync, prepared.memory)
        except Exception as exc:  # noqa: BLE001
            s.stopped = _failure(exc)
            out.append(_row(settings, impl, point, p, status=s.stopped))
            continue
        wall = measure.median(times)
        cpu_t = measure.median(cpu) if cpu else None
        t = cpu_t if settings.time_basis == "cpu" and cpu_t else wall
        s.record(t, peak)
        s.check(settings)
        row = _row(
            settings,
            impl,
            point,
            p,
            status="ok",
            time_s=t,
            times_s=times,
            peak_bytes=peak,
            memory_method=how,
            note=_note(prepared),
        )
        row.update(wall_s=wall, cpu_time_s=cpu_t, cpu_times_s=cpu)
        spec = point.spec if impl.floor else None
        row.update(floors.floor_fields(spec, settings.batch, point.length, point.dtype, p, calibration))
        out.append(row)
        mem = "-" if peak is None else f"{peak / 2**20:.1f} MiB"
        cpu_txt = "" if cpu_t is None else f", {cpu_t * 1e3:.2f} ms cpu"
        log(
            f"[{time.perf_counter() - t0:7.1f}s] {point.variant or 'baseline'} {point.dtype} "
            f"l={point.length} {impl.name} {_SHORT[p]}: {wall * 1e3:.2f} ms wall{cpu_txt}, {mem}"
        )
    return out


def _note(prepared) -> str:
    extra = prepared.describe() if prepared.describe else ""
    return "; ".join(n for n in (prepared.note, extra) if n)


def _failure(exc: BaseException) -> str:
    if isinstance(exc, measure.NotMeasured):
        return f"not measured: {exc}"
    if _is_oom(exc):
        return "out of memory"
    return f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _row(
    settings,
    impl,
    point,
    p,
    *,
    status,
    time_s=None,
    times_s=None,
    peak_bytes=None,
    memory_method=None,
    note="",
) -> dict:
    return {
        "impl": impl.name,
        "role": impl.role,
        "variant": point.variant,
        "dtype": point.dtype,
        "length": point.length,
        "batch": settings.batch,
        "d_model": settings.d_model,
        "n_heads": point.spec.n_heads if point.variant else settings.n_heads,
        "pass": p,
        "status": status,
        "time_s": time_s,
        "times_s": times_s,
        "peak_bytes": peak_bytes,
        "memory_method": memory_method,
        "note": note,
    }


def memory_probe(
    settings, probe_impls, lengths, variants, *, budget_s, must_reach=0, log=print
) -> list[dict]:
    """Forward peak memory only, one call per point, over ``lengths`` (longer than the timed sweep
    reaches), after one unmeasured warm-up call at the first length of each series (compilation):
    the AFT memory claim needs lengths where the reference's row blocks are full.  A
    series stops before a length whose call is predicted slower than ``budget_s`` or over the memory
    budget (predicted as in :class:`Series`); the time budget applies only past ``must_reach``."""
    rows = []
    t0 = time.perf_counter()
    dtype = settings.dtypes[0]
    for variant in variants:
        for impl in probe_impls:
            if not impl.covers(variant) or dtype not in impl.dtypes:
                continue
            peaks, times = [], []
            for length in lengths:
                point = make_point(settings, variant, dtype, length)
                try:
                    prepared = impl.build(point)
                    if not times:
                        # One unmeasured call first: the probe runs before anything else, so this is
                        # where kernels compile (Triton on a GPU); charged to the first length's time,
                        # a compile would stop the series there, before it has a growth to report.
                        # Through peak_memory, so that it runs under the measurement's allocator.
                        measure.peak_memory(prepared.forward, prepared.sync, prepared.memory)
                    c0, w0 = time.process_time(), time.perf_counter()
                    peak, how = measure.peak_memory(prepared.forward, prepared.sync, prepared.memory)
                    wall, cpu_t = time.perf_counter() - w0, time.process_time() - c0
                except Exception as exc:  # noqa: BLE001 - recorded, never hidden
                    rows.append(_row(settings, impl, point, "forward", status=_failure(exc)))
                    break
                t = cpu_t if settings.time_basis == "cpu" else wall
                row = _row(
                    settings,
                    impl,
                    point,
                    "forward",
                    status="ok",
                    time_s=t,
                    times_s=[wall],
                    peak_bytes=peak,
                    memory_method=how,
                    note="memory probe: one call" + (f"; {_note(prepared)}" if _note(prepared) else ""),
                )
                row.update(wall_s=wall, cpu_time_s=cpu_t, cpu_times_s=[cpu_t])
                row.update(floors.floor_fields(None, settings.batch, length, dtype, "forward", {}))
                rows.append(row)
                log(
                    f"[{time.perf_counter() - t0:7.1f}s] memory probe {variant} l={length} {impl.name}: "
                    f"{'-' if peak is None else f'{peak / 2**20:.1f} MiB'} ({wall:.2f} s)"
                )
                del prepared, point
                _free(settings)
                if peak:
                    peaks.append(peak)
                times.append(t)
                nxt = peaks[-1] * _growth(peaks) if peaks else 0
                slow = t * _growth(times) > budget_s and length >= must_reach
                if slow or nxt > settings.memory_budget:
                    break
    return rows
