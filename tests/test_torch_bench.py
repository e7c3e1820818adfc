"""benchmarks/torch_bench.py --quick runs end to end on CPU (kernels in Triton's interpreter) and
writes a row for every implementation, with a time, and the issue's targets (unmeasured here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the benchmark needs torch")
pytest.importorskip("triton", reason="the benchmark's kernels need triton (pip install triton)")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_bench.py"


def test_quick_run_writes_every_row(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script sets it itself
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    failed = [r for r in rows if r.get("ms") is None]
    assert not failed, failed
    ours = {r["variant"] for r in rows if r["impl"].startswith("ours:")}
    assert ours == {"dot_product", "dense", "random", "factorized_random", "mixture",
                    "aft_full", "aft_simple", "aft_local", "aft_conv"}
    assert any(r["impl"].startswith("SDPA flash") for r in rows)
    assert len(result["targets"]) == 8 and all(t["ok"] is None for t in result["targets"])
    assert "| target (B=4 h=8 l=4096 e=64)" in run.stdout
