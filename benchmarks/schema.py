"""The JSON a run writes, and a check of it (used before writing and by the smoke test).

Top level: ``schema`` (this version string), ``mode``, ``device``, ``versions``, ``settings``,
``calibration``, ``elapsed_s``, ``results`` (one row per measured or failed call of the sweep),
``claim_results`` (rows of the random-vs-convolution setting), ``memory_probe`` (forward-only
memory rows of the AFT claim), ``stops`` (why series ended early),
``skipped`` (what was not run and why), ``fits`` (exponents), ``cpu_row``, ``claims``.
"""

from __future__ import annotations

SCHEMA = "synth-ref-bench/1"

TOP = {
    "schema": str,
    "mode": str,
    "device": dict,
    "versions": dict,
    "settings": dict,
    "calibration": dict,
    "elapsed_s": float,
    "results": list,
    "claim_results": list,
    "memory_probe": list,
    "stops": list,
    "skipped": list,
    "fits": list,
    "cpu_row": list,
    "claims": dict,
}

#: Every row's keys and types (None allowed where the second type is NoneType).
_NONE = type(None)
ROW = {
    "impl": (str,),
    "role": (str,),
    "variant": (str, _NONE),
    "dtype": (str,),
    "length": (int,),
    "batch": (int,),
    "d_model": (int,),
    "n_heads": (int,),
    "pass": (str,),
    "status": (str,),
    "time_s": (float, _NONE),
    "times_s": (list, _NONE),
    "peak_bytes": (int, _NONE),
    "memory_method": (str, _NONE),
    "note": (str,),
}
MEASURED = {
    "wall_s": (float,),
    "cpu_time_s": (float, _NONE),
    "cpu_times_s": (list, _NONE),
    "flops": (int, _NONE),
    "bytes": (int, _NONE),
    "floor_s": (float, _NONE),
    "floor_bound": (str, _NONE),
    "vs_sdpa": (float, _NONE),
    "vs_naive": (float, _NONE),
    "naive_ref": (str, _NONE),
    "vs_floor": (float, _NONE),
}
FIT = {
    "impl": (str,),
    "variant": (str, _NONE),
    "dtype": (str,),
    "pass": (str,),
    "quantity": (str,),
    "exponent": (float,),
    "coefficient": (float,),
    "points": (int,),
    "lengths": (list,),
}


def _check(obj: dict, spec: dict, where: str) -> list[str]:
    errs = []
    for key, types in spec.items():
        types = types if isinstance(types, tuple) else (types,)
        if key not in obj:
            errs.append(f"{where}: missing {key!r}")
        elif not isinstance(obj[key], types) or (isinstance(obj[key], bool) and bool not in types):
            errs.append(
                f"{where}.{key}: expected {' or '.join(t.__name__ for t in types)}; "
                f"got {type(obj[key]).__name__} {obj[key]!r:.60}"
            )
    return errs


def validate(doc: dict) -> list[str]:
    """Every problem with ``doc`` (empty when it is well-formed)."""
    errs = _check(doc, TOP, "doc")
    if errs:
        return errs
    if doc["schema"] != SCHEMA:
        errs.append(f"doc.schema: expected {SCHEMA!r}; got {doc['schema']!r}")
    for name in ("results", "claim_results", "memory_probe"):
        for i, r in enumerate(doc[name]):
            errs += _check(r, ROW, f"{name}[{i}]")
            if r.get("status") == "ok":
                errs += _check(r, MEASURED, f"{name}[{i}]")
                if isinstance(r.get("time_s"), float) and r["time_s"] <= 0:
                    errs.append(f"{name}[{i}].time_s: expected a positive time for a measured row")
            if r.get("pass") not in ("forward", "forward_backward"):
                errs.append(
                    f"{name}[{i}].pass: expected 'forward' or 'forward_backward'; got {r.get('pass')!r}"
                )
    for i, f in enumerate(doc["fits"]):
        errs += _check(f, FIT, f"fits[{i}]")
    for key in ("matmul_flops_per_s", "copy_bytes_per_s"):
        if key not in doc["calibration"]:
            errs.append(f"calibration: missing {key!r}")
    for key in ("random_vs_dynamic_conv", "aft_memory", "adapter_targets"):
        if key not in doc["claims"] or "verdict" not in doc["claims"][key]:
            errs.append(f"claims: missing {key!r} or its verdict")
    return errs
