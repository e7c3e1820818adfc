"""Smoke test of the benchmark harness (benchmarks/): a tiny CPU run end to end, its JSON against the
schema, the exponent fit on synthetic data, and the two pieces of math the harness adds (the spec
written directly in torch, the convolution baselines) against their definitions.

The real benchmark is ``nox -s bench`` (minutes); this stays at a few seconds.
"""

from __future__ import annotations

import gc
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the harness's baselines are written in torch")

# benchmarks/ is a folder of the repository, not an installed package: import it from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import synth_ref as sr  # noqa: E402
from benchmarks import analysis, convolution, direct_torch, run, schema, settings, sweep  # noqa: E402

#: float64, the same math in two codings (summation order and the max-subtraction differ by a few
#: roundings, ~1e-15 relative); any real mistake (a wrong index, head split, mask) is O(0.1).
F64 = (1e-10, 1e-11)


# --- the exponent fit ---------------------------------------------------------------------------


def test_fit_exponent_recovers_exact_power_laws():
    ls = [256, 512, 1024, 2048]
    for p in (0.0, 1.0, 1.5, 2.0, 3.0):
        f = analysis.fit_exponent(ls, [7.0 * l**p for l in ls])
        assert f["exponent"] == pytest.approx(p, abs=1e-9)
        assert f["coefficient"] == pytest.approx(7.0, rel=1e-9)
        assert f["points"] == 4 and f["lengths"] == [256, 2048]


def test_fit_exponent_with_noise_and_missing_points():
    rng = np.random.default_rng(0)
    ls = [2**k for k in range(8, 15)]
    noisy = [3e-9 * l**2 * math.exp(rng.normal(0, 0.05)) for l in ls]
    assert analysis.fit_exponent(ls, noisy)["exponent"] == pytest.approx(2.0, abs=0.05)
    # Non-positive and missing values (a failed or unmeasurable point) are left out, not fitted as 0.
    f = analysis.fit_exponent([256, 512, 1024, 2048], [None, 0, 4.0, 16.0])
    assert f["exponent"] == pytest.approx(2.0) and f["points"] == 2
    assert analysis.fit_exponent([256, 512], [1.0, None]) is None
    assert analysis.fit_exponent([256, 256], [1.0, 2.0]) is None  # one length: no slope


def test_series_stops_on_the_budgets():
    st = settings.make("cpu", True, budget_s=1.0, memory_budget=1000)
    s = sweep.Series()
    s.record(0.1, 100)
    s.check(st)  # no growth known yet: assumes x4, 0.4 s and 400 bytes next, both under budget
    assert not s.stopped
    s.record(0.3, 200)
    s.check(st)  # observed x3 in time: 0.9 s next; memory x2: 400 bytes
    assert not s.stopped
    s.record(0.6, 600)
    s.check(st)  # time grows x2 (1.2 s predicted) -> stop
    assert "predicted" in s.stopped and "s budget" in s.stopped
    s2 = sweep.Series()
    s2.record(0.01, 300)
    s2.record(0.02, 600)
    s2.check(st)  # memory 1200 > 1000 predicted
    assert "GiB budget" in s2.stopped
    s3 = sweep.Series()
    s3.record(2.0, None)
    s3.check(st)
    assert "> the 1.0 s budget" in s3.stopped


# --- the harness's own math against its definitions ---------------------------------------------


def _spec(variant, L=6):
    opts = dict(settings.VARIANT_OPTIONS[variant])
    if variant in ("aft_local",):
        opts["window"] = 2
    if variant == "aft_conv":
        opts["kernel_size"] = 3
    if variant == "factorized_random":
        opts["k"] = 2
    heads = 2 if sr.REGISTRY[variant].multihead else 1
    return sr.Spec(variant, d_model=8, n_heads=heads, max_len=L, **opts)


