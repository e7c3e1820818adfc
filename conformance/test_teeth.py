"""Teeth: the suite must fail every deliberately wrong adapter, and pass each one's control twin.

Each wrong adapter (``wrong_adapters.DEFECTS``) reproduces one defect of a public implementation;
the suite's fixed ci grid runs against it on the variants it affects, in every dtype it claims.
The first failing case is printed (and collected into the end-of-run summary).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from synth_ref.conformance import cases as C
from synth_ref.conformance import check as K

from . import wrong_adapters as W


def _run(adapter, kinds=("forward", "gradient")):
    outcomes = []
    for case in C.grid("ci", variants=adapter.variants):
        outcomes += K.run_case(adapter, case, kinds=kinds)
    return outcomes


@pytest.mark.parametrize("name", list(W.DEFECTS))
def test_suite_catches_defect(name, request):
    bad = W.make(name)
    _caught(bad, _run(bad), request)


@pytest.mark.parametrize("name", list(W.DEFECTS))
def test_control_twin_passes(name):
    """The same code with the defect switched off passes: the catch is the defect's doing."""
    good = W.make(name, enabled=False)
    bad = [o for o in _run(good) if not o.ok]
    assert not bad, "\n".join(o.message() for o in bad[:3])


#: Defects the ci grid meets only on rows it lists in float64/float32 (lengths below max_len, the
#: ``opposed`` regime, large logits behind a mask), for adapters that claim neither.
LOW_PRECISION_ONLY = ("dense-trailing-columns", "aft-rank-one-shift", "softmax-max-over-masked-keys")


@pytest.mark.parametrize("name", LOW_PRECISION_ONLY)
def test_an_adapter_claiming_only_float16_meets_every_case(name, request):
    """An adapter that claims none of a case's dtypes is checked in its widest one
    (``cases.check_dtypes``).  Before, a float16-only adapter (a flash-style kernel) was checked on
    full-length rows of primary configurations only and these defects read pass; the control twin,
    float16 too, passes."""
    bad = W.make(name)
    bad.dtypes = ("float16",)
    _caught(bad, _run(bad), request)
    good = W.make(name, enabled=False)
    good.dtypes = ("float16",)
    wrong = [o for o in _run(good) if not o.ok]
    assert not wrong, "\n".join(o.message() for o in wrong[:3])


def _caught(bad, outcomes, request):
    """The failing checks of a wrong adapter's run, printed and recorded for the summary; asserts
    there is at least one."""
    caught = [o for o in outcomes if o.blame == "adapter"]
    first = caught[0].message() if caught else "(nothing)"
    print(f"{bad.name} ({bad.source}: {bad.defect}): caught by {len(caught)} of {len(outcomes)} checks")
    print(f"first failing check: {first}")
    request.node.user_properties.append(
        ("conformance_teeth", (bad.name, len(caught), len(outcomes), _short(first)))
    )
    assert caught, f"the suite did not catch {bad.name}: {bad.defect}"
    return caught


def _short(message: str) -> str:
    """The first failure in one line: the check and case, then what was off."""
    lines = [ln.strip() for ln in message.splitlines() if not ln.strip().startswith("reproduce")]
    return " | ".join(lines[:3])


@pytest.mark.parametrize("name", list(W.VJP_DEFECTS))
def test_suite_catches_wrong_backward(name, request):
    """Backward-pass defects on the torch adapter: caught by gradient checks only (its forward is
    right), and the control twin passes."""
    pytest.importorskip("torch")
    bad = W.WrongVjp(name)
    caught = _caught(bad, _run(bad, kinds=("gradient",)), request)
    if name == "random-r-not-a-parameter":
        assert caught[0].worst == "r", caught[0].message()
    control = [o for o in _run(W.WrongVjp(name, enabled=False), kinds=("gradient",)) if not o.ok]
    assert not control, "\n".join(o.message() for o in control[:3])


def _hand_vjp(name, defect, flash_form):
    """The CuPy adapter's hand-derived passes on NumPy (the code its kernels mirror), restricted to
    the saturated regime's variants, with the softmax backward in flash form at every key
    (``flash_form``) or as it is."""
    from synth_ref.backends.cupy_impl import NumpyHandVjpAdapter, XpOps

    class FlashForm(XpOps):
        def softmax_backward(self, xp, p, dp):
            return p * (dp - xp.sum(p * dp, axis=-1, keepdims=True))

    adapter = NumpyHandVjpAdapter(FlashForm() if flash_form else None)
    adapter.name = name if flash_form else f"{name}-control"
    adapter.defect, adapter.source = defect, "(flash attention's backward, taken over by every fused kernel)"
    adapter.variants = C.SATURATED_VARIANTS
    return adapter


