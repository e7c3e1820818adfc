"""The example adapter of "Writing an adapter": it follows the protocol, its own code paths agree
with the reference, and the conformance suite's command line passes it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import synth_ref as sr
from docs.examples import my_adapter

ROOT = Path(__file__).resolve().parents[2]

TARGET = "docs.examples.my_adapter:ADAPTER"
# float64: both sides compute the same sums in another order (einsum, global max), so they agree to
# rounding of O(1) values; 1e-12 is ~5000 ulps, far below any real mistake (O(1e-2) and up).
ATOL64 = 1e-12


def test_loads_through_the_registry_loader():
    backends = pytest.importorskip("synth_ref.backends", reason="the adapter registry (issue 3) is absent")
    if not hasattr(backends, "load"):
        pytest.skip("synth_ref.backends has no load() yet: the adapter registry (issue 3) is absent")
    adapter = backends.load(TARGET)
    assert adapter is my_adapter.ADAPTER
    assert adapter.available() == (True, f"numpy {np.__version__}")


def _case(variant, l, causal, seed=0, **opts):
    spec = sr.Spec(variant, d_model=8, n_heads=2 if sr.REGISTRY[variant].multihead else 1, max_len=6, **opts)
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(v.shape) for k, v in spec.init().items()}  # never init's zeros
    x = rng.standard_normal((3, l, 8))
    return spec, params, x


@pytest.mark.parametrize(("variant", "causal"), [("random", False), ("random", True), ("aft_simple", False)])
@pytest.mark.parametrize("l", [1, 4, 6])
def test_fast_paths_match_the_reference(variant, causal, l, monkeypatch):
    spec, params, x = _case(variant, l, causal)
    gold = sr.apply(spec, params, x, causal=causal)

    def refuse(*a, **k):
        raise AssertionError("the fast path fell back to the reference")

    monkeypatch.setattr(my_adapter.sr, "apply", refuse)  # prove the adapter's own code ran
    a = my_adapter.ADAPTER
    p = {k: a.from_numpy(v, "float64") for k, v in params.items()}
    out = a.apply(spec, p, a.from_numpy(x, "float64"), causal=causal, key_padding_mask=None)
    np.testing.assert_allclose(a.to_numpy(out), gold, rtol=0, atol=ATOL64)


def test_large_logits_stay_finite():
    spec, params, x = _case("aft_simple", 6, False)
    params["w_k"] = params["w_k"] * 200.0  # keys of order +-500: exp overflows without the max
    params["w_q"] = params["w_q"] * 200.0
    out = my_adapter.ADAPTER.apply(spec, params, x)
    np.testing.assert_allclose(out, sr.apply(spec, params, x), rtol=0, atol=1e-9)


def test_other_cases_use_the_reference():
    spec, params, x = _case("random", 5, False)
    mask = np.array([[True] * 5, [True, True, False, False, False], [False] * 5])
    out = my_adapter.ADAPTER.apply(spec, params, x, key_padding_mask=mask)
    np.testing.assert_array_equal(out, sr.apply(spec, params, x, key_padding_mask=mask))


def _cli_available() -> bool:
    """Whether the conformance suite's command line (issue 3) is in this checkout."""
    try:
        return importlib.util.find_spec("synth_ref.conformance.__main__") is not None
    except ModuleNotFoundError:
        return False


def test_conformance_cli_passes_the_example_adapter(tmp_path):
    if not _cli_available():
        pytest.skip("the conformance command line (python -m synth_ref.conformance, issue 3) is absent")
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "synth_ref.conformance", "--adapter", TARGET,
                           "--report", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    log = f"{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    assert report.is_file(), f"the suite wrote no report (exit {proc.returncode}):\n{log}"
    entry = json.loads(report.read_text())["backends"][my_adapter.ADAPTER.name]
    assert entry["available"] and entry["dtypes"] == list(my_adapter.ADAPTER.dtypes)
    for variant in sr.VARIANTS:  # every variant was checked in every claimed dtype, and passed somewhere
        for dtype in entry["dtypes"]:
            cell = entry["cells"][variant][dtype]["forward"]
            assert cell["checks"] > cell["failed"], f"{variant} {dtype}: nothing passed:\n{log}"
    assert entry["failures_total"] == len(entry["failures"]), "the report truncated the failures"
    # A check fails the adapter when its output disagrees with gold or it raises.  Checks whose gold
    # could not be computed (the reference itself raised) test nothing about the adapter: they are
    # the reference's bugs, reported by its own suite, and are named here as a warning.
    ours = [f for f in entry["failures"] if "computing gold failed" not in f.get("detail", "")]
    assert not ours, "the example adapter fails conformance:\n" + "\n".join(
        f"{f['case']} {f['dtype']} {f['status']}: {f['detail']}" for f in ours[:10])
    gold = [f for f in entry["failures"] if f not in ours]
    if gold:
        warnings.warn(f"{len(gold)} checks could not run because the reference raised computing gold, "
                      f"e.g. {gold[0]['case']}: {gold[0]['detail']}", stacklevel=1)
    else:
        assert proc.returncode == 0, log