@pytest.mark.parametrize("variant", sr.VARIANTS)
@pytest.mark.parametrize("causal", [False, True])
def test_direct_torch_is_the_spec(variant, causal):
    spec = _spec(variant)
    params = spec.init(seed=1)
    rng = np.random.default_rng(2)
    for name in params:  # nonzero biases and position terms, so that every array takes part
        params[name] = params[name] + 0.3 * rng.standard_normal(params[name].shape)
    x = rng.standard_normal((2, 5, 8))
    want = sr.apply(spec, params, x, causal=causal)
    tp = {k: torch.from_numpy(v) for k, v in params.items()}
    got = direct_torch.apply(spec, tp, torch.from_numpy(x), causal=causal).numpy()
    np.testing.assert_allclose(got, want, *F64)


def test_direct_torch_aft_row_blocks(monkeypatch):
    """Several row blocks (the reference's BLOCK_ELEMENTS made tiny) give the same numbers."""
    from synth_ref import _aft

    spec = _spec("aft_full")
    params = spec.init(seed=3)
    params["pos_bias"] = np.random.default_rng(4).standard_normal(params["pos_bias"].shape)
    x = np.random.default_rng(5).standard_normal((1, 6, 8))
    want = sr.apply(spec, params, x, causal=True)
    monkeypatch.setattr(_aft, "BLOCK_ELEMENTS", 2 * 6 * 8)  # two query rows per block
    got = direct_torch.apply(
        spec, {k: torch.from_numpy(v) for k, v in params.items()}, torch.from_numpy(x), causal=True
    ).numpy()
    np.testing.assert_allclose(got, want, *F64)


@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("k", [3, 4])
def test_convolution_matches_its_loop_definition(dynamic, causal, k):
    p = {n: torch.from_numpy(v) for n, v in convolution.init(8, 2, k, dynamic, seed=6).items()}
    for n in p:
        if n.startswith("b_"):
            p[n] = p[n] + 0.1
    x = torch.from_numpy(np.random.default_rng(7).standard_normal((2, 7, 8)))
    got = convolution.apply(p, x, n_heads=2, kernel_size=k, causal=causal)
    want = convolution.apply_loop(p, x, n_heads=2, kernel_size=k, causal=causal)
    torch.testing.assert_close(got, want, rtol=F64[0], atol=F64[1])


def test_causal_convolution_ignores_the_future():
    p = {n: torch.from_numpy(v) for n, v in convolution.init(8, 2, 3, True, seed=8).items()}
    x = torch.from_numpy(np.random.default_rng(9).standard_normal((1, 6, 8)))
    y = convolution.apply(p, x, n_heads=2, kernel_size=3, causal=True)
    x2 = x.clone()
    x2[:, 4:] += 5.0
    y2 = convolution.apply(p, x2, n_heads=2, kernel_size=3, causal=True)
    torch.testing.assert_close(y[:, :4], y2[:, :4])
    assert not torch.allclose(y[:, 4:], y2[:, 4:])


def _naive_case(variant):
    """torch_bench's inputs built from a spec's own tensors (float64), and the spec's mixing step:
    P V for the softmax family, the AFT weighted average before the sigmoid(Q) gate."""
    from synth_ref import _aft, _common
    from synth_ref import _softmax as smx

    xp = pytest.importorskip("array_api_compat.numpy")  # the reference's namespace for NumPy arrays

    B, h, l, e = 2, 2, 6, 3
    opts = dict(settings.VARIANT_OPTIONS[variant])
    spec = sr.Spec(variant, d_model=h * e, n_heads=h if sr.REGISTRY[variant].multihead else 1, max_len=l,
                   **opts)
    rng = np.random.default_rng(11)
    p = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in spec.init(seed=0).items()}
    if variant == "mixture":
        p["mix_logits"] = np.zeros_like(p["mix_logits"])  # alpha = (1/2, 1/2): the layer at init
    x = rng.standard_normal((B, l, h * e))
    ins = {}
    if spec.family == "softmax":
        v = _common.split_heads(xp, _common.linear(xp, x, p["w_v"], p["b_v"]), h)
        want = smx.weights(spec, p, x, xp, False, None) @ v
        ins["v"] = v
        pre = (lambda c: f"{c}.") if variant == "mixture" else (lambda c: "")
        if variant in ("dot_product", "mixture"):
            for n in "qk":
                w, b = p[pre("dot_product") + f"w_{n}"], p[pre("dot_product") + f"b_{n}"]
                ins[n] = _common.split_heads(xp, _common.linear(xp, x, w, b), h)
        if variant == "dense":
            ins.update(hid=smx._dense_hidden(xp, p, x, ""), w2=p["w_2"], b2=p["b_2"])
        if variant in ("random", "mixture"):
            ins["r"] = p[pre("random") + "r"]
        if variant == "mixture":  # the rows take unit weights: the spec's alpha folded into q and r
            ins.update(q=ins["q"] / 2, r=ins["r"] / 2)
    else:
        k, v = (_common.linear(xp, x, p[f"w_{n}"], p[f"b_{n}"]) for n in "kv")
        want = _aft._mix(xp, k, v, p["pos_bias"][None], None)
        ins.update(K=k, V=v, w=p["pos_bias"][None])
    return (B, h, l, e), ins, want


