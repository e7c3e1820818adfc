"""The backend adapter protocol: what the conformance suite needs from an implementation.

An adapter is any object with the attributes below.  Of the built-in ones (``BUILTIN`` in
:mod:`synth_ref.backends`), ``numpy`` and ``array_api_strict`` run the reference
:func:`synth_ref.apply` itself; ``torch``/``torch-cuda`` run Triton kernels where one covers the case,
``jax`` XLA rewrites or Pallas kernels by platform, ``cupy`` CUDA kernels with hand-derived backward
passes, each falling back to the reference elsewhere.  Accelerated implementations replace the bodies
of ``apply`` and ``vjp``, never this protocol.

``name``
    A short identifier, used in reports (``"torch"``).
``dtypes``
    The dtype names the adapter claims, a subset of :data:`DTYPES`; the suite checks each of them.
``variants``
    Optional: the variant names the adapter implements, a subset of ``synth_ref.VARIANTS``
    (default: every variant).  The suite checks those and reports the others as not claimed,
    instead of failing an adapter that does not implement them or passing one that hands them to
    the reference.
``available() -> (bool, str)``
    Whether the framework (and device) is usable here, with a reason when it is not.  Must never
    raise, whatever is missing.
``from_numpy(array, dtype)``
    A NumPy array as the adapter's array.  ``dtype`` is a name from :data:`DTYPES`, or None to keep
    the array's own dtype (boolean masks).
``to_numpy(array) -> numpy.ndarray``
    Back to NumPy; bfloat16 comes back as float32 (NumPy has no bfloat16).
``apply(spec, params, x, *, causal, key_padding_mask)``
    The layer's output for the adapter's arrays (``params`` a dict of them, ``key_padding_mask``
    None or a boolean array from ``from_numpy(mask, None)``).
``vjp(spec, params, x, dy, *, causal, key_padding_mask) -> (dx, dparams)``
    Optional: only adapters that can differentiate have it.  ``dx`` is the gradient of
    ``sum(apply(...) * dy)`` with respect to x, ``dparams`` a dict with the gradient for every entry
    of ``params``, all as the adapter's arrays.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Every dtype name an adapter may claim, widest first.
DTYPES = ("float64", "float32", "float16", "bfloat16")

_REQUIRED = ("name", "dtypes", "available", "from_numpy", "to_numpy", "apply")


@runtime_checkable
class Adapter(Protocol):
    """Forward-only adapter (see the module docstring for each member's contract)."""

    name: str
    dtypes: tuple[str, ...]

    def available(self) -> tuple[bool, str]: ...

    def from_numpy(self, array: np.ndarray, dtype: str | None) -> Any: ...

    def to_numpy(self, array: Any) -> np.ndarray: ...

    def apply(self, spec, params: dict, x, *, causal: bool, key_padding_mask) -> Any: ...


@runtime_checkable
class DifferentiableAdapter(Adapter, Protocol):
    """An adapter that also provides ``vjp``."""

    def vjp(self, spec, params: dict, x, dy, *, causal: bool, key_padding_mask) -> tuple[Any, dict]: ...


def claimed_variants(adapter) -> tuple[str, ...]:
    """The variants ``adapter`` claims: its ``variants`` member, or every variant."""
    from ..variants import VARIANTS

    v = getattr(adapter, "variants", None)
    return VARIANTS if v is None else tuple(v)


def has_vjp(adapter) -> bool:
    return callable(getattr(adapter, "vjp", None))


def check_adapter(obj) -> None:
    """Raise TypeError naming what is missing or malformed when ``obj`` is not an adapter."""
    missing = [a for a in _REQUIRED if not hasattr(obj, a)]
    if missing:
        raise TypeError(
            f"adapter: expected an object with {', '.join(_REQUIRED)} (and optionally vjp); "
            f"{obj!r} lacks {', '.join(missing)}"
        )
    if not isinstance(obj.name, str) or not obj.name:
        raise TypeError(f"adapter.name: expected a non-empty string; got {obj.name!r}")
    bad = [d for d in obj.dtypes if d not in DTYPES]
    if bad or not obj.dtypes:
        raise TypeError(f"adapter.dtypes: expected a non-empty subset of {DTYPES}; got {obj.dtypes!r}")
    if getattr(obj, "variants", None) is not None:
        from ..variants import VARIANTS

        v = obj.variants
        if isinstance(v, str) or not v or [n for n in v if n not in VARIANTS]:
            raise TypeError(f"adapter.variants: expected a non-empty subset of {VARIANTS}; got {v!r}")
    for a in _REQUIRED[2:]:
        if not callable(getattr(obj, a)):
            raise TypeError(f"adapter.{a}: expected a callable; got {getattr(obj, a)!r}")


def safe_available(adapter) -> tuple[bool, str]:
    """``adapter.available()``, turning any exception (a broken adapter) into (False, reason)."""
    try:
        ok, reason = adapter.available()
    except Exception as exc:  # noqa: BLE001 - available() must never take the caller down
        return False, f"available() raised {type(exc).__name__}: {exc}"
    return bool(ok), str(reason)


def import_error_reason(module: str, exc: BaseException) -> str:
    return f"{module} is not importable here ({type(exc).__name__}: {exc})"
