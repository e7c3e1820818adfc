"""The conformance suite's pytest entry point and the suite's own tests (teeth, registry).

The checks themselves live in :mod:`synth_ref.conformance` so that an installed package can run
them (``python -m synth_ref.conformance``); this directory collects them for ``pytest`` and nox.
"""