@pytest.mark.parametrize("variant", ["dot_product", "dense", "random", "mixture", "aft_full"])
def test_naive_rows_compute_the_spec_mixing_step(variant, monkeypatch):
    """Every naive row of benchmarks/torch_bench.py (the '× naive' baselines) computes the spec's
    mixing step, in the dtype it is given: float64 inputs stay float64 (a float32 softmax or GEMM
    would be a cheaper computation than the layer it is compared with)."""
    tb = pytest.importorskip("benchmarks.torch_bench")
    (B, h, l, e), ins, want = _naive_case(variant)
    monkeypatch.setattr(tb, "fwd_bwd", lambda f, *inputs: (lambda: f(*inputs)))  # forward only
    x = tb.make_inputs(B, h, l, e, torch.float64, torch.device("cpu"))
    x.update({n: torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(True) for n, a in ins.items()})
    rows = [(name, fn) for name, v, fn in tb.baselines(x, B, h, l, e, torch.device("cpu")) if v == variant]
    assert rows
    for name, fn in rows:
        got = fn()
        assert got.dtype == torch.float64, name
        np.testing.assert_allclose(got.detach().numpy(), want, *F64, err_msg=name)


def test_floor_backward_factors_follow_their_argument():
    """floors.py's lower bound for forward + backward: 3x the forward's FLOPs (each matrix product's
    backward is two of the same size) but 2x its bytes (the backward writes a gradient for every
    tensor the forward reads and reads one for every tensor it writes: at least the forward's
    traffic again).  3x the bytes would be no lower bound, and on a memory-bound point (aft_simple on
    a GPU) it would make the floor up to 1.5x too high."""
    from benchmarks import floors

    spec = settings.make("cpu", True).spec("aft_simple", 256)
    fast_math = {"matmul_flops_per_s": {"float32": 1e30}, "copy_bytes_per_s": 1e9}  # memory-bound
    fw, fb = (floors.floor_fields(spec, 2, 256, "float32", p, fast_math)
              for p in ("forward", "forward_backward"))
    assert fb["flops"] == 3 * fw["flops"]
    assert fb["bytes"] == 2 * fw["bytes"]
    assert fw["floor_bound"] == fb["floor_bound"] == "memory"
    assert fb["floor_s"] == pytest.approx(2 * fw["floor_s"])


