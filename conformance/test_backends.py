"""The adapter registry and the built-in adapters' protocol (not their numbers: the suite does that)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import synth_ref as sr
from synth_ref import backends
from synth_ref.backends import DTYPES, check_adapter

BUILTIN = ("numpy", "array_api_strict", "torch", "torch-triton-interpret", "torch-cuda", "jax",
           "jax-pallas-interpret", "cupy", "cupy-emulated")


def test_names_lists_every_builtin():
    assert backends.names()[: len(BUILTIN)] == BUILTIN


def test_interpreter_backends_cross_block_boundaries():
    """The interpreter backends run their kernels with sequence blocks shorter than the grid's full
    length (and longer than its odd one), so that the suite's cases span two row and key blocks, the
    second partial.  With the Triton kernels' own blocks (16 and up) every case fit one block, and a
    flash kernel that dropped the online-softmax rescale of its accumulator or row sum, or a windowed
    AFT kernel that skipped the key block before its band, passed every check (mutation testing)."""
    from synth_ref.backends import jax as jax_backend
    from synth_ref.backends import torch as torch_backend
    from synth_ref.conformance import cases as C

    for adapter in (torch_backend.interpret_adapter, jax_backend.pallas_interpret_adapter):
        assert adapter.block is not None and C.ODD_LEN < adapter.block < C.MAX_LEN, adapter.name


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(KeyError, match="backend: expected one of numpy"):
        backends.get("no-such-backend")
    ok, why = backends.available("no-such-backend")
    assert not ok and "no-such-backend" in why


@pytest.mark.parametrize("name", BUILTIN)
def test_available_never_raises_and_adapter_follows_protocol(name):
    ok, why = backends.available(name)
    assert isinstance(ok, bool) and isinstance(why, str) and why
    a = backends.get(name)
    check_adapter(a)
    assert a.name == name
    assert set(a.dtypes) <= set(DTYPES)


def test_frameworks_are_imported_lazily():
    code = textwrap.dedent(
        """
        import sys
        from synth_ref import backends
        assert "torch" not in sys.modules and "jax" not in sys.modules, "import"
        a = backends.get("numpy")
        assert a.available()[0]
        backends.names()
        assert "torch" not in sys.modules and "jax" not in sys.modules, "numpy adapter"
        backends.get("torch")
        assert "torch" not in sys.modules, "getting the torch adapter must not import torch yet"
        print("ok")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_cupy_unavailable_here_says_why():
    ok, why = backends.available("cupy")
    if not ok:
        assert "cupy" in why


class _Minimal:
    name = "minimal"
    dtypes = ("float64",)

    def available(self):
        return True, "always"

    def from_numpy(self, a, dtype=None):
        return np.asarray(a) if dtype is None else np.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.asarray(a)

    def apply(self, spec, params, x, *, causal=False, key_padding_mask=None):
        return sr.apply(spec, params, x, causal=causal, key_padding_mask=key_padding_mask)


MINIMAL = _Minimal()


def test_load_module_object_and_class():
    a = backends.load(f"{__name__}:MINIMAL")
    assert a is MINIMAL
    b = backends.load(f"{__name__}:_Minimal")
    assert isinstance(b, _Minimal)
    with pytest.raises(ValueError, match="package.module:object"):
        backends.load("no-colon")


def test_check_adapter_names_what_is_missing():
    class Half:
        name = "half"
        dtypes = ("float64",)

    with pytest.raises(TypeError, match="lacks available, from_numpy, to_numpy, apply"):
        check_adapter(Half())
    bad = _Minimal()
    bad.dtypes = ("float8",)
    with pytest.raises(TypeError, match="adapter.dtypes"):
        check_adapter(bad)


def test_entry_point_registration(tmp_path, monkeypatch):
    """A third-party distribution registering under ``synth_ref.adapters`` is found by name."""
    pkg = tmp_path / "thirdparty_synth"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from conformance.test_backends import _Minimal\n"
        "class Adapter(_Minimal):\n    name = 'thirdparty'\n"
    )
    dist = tmp_path / "thirdparty_synth-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-synth\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{backends.ENTRY_POINT_GROUP}]\nthirdparty = thirdparty_synth:Adapter\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    backends._cache.pop("thirdparty", None)
    assert "thirdparty" in backends.names()
    a = backends.get("thirdparty")
    assert a.name == "thirdparty" and backends.available("thirdparty") == (True, "always")


def _usable(name):
    ok, why = backends.available(name)
    if not ok:
        pytest.skip(why)
    return backends.get(name)


@pytest.mark.parametrize("name", BUILTIN)
def test_round_trip_dtypes_and_masks(name):
    a = _usable(name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3))
    for dt in a.dtypes:
        back = a.to_numpy(a.from_numpy(x, dt))
        want = "float32" if dt == "bfloat16" else dt
        assert back.dtype == np.dtype(want), (dt, back.dtype)
        tol = {"float64": 0, "float32": 1e-7, "float16": 1e-3, "bfloat16": 1e-2}[dt]
        assert np.allclose(back, x, rtol=tol, atol=0)
    m = np.array([[True, False, True]])
    mm = a.to_numpy(a.from_numpy(m, None))
    assert mm.dtype == np.bool_ and (mm == m).all()


