"""The built API page: no field is garbled by napoleon (a docstring whose first line holds a colon
is read as "type: description")."""

from __future__ import annotations

import html as html_lib
import re


def _api(html_dir) -> str:
    return (html_dir / "generated" / "api.html").read_text()


def _text(fragment: str) -> str:
    return html_lib.unescape(re.sub(r"<[^>]+>", "", fragment))


def test_type_fields_are_types(html_dir):
    """A "Type:" field holds a type (str, tuple[str, ...], X | None), never a sentence."""
    page = _api(html_dir)
    field = r'<dt class="field-[a-z]+">Type<span[^>]*>:</span></dt>\s*<dd[^>]*>(.*?)</dd>'
    types = [_text(t).strip() for t in re.findall(field, page, re.S)]
    assert types, "no Type fields found: the page layout changed, update this test"
    for t in types:
        assert " " not in re.sub(r", | \| ", "", t) and "(" not in t, f"not a type: {t!r}"