def test_memory_probe_does_not_charge_a_first_call_compile_to_the_budget():
    """The AFT memory probe (one call per length, run before anything else) stops a series when a
    call is predicted over its time budget.  A kernel compiled on its first call (Triton on a GPU:
    the probe is the first thing to call torch-cuda's kernels) must not count as the call's time: a
    series stopped after one length has no exponent and drops out of the claim's table."""
    from benchmarks import impls

    calls = []

    def build(pt):
        def forward():
            if not calls:  # the first call "compiles": 0.2 s of CPU time
                t = time.process_time()
                while time.process_time() - t < 0.2:
                    pass
            calls.append(pt.length)
            return None

        return impls.Prepared(forward, None, memory="tracemalloc")

    st = settings.make("cpu", True, batch=1, d_model=8, n_heads=2)
    fake = impls.Impl("jit", "adapter", build, lambda v: v == "aft_simple", ("float32",))
    gc.freeze()  # as run_all does: the probe's gc.collect() would otherwise walk every torch object
    try:
        rows = sweep.memory_probe(st, [fake], (16, 32, 64), ["aft_simple"], budget_s=0.5, log=lambda *a: None)
    finally:
        gc.unfreeze()
    assert [r["length"] for r in rows if r["status"] == "ok"] == [16, 32, 64], rows
    assert all(r["time_s"] < 0.15 for r in rows), rows  # the compile is not any length's time


def test_aft_memory_claim_names_series_it_could_not_judge():
    """An AFT series that ran out of memory (or failed) after its first length has no growth to
    fit; the verdict must not read a plain "agrees" over the others while leaving it out unseen."""
    st = settings.make("cpu", True, batch=1, d_model=64)

    def row(impl, variant, length, peak, status="ok"):
        return {"impl": impl, "variant": variant, "dtype": "float32", "length": length, "pass": "forward",
                "status": status, "peak_bytes": peak if status == "ok" else None}

    probe = [row(i, "dot_product", l, 4 * l * l) for i in ("numpy", "torch_direct") for l in (1024, 2048)]
    probe += [row("torch_direct", "aft_full", l, 1000 * l) for l in (1024, 2048)]
    probe += [row("numpy", "aft_full", 1024, 1000 * 1024),
              row("numpy", "aft_full", 2048, None, "out of memory")]
    c = analysis.claim_aft_memory([], st, probe)
    assert not c["verdict"].startswith("agrees:"), c["verdict"]
    assert "aft_full, numpy" in c["verdict"] and "out of memory" in c["verdict"]
    # with every series judged, the verdict is as before
    ok = [r for r in probe if r["impl"] != "numpy" or r["variant"] != "aft_full"]
    assert analysis.claim_aft_memory([], st, ok)["verdict"].startswith("agrees:")
    # a failure after two measured lengths is named too
    late = ok + [row("torch_direct", "aft_full", 4096, None, "error: RuntimeError: x")]
    v = analysis.claim_aft_memory([], st, late)["verdict"]
    assert v.startswith("agrees for the series measured:") and "judged to l=2048; then error" in v


