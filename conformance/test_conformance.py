"""The conformance checks, parametrized over --backend x grid case x dtype (see
:mod:`synth_ref.conformance.suite`)."""

from synth_ref.conformance.suite import (  # noqa: F401
    test_drawn,
    test_forward,
    test_gold_gradients_match_finite_differences,
    test_gradient,
)
