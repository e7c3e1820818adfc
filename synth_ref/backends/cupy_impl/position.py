"""How the AFT steps see the position bias w' (G, l, l): as a dense array, or as a band.

AFT-local and 1-D AFT-conv have w' = 0 outside a band of keys around each query, so a kernel can
use the windowed identity (global sums plus the band) and never build the (G, l, l) array.  The
Array-API steps always use the dense form; ``Band`` says how to read an entry of the band from a
small table without materialising anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from synth_ref import _common as c


@dataclass(frozen=True)
class Band:
    """w'[g, t, t'] = table[g*sg + t*st + t'*sk + base] for t - a <= t' <= t + r (and t' <= t under
    a causal mask); 0 for every other key.  AFT-local: table = w (l, l), sg = 0, st = l, sk = 1,
    a = r = window - 1 (capped at l - 1).  1-D AFT-conv: table = w_hat (h, s), sg = s, st = -1,
    sk = 1, base = a = the kernel's offset, r = s - 1 - a."""

    table: Any
    sg: int
    st: int
    sk: int
    base: int
    a: int
    r: int


@dataclass
class Position:
    """w' for the AFT steps: ``dense()`` (built on first use) and, where it has one, its ``band``."""

    groups: int
    build: Any  # () -> (G, l, l) array
    band: Band | None = None
    _dense: Any = field(default=None, repr=False)

    def dense(self):
        if self._dense is None:
            self._dense = self.build()
        return self._dense


@dataclass(frozen=True)
class BandGrad:
    """A gradient of w' given on its band only: values[g, t, i] is the gradient of
    w'[g, t, t - a + i] (0 where that key does not exist or is not allowed)."""

    values: Any
    a: int


def band_to_dense(xp, grad: BandGrad, l: int):
    """The (G, l, l) array a BandGrad stands for (zeros off the band)."""
    vals = grad.values
    G, _, width = vals.shape
    dev = c._dev(vals)
    t = xp.arange(l, device=dev)
    i = t[None, :] - t[:, None] + grad.a  # the band slot of (t, t')
    inside = xp.logical_and(i >= 0, i < width)
    flat = t[:, None] * width + xp.where(inside, i, xp.zeros_like(i))
    out = xp.take(xp.reshape(vals, (G, l * width)), xp.reshape(flat, (l * l,)), axis=1)
    out = xp.reshape(out, (G, l, l))
    return xp.where(inside[None, ...], out, c.const(xp, 0.0, out))
