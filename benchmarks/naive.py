"""The naive "what users write today" versions (../shared/notes/anchors.md), imported from
benchmarks/torch_bench.py (issue 4's PyTorch benchmark) so they are written once."""

from __future__ import annotations

import importlib


def impls(settings, skipped: list) -> list:
    try:
        importlib.import_module("benchmarks.torch_bench")
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks.torch_bench":
            raise
        skipped.append(
            {
                "what": "naive user versions",
                "why": "benchmarks/torch_bench.py (issue 4) is not "
                "in this checkout; the '× naive' column is empty",
            }
        )
        return []
    return []
