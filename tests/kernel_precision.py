"""A kernel's float32 gradient error next to the reference's own, on one case of the conformance grid.

The conformance suite's pass rule has a floor (1e-4 for float32 gradients) that can hide a kernel
whose float32 error is many times the reference's while still under it; these helpers compare the
two directly.  The reference's own error is that of ``synth_ref.apply`` run on float32 torch tensors
on the CPU and differentiated by torch autograd (what the suite calls the reference in the checked
dtype)."""

from __future__ import annotations

import numpy as np

from synth_ref.conformance import cases, check

#: The deep-grid AFT case on which the Triton and Pallas AFT kernels' dV was 30x the reference's
#: float32 error (P recomputed as exp(z - lse) with lse ~ 70): the opposed row of cases._DEEP_FINDS.
AFT_LSE_CASE = next(c for c in cases.grid("ci")[-len(cases._DEEP_FINDS):] if c.values == "opposed")


def gradient_errors(adapter, case, names, dtype="float32") -> dict:
    """max |gradient - float64 gold| for each parameter in ``names``."""
    inp = cases.make_inputs(case, dtype)
    _, gold = check._gold_vjp(case, dtype)
    nd = np.float32 if dtype == "float32" else np.float64
    p = {n: adapter.from_numpy(a.astype(nd), dtype) for n, a in inp.params.items()}
    x, dy = (adapter.from_numpy(a.astype(nd), dtype) for a in (inp.x, inp.dy))
    mask = None if inp.mask is None else adapter.from_numpy(inp.mask, None)
    _, dp = adapter.vjp(case.spec, p, x, dy, causal=case.causal, key_padding_mask=mask)
    return {n: float(np.max(np.abs(np.asarray(adapter.to_numpy(dp[n]), np.float64) - gold[n])))
            for n in names}


def reference_errors(case, names, dtype="float32") -> dict:
    """max |gradient - float64 gold| of the reference itself in ``dtype`` (torch autograd on CPU)."""
    import torch

    import synth_ref as sr

    inp = cases.make_inputs(case, dtype)
    _, gold = check._gold_vjp(case, dtype)
    tdt = getattr(torch, dtype)
    p = {n: torch.tensor(a, dtype=tdt, requires_grad=True) for n, a in inp.params.items()}
    x, dy = (torch.tensor(a, dtype=tdt) for a in (inp.x, inp.dy))
    mask = None if inp.mask is None else torch.tensor(inp.mask)
    y = sr.apply(case.spec, p, x, causal=case.causal, key_padding_mask=mask)
    (y * dy).sum().backward()
    return {n: float(np.max(np.abs(p[n].grad.double().numpy() - gold[n]))) for n in names}
