"""One Markdown page per variant, written from ``REGISTRY`` and ``Spec`` alone."""

from __future__ import annotations

import sympy as sp

import synth_ref as sr

from . import conformance_report, heatmap, samples, symbolic
from . import markdown as md


def _shape_cell(shape) -> str:
    return md.math(symbolic.latex(tuple(shape)))


def _elements(shape) -> str:
    return md.math(symbolic.latex(sp.Mul(*shape)))


def _spec_call(spec: sr.Spec) -> str:
    opts = "".join(f", {k}={v!r}" for k, v in spec.options().items())
    return (f"Spec({spec.variant!r}, d_model={spec.d_model}, n_heads={spec.n_heads}, "
            f"max_len={spec.max_len}{opts})")


def parameters_section(spec: sr.Spec) -> list[str]:
    found = symbolic.formulas(spec)
    out = ["## Parameters\n",
           f"Read from {md.code(_spec_call(spec) + '.param_shapes()')} with every size replaced by its "
           "symbol (the symbols are listed at the end of the page), in canonical order.\n"]
    rows = [[md.code(name), _shape_cell(shape), _elements(shape)] for name, shape in found["shapes"].items()]
    out.append(md.table(["array", "shape", "elements"], rows))
    for opt, value in samples.ALTERNATIVES.items():
        if opt not in spec.info.options:
            continue
        alt = sr.Spec(spec.variant, d_model=spec.d_model, n_heads=spec.n_heads, max_len=spec.max_len,
                      **{**spec.options(), opt: value})
        alt_shapes = symbolic.formulas(alt)["shapes"]
        changed = [[md.code(nm), _shape_cell(sh), _elements(sh)] for nm, sh in alt_shapes.items()
                   if found["shapes"].get(nm) != sh]
        gone = [nm for nm in found["shapes"] if nm not in alt_shapes]
        out.append(f"With {md.code(f'{opt}={value!r}')}"
                   + (f", these replace {', '.join(md.code(g) for g in gone)}" if gone else "")
                   + ":\n")
        out.append(md.table(["array", "shape", "elements"], changed))
    return out, found


def complexity_section(spec: sr.Spec, found: dict) -> tuple[list[str], bool]:
    """Formulas, the paper's cost beside ours, and a numeric check.  Returns (lines, agrees)."""
    ours_1 = symbolic.single_head(found["paper_param_count"], spec)
    paper = symbolic.paper_cost(spec)
    paper_1 = symbolic.single_head(paper, spec)
    agrees = sp.simplify(ours_1 - paper_1) == 0
    m = found["memory"]
    lat = symbolic.latex
    out = ["## Complexity\n",
           "Formulas read off the real `Spec.param_count`, `paper_param_count`, `flops` and `memory` "
           "(see {ref}`how-generated`); memory in elements, multiply by the bytes of one "
           "element.\n"]
    rows = [
        ["parameters, all (`param_count`)", md.math(lat(found["param_count"]))],
        ["parameters the paper counts (`paper_param_count`)", md.math(lat(found["paper_param_count"]))],
        ["forward FLOPs (`flops(B, l)`)", md.math(lat(found["flops"]))],
        ["memory: parameters", md.math(lat(m["parameters"]))],
        ["memory: materialized (largest intermediate of a plain implementation)",
         md.math(lat(m["materialized"]))],
        ["memory: streaming (what a fused implementation holds)", md.math(lat(m["streaming"]))],
    ]
    out.append(md.table(["quantity", "formula"], rows))
    out.append("The paper's parameter cost beside ours, also single-head (h = 1, e = d) as in the "
               "paper's table:\n")
    out.append(md.table(["the paper", "ours", "ours at h = 1", "equal"],
                        [[md.math(spec.info.paper_cost), md.math(lat(found["paper_param_count"])),
                          md.math(lat(ours_1)), "yes" if agrees else "**no**"]]))

    # The numeric check, single-head like the paper's tables.
    num = samples.numeric_spec(spec.variant, n_heads=1)
    batch, length = samples.NUMERIC["batch"], samples.NUMERIC["length"]
    checked = symbolic.verify(num, symbolic.formulas(num), batch, length, itemsize=4)
    paper_value = int(paper.subs(symbolic.values(num, batch, length)))
    out.append(f"Numeric check at {md.code(_spec_call(num))}, B = {batch}, l = {length}, float32 "
               "(4 bytes): each formula above evaluated, against the `Spec` method itself.\n")
    rows = [[md.code(q), f"{f:,}", f"{v:,}", "yes" if f == v else "**no**"] for q, f, v in checked]
    rows.append(["the paper's cost", f"{paper_value:,}", f"{num.paper_param_count():,}",
                 "yes" if paper_value == num.paper_param_count() else "**no**"])
    out.append(md.table(["quantity", "formula", "Spec", "equal"], rows))
    return out, agrees and paper_value == num.paper_param_count()


def conventions_section(info) -> list[str]:
    out = ["## Conventions pinned down\n",
           "Where the paper is vague, the reference decides, and where it departs from the paper it "
           "says so; each decision and why:\n"]
    for i, (what, why) in enumerate(info.conventions, 1):
        out.append(f"{i}. **{md.text(what)}**  \n   Why: {md.text(why)}\n")
    if not info.conventions:
        out.append("None: the paper's definition is complete.\n")
    return out


def weights_section(variant: str) -> list[str]:
    spec = samples.heat_spec(variant)
    length = samples.HEAT["length"]
    title = "Attention weights" if spec.family == "softmax" else "Effective weights"
    return [f"## {title}\n",
            f"```{{figure}} ../img/{variant}.png\n:alt: heat map of {variant} weights\n"
            f":name: heatmap-{variant}\n\n"
            f"{md.text(heatmap.caption(spec, length))}\n```\n"]


def symbols_section(found: dict, extra_exprs) -> list[str]:
    used = set()
    for shape in found["shapes"].values():
        for x in shape:
            used |= sp.sympify(x).free_symbols
    for expr in extra_exprs:
        used |= sp.sympify(expr).free_symbols
    names = {str(x) for x in used}
    rows = [[md.math(key.replace(", ", ",\\ ")), md.text(meaning)]
            for key, meaning in symbolic.MEANING.items() if any(part in names for part in key.split(", "))]
    return ["## Symbols\n", md.table(["symbol", "meaning"], rows)]


def render(variant: str, report) -> tuple[str, bool]:
    """(page Markdown, whether ours matches the paper's count)."""
    info = sr.REGISTRY[variant]
    spec = sr.Spec(variant, d_model=samples.NUMERIC["d_model"], n_heads=4 if info.multihead else 1,
                   max_len=samples.NUMERIC["max_len"], **samples.options_for(variant))
    opts = ", ".join(md.code(o) for o in info.options) or "none"
    out = [f"(variant-{variant})=\n", f"# {md.text(info.title)}\n",
           f"{md.code(variant)} · {md.text(info.family)} family · {md.text(info.paper)} · options: {opts} · "
           + ("multi-head" if info.multihead else "no heads (n_heads = 1)") + "\n",
           "## Formula\n", md.math_block(info.formula),
           "How the logits or weights become the output is the same for the whole family: see "
           "{ref}`families`.\n"]
    params, found = parameters_section(spec)
    out += params
    comp, agrees = complexity_section(spec, found)
    out += comp
    out += conventions_section(info)
    out += weights_section(variant)
    out += conformance_report.variant_section(variant, report)
    out += symbols_section(found, [found["flops"], *found["memory"].values(), found["param_count"],
                                   symbolic.paper_cost(spec)])  # the paper's column has its own (n)
    return "\n".join(out), agrees
