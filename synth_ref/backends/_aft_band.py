"""The band of AFT's position bias and the windowed-kernel dispatch rule, shared by the torch/Triton
and JAX/Pallas adapters (plain Python: no framework import, so :mod:`.jax_plan` and the docs build
can use it).

aft_local and 1-D aft_conv have w'[t, t'] = 0 outside offsets o = t' - t in [lo, hi]; both adapters
then have a windowed kernel (band exactly, everything else through per-key-block summaries) that
runs when the band is narrow, and the dense (G, l, l) kernel otherwise.
"""

from __future__ import annotations

#: Dispatch: the windowed kernels run when the band holds at most this fraction of the keys,
#: NW <= WINDOW_MAX_FRACTION * l (NW = 2 window - 1, or window under causal, for aft_local;
#: kernel_size for aft_conv; both cropped to offsets within l), else the dense kernels.
#: A work count, not a timing (no GPU or TPU measured it): per row block the windowed forward visits
#: at most (BT + NW - 1) / BT + 1 key tiles instead of l / BT, plus two O(1) merges and two scans of
#: l d; at NW <= l / 2 that is no more tiles once l >= 4 BT, and far fewer for narrow bands.
WINDOW_MAX_FRACTION = 0.5


def band_offsets(spec, l, causal):
    """(lo, hi): the offsets t' - t where w' may be nonzero, cropped to the sequence (and, causal,
    to t' <= t); None for the variants without a band (aft_full, aft_simple, 2-D aft_conv)."""
    if spec.variant == "aft_local":
        r = min(spec.window, l) - 1  # |t - t'| < window
        lo, hi = -r, r
    elif spec.variant == "aft_conv" and spec.spatial_dims == 1:
        s = spec.kernel_size
        off = s - 1 if causal else (s - 1) // 2  # _aft.position_bias: tap j at t' - t = j - off
        lo, hi = max(-off, -(l - 1)), min(s - 1 - off, l - 1)
    else:
        return None
    return lo, min(hi, 0) if causal else hi


def use_window(spec, l, causal, fraction=WINDOW_MAX_FRACTION) -> bool:
    """The dispatch rule (see WINDOW_MAX_FRACTION): a band of NW <= fraction * l offsets."""
    off = band_offsets(spec, l, causal)
    return off is not None and off[1] - off[0] + 1 <= fraction * l
