"""The generator: formulas equal the Spec's numbers, text stays literal, pages carry every fact."""

from __future__ import annotations

import html as html_lib
import json
import re

import numpy as np
import pytest
import sympy as sp
from markdown_it import MarkdownIt
from synth_docs import benchmarks_page, conformance_report, heatmap, samples, symbolic, variant_page
from synth_docs import markdown as md
from synth_docs.generate import generate

import synth_ref as sr
import synth_ref._spec as spec_module

HEADS = [(v, h) for v in sr.VARIANTS for h in ((1, 4) if sr.REGISTRY[v].multihead else (1,))]


@pytest.mark.parametrize(("variant", "n_heads"), HEADS)
def test_formulas_equal_spec_numbers(variant, n_heads):
    for d_model, max_len, batch, length in [(8, 16, 1, 3), (64, 256, 2, 200)]:
        opts = samples.options_for(variant, factors=(4, max_len // 4), window=3, kernel_size=5)
        spec = sr.Spec(variant, d_model=d_model, n_heads=n_heads, max_len=max_len, **opts)
        rows = symbolic.verify(spec, symbolic.formulas(spec), batch, length)  # raises on any mismatch
        assert {q for q, _, _ in rows} >= {"param_count", "paper_param_count", "flops"}


def test_verify_catches_a_wrong_formula():
    spec = sr.Spec("dense", d_model=8, n_heads=2, max_len=16)
    found = symbolic.formulas(spec)
    found["flops"] = found["flops"] + symbolic.l  # off by one term
    with pytest.raises(AssertionError, match="disagree"):
        symbolic.verify(spec, found, 2, 5)


def test_known_formulas():
    d, L, h, e, B, l, s = (symbolic.SYMBOLS[x] for x in "dLheBls")
    dense = symbolic.formulas(sr.Spec("dense", d_model=8, n_heads=2, max_len=16))
    assert dense["shapes"]["w_2"] == (h, e, L)
    assert sp.expand(dense["paper_param_count"] - (h * d * e + h * e * L)) == 0
    local = symbolic.formulas(sr.Spec("aft_local", d_model=8, max_len=16, window=3))
    # min(2s - 1, l) survives as a Min: the window's cost stops growing once it covers l.
    assert local["flops"].has(sp.Min(l, 2 * s - 1))
    assert "min" not in vars(spec_module), "the symbolic min must not stay in synth_ref._spec"


@pytest.mark.parametrize("variant", sr.VARIANTS)
def test_paper_costs_parse_and_match_at_one_head(variant):
    spec = samples.numeric_spec(variant)
    ours = symbolic.single_head(symbolic.formulas(spec)["paper_param_count"], spec)
    assert sp.simplify(ours - symbolic.single_head(symbolic.paper_cost(spec), spec)) == 0


def test_paper_cost_parser_refuses_unknown_notation():
    with pytest.raises(ValueError, match="paper_cost"):
        symbolic._parse(r"\alpha d^2")
    got = symbolic._parse("d^2 + d(a + b)")
    assert sp.expand(got - (symbolic.d ** 2 + symbolic.d * (symbolic.a + symbolic.b))) == 0


@pytest.mark.parametrize("raw", ["a * b and _x_ <b>", "|t - t'| < s", "$x$ `c` [l](u) # h", "R[:l, :l]"])
def test_escaped_text_renders_literally(raw):
    html = MarkdownIt("commonmark").render(md.text(raw))
    assert html_lib.unescape(html.strip().removeprefix("<p>").removesuffix("</p>")) == raw


def test_table_refuses_raw_pipe():
    with pytest.raises(ValueError, match="unescaped"):
        md.table(["a"], [["x | y"]])
    assert "\\|" in md.table(["a"], [[md.text("x | y")]])


@pytest.mark.parametrize("variant", sr.VARIANTS)
def test_variant_page_has_every_fact(variant):
    page, agrees = variant_page.render(variant, None)
    info = sr.REGISTRY[variant]
    assert agrees
    assert info.formula in page
    for what, why in info.conventions:
        assert md.text(what) in page and md.text(why) in page
    for name in samples.numeric_spec(variant).param_shapes():
        assert md.code(name) in page
    assert f"../img/{variant}.png" in page
    assert conformance_report.NOT_RUN in page
    # every symbol of the paper's cost column is explained (aft_conv's h s^n: n = spatial_dims)
    cells = re.findall(r"\{math\}`([^`]*)`", page.split("## Symbols\n", 1)[1])
    explained = {name for cell in cells for name in cell.split(",\\ ")}
    for x in symbolic.paper_cost(samples.numeric_spec(variant)).free_symbols:
        assert str(x) in explained, (variant, x, explained)


@pytest.mark.parametrize("variant", ["dense", "aft_conv"])
def test_heat_map_panels(variant):
    spec = samples.heat_spec(variant)
    w = np.asarray(sr.attention_weights(spec, heatmap.display_params(spec), heatmap.sample_input(spec, 6)))
    panels = heatmap.panels(spec, w)
    assert len(panels) == 2 and all(m.shape == (6, 6) for _, m in panels)
    if variant == "aft_conv":  # one channel from each head: their kernels differ
        assert [t for t, _ in panels] == ["channel 0", f"channel {spec.head_dim}"]
    assert heatmap.draw(spec, 6)[:8] == b"\x89PNG\r\n\x1a\n"


def _bench_doc():
    """A small result file in the harness's schema (checked with its own validator when present)."""
    def row(impl, variant, n, t, role="adapter"):
        return {"impl": impl, "role": role, "variant": variant, "dtype": "float32", "length": n, "batch": 1,
                "d_model": 64, "n_heads": 4, "pass": "forward", "status": "ok", "time_s": t,
                "times_s": [t], "peak_bytes": 1000 * n, "memory_method": "rss", "note": "",
                "flops": None, "bytes": None, "floor_s": None, "floor_bound": None, "vs_sdpa": None,
                "vs_naive": None, "naive_ref": None, "vs_floor": None}
    rows = [row("numpy", "random", n, n / 1e5) for n in (256, 512)]
    rows += [row("sdpa", None, n, n / 1e6, "baseline") for n in (256, 512)]
    rows.append({**row("numpy", "random", 1024, None), "status": "out of memory", "time_s": None})
    return {"schema": benchmarks_page.SCHEMA, "mode": "quick",
            "device": {"kind": "cpu", "name": "Test CPU 9000"}, "versions": {}, "settings": {},
            "calibration": {"matmul_flops_per_s": {}, "copy_bytes_per_s": 1.0},
            "elapsed_s": 1.0, "results": rows, "claim_results": [], "stops": [], "skipped": [],
            "fits": [{"impl": "numpy", "variant": "random", "dtype": "float32", "pass": "forward",
                      "quantity": "time", "exponent": 1.0, "coefficient": 1e-5, "points": 2,
                      "lengths": [256, 512]}],
            "cpu_row": [], "claims": {"random_vs_dynamic_conv": {"verdict": "agrees: test verdict"},
                                      "aft_memory": {"verdict": "not measured (too few lengths)"}}}


def test_benchmark_reader_matches_the_harness_schema():
    schema = pytest.importorskip("benchmarks.schema", reason="the benchmark harness (issue 8) is absent")
    assert schema.SCHEMA == benchmarks_page.SCHEMA
    for key, kind in {**benchmarks_page._ROW, "variant": str, "time_s": float, "peak_bytes": int}.items():
        assert kind in schema.ROW[key], f"results[].{key}: harness writes {schema.ROW[key]}, docs read {kind}"
    # Our fixture, completed with any further keys the harness now requires, is a valid file.
    doc = _bench_doc()
    for key, kinds in schema.TOP.items():
        doc.setdefault(key, (kinds if isinstance(kinds, tuple) else (kinds,))[0]())
    for row in doc["results"]:
        for key, kinds in {**schema.ROW, **schema.MEASURED}.items():
            row.setdefault(key, None if type(None) in kinds else kinds[0]())
    read = {*benchmarks_page._ROW, "variant", "time_s", "peak_bytes", "schema", "mode", "device", "results",
            "claims", "fits"}
    errors = schema.validate(doc)
    # Only what the docs read must match; keys the harness adds later are its own business.
    assert not [e for e in errors if any(f"{k}'" in e or f".{k}" in e for k in read)], errors


def test_benchmarks_page(tmp_path):
    text, figs = benchmarks_page.render(tmp_path / "absent")
    assert "No results yet" in text and figs == {}
    (tmp_path / "bad.json").write_text(json.dumps({"device": "x"}))
    (tmp_path / "quick.json").write_text(json.dumps(_bench_doc()))
    text, figs = benchmarks_page.render(tmp_path)
    assert md.text("Test CPU 9000") in text and md.text("agrees: test verdict") in text
    assert "bad.json" in text and "not read" in text
    assert list(figs) == ["bench_quick_random.png"] and figs["bench_quick_random.png"][:4] == b"\x89PNG"
    assert "1.00" in text  # the fitted exponent


def test_tolerance_table_reads_the_suite_constant():
    tol = pytest.importorskip("synth_ref.conformance.tolerances", reason="the conformance module is absent")
    text = "\n".join(conformance_report.tolerance_section())
    for name, floor in tol.TOLERANCES.items():
        assert f"{floor.forward:g}" in text and md.code(name) in text


def test_generate_removes_stale_files(tmp_path, monkeypatch):
    monkeypatch.setenv(conformance_report.ENV, str(tmp_path / "no-report.json"))
    monkeypatch.setenv(conformance_report.GPU_ENV, str(tmp_path / "no-gpu-results"))
    monkeypatch.setenv(benchmarks_page.ENV, str(tmp_path / "no-results"))
    stale = tmp_path / "out" / "variants" / "removed_variant.md"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    generate(tmp_path / "out")
    assert not stale.exists()
    pages = sorted(p.stem for p in (tmp_path / "out" / "variants").glob("*.md"))
    assert pages == sorted([*sr.VARIANTS, "index"])
    assert len(list((tmp_path / "out" / "img").glob("*.png"))) == len(sr.VARIANTS)


def _report_file(tmp_path, name="conformance-report.json", gpu=False):
    """A report written by the suite's own writer, from outcomes made by its own record type (gpu:
    as a committed GPU run, where cupy did run)."""
    R = pytest.importorskip("synth_ref.conformance.report", reason="no conformance suite (issue 3)")
    from synth_ref.conformance.check import Outcome

    class Stub:  # what backend_entry reads of an adapter
        dtypes = ("float64", "float32")

        def vjp(self):  # its presence marks the adapter differentiable
            raise NotImplementedError

    def rec(variant, dtype, kind, status, ratio):
        return Outcome("fast", variant, dtype, kind, f"{variant}-case", status, ratio=ratio,
                       detail="" if status == "pass" else "max|out - gold| too big").to_dict()

    records = [rec("dense", "float64", "forward", "pass", 0.25),
               rec("dense", "float64", "gradient", "pass", 0.5),
               rec("random", "float32", "forward", "fail", 2.5)]
    entries = [R.backend_entry("fast", Stub(), True, "fast 1.0", records, "ci", 1.0),
               R.backend_entry("cupy", None, False, "no CUDA device here", [], "ci", 0.0)]
    if gpu:
        records = [{**r, "backend": "cupy"} for r in records]
        entries = [R.backend_entry("cupy", Stub(), True, "cupy 14 on an H100", records, "ci", 2.0)]
    tmp_path.mkdir(parents=True, exist_ok=True)
    path, _ = R.write(tmp_path / name, entries)
    return path


def test_conformance_sections_read_the_suite_report(tmp_path):
    report = conformance_report.load(_report_file(tmp_path), gpu_dir=tmp_path / "none")
    dense = "\n".join(conformance_report.variant_section("dense", report))
    assert "| `fast` | `float64` | pass 0.25 | pass 0.5 |" in dense
    assert "| `fast` | `float32` | not run | not run |" in dense
    assert md.text("no CUDA device here") in dense
    random = "\n".join(conformance_report.variant_section("random", report))
    assert "| `fast` | `float32` | **fail** 2.5 (1/1) | not run |" in random
    matrix = "\n".join(conformance_report.matrix_section(report))
    assert "{ref}`random <variant-random>`" in matrix and "**fail** 2.5 (1/1)" in matrix
    assert md.code("random-case") in matrix  # the failure is listed


def test_committed_gpu_runs_are_merged_in(tmp_path):
    """A backend the local run could not run (cupy: no GPU here) is shown from the committed GPU
    run, named as such; another committed file's entries keep its tag; a committed run alone (no
    local report) is shown too."""
    local = _report_file(tmp_path / "here")
    gpu = tmp_path / "gpu"
    _report_file(gpu, "conformance-cuda.json", gpu=True)
    _report_file(gpu, "conformance-cuda-deep-bf16.json", gpu=True)
    report = conformance_report.load(local, gpu_dir=gpu)
    names = [e["name"] for e in report.backends]
    assert names == ["fast", "cupy", "cupy (deep-bf16)"]
    cupy = report.data["backends"]["cupy"]
    assert cupy["available"] and cupy["source"] == "gpu/results/conformance-cuda.json"
    matrix = "\n".join(conformance_report.matrix_section(report))
    assert ("From `conformance-report.json` and `conformance-cuda.json` and "
            "`conformance-cuda-deep-bf16.json`.") in matrix
    assert md.text("committed run gpu/results/conformance-cuda.json") in matrix
    assert "| `cupy` | `float32` | **fail** 2.5 (1/1) | not run |" in "\n".join(
        conformance_report.variant_section("random", report))
    alone = conformance_report.load(tmp_path / "none.json", gpu_dir=gpu)
    assert alone.path is None and [e["name"] for e in alone.backends] == ["cupy", "cupy (deep-bf16)"]


def test_conformance_report_absent_or_foreign(tmp_path):
    assert conformance_report.load(tmp_path / "none.json", gpu_dir=tmp_path) is None
    assert conformance_report.NOT_RUN in "\n".join(conformance_report.variant_section("dense", None))
    (tmp_path / "old.json").write_text(json.dumps({"schema": 99, "backends": {}}))
    with pytest.raises(ValueError, match="schema 1"):
        conformance_report.load(tmp_path / "old.json", gpu_dir=tmp_path / "none")


def test_jax_paths_table_needs_no_jax():
    """The docs build does not install JAX: the table of JAX paths comes from jax_plan.plan, which
    must import and answer with JAX unimportable (a subprocess where importing jax fails)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules['jax'] = None\n"
            "from synth_docs import jax_paths_page\n"
            "print(jax_paths_page.render())")
    root = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": os.pathsep.join([str(root), str(root / "docs" / "_ext")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    from synth_docs import jax_paths_page

    assert out.stdout.strip() == jax_paths_page.render().strip()
    # header, rule, one row per variant and a second mixture row
    assert out.stdout.count("\n| ") == len(sr.VARIANTS) + 3


def test_teeth_table_lists_every_wrong_adapter_the_teeth_tests_run():
    """One row per entry of wrong_adapters.DEFECTS and VJP_DEFECTS, read from the module
    (loaded from its file: ``conformance`` is the repository's test package, not installed)."""
    from synth_docs import teeth_page

    module = teeth_page.load()
    text = teeth_page.render()
    names = [*module.DEFECTS, *module.VJP_DEFECTS]
    for name in names:
        assert f"| {md.code(name)} |" in text, name
    assert text.count("\n|") == len(names) + 2  # header, rule, one row each
    defect, variants, _, source = module.DEFECTS["mask-polarity-inverted"]
    assert md.text(defect) in text and md.text(source) in text
