"""The naive "what users write today" versions (../shared/notes/anchors.md), imported from
benchmarks/torch_bench.py (issue 4's PyTorch benchmark) so that they are written once.

torch_bench defines them as the *mixing step only* (inputs are the per-head tensors after the
projections) and as forward + backward closures over its own inputs (``make_inputs``), so here they
time forward + backward only, and a "× naive" ratio compares our whole layer with their mixing
step: it overstates our cost by the projections' share (about 2 l d^2 of 2 l d^2 + 2 l^2 d per
projection pair, small once l >> d).  Two of its rows are not naive versions and are left out:
SDPA flash (the harness's own ``sdpa`` baseline times the whole layer) and the device copy (a floor,
which the harness computes from Spec.flops / Spec.memory).
"""

from __future__ import annotations

import importlib

from . import impls

#: torch_bench rows that are not "what a user writes today" (see the module docstring).
NOT_NAIVE = ("SDPA flash", "device copy")


def _module():
    try:
        return importlib.import_module("benchmarks.torch_bench"), ""
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks.torch_bench":
            raise
        return None, "benchmarks/torch_bench.py (issue 4) is not in this checkout"


def _rows(tb, pt: impls.Point) -> dict:
    """torch_bench's closures for this point's shapes, built once per point and shared by every naive
    impl measured there."""
    if "naive" not in pt.cache:
        import torch

        st = pt.settings
        h = pt.spec.n_heads if pt.spec is not None else st.n_heads
        B, l, e = st.batch, pt.length, st.d_model // h
        dev = torch.device(impls.torch_device(st))
        x = tb.make_inputs(B, h, l, e, getattr(torch, pt.dtype), dev)
        pt.cache["naive"] = {name: fn for name, _v, fn in tb.baselines(x, B, h, l, e, dev)}
    return pt.cache["naive"]


def impls_for(settings, skipped: list) -> list:
    """One Impl per naive row of torch_bench (forward + backward of the mixing step)."""
    tb, why = _module()
    if tb is None:
        skipped.append({"what": "naive user versions", "why": why + "; the '× naive' column is empty"})
        return []
    if not all(hasattr(tb, a) for a in ("make_inputs", "baselines")):
        skipped.append(
            {
                "what": "naive user versions",
                "why": "benchmarks/torch_bench.py has no make_inputs/"
                "baselines (its interface changed); the '× naive' column is empty",
            }
        )
        return []
    import torch

    # The (name, variant) list does not depend on sizes: read it once at a tiny shape.
    probe = tb.make_inputs(1, 1, 4, 2, torch.float32, torch.device("cpu"))
    listed = [(name, variant) for name, variant, _ in tb.baselines(probe, 1, 1, 4, 2, torch.device("cpu"))]
    out = []
    for name, variant in listed:
        if any(name.startswith(n) for n in NOT_NAIVE):
            skipped.append({"what": f"torch_bench row {name!r}", "why": "not a naive version (see naive.py)"})
            continue
        out.append(_impl(tb, name, variant, settings))
    return out


def _impl(tb, name, variant, settings) -> impls.Impl:
    def build(pt: impls.Point) -> impls.Prepared:
        fn = _rows(tb, pt)[name]
        cuda = settings.device == "cuda"
        return impls.Prepared(
            forward=None,
            forward_backward=fn,
            cuda_events=cuda,
            memory="cuda" if cuda else "rss",
            note="mixing step only (torch_bench)",
        )

    return impls.Impl(
        f"naive: {name}",
        "baseline",
        build,
        lambda v, want=variant: v == want,
        tuple(settings.dtypes),
        floor=False,  # the floor is the whole layer's; these are mixing steps
        no_forward="torch_bench's closures run forward + backward only",
        meta={"scope": "mixing step only", "source": "benchmarks/torch_bench.py"},
    )
