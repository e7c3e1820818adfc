"""The sample specs the generated pages are drawn from.

Only sizes live here: which options a variant takes comes from ``synth_ref.variants.REGISTRY``, and
every shape, count and formula comes from ``synth_ref.Spec``.
"""

from __future__ import annotations

import synth_ref as sr
from synth_ref.variants import OPTIONS, SOFTMAX_VARIANTS

#: A value for every option, so any variant's sample spec can be built from its registry entry.
#: The mixture shows all five components, so its page lists every prefixed array.
OPTION_VALUES = {
    "k": 8,
    "factors": (16, 16),
    "tiling": "outer",
    "components": SOFTMAX_VARIANTS,
    "pos_rank": None,
    "window": 16,
    "kernel_size": 15,
    "spatial_dims": 1,
}
assert set(OPTION_VALUES) == set(OPTIONS), "every Spec option needs a sample value"

#: Option settings that change the parameter layout, shown as extra rows of the shape table.
ALTERNATIVES = {"pos_rank": 8, "spatial_dims": 2}

#: The numeric check: the paper's tables are single-head, so h = 1 there.
NUMERIC = {"d_model": 64, "max_len": 256, "batch": 2, "length": 256}

#: The heat maps: small enough to read every cell.
HEAT = {"d_model": 8, "n_heads": 2, "max_len": 16, "length": 16,
        "factors": (4, 4), "k": 4, "window": 3, "kernel_size": 5,
        "components": ("dense", "random")}


def options_for(variant: str, **override) -> dict:
    """Sample values for the options ``variant`` takes (a mixture: its components' too)."""
    names = set(sr.REGISTRY[variant].options)
    if variant == "mixture":  # it takes the options of the components it has
        comps = override.get("components", OPTION_VALUES["components"])
        names = {"components"} | {o for c in comps for o in sr.REGISTRY[c].options}
    out = {o: override.get(o, OPTION_VALUES[o]) for o in OPTIONS if o in names}
    return {o: v for o, v in out.items() if v is not None}


def numeric_spec(variant: str, n_heads: int = 1) -> sr.Spec:
    return sr.Spec(variant, d_model=NUMERIC["d_model"], n_heads=n_heads, max_len=NUMERIC["max_len"],
                   **options_for(variant))


def heat_spec(variant: str) -> sr.Spec:
    info = sr.REGISTRY[variant]
    opts = options_for(variant, **{k: v for k, v in HEAT.items() if k in OPTIONS})
    return sr.Spec(variant, d_model=HEAT["d_model"], n_heads=HEAT["n_heads"] if info.multihead else 1,
                   max_len=HEAT["max_len"], **opts)