def test_suite_catches_flash_form_at_the_dominant_key(request):
    """dS = P (dP - sum P dP) at every key, as flash attention's backward forms it (and as the
    Triton, Pallas and CUDA kernels had it): on a row where one key holds all but 1e-7..1e-2 of the
    weight, the dominant key's dP_m - sum P dP keeps a rounding of dP that logits' inputs of size 1e4
    multiply.  Caught by float32 gradient checks of the ``saturated`` regime; with the dominant
    key's dS rebuilt from the other keys (the adapters as they are) the same checks pass."""
    name = "softmax-backward-flash-form"
    defect = "forms dS at the dominant key as P (dP - sum P dP), which cancels to one rounding of dP"
    saturated = [c for c in C.grid("ci", C.SATURATED_VARIANTS) if c.values == "saturated"]

    def run(adapter):
        return [o for c in saturated for o in K.run_case(adapter, c, kinds=("gradient",))]

    bad = _hand_vjp(name, defect, True)
    caught = _caught(bad, run(bad), request)
    assert {o.dtype for o in caught} == {"float32"}, [o.message() for o in caught[:2]]
    control = [o for o in run(_hand_vjp(name, defect, False)) if not o.ok]
    assert not control, "\n".join(o.message() for o in control[:3])


def test_grid_reaches_the_sizes_defects_need():
    """Shape-dependent defects need certain sizes; the ci grid must contain them."""
    g = C.grid("ci")

    def has(variant, pred):
        return any(c.variant == variant and pred(c) for c in g)

    # reshape vs transpose: heads > 1 and l > 1
    assert has("dense", lambda c: c.spec.n_heads > 1 and c.length > 1)
    # tile vs outer: gcd(a, b) > 1 under the outer tiling, l > 1
    import math

    assert has("factorized_dense", lambda c: math.gcd(*c.spec.factors) > 1 and c.spec.tiling == "outer"
               and c.length > 1)
    # no max-subtraction / global key max: large logits, causal
    for v in sr_variants():
        assert has(v, lambda c: c.values == "large" and c.causal and c.length > 1), v
    # AFT-local: a window shorter than l, a window of 1 and one >= l
    assert has("aft_local", lambda c: c.spec.window < c.length)
    assert has("aft_local", lambda c: c.spec.window == 1)
    assert has("aft_local", lambda c: c.spec.window >= c.length > 1)
    # the rank-one shift: w' set against K, causal and not, in every AFT variant with a free w'
    for v in C.OPPOSED_VARIANTS:
        assert has(v, lambda c: c.values == "opposed" and not c.causal and c.mask != "none")
        assert has(v, lambda c: c.values == "opposed" and c.causal)
    # the flash form at the dominant key: saturated rows in float32 gradients, in every variant whose
    # logits come out of learned weights that multiply dS on its way back (random's R takes dS as is)
    for v in ("dot_product", "dense", "factorized_dense", "mixture"):
        assert has(v, lambda c: c.values == "saturated" and "float32" in c.grad_dtypes)
    # aft_conv per-head normalisation: several heads
    assert has("aft_conv", lambda c: c.spec.n_heads > 1 and c.length > 1)
    # empty rows: fully masked element, and causal rows before the only real key
    for v in sr_variants():
        assert has(v, lambda c: c.mask == "all_masked")
        assert has(v, lambda c: c.mask == "all_but_one" and c.causal)


def sr_variants():
    import synth_ref as sr

    return sr.VARIANTS


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "synth_ref.conformance", *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.skipif(importlib.util.find_spec("hypothesis") is None, reason="needs hypothesis")
def test_cli_fails_a_wrong_adapter_and_writes_the_report(tmp_path):
    """End to end: ``python -m synth_ref.conformance --adapter ...`` exits non-zero on a wrong
    adapter and the report marks its variant FAIL; a correct run exits 0."""
    report = tmp_path / "r.json"
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    env_path = [f"--report={report}"]
    bad = _cli("--adapter", "conformance.wrong_adapters:RANDOM_SOFTMAX_SKIPPED", *env_path,
               "--variant", "random", "--", "-k", "test_forward and float64", cwd=root)
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-3000:]
    data = json.loads(report.read_text())
    entry = data["backends"]["random-softmax-skipped"]
    assert entry["cells"]["random"]["float64"]["forward"]["status"] == "fail"
    assert "synth-ref conformance" in bad.stdout and "FAIL" in bad.stdout
    good = _cli("--backend", "numpy", *env_path, "--variant", "random", "--", "-k",
                "test_forward and float64", cwd=root)
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    data = json.loads(report.read_text())
    assert set(data["backends"]) == {"random-softmax-skipped", "numpy"}
    assert data["backends"]["numpy"]["cells"]["random"]["float64"]["forward"]["status"] == "pass"
    assert report.with_suffix(".md").exists()
