"""Benchmarks of synth-ref's variants across backends: ``python -m benchmarks --quick`` or ``nox -s bench``.

See benchmarks/README.md for what is measured, how, and how to read the results.
"""
