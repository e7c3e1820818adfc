"""Load the conformance plugin: --backend/--adapter/--profile/--report options, parametrization,
report writing.  ``pytest conformance --backend torch --report conformance-report.json``."""

from synth_ref.conformance.plugin import pytest_addoption, pytest_configure  # noqa: F401
