"""Backend adapters and their registry.

>>> from synth_ref import backends
>>> backends.names()[:3]
('numpy', 'array_api_strict', 'torch')
>>> backends.get("numpy").available()[0]
True

Built-in adapters live in one small module each and are imported lazily: asking for ``"jax"``
imports :mod:`synth_ref.backends.jax` (which imports jax on first use); nothing else is touched.
A third-party package registers its adapter under the entry-point group ``synth_ref.adapters``::

    [project.entry-points."synth_ref.adapters"]
    mykernels = "mykernels.synth:adapter"

after which ``get("mykernels")`` and ``synth-ref-conformance --backend mykernels`` find it.
``load("package.module:object")`` loads an adapter that is registered nowhere.  The protocol an
adapter follows is documented in :mod:`synth_ref.backends._protocol`.
"""

from __future__ import annotations

import importlib

from ._protocol import (
    DTYPES,
    Adapter,
    DifferentiableAdapter,
    check_adapter,
    claimed_variants,
    has_vjp,
    safe_available,
)

__all__ = [
    "DTYPES",
    "ENTRY_POINT_GROUP",
    "Adapter",
    "DifferentiableAdapter",
    "available",
    "check_adapter",
    "claimed_variants",
    "get",
    "has_vjp",
    "load",
    "names",
]

#: The entry-point group third-party adapters register under.
ENTRY_POINT_GROUP = "synth_ref.adapters"

#: Built-in adapters: name -> "module:object", imported only when asked for.
BUILTIN = {
    "numpy": "synth_ref.backends.numpy:adapter",
    "array_api_strict": "synth_ref.backends.array_api_strict:adapter",
    "torch": "synth_ref.backends.torch:adapter",
    "torch-triton-interpret": "synth_ref.backends.torch:interpret_adapter",
    "torch-cuda": "synth_ref.backends.torch:cuda_adapter",
    "jax": "synth_ref.backends.jax:adapter",
    "jax-pallas-interpret": "synth_ref.backends.jax:pallas_interpret_adapter",
    "cupy": "synth_ref.backends.cupy:adapter",
    "cupy-emulated": "synth_ref.backends.cupy_emulated:adapter",
}

_cache: dict[str, object] = {}


def _entry_points() -> dict:
    from importlib.metadata import entry_points

    try:
        eps = entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # noqa: BLE001 - a broken distribution must not break the registry
        return {}
    return {ep.name: ep for ep in eps}


def names() -> tuple[str, ...]:
    """Built-in adapter names, then registered third-party ones (sorted)."""
    extra = sorted(n for n in _entry_points() if n not in BUILTIN)
    return tuple(BUILTIN) + tuple(extra)


def load(target: str):
    """The adapter object at ``"package.module:object"`` (a class is instantiated)."""
    if not isinstance(target, str) or ":" not in target:
        raise ValueError(f"adapter: expected 'package.module:object'; got {target!r}")
    mod_name, _, attr = target.partition(":")
    obj = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return _finish(obj, target)


def _finish(obj, where):
    if isinstance(obj, type):
        obj = obj()
    try:
        check_adapter(obj)
    except TypeError as exc:
        raise TypeError(f"{where}: {exc}") from None
    return obj


def get(name: str):
    """The adapter registered as ``name`` (built-in or entry point), or at ``"module:object"``."""
    if name in _cache:
        return _cache[name]
    if name in BUILTIN:
        adapter = load(BUILTIN[name])
    else:
        eps = _entry_points()
        if name in eps:
            adapter = _finish(eps[name].load(), f"entry point {name!r}")
        elif ":" in name:
            adapter = load(name)
        else:
            raise KeyError(f"backend: expected one of {', '.join(names())} or 'module:object'; got {name!r}")
    _cache[name] = adapter
    return adapter


def available(name: str) -> tuple[bool, str]:
    """(ok, reason) for a backend by name; never raises (an unknown or broken one is (False, why))."""
    try:
        adapter = get(name)
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}"
    return safe_available(adapter)
