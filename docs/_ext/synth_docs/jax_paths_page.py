"""The JAX adapter's implementation table: which implementation runs per platform and variant.

Every cell is :func:`synth_ref.backends.jax_plan.plan` on a sample spec -- the function the adapter
itself dispatches with -- so the page cannot drift from the code.  ``jax_plan`` needs no JAX when a
platform is given, so the docs build does not install it.
"""

from __future__ import annotations

import synth_ref as sr
from synth_ref.backends import jax_plan

from . import markdown as md
from . import samples

#: (column title, path, platform): each platform's default path, and the interpreter (any platform).
COLUMNS = [("CPU", None, "cpu"), ("GPU", None, "gpu"), ("TPU", None, "tpu"),
           ("any, with pallas_interpret", "pallas_interpret", "cpu")]
#: What a cell notes besides the float32, no-padding case.
CASES = [(False, "float32"), (True, "float32"), (False, "bfloat16"), (False, "float16"),
         (False, "float64")]


def specs() -> list[tuple[str, sr.Spec]]:
    """(row label, sample spec): every variant, and the mixture with and without factorized_dense
    (whose logits dot_product_attention cannot take)."""
    rows = []
    for name in sr.VARIANTS:
        spec = samples.numeric_spec(name)
        if name == "mixture":
            rows.append(("mixture (with factorized_dense)", spec))
            comps = tuple(c for c in spec.components if c != "factorized_dense")
            opts = samples.options_for(name, components=comps)
            rows.append(("mixture (without factorized_dense)", sr.Spec(
                name, d_model=spec.d_model, n_heads=spec.n_heads, max_len=spec.max_len, **opts)))
        else:
            rows.append((name, spec))
    return rows


def cell(spec, path, platform) -> str:
    """The float32 implementation, then any that differ with key padding or another dtype."""
    def run(masked, dtype):
        return jax_plan.plan(spec, masked=masked, path=path or jax_plan.default_path(platform),
                             platform=platform, dtype=dtype)

    base = run(False, "float32")
    other: dict[str, list[str]] = {}
    for masked, dtype in CASES[1:]:
        got = run(masked, dtype)
        if got != base:
            other.setdefault(got, []).append("key padding" if masked else dtype)
    notes = [f"{md.code(impl)} for {', '.join(whens)}" for impl, whens in other.items()]
    return md.code(base) + ("; " + "; ".join(notes) if notes else "")


def render() -> str:
    header = ["variant"] + [md.text(title) for title, _, _ in COLUMNS]
    rows = [[md.text(label)] + [cell(spec, path, platform) for _, path, platform in COLUMNS]
            for label, spec in specs()]
    paths = ", ".join(f"{title} {md.code(jax_plan.default_path(platform))}"
                      for title, path, platform in COLUMNS if path is None)
    return f"Default paths: {paths}.\n\n" + md.table(header, rows)