@pytest.mark.parametrize("name", BUILTIN)
def test_apply_and_vjp_shapes(name):
    a = _usable(name)
    spec = sr.Spec("dense", d_model=4, n_heads=2, max_len=4)
    p = spec.init(seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4))
    dt = a.dtypes[0]
    pa = {n: a.from_numpy(v, dt) for n, v in p.items()}
    y = a.to_numpy(a.apply(spec, pa, a.from_numpy(x, dt), causal=True, key_padding_mask=None))
    assert y.shape == x.shape and y.dtype == np.dtype(dt)
    np.testing.assert_allclose(y, sr.apply(spec, p, x, causal=True), rtol=1e-12, atol=1e-12)
    if backends.has_vjp(a):
        dx, dp = a.vjp(spec, pa, a.from_numpy(x, dt), a.from_numpy(x, dt), causal=True, key_padding_mask=None)
        assert a.to_numpy(dx).shape == x.shape
        assert set(dp) == set(p) and all(a.to_numpy(dp[n]).shape == p[n].shape for n in p)


def test_jax_float64_does_not_flip_x64_globally():
    a = _usable("jax")
    import jax

    spec = sr.Spec("aft_simple", d_model=4, max_len=4)
    p = {n: a.from_numpy(v, "float64") for n, v in spec.init(seed=0).items()}
    x = a.from_numpy(np.ones((1, 2, 4)), "float64")
    y = a.apply(spec, p, x, causal=False, key_padding_mask=None)
    assert a.to_numpy(y).dtype == np.float64
    assert not jax.config.jax_enable_x64


def _suite_cli(args, cwd, entry="-m"):
    """Run the suite's command line: ``python -m synth_ref.conformance`` (entry "-m") or its
    console-script form, ``main()`` called from a script whose sys.path[0] is not ``cwd``."""
    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    if entry == "-m":
        cmd = [sys.executable, "-m", "synth_ref.conformance", *args]
    else:  # as the installed synth-ref-conformance script runs: sys.path[0] is the script's directory
        cmd = [sys.executable, "-c", "import sys; sys.path.pop(0); from synth_ref.conformance import main; "
               "sys.exit(main())", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("target", [["--adapter", "no_such_module:ADAPTER"],
                                    ["--adapter", "conformance.test_backends:_suite_cli"],
                                    ["--backend", "no-such-backend"]])
def test_cli_fails_when_a_named_target_cannot_be_loaded(tmp_path, target):
    """A typo in --adapter/--backend, or an object that is no adapter, used to be recorded as
    'skipped' and the run exited 0 with nothing checked."""
    run = _suite_cli([*target, "--report", str(tmp_path / "r.json"), "--variant", "random", "--",
                      "-k", "test_forward and float64"], cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 4, out[-3000:]
    assert target[1] in out and ("could not load" in out or "expected one of" in out), out[-3000:]


def test_cli_finds_an_adapter_in_the_working_directory(tmp_path):
    """docs/adapter.md's command, run where the adapter's module is, in both entry points."""
    (tmp_path / "outside_adapter.py").write_text(
        "from conformance.test_backends import _Minimal\n"
        "class Adapter(_Minimal):\n    name = 'outside'\nADAPTER = Adapter()\n")
    for entry in ("-m", "script"):
        report = tmp_path / f"r{entry}.json"
        run = _suite_cli(["--adapter", "outside_adapter:ADAPTER", "--report", str(report), "--variant",
                          "random", "--", "-k", "test_forward and float64"], cwd=tmp_path, entry=entry)
        assert run.returncode == 0, (entry, (run.stdout + run.stderr)[-3000:])
        import json

        assert json.loads(report.read_text())["backends"]["outside"]["counts"]["pass"] > 0, entry


def test_an_adapter_checked_on_the_variants_it_claims_only(tmp_path):
    """``variants`` declares what an adapter implements: those are checked, the rest reported as not
    claimed.  Before, an adapter had to hand the others to the reference (and they read "pass") or
    fail every check of them."""
    import json

    (tmp_path / "partial_adapter.py").write_text(
        "import synth_ref as sr\n"
        "from conformance.test_backends import _Minimal\n"
        "class Adapter(_Minimal):\n"
        "    name = 'partial'\n"
        "    variants = ('random', 'aft_simple')\n"
        "    def apply(self, spec, params, x, *, causal=False, key_padding_mask=None):\n"
        "        if spec.variant not in self.variants:\n"
        "            raise NotImplementedError(spec.variant)\n"
        "        return sr.apply(spec, params, x, causal=causal, key_padding_mask=key_padding_mask)\n"
        "ADAPTER = Adapter()\n")
    report = tmp_path / "r.json"
    run = _suite_cli(["--adapter", "partial_adapter:ADAPTER", "--report", str(report), "--",
                      "-k", "(test_forward or test_drawn) and not l1"], cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    entry = json.loads(report.read_text())["backends"]["partial"]
    assert entry["variants"] == ["random", "aft_simple"]
    assert set(entry["cells"]) == {"random", "aft_simple"}, entry["cells"].keys()
    assert entry["counts"]["pass"] > 0 and entry["counts"]["error"] == 0
    md = report.with_suffix(".md").read_text()
    assert "| dense | float64 | — |" in md and "| random | float64 | pass" in md
    assert "not claimed" in run.stdout and "variants: random, aft_simple" in run.stdout
    with pytest.raises(TypeError, match="adapter.variants"):
        bad = _Minimal()
        bad.variants = ("dense", "flash")
        check_adapter(bad)
