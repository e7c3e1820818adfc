"""Heat maps of a variant's mixing weights on a sample input, drawn with matplotlib at build time."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display at build time
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import synth_ref as sr  # noqa: E402

from . import samples  # noqa: E402

SEED = 0


def display_params(spec: sr.Spec) -> dict:
    """``spec.init(seed=0)``, except that a full position bias (initialised to 0) becomes a recency
    bias 2 - |t - t'| / 2, so AFT-full's and AFT-local's maps show what w' does, and AFT-conv's gain
    (initialised to 0, which makes every kernel 0) becomes 1, so its maps show the kernels."""
    params = spec.init(seed=SEED)
    if "pos_bias" in params:
        t = np.arange(spec.max_len)
        params["pos_bias"] = 2.0 - np.abs(t[:, None] - t[None, :]) / 2.0
    if "conv_gamma" in params:
        params["conv_gamma"] = np.ones_like(params["conv_gamma"])
    return params


def sample_input(spec: sr.Spec, length: int) -> np.ndarray:
    return np.random.default_rng(SEED + 1).standard_normal((1, length, spec.d_model))


def panels(spec: sr.Spec, weights: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The (title, (l, l) map) pairs to draw from batch element 0: every head of a softmax variant;
    for AFT (weights per channel, shape (B, d, l, l)) the first channel of every head, or the first
    two channels when there is one head."""
    if spec.family == "softmax":
        return [(f"head {i}", weights[0, i]) for i in range(weights.shape[1])]
    channels = [i * spec.head_dim for i in range(spec.n_heads)] if spec.n_heads > 1 else [0, 1]
    return [(f"channel {c}", weights[0, c]) for c in channels]


def draw(spec: sr.Spec, length: int) -> bytes:
    """PNG bytes: rows 'no mask' and 'causal', one column per panel, a colour scale per row."""
    params = display_params(spec)
    x = sample_input(spec, length)
    rows = []
    for causal in (False, True):
        w = np.asarray(sr.attention_weights(spec, params, x, causal=causal))
        expected = (1, spec.n_heads if spec.family == "softmax" else spec.d_model, length, length)
        if w.shape != expected:
            raise AssertionError(f"attention_weights: expected shape {expected}; got {w.shape} for {spec!r}")
        rows.append(("causal" if causal else "no mask", panels(spec, w)))
    ncol = len(rows[0][1])
    fig, axes = plt.subplots(2, ncol, figsize=(2.6 * ncol + 0.8, 5.2), squeeze=False,
                             constrained_layout=True)
    for r, (label, ps) in enumerate(rows):
        vmax = max(float(m.max()) for _, m in ps) or 1.0  # an all-zero row still gets a scale
        for c, (title, m) in enumerate(ps):
            ax = axes[r][c]
            im = ax.imshow(m, vmin=0.0, vmax=vmax, cmap="viridis", interpolation="nearest")
            ax.set_title(f"{title}, {label}", fontsize=9)
            ax.set_xlabel("key t'", fontsize=8)
            ax.set_ylabel("query t", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=list(axes[r]), shrink=0.9, label="weight")
    buf = io.BytesIO()
    # No timestamp in the metadata, so an unchanged figure gives unchanged bytes.
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def caption(spec: sr.Spec, length: int) -> str:
    what = ("softmax weights P per head" if spec.family == "softmax"
            else "effective per-channel weights exp(K + w') / sum, before the sigmoid(Q) gate")
    opts = ", ".join(f"{k}={v!r}" for k, v in spec.options().items())
    extra = ("; pos_bias set to 2 - |t - t'| / 2 for display"
             if spec.variant in ("aft_full", "aft_local") else "")
    return (f"{what}: Spec({spec.variant!r}, d_model={spec.d_model}, n_heads={spec.n_heads}, "
            f"max_len={spec.max_len}{', ' + opts if opts else ''}), params init(seed={SEED}){extra}, "
            f"x ~ N(0, 1) of shape (1, {length}, {spec.d_model}).")


__all__ = ["draw", "caption", "display_params", "panels", "samples"]
