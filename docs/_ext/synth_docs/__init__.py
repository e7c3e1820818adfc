"""Sphinx extension: generates the variant, conformance and benchmark pages before reading sources.

Everything it writes goes under ``docs/generated/`` (ignored by git) and is read from
``synth_ref.variants.REGISTRY``, ``synth_ref.Spec``, ``conformance-report.json`` and
``benchmarks/results/*.json``; nothing describing a variant is written by hand in docs/.
"""

from __future__ import annotations

import re
from pathlib import Path

from sphinx.util import logging

from .generate import generate

logger = logging.getLogger(__name__)


def _on_builder_inited(app):
    out = Path(app.srcdir) / "generated"
    timings = generate(out, warn=lambda msg: logger.warning(msg, type="synth_docs"))
    logger.info("synth_docs: generated in " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


# "|t - t'|" in a plain-text docstring is an absolute value, but reST reads |...| as a substitution
# reference (an error).  Escape such pairs outside ``literals`` so docstrings can say it plainly.
_ABS = re.compile(r"(?<![\\|`])\|(?=\S)([^|`\n]*?\S)\|(?![|`])")


def escape_abs(lines: list[str]) -> None:
    for i, line in enumerate(lines):
        if "``" not in line and not line.lstrip().startswith(("|", "+")):
            lines[i] = _ABS.sub(r"\\|\1\\|", line)


def _on_docstring(app, what, name, obj, options, lines):
    escape_abs(lines)


def setup(app):
    app.connect("builder-inited", _on_builder_inited)
    app.connect("autodoc-process-docstring", _on_docstring)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
