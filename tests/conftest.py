"""Shared fixtures: the Array-API namespaces every spec test runs under, and Hypothesis profiles.

Hypothesis profiles (pick with HYPOTHESIS_PROFILE, default "ci"):
- ci: derandomized (the same examples every run, so CI is reproducible) and few examples, to keep
  ``nox -s tests`` short on a 2-core machine;
- dev: random and many more examples, for a local hunt (HYPOTHESIS_PROFILE=dev pytest tests).

JAX runs under jax.jit: the "jax" namespace compiles each sr.apply / sr.attention_weights call with
jax.jit (the spec still sees jax.numpy arrays, as tracers).  On this 2-core machine JAX's eager mode
compiles every primitive for every new shape (about 1.5 s per call against 0.3 s for one jit), which
would make the suite several minutes longer; eager JAX is covered by test_spec_jax_eager.py.

JAX float64: the ``ns`` fixture enters ``jax.enable_x64(True)`` for the duration of each test that
runs under JAX and leaves it on exit, so the setting never leaks into other tests (a global
``jax_enable_x64`` would change the dtypes every later JAX test sees).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=5,  # per variant and namespace; the explicit grid covers every option
    deadline=None,
    print_blob=True,
    # ``ns`` is function-scoped only to scope JAX's x64 switch; it holds no per-example state.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

NAMESPACES = ("numpy", "array_api_strict", "torch", "jax")
_JITTED: dict = {}


@dataclass(frozen=True)
class Namespace:
    """One Array-API namespace and the two conversions the tests need (to it from NumPy, and back)."""

    name: str
    xp: Any
    float16: bool  # whether the namespace has float16 (array_api_strict has only float32/float64)
    jit: bool = False  # run the spec's entry points under jax.jit

    def call(self, fn, spec, params, x, **kw):
        """fn(spec, params, x, causal=..., key_padding_mask=...), jit-compiled where ``jit``."""
        if not self.jit:
            return fn(spec, params, x, **kw)
        import jax

        causal = kw.pop("causal", False)
        key = (fn, spec, causal)  # reuse the traced function: jax.jit caches compiles per shape
        if key not in _JITTED:
            _JITTED[key] = jax.jit(lambda p, a, m: fn(spec, p, a, causal=causal, key_padding_mask=m))
        return _JITTED[key](params, x, kw.pop("key_padding_mask", None))

    def asarray(self, a, dtype=None):
        """A NumPy array (or nested list) as an array of this namespace; dtype a NumPy dtype name."""
        a = np.asarray(a) if dtype is None else np.asarray(a, dtype=dtype)
        a = np.ascontiguousarray(a)
        if self.name == "torch":
            import torch

            return torch.from_numpy(a.copy())
        return self.xp.asarray(a)

    def params(self, params, dtype=None):
        return {n: self.asarray(v, dtype) for n, v in params.items()}

    def to_numpy(self, a):
        if self.name == "torch":
            return a.detach().cpu().numpy()
        return np.asarray(a)


def _load(name: str) -> Namespace:
    if name == "numpy":
        return Namespace(name, np, True)
    if name == "array_api_strict":
        xs = pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
        return Namespace(name, xs, False)
    if name == "torch":
        torch = pytest.importorskip("torch", reason="torch is not installed")
        return Namespace(name, torch, True)
    jnp = pytest.importorskip("jax.numpy", reason="jax is not installed")
    return Namespace(name, jnp, True, jit=name == "jax")


@pytest.fixture(params=NAMESPACES)
def ns(request):
    """Each test taking ``ns`` runs once per namespace; under JAX with float64 enabled."""
    space = _load(request.param)
    if space.name == "jax":
        import jax

        ctx = jax.enable_x64(True)
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        yield space
