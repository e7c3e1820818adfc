"""Open generated variant pages in headless Chromium with networking off: the formulas must be
typeset by the MathJax copy served from the site, and the heat map must be there."""

from __future__ import annotations

import html as html_lib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         # Belt and braces with the network namespace below: no host resolves, any proxy is dead.
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
         "--virtual-time-budget=15000"]


def _no_network_prefix() -> list[str]:
    """Run in a fresh network namespace (only a down loopback) when the machine allows it."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


def dump_dom(chromium: str, page: Path, profile: Path) -> str:
    cmd = [*_no_network_prefix(), chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
           page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.parametrize("variant", ["dense", "aft_full"])
def test_variant_page_typesets_math_and_shows_heat_map(variant, html_dir, chromium, tmp_path):
    page = html_dir / "generated" / "variants" / f"{variant}.html"
    static = page.read_text()
    # Every script the page loads is a file of the site, never a CDN.
    scripts = re.findall(r'<script[^>]*\bsrc="([^"]+)"', static)
    assert any("_static/mathjax/tex-chtml.js" in s for s in scripts), scripts
    assert not [s for s in scripts if "://" in s or s.startswith("//")], scripts
    mathjax = (page.parent / next(s for s in scripts if "mathjax" in s).split("?")[0]).resolve()
    assert mathjax.is_file(), f"MathJax not served from the site: {mathjax}"

    # Math as Sphinx wrote it: inline spans and display divs of class "math".
    n_math = len(re.findall(r'<(?:span|div) class="math(?: [^"]*)?"', static))
    assert n_math >= 10, f"expected the formula, shapes and costs as math; found {n_math}"

    dom = dump_dom(chromium, page, tmp_path / "profile")
    typeset = len(re.findall(r"<mjx-container\b", dom))
    assert typeset == n_math, f"MathJax typeset {typeset} of {n_math} formulas"
    assert "<mjx-merror" not in dom, "MathJax reported a TeX error"
    # MathJax's assistive MathML holds the text it drew: no macro may be left unexpanded in it.
    leftover = [t for t in re.findall(r"<mtext[^>]*>([^<]*)</mtext>", dom) if "\\" in t]
    assert not leftover, f"unexpanded TeX in typeset text: {leftover}"
    assert not re.search(r"\\\(|\\\[", _visible_math_source(dom)), "untypeset TeX left in the page"

    imgs = [html_lib.unescape(src) for src in re.findall(r'<img[^>]*\bsrc="([^"]+)"', dom)]
    heat = [s for s in imgs if s.endswith(f"{variant}.png")]
    assert heat, f"no heat map <img> in the page; images: {imgs}"
    png = (page.parent / heat[0]).resolve()
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"heat map file missing: {png}"


def _visible_math_source(dom: str) -> str:
    """The text of elements Sphinx marked as math, after MathJax ran (it replaces their TeX)."""
    parts = re.findall(r'<(?:span|div) class="math(?: [^"]*)?">(.*?)</(?:span|div)>', dom, flags=re.S)
    return "".join(re.sub(r"<mjx-container.*?</mjx-container>", "", p, flags=re.S) for p in parts)
