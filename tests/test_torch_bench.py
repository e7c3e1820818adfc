"""benchmarks/torch_bench.py --quick runs end to end on CPU (kernels in Triton's interpreter) and
writes a row for every implementation, with a time, and the issue's targets (unmeasured here); its
``--shapes`` option picks the shapes (without triton: only the end-to-end run needs the kernels)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the benchmark needs torch")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_bench.py"


def test_quick_run_writes_every_row(tmp_path):
    pytest.importorskip("triton", reason="the benchmark's kernels need triton (pip install triton)")
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


def _bench():
    sys.path.insert(0, str(SCRIPT.parents[1]))
    from benchmarks import torch_bench

    return torch_bench


def test_shapes_option_selects_only_those_shapes():
    """gpu/run.py's essential stage measures the issue-4 target alone (``--shapes 4x8x4096x64``); without
    the option the shapes are as before."""
    tb = _bench()

    def shapes(*argv):
        return tb.shapes_for(tb.parser().parse_args(list(argv)))

    assert shapes("--shapes", "4x8x4096x64") == [tb.TARGET_SHAPE]
    assert shapes("--shapes", "4x8x4096x64", "2X2x16x16") == [tb.TARGET_SHAPE, (2, 2, 16, 16)]
    assert shapes() == tb.GPU_SHAPES and shapes("--quick") == tb.QUICK_SHAPES
    assert shapes("--long") == tb.GPU_SHAPES + tb.LONG_SHAPES
    assert shapes("--quick", "--long") == tb.QUICK_SHAPES
    assert shapes("--shapes", "1x8x1024x64", "--long") == [(1, 8, 1024, 64), *tb.LONG_SHAPES]


@pytest.mark.parametrize("bad", ["4x8x4096", "4x8x4096x0", "4x8xlx64", ""])
def test_shapes_option_names_what_it_expected(bad, capsys):
    tb = _bench()
    with pytest.raises(SystemExit):
        tb.parser().parse_args(["--shapes", bad])
    err = capsys.readouterr().err
    assert "--shapes" in err and "expected B x h x l x e" in err and repr(bad) in err


def test_gpu_runner_names_the_target_shape():
    """gpu/run.py (standard library only, so it cannot import this module) spells the target itself."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_run_for_bench", SCRIPT.parents[1] / "gpu" / "run.py")
    run = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run  # dataclasses look their module up there
    spec.loader.exec_module(run)
    tb = _bench()
    assert tb.parse_shape(run.TARGET_SHAPE) == tb.TARGET_SHAPE
