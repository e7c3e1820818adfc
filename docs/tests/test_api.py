"""The built API page: every module the README's backend table names is documented, with the real
signatures, and no field is garbled by napoleon (a docstring whose first line holds a colon is read
as "type: description")."""

from __future__ import annotations

import html as html_lib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _api(html_dir) -> str:
    return (html_dir / "generated" / "api.html").read_text()


def _text(fragment: str) -> str:
    return html_lib.unescape(re.sub(r"<[^>]+>", "", fragment))


def test_every_module_the_readme_table_names_is_documented(html_dir):
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Backends", 1)[1].split("\n\n", 2)[1]
    named = re.findall(r"`(synth_ref\.backends\.[\w.]+)`", table)
    assert named, "the README's backend table names no module"
    page = _api(html_dir)
    for dotted in named:
        assert f'id="{dotted}"' in page, f"the API page does not document {dotted} (README names it)"


def test_no_mocked_signature(html_dir):
    """torch and flax are mocked in the docs build: a class deriving from their modules must still
    show its own __init__'s parameters, not the mock's (*args, **kwargs)."""
    sigs = [_text(s) for s in re.findall(r'<dt class="sig[^"]*"[^>]*>(.*?)</dt>', _api(html_dir), re.S)]
    bad = [s.strip() for s in sigs if "*args, **kwargs" in s
           and not s.strip().startswith(("class synth_ref.backends.Adapter", "class synth_ref.backends."
                                         "DifferentiableAdapter", "class synth_ref.backends._protocol."))]
    assert not bad, bad
    layer = next(s for s in sigs if "torch_nn.MixingLayer(" in s)
    assert "kernels='auto'" in layer and "dropout=0.0" in layer, layer


def test_type_fields_are_types(html_dir):
    """A "Type:" field holds a type (str, tuple[str, ...], X | None), never a sentence."""
    page = _api(html_dir)
    field = r'<dt class="field-[a-z]+">Type<span[^>]*>:</span></dt>\s*<dd[^>]*>(.*?)</dd>'
    types = [_text(t).strip() for t in re.findall(field, page, re.S)]
    assert types, "no Type fields found: the page layout changed, update this test"
    for t in types:
        assert " " not in re.sub(r", | \| ", "", t) and "(" not in t, f"not a type: {t!r}"
