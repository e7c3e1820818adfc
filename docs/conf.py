"""Sphinx configuration.  Build with ``nox -s docs`` (warnings are errors there)."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))  # the synth_docs generator extension

project = "synth-ref"
author = "the synth-ref developers"
copyright = "the synth-ref developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax 3 bundled in a wheel and copied into _static/mathjax: formulas render with no network.
    "sphinx-mathjax-offline",
    "synth_docs",
]
mathjax_path = "mathjax/tex-chtml.js"  # the bundled copy, never a CDN
# The registry's formulas write identifiers as \text{pos\_bias}: let \text{} read such macros.
mathjax3_config = {"loader": {"load": ["[tex]/textmacros"]}, "tex": {"packages": {"[+]": ["textmacros"]}}}

source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "tests", "examples", "_ext", "README.md"]
myst_heading_anchors = 2

napoleon_google_docstring = False
napoleon_numpy_docstring = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Frameworks are imported lazily by the adapters; documenting them must not need them installed.
autodoc_mock_imports = ["torch", "jax", "jaxlib", "flax", "cupy", "triton"]

html_theme = "furo"
html_title = "synth-ref"