def test_adapter_targets_from_rows():
    """Issues 5 and 6's targets: ratios per length, judged at l = 4096 (not at the longest length),
    backward = forward + backward - forward, "at least" for the 3x speed-up over the reference, and
    targets without rows reported as not measured."""
    st = replace(settings.make("cuda", True), variants=("dense", "aft_simple"), dtypes=("bfloat16",),
                 lengths=(1024, 4096, 8192))
    times = {  # (impl, variant, length, pass) -> seconds
        ("torch-cuda", "dense", 4096, "forward"): 1.0, ("torch-cuda", "dense", 4096, "forward_backward"): 3.0,
        ("jax", "dense", 4096, "forward_backward"): 4.0,  # 1.33x torch: met
        ("jax", "dense", 8192, "forward_backward"): 40.0,  # 8192 is measured but 4096 is judged
        ("torch-cuda", "dense", 8192, "forward_backward"): 10.0,
        ("jax-reference", "dense", 4096, "forward_backward"): 10.0,  # 2.5x: short of 3x
        ("cupy", "dense", 4096, "forward"): 1.2,
        ("cupy", "dense", 4096, "forward_backward"): 6.2,  # backward 5.0 against torch's 2.0
        ("torch-cuda", "aft_simple", 1024, "forward_backward"): 1.0,
        ("jax", "aft_simple", 1024, "forward_backward"): 2.0,  # only l = 1024: judged there, missed
    }
    rows = [{"impl": i, "variant": v, "dtype": "bfloat16", "length": n, "pass": p, "status": "ok",
             "time_s": t} for (i, v, n, p), t in times.items()]
    out = analysis.adapter_targets(rows, st)
    by = {(c["numerator"], c["pass"], c["variant"]): c for c in out["checks"]}
    jt = by[("jax", "forward_backward", "dense")]
    assert jt["judged_at"] == 4096 and jt["ratio"] == pytest.approx(4 / 3) and jt["met"] is True
    assert [p["length"] for p in jt["points"]] == [4096, 8192]
    js = by[("jax", "forward_backward", "aft_simple")]
    assert js["judged_at"] == 1024 and js["met"] is False
    ref = by[("jax-reference", "forward_backward", "dense")]
    assert ref["ratio"] == pytest.approx(2.5) and ref["met"] is False
    assert ("jax-reference", "forward_backward", "aft_simple") not in by  # dense, random, aft_full only
    fwd = by[("cupy", "forward", "dense")]
    assert fwd["ratio"] == pytest.approx(1.2) and fwd["met"] is True
    bwd = by[("cupy", "backward", "dense")]
    assert bwd["ratio"] == pytest.approx(2.5) and bwd["met"] is False
    assert "met for 1 of 2 (missed: aft_simple bfloat16 2.00x at l=1024)" in out["verdict"]
    assert "[a CPU run" not in out["verdict"]
    cpu = analysis.adapter_targets([], replace(st, device="cpu"))
    assert "jax within 1.5x of the torch adapter (forward + backward): not measured" in cpu["verdict"]
    assert "[a CPU run" in cpu["verdict"]


def test_jax_reference_declines_an_unrolled_aft_and_the_sweep_says_so():
    """jax-reference refuses AFT points whose reference row blocks (unrolled by jax.jit) exceed the
    limit -- B=4, d=512: l=1024 has 128 blocks, l=2048 has 512 -- and the sweep records the reason
    as "not measured", stopping the series there."""
    from benchmarks import impls

    st = settings.make("cpu", True, batch=4, d_model=512, lengths=(1024, 2048), variants=("aft_full",))
    assert impls._unrolled_reference(sweep.make_point(st, "aft_full", "float32", 1024)) is None
    why = impls._unrolled_reference(sweep.make_point(st, "aft_full", "float32", 2048))
    assert why and "512 AFT row blocks" in why
    assert impls._unrolled_reference(sweep.make_point(st, "dense", "float32", 2048)) is None

    def build(pt):
        raise impls.measure.NotMeasured(impls._unrolled_reference(pt) or "x")

    fake = impls.Impl("declines", "adapter", build, lambda v: v == "aft_full", ("float32",))
    rows, stops = sweep.run(replace(st, lengths=(2048,)), [fake], {}, log=lambda *a: None)
    assert {r["status"] for r in rows} == {"not measured: " + why}
    assert all(s["why"].startswith("not measured: ") for s in stops)


def test_jax_reference_on_a_gpu_covers_the_target_variants_only(monkeypatch):
    """On a GPU jax-reference runs only the variants issue 5's 3x target names (dense, random,
    aft_full), to keep gpu/run.py's bench stage in its minutes; on CPU every variant.  (The jax
    adapter's arrays are taken for a GPU's here: this machine has none.)"""
    pytest.importorskip("jax", reason="the jax extra is not installed")
    from benchmarks import impls

    for device, want in (("cuda", set(analysis.REFERENCE_SPEEDUP_VARIANTS)), ("cpu", set(sr.VARIANTS))):
        monkeypatch.setattr(impls, "_array_platform", lambda a, device=device: device)
        st = replace(settings.make(device, True), backends=("jax",), dtypes=("float32",))
        got = {i.name: {v for v in sr.VARIANTS if i.covers(v)} for i in impls.adapter_impls(st, [])}
        assert got["jax"] == set(sr.VARIANTS) and got["jax-reference"] == want, device


# --- a tiny run end to end ------------------------------------------------------------------------

