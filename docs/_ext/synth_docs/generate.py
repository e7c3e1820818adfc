"""Write every generated page and figure under ``docs/generated/`` (rewriting only what changed,
so Sphinx rebuilds only what changed)."""

from __future__ import annotations

import time
from pathlib import Path

import synth_ref as sr

from . import (
    api_page,
    benchmarks_page,
    conformance_report,
    heatmap,
    jax_paths_page,
    samples,
    teeth_page,
    variant_page,
)
from . import markdown as md


def _write_if_changed(path: Path, data: bytes | str) -> bool:
    data = data.encode() if isinstance(data, str) else data
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True


def variants_index() -> str:
    rows = [[md.ref("doc", info.title, name), md.code(name), md.text(info.family),
             md.math(info.paper_cost)] for name, info in sr.REGISTRY.items()]
    toc = "\n".join(sr.VARIANTS)
    return ("# Variants\n\nOne page per entry of `synth_ref.variants.REGISTRY`, generated at build time.\n\n"
            + md.table(["variant", "name", "family", "paper's parameter cost"], rows)
            + f"\n```{{toctree}}\n:hidden:\n\n{toc}\n```\n")


def generate(out: Path, warn=print) -> dict:
    """Write all generated sources into ``out``, remove stale ones; returns {what: seconds}."""
    written: set[Path] = set()

    def write_if_changed(path, data):  # noqa: F811 - records what this build produced
        written.add(path)
        return _write_if_changed(path, data)

    timings = {}
    t0 = time.perf_counter()
    report = conformance_report.load()
    for name in sr.VARIANTS:
        page, agrees = variant_page.render(name, report)
        if not agrees:
            warn(f"{name}: our paper_param_count differs from the paper's cost "
                 f"{sr.REGISTRY[name].paper_cost}")
        write_if_changed(out / "variants" / f"{name}.md", page)
    write_if_changed(out / "variants" / "index.md", variants_index())
    timings["variant pages"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for name in sr.VARIANTS:
        png = heatmap.draw(samples.heat_spec(name), samples.HEAT["length"])
        write_if_changed(out / "img" / f"{name}.png", png)
    timings["heat maps"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    write_if_changed(out / "conformance_matrix.md", "\n".join(conformance_report.matrix_section(report)))
    write_if_changed(out / "tolerances.md", "\n".join(conformance_report.tolerance_section()))
    write_if_changed(out / "teeth.md", teeth_page.render())
    timings["conformance"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bench_md, figures = benchmarks_page.render()
    for fname, png in figures.items():
        write_if_changed(out / "img" / fname, png)
    write_if_changed(out / "benchmarks.md", bench_md)
    timings["benchmarks"] = time.perf_counter() - t0
    write_if_changed(out / "api.md", api_page.render())
    write_if_changed(out / "jax_paths.md", jax_paths_page.render())

    # A page or figure that this build did not write (a variant renamed, results removed) must go.
    for path in sorted(out.rglob("*"), reverse=True):
        if path.is_file() and path not in written:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return timings
