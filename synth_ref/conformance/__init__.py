"""The conformance suite: certify that an implementation computes the reference's function.

``python -m synth_ref.conformance --backend torch`` (or the console script
``synth-ref-conformance``) runs the suite with pytest against a registered backend, or against any
adapter with ``--adapter package.module:object``, and writes ``conformance-report.json`` plus a
Markdown matrix.  The pieces:

* :mod:`.cases`: the fixed grid and the Hypothesis strategy, random parameters, adversarial values;
* :mod:`.gold`: gold (NumPy float64; torch autograd float64 for gradients), the reference rerun in
  low precision on the backend, the finite-difference check of gold;
* :mod:`.tolerances`: the pass rule and the per-dtype floors (:data:`TOLERANCES`);
* :mod:`.check`: one forward or gradient check, folded into an :class:`~.check.Outcome`;
* :mod:`.report`: the JSON report, the Markdown matrix, the printed summary;
* :mod:`.plugin` and :mod:`.suite`: the pytest side.
"""

from __future__ import annotations

from .tolerances import REF_FACTOR, TOLERANCES, tolerance

__all__ = ["REF_FACTOR", "TOLERANCES", "main", "tolerance"]


def main(argv=None) -> int:
    """Console entry point (``synth-ref-conformance``)."""
    from .cli import main as _main

    return _main(argv)
