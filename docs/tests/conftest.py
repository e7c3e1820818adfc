"""Fixtures for the docs tests: the built site and a headless Chromium with no network."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))  # the synth_docs generator
sys.path.insert(0, str(ROOT))  # docs.examples.my_adapter, as the adapter page runs it from the root


@pytest.fixture(scope="session")
def html_dir(tmp_path_factory) -> Path:
    """The built HTML: ``nox -s docs`` builds first and passes the path in SYNTH_REF_DOCS_HTML;
    otherwise build here, with warnings as errors, as ``nox -s docs`` does."""
    given = os.environ.get("SYNTH_REF_DOCS_HTML")
    if given:
        path = Path(given)
        assert (path / "index.html").is_file(), f"SYNTH_REF_DOCS_HTML={given} holds no built docs"
        return path
    out = tmp_path_factory.mktemp("html")
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(DOCS), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        # CI installs it (.ci/run); there its absence is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail("chromium: expected on PATH in CI (.ci/run installs it); not found")
        pytest.skip("chromium is not installed (apt-get install -y chromium); the browser test needs it")
    return path
