"""One check: an adapter's forward output or gradients for one case in one dtype, against gold."""

from __future__ import annotations

import functools
import traceback
from dataclasses import asdict, dataclass

import numpy as np

from ..backends._protocol import claimed_variants, has_vjp
from . import gold as g
from .cases import DTYPES, Case, Inputs, check_dtypes, make_inputs
from .tolerances import tolerance


@dataclass
class Outcome:
    """What one check found.  ``status``: pass, fail, skip or error (the adapter raised)."""

    backend: str
    variant: str
    dtype: str
    kind: str  # forward | gradient
    case: str
    status: str
    err: float | None = None  # max|out - gold| of the worst array
    tol: float | None = None
    ratio: float | None = None  # err / tol of the worst array (<= 1 passes)
    worst: str | None = None  # which array (y, dx, a parameter name)
    detail: str = ""
    reproduce: str = ""
    ref: str = ""  # where ref_dtype ran
    blame: str = ""  # for fail/error: "adapter", "reference" when gold itself could not be computed,
    # or "harness" when a check failed without recording an outcome outside a process crash (plugin)

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "skip")

    def to_dict(self) -> dict:
        return asdict(self)

    def message(self) -> str:
        head = f"{self.backend} {self.kind} {self.dtype} {self.status.upper()}: {self.case}"
        if self.err is not None:
            head += (f"\n  worst array {self.worst}: max|out - gold| = {self.err:.3g}, "
                     f"tolerance {self.tol:.3g}")
            head += f" (ratio {self.ratio:.3g})"
        if self.detail:
            head += f"\n  {self.detail}"
        if self.reproduce:
            head += f"\n  reproduce: Case({self.reproduce})"
        return head


@functools.lru_cache(maxsize=64)
def _inputs(case: Case, dtype: str) -> Inputs:
    return make_inputs(case, dtype)


@functools.lru_cache(maxsize=64)
def _gold_forward(case: Case, dtype: str) -> np.ndarray:
    return g.gold_forward(_inputs(case, dtype))


@functools.lru_cache(maxsize=64)
def _gold_vjp(case: Case, dtype: str):
    return g.gold_vjp(_inputs(case, dtype))


@functools.lru_cache(maxsize=64)
def _forward_sensitivity(case: Case, dtype: str) -> float:
    return g.forward_sensitivity(_inputs(case, dtype), _gold_forward(case, dtype))


@functools.lru_cache(maxsize=64)
def _vjp_sensitivity(case: Case, dtype: str) -> dict:
    return g.vjp_sensitivity(_inputs(case, dtype), *_gold_vjp(case, dtype))


def _compare(name, out, gold, ref, dtype, kind, sensitivity=None):
    """(ok, err, tol, detail) for one array."""
    if out.shape != gold.shape:
        return False, float("inf"), 0.0, f"{name}: shape {out.shape}, expected {gold.shape}"
    ref_err = None if ref is None else float(np.max(np.abs(ref - gold), initial=0.0))
    tol = tolerance(dtype, kind, ref_err, sensitivity)
    finite = np.isfinite(gold)
    if not np.all(np.isfinite(out[finite])):
        bad = int(np.sum(~np.isfinite(out[finite])))
        return False, float("inf"), tol, f"{name}: {bad} NaN/Inf entries where gold is finite"
    err = float(np.max(np.abs(out - gold), initial=0.0))
    return err <= tol, err, tol, ""


def _outcome(adapter, case, dtype, kind, results, ref_where):
    """Fold per-array results [(name, ok, err, tol, detail)] into one Outcome."""
    bad = [r for r in results if not r[1]]
    worst = max(results, key=lambda r: (not r[1], r[2] / r[3] if r[3] else float("inf")))
    name, ok, err, tol, detail = worst
    ratio = err / tol if tol else float("inf")
    if bad and not detail:
        others = ", ".join(r[0] for r in bad if r[0] != name)
        detail = f"also out of tolerance: {others}" if others else ""
    return Outcome(
        backend=adapter.name,
        variant=case.variant,
        dtype=dtype,
        kind=kind,
        case=case.id,
        status="fail" if bad else "pass",
        blame="adapter" if bad else "",
        err=err,
        tol=tol,
        ratio=ratio,
        worst=name,
        detail=detail,
        reproduce="" if not bad else case.describe(),
        ref=ref_where,
    )


def _error(adapter, case, dtype, kind, exc) -> Outcome:
    tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return Outcome(
        adapter.name, case.variant, dtype, kind, case.id, "error",
        detail=f"the adapter raised {tb}", reproduce=case.describe(), blame="adapter",
    )


def _gold_error(adapter, case, dtype, kind, exc) -> Outcome:
    tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return Outcome(
        adapter.name, case.variant, dtype, kind, case.id, "error",
        detail=f"computing gold failed (the reference itself raised): {tb}", reproduce=case.describe(),
        blame="reference",
    )


def _skip(adapter, case, dtype, kind, why) -> Outcome:
    return Outcome(adapter.name, case.variant, dtype, kind, case.id, "skip", detail=why)


