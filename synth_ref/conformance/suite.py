"""The conformance tests.  Collected from ``conformance/test_conformance.py`` (which imports them)
or directly by ``python -m synth_ref.conformance``; parametrized by :mod:`.plugin`."""

from __future__ import annotations

import pytest

from ..backends import claimed_variants, has_vjp
from . import cases as C
from . import check as K
from . import gold as G
from . import plugin as P

try:
    from hypothesis import given
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    given = None


def _usable(target, dtype=None):
    if not target.ok:
        pytest.skip(f"{target.label} unavailable: {target.reason}")
    if dtype is not None and dtype not in target.adapter.dtypes:
        pytest.skip(f"{target.label} does not claim {dtype}")


def _report(request, outcomes):
    for o in outcomes:
        P.record(request.node, o)
    bad = [o for o in outcomes if not o.ok]
    if bad:
        pytest.fail("\n".join(o.message() for o in bad), pytrace=False)


def test_forward(conformance_target, grid_case, conformance_dtype, request):
    _usable(conformance_target, conformance_dtype)
    _report(request, [K.check_forward(conformance_target.adapter, grid_case, conformance_dtype)])


def test_gradient(conformance_target, grid_case, conformance_dtype, request):
    _usable(conformance_target, conformance_dtype)
    if not has_vjp(conformance_target.adapter):
        pytest.skip(f"{conformance_target.label} has no vjp (forward only)")
    _report(request, [K.check_gradient(conformance_target.adapter, grid_case, conformance_dtype)])


if given is not None:

    @given(data=st.data())
    def test_drawn(conformance_target, data, request):
        """Hypothesis-drawn shapes, options, masks and values (forward and gradient)."""
        _usable(conformance_target)
        picked = P.session(request.config).variants
        claimed = claimed_variants(conformance_target.adapter)
        variants = tuple(v for v in claimed if picked is None or v in picked)
        if not variants:
            pytest.skip(f"{conformance_target.label} claims none of the variants picked")
        case = data.draw(C.case_strategy(variants), label="case")
        dtype = data.draw(st.sampled_from(tuple(conformance_target.adapter.dtypes)), label="dtype")
        _report(request, K.run_case(conformance_target.adapter, case, dtypes=[dtype]))


def test_gold_gradients_match_finite_differences(fd_case, request):
    """Gradient gold itself: torch autograd of the reference (float64) against central finite
    differences of the NumPy reference, every variant on a tiny case with causal and padding."""
    try:
        rel = G.finite_difference_check(C.make_inputs(fd_case, "float64"))
    except G.GoldUnavailable as exc:
        pytest.skip(str(exc))
    worst = max(rel.values())
    name = fd_case.variant + (" 2-D" if fd_case.spec.spatial_dims == 2 else "")
    request.node.user_properties.append(("conformance_gold_check", (name, worst)))
    assert worst < 1e-6, f"gold gradient disagrees with finite differences: {rel}"