VARIANTS = ("dot_product", "aft_full")


def _tiny():
    st = settings.make("cpu", True)
    claim = settings.ClaimSetting(batch=1, lengths=(16,), d_model=16, n_heads=2, kernel_size=3)
    return replace(
        st,
        mode="cpu-smoke",
        batch=1,
        d_model=8,
        n_heads=2,
        lengths=(16, 32),
        budget_s=5.0,
        warmup=1,
        repeats=2,
        matmul_n=64,
        copy_bytes=1 << 20,
        claim=claim,
        conv_kernel=3,
        variants=VARIANTS,
        backends=("numpy", "torch"),
        probe_lengths=(16, 32, 64),
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    doc = run.run_all(_tiny(), out, make_plots=False, log=lambda *a: None)
    return doc, out


def test_tiny_run_writes_valid_json_and_table(tiny_run):
    doc, out = tiny_run
    on_disk = json.loads((out / "cpu-smoke.json").read_text())
    assert schema.validate(on_disk) == []
    md = (out / "cpu-smoke.md").read_text()
    assert "| variant | dtype | implementation | pass | l=16 | l=32 |" in md
    assert "The two paper claims" in md and "CPU row" in md and "Adapter speed targets" in md
    # Device and library versions are recorded.
    assert on_disk["device"]["kind"] == "cpu" and on_disk["versions"]["numpy"] == np.__version__
    assert on_disk["versions"]["torch"] == torch.__version__


def test_tiny_run_measures_every_implementation_and_pass(tiny_run):
    doc, _ = tiny_run
    got = {(r["impl"], r["variant"], r["pass"]) for r in doc["results"] if r["status"] == "ok"}
    for v in VARIANTS:
        assert ("numpy", v, "forward") in got
        for impl in ("torch", "torch_direct"):
            assert {(impl, v, "forward"), (impl, v, "forward_backward")} <= got
    for base in ("sdpa", "dynamic_conv", "lightweight_conv"):
        assert {(base, None, "forward"), (base, None, "forward_backward")} <= got
    # An adapter that dispatches (kernel or reference) and says which (torch's last_path): the rows
    # record the path that ran.
    from synth_ref import backends

    if getattr(backends.get("torch"), "last_path", None):
        assert all(
            "path: " in r["note"] for r in doc["results"] if r["impl"] == "torch" and r["status"] == "ok"
        )
    # NumPy cannot differentiate: said once, not silently missing.
    assert any(
        s["impl"] == "numpy" and s["pass"] == "forward_backward" and "vjp" in s["why"] for s in doc["stops"]
    )
    assert any(s["what"] == "adapter jax" and "not selected" in s["why"] for s in doc["skipped"])


def test_tiny_run_naive_versions(tiny_run):
    """The naive versions come from benchmarks/torch_bench.py (issue 4) when it is there: forward +
    backward only, and each variant's × naive ratio names the fastest of them."""
    doc, _ = tiny_run
    naive = [r for r in doc["results"] if r["impl"].startswith("naive: ")]
    try:
        import benchmarks.torch_bench  # noqa: F401
    except ModuleNotFoundError:
        assert not naive and any(s["what"] == "naive user versions" for s in doc["skipped"])
        return
    assert {r["variant"] for r in naive if r["status"] == "ok"} == set(VARIANTS)
    assert all(r["pass"] == "forward_backward" for r in naive)
    assert not any(r["impl"].startswith("naive: SDPA") for r in naive)  # not a naive version
    for r in doc["results"]:
        if r["status"] == "ok" and r["variant"] and r["pass"] == "forward_backward":
            mine = [n for n in naive if n["variant"] == r["variant"] and n["length"] == r["length"]]
            fastest = min(mine, key=lambda n: n["time_s"])
            assert r["naive_ref"] == fastest["impl"]
            assert r["vs_naive"] == pytest.approx(r["time_s"] / fastest["time_s"])


def test_tiny_run_ratios_floor_and_memory_are_consistent(tiny_run):
    doc, _ = tiny_run
    rows = [r for r in doc["results"] if r["status"] == "ok"]
    sdpa = {(r["length"], r["pass"]): r["time_s"] for r in rows if r["impl"] == "sdpa"}
    for r in rows:
        assert r["time_s"] > 0 and len(r["times_s"]) == 2
        if analysis.is_naive(r["impl"]):  # mixing steps: no whole-layer ratio, no layer floor
            assert r["vs_sdpa"] is None and r["floor_s"] is None and r["vs_floor"] is None
            continue
        assert r["vs_sdpa"] == pytest.approx(r["time_s"] / sdpa[(r["length"], r["pass"])])
        if r["variant"]:
            spec = _tiny().spec(r["variant"], r["length"])
            factor = 3 if r["pass"] == "forward_backward" else 1
            assert r["flops"] == spec.flops(1, r["length"]) * factor
            assert r["floor_s"] > 0 and r["vs_floor"] == pytest.approx(r["time_s"] / r["floor_s"])
        else:
            assert r["impl"] == "sdpa" or r["floor_s"] is None  # the convolutions are no spec variant
    # NumPy's memory is exact (tracemalloc): the dot-product reference holds at least its
    # (B, h, l, l) float32 weights.
    for r in rows:
        if r["impl"] == "numpy" and r["variant"] == "dot_product":
            assert r["memory_method"] == "tracemalloc"
            assert r["peak_bytes"] >= 2 * r["length"] ** 2 * 4


def test_tiny_run_analysis(tiny_run):
    doc, _ = tiny_run
    fits = {(f["impl"], f["variant"], f["pass"], f["quantity"]) for f in doc["fits"]}
    assert ("numpy", "dot_product", "forward", "time") in fits
    assert ("numpy", "dot_product", "forward", "memory") in fits
    row = {e["variant"]: e for e in doc["cpu_row"]}
    assert set(row) == set(VARIANTS)
    for e in row.values():
        assert e["max_ratio"] == max(pt["numpy_forward_ratio"] for pt in e["points"])
        assert e["within_limit"] == (e["max_ratio"] <= analysis.CPU_ROW_LIMIT)
    c1 = doc["claims"]["random_vs_dynamic_conv"]
    assert c1["setting"]["causal"] is True and c1["points"]
    for pt in c1["points"]:
        assert pt["speedup"] == pytest.approx(pt["dynamic_conv_s"] / pt["random_s"])
    c2 = doc["claims"]["aft_memory"]
    assert c2["source"] == "memory probe" and c2["verdict"]
    probed = {(r["impl"], r["variant"], r["length"]) for r in doc["memory_probe"] if r["status"] == "ok"}
    for v in VARIANTS:
        for impl in ("numpy", "torch_direct"):
            assert {(impl, v, l) for l in (16, 32, 64)} <= probed
    for t in c2["table"]:
        ls, bs = zip(*t["peaks"], strict=True)
        assert t["exponent"] == pytest.approx(analysis.fit_exponent(ls, bs)["exponent"])
        assert t["tail_exponent"] == pytest.approx(math.log(bs[-1] / bs[-2]) / math.log(ls[-1] / ls[-2]))


def test_schema_rejects_a_broken_document(tiny_run):
    doc, _ = tiny_run
    broken = json.loads(json.dumps(doc, default=str))
    del broken["calibration"]
    assert any("calibration" in e for e in schema.validate(broken))
    broken = json.loads(json.dumps(doc, default=str))
    broken["results"][0]["time_s"] = "fast"
    broken["results"][0]["pass"] = "sideways"
    errs = schema.validate(broken)
    assert any("time_s" in e for e in errs) and any(".pass" in e for e in errs)


def test_plots_are_written(tiny_run, tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the bench session installs it)")
    doc, _ = tiny_run
    paths = run.write(doc, _tiny(), tmp_path, make_plots=True)
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == len(VARIANTS) + 2  # one per variant, the baselines, the AFT memory claim
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
