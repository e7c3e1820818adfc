"""Formulas read off ``synth_ref.Spec`` itself, never retyped.

A copy of a real (validated) ``Spec`` has its sizes replaced by SymPy symbols; calling the real
``param_shapes``, ``param_count``, ``paper_param_count``, ``flops`` and ``memory`` on it yields their
formulas.  Every formula is then checked against the real spec's numbers (``verify``), so a docs page
can never show a formula the code does not compute.
"""

from __future__ import annotations

import re
from dataclasses import fields

import sympy as sp
from sympy.parsing.sympy_parser import (
    convert_xor,
    implicit_multiplication,
    parse_expr,
    standard_transformations,
)

import synth_ref as sr
import synth_ref._spec as _spec_module

_INT = {"integer": True, "positive": True}
B, l, d, h, e, L, a, b, k, r, s, n = sp.symbols("B l d h e L a b k r s n", **_INT)
SYMBOLS = {str(x): x for x in (B, l, d, h, e, L, a, b, k, r, s, n)}

#: What each symbol stands for, shown on every page.
MEANING = {
    "B": "batch size", "l": "sequence length (l <= L)", "d": "d_model", "h": "n_heads",
    "e": "head size d / h", "L": "max_len", "a, b": "factors (a * b = L)", "k": "rank of R1 R2^T",
    "r": "pos_rank", "s": "window (AFT-local) or kernel_size (AFT-conv)", "n": "spatial_dims",
}


class _SymbolicSpec(sr.Spec):
    """A ``Spec`` whose sizes are symbols.  Built only by :func:`symbolic`, bypassing validation
    (the real spec it copies was validated).  ``head_dim`` is the symbol e rather than d // h."""

    @property
    def head_dim(self):
        return e


def symbolic(spec: sr.Spec) -> sr.Spec:
    """``spec`` with d_model, n_heads, max_len and every size option replaced by symbols."""
    sizes = {"d_model": d, "max_len": L, "k": k, "factors": (a, b), "pos_rank": r,
             "window": s, "kernel_size": s}
    if spec.info.multihead:
        sizes["n_heads"] = h
    out = object.__new__(_SymbolicSpec)
    for f in fields(sr.Spec):
        value = getattr(spec, f.name, None)
        if f.name in sizes and value is not None:
            value = sizes[f.name]
        object.__setattr__(out, f.name, value)
    return out


def values(spec: sr.Spec, batch: int | None = None, length: int | None = None) -> dict:
    """The substitution symbol -> number that turns ``symbolic(spec)`` back into ``spec``."""
    sub = {d: spec.d_model, h: spec.n_heads, e: spec.head_dim, L: spec.max_len}
    if spec.factors is not None:
        sub[a], sub[b] = spec.factors
    for sym, opt in ((k, "k"), (r, "pos_rank"), (s, "window"), (s, "kernel_size"), (n, "spatial_dims")):
        if getattr(spec, opt) is not None:
            sub[sym] = getattr(spec, opt)
    if batch is not None:
        sub[B], sub[l] = batch, length
    return sub


def formulas(spec: sr.Spec) -> dict:
    """Formulas (SymPy expressions) of everything ``Spec`` reports, in the symbols of :data:`SYMBOLS`.

    ``memory`` is in elements (``itemsize=1``): multiply by the dtype's size in bytes.
    """
    sym = symbolic(spec)
    flops = sp.expand(_spec_module.flops_of(sym, B, l, minimum=sp.Min))
    return {
        "shapes": sym.param_shapes(),
        "param_count": sp.expand(sym.param_count()),
        "paper_param_count": sp.expand(sym.paper_param_count()),
        "flops": flops,
        "memory": {key: sp.expand(v) for key, v in sym.memory(B, l, 1).items()},
    }


def verify(spec: sr.Spec, found: dict, batch: int, length: int, itemsize: int = 4) -> list[tuple]:
    """Rows (quantity, formula value, Spec's value) at one size; raises if any differ."""
    sub = values(spec, batch, length)

    def num(expr):
        v = sp.sympify(expr).subs(sub)
        if not v.is_Integer:
            raise ValueError(f"formula {expr} left symbols {v.free_symbols} at {spec!r}")
        return int(v)

    shapes = {name: tuple(num(x) for x in shape) for name, shape in found["shapes"].items()}
    if shapes != spec.param_shapes():
        raise AssertionError(f"symbolic shapes {shapes} differ from {spec.param_shapes()} for {spec!r}")
    rows = [("param_count", num(found["param_count"]), spec.param_count()),
            ("paper_param_count", num(found["paper_param_count"]), spec.paper_param_count()),
            ("flops", num(found["flops"]), spec.flops(batch, length))]
    mem = spec.memory(batch, length, itemsize)
    rows += [(f"memory[{key!r}]", num(expr) * itemsize, mem[key]) for key, expr in found["memory"].items()]
    bad = [row for row in rows if row[1] != row[2]]
    if bad:
        raise AssertionError(f"formula and Spec disagree for {spec!r}: {bad}")
    return rows


# --- the papers' costs ------------------------------------------------------------------------------

_TRANSFORMS = standard_transformations + (implicit_multiplication, convert_xor)
_MIXTURE_COST = r"\sum_c \text{cost}_c"


def paper_cost(spec: sr.Spec):
    """The registry's ``paper_cost`` (LaTeX) as a SymPy expression; a mixture's is the sum of its
    components'.  Only numbers, the symbols above, + ^ ( ) { } and implicit products are accepted,
    so a cost written in other notation fails the build instead of being misread."""
    tex = spec.info.paper_cost
    if tex == _MIXTURE_COST:
        return sum(_parse(sr.REGISTRY[c].paper_cost) for c in spec.components_used)
    return _parse(tex)


def _parse(tex: str):
    plain = tex.replace(r"\,", "").replace("{", "(").replace("}", ")")
    bad = [w for w in re.findall(r"[A-Za-z]+", plain) if w not in SYMBOLS]
    if bad or not re.fullmatch(r"[0-9A-Za-z+^() ]*", plain):
        raise ValueError(f"paper_cost: expected numbers, symbols {', '.join(SYMBOLS)}, + ^ ( ); got {tex!r}")
    return parse_expr(plain, local_dict=dict(SYMBOLS), transformations=_TRANSFORMS)


def single_head(expr, spec: sr.Spec):
    """``expr`` with e = d / h, n = spatial_dims, then h = 1: the papers' tables are single-head."""
    sub = {e: d / h}
    if spec.spatial_dims is not None:
        sub[n] = spec.spatial_dims
    return sp.expand(sp.sympify(expr).subs(sub).subs(h, 1))


def latex(expr) -> str:
    return sp.latex(expr, order="grlex") if not isinstance(expr, tuple) else (
        "(" + ", ".join(sp.latex(x) for x in expr) + ")")