def check_forward(adapter, case: Case, dtype: str) -> Outcome:
    """The adapter's output for ``case`` in ``dtype`` against gold."""
    try:
        inp = _inputs(case, dtype)
        gold = _gold_forward(case, dtype)
    except Exception as exc:  # noqa: BLE001 - the reference itself failed: report, do not crash
        return _gold_error(adapter, case, dtype, "forward", exc)
    try:
        p = {n: adapter.from_numpy(a.astype(_np_dtype(dtype)), dtype) for n, a in inp.params.items()}
        x = adapter.from_numpy(inp.x.astype(_np_dtype(dtype)), dtype)
        mask = None if inp.mask is None else adapter.from_numpy(inp.mask, None)
        g.configure_frameworks()
        y = adapter.apply(case.spec, p, x, causal=case.causal, key_padding_mask=mask)
        out = np.asarray(adapter.to_numpy(y), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - an adapter that raises fails the check
        return _error(adapter, case, dtype, "forward", exc)
    if dtype == "float64":
        ref, where, sens = None, "", None
    else:
        ref, where = g.reference_forward(inp, p, x, mask)
        sens = _forward_sensitivity(case, dtype)
    res = _compare("y", out, gold, ref, dtype, "forward", sens)
    return _outcome(adapter, case, dtype, "forward", [("y", *res)], where)


def check_gradient(adapter, case: Case, dtype: str) -> Outcome:
    """The adapter's vjp (dx and every parameter's gradient) against torch-autograd gold."""
    if not has_vjp(adapter):
        return _skip(adapter, case, dtype, "gradient", "the adapter has no vjp")
    try:
        inp = _inputs(case, dtype)
        gdx, gdp = _gold_vjp(case, dtype)
    except g.GoldUnavailable as exc:
        return _skip(adapter, case, dtype, "gradient", str(exc))
    except Exception as exc:  # noqa: BLE001
        return _gold_error(adapter, case, dtype, "gradient", exc)
    g.configure_frameworks()
    try:
        nd = _np_dtype(dtype)
        p = {n: adapter.from_numpy(a.astype(nd), dtype) for n, a in inp.params.items()}
        x = adapter.from_numpy(inp.x.astype(nd), dtype)
        dy = adapter.from_numpy(inp.dy.astype(nd), dtype)
        mask = None if inp.mask is None else adapter.from_numpy(inp.mask, None)
        g.configure_frameworks()
        dx, dp = adapter.vjp(case.spec, p, x, dy, causal=case.causal, key_padding_mask=mask)
        dx = np.asarray(adapter.to_numpy(dx), dtype=np.float64)
        missing = [n for n in inp.params if n not in dp]
        extra = [n for n in dp if n not in inp.params]
        dp = {n: np.asarray(adapter.to_numpy(dp[n]), dtype=np.float64) for n in inp.params if n in dp}
    except Exception as exc:  # noqa: BLE001
        return _error(adapter, case, dtype, "gradient", exc)
    if missing or extra:
        return Outcome(
            adapter.name, case.variant, dtype, "gradient", case.id, "fail",
            detail=f"dparams: missing {missing}, unexpected {extra}", reproduce=case.describe(),
            blame="adapter",
        )
    if dtype == "float64":
        rdx, rdp, where, sens = None, {}, "", {}
    else:
        rdx, rdp, where = g.reference_vjp(inp, p, x, dy, mask)
        sens = _vjp_sensitivity(case, dtype)
    results = [("dx", *_compare("dx", dx, gdx, rdx, dtype, "gradient", sens.get("dx")))]
    for n in inp.params:
        results.append((n, *_compare(n, dp[n], gdp[n], rdp.get(n), dtype, "gradient", sens.get(n))))
    return _outcome(adapter, case, dtype, "gradient", results, where)


def _np_dtype(dtype: str):
    """The NumPy dtype handed to from_numpy: bfloat16 values travel as float32 (exactly)."""
    return np.float32 if dtype == "bfloat16" else np.dtype(dtype)


def run_case(adapter, case: Case, dtypes=None, kinds=("forward", "gradient")) -> list[Outcome]:
    """Every check of one case on one adapter: each dtype in ``dtypes`` that the adapter claims
    (default: :func:`~.cases.check_dtypes`, the case's own lists, or the widest claimed dtype where
    the adapter claims none of them); nothing for a variant it does not claim."""
    out = []
    if case.variant not in claimed_variants(adapter):
        return out
    fwd = check_dtypes(case, adapter.dtypes, "forward")
    grad = check_dtypes(case, adapter.dtypes, "gradient")
    for dtype in DTYPES:
        if dtype not in adapter.dtypes or (dtypes is not None and dtype not in dtypes):
            continue
        if "forward" in kinds and (dtypes is not None or dtype in fwd):
            out.append(check_forward(adapter, case, dtype))
        if "gradient" in kinds and has_vjp(adapter) and (dtypes is not None or dtype in grad):
            out.append(check_gradient(adapter, case, dtype))
    return out
