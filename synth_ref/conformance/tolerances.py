"""The pass rule and the per-dtype floors: one table, read by the suite and by the docs.

A check passes when, for every output array (y; or dx and each parameter's gradient),

    max|out - gold| <= max(floor[dtype], 5 * max|ref_dtype - gold|)

and ``out`` has no NaN or Inf where gold is finite.  ``gold`` is the NumPy reference in float64 on
the same (upcast) inputs, or for gradients torch autograd of the reference in float64 on CPU.
``ref_dtype`` is the reference itself run in the checked dtype on the checked backend, so the rule
says: "no more than 5x the error the reference makes in that precision on that hardware" (the rule
PyTorch's attention tests use).  For float64 the reference *is* gold up to rounding
(5 * |ref - gold| ~ 1e-15, far below the floor), so it is not rerun and the floor alone applies.

The reference's own error is one sample of what rounding does, and on an ill-conditioned case
(logits of size ~100, where one rounding of a logit moves a softmax weight by ~1e-5) it can be
lucky: a kernel that rounds its intermediates in another order, no worse, then fails.  So the error
term is the larger of |ref_dtype - gold| and the case's *sensitivity*: max|gold(perturbed) - gold|
over :data:`SENSITIVITY_DRAWS` copies of the inputs (x, every parameter, and dy for gradients)
each multiplied elementwise by (1 + u * U[-1, 1]), u the dtype's unit roundoff -- the change one
rounding of every input causes, computed in float64, so it measures the problem, not an
implementation.  It is small wherever the case is well conditioned and the floors decide there.

    max|out - gold| <= max(floor[dtype], 5 * max(|ref_dtype - gold|, sensitivity))

The floors matter where the reference is unusually exact in low precision (a small case whose
every intermediate is representable): there, 5x a near-zero error would reject a correct kernel
that merely sums in another order.  Inputs are drawn so that gold is of order 1 (outputs) to 10
(parameter gradients, which sum over batch and positions).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The multiple of the reference's own low-precision error (or the case's sensitivity) a backend
#: may make.
REF_FACTOR = 5.0

#: Unit roundoff (half an ulp at 1.0) per dtype: the relative size of the sensitivity perturbation.
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
#: Perturbed copies of the inputs the sensitivity is the maximum over (float64 gold reruns).
SENSITIVITY_DRAWS = 3


@dataclass(frozen=True)
class Floor:
    forward: float
    gradient: float
    why: str


#: dtype name -> absolute error floors (forward output, gradients) and the reason for each.
TOLERANCES: dict[str, Floor] = {
    "float64": Floor(
        1e-9,
        1e-8,
        "eps = 2.2e-16; a different but sound summation order over <= 10^3 terms of size <= 10 "
        "moves the result by ~1e-12.  1e-9 leaves room for that and for libm differences in exp, "
        "yet fails anything computed in float32 anywhere on the path (errors >= 1e-7).",
    ),
    "float32": Floor(
        1e-5,
        1e-4,
        "eps = 1.2e-7 (about 6e-8 per rounding); the reference's own float32 error on these sizes "
        "is 1e-7..1e-6, so 5x it usually decides.  The floor (about 100 ulps at 1.0) only admits "
        "reordered sums where the reference happens to be exact; TF32 (10-bit mantissa, errors "
        "~1e-3) fails it, which is why the suite pins float32 matmuls to full precision.",
    ),
    "float16": Floor(
        1e-2,
        5e-2,
        "eps = 9.8e-4; one rounding of an O(1) value is 5e-4, a softmax row of 12 terms "
        "accumulates ~3e-3.  10 ulps at 1.0 as the floor; gradients sum more terms and get 5x.",
    ),
    "bfloat16": Floor(
        5e-2,
        2e-1,
        "eps = 7.8e-3 (8-bit mantissa); one rounding of an O(1) value is 4e-3.  About 6 ulps at "
        "1.0 as the floor; gradients 4x that for their longer sums.",
    ),
}


def tolerance(dtype: str, kind: str, ref_err: float | None, sensitivity: float | None = None) -> float:
    """The allowed max|out - gold| for one array.  ``kind`` is "forward" or "gradient";
    ``ref_err`` is max|ref_dtype - gold| and ``sensitivity`` the case's max|gold(perturbed) - gold|
    (None where not computed: float64, whose floor alone applies)."""
    floor = TOLERANCES[dtype].forward if kind == "forward" else TOLERANCES[dtype].gradient
    terms = [t for t in (ref_err, sensitivity) if t is not None]
    if not terms:
        return floor
    return max(floor, REF_FACTOR * max(terms))


def markdown_table() -> str:
    """The floors as a Markdown table (the docs include it)."""
    rows = ["| dtype | forward floor | gradient floor | why |", "| --- | --- | --- | --- |"]
    for name, f in TOLERANCES.items():
        rows.append(f"| {name} | {f.forward:g} | {f.gradient:g} | {f.why} |")
    return "\n".join(rows)
