"""The variant registry: one home for each variant's facts.

Everything that describes a variant -- its options, its parameter arrays and their shapes, which of
them the papers count, its formula and the conventions we pin down where the papers are vague -- lives
here.  ``Spec`` validates against it, ``Spec.init`` draws from it, the tests and the generated docs
read it.  The math itself lives in ``_softmax.py`` and ``_aft.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SOFTMAX_VARIANTS = ("dot_product", "dense", "random", "factorized_dense", "factorized_random")
AFT_VARIANTS = ("aft_full", "aft_simple", "aft_local", "aft_conv")
VARIANTS = (
    "dot_product",
    "dense",
    "random",
    "factorized_dense",
    "factorized_random",
    "mixture",
    "aft_full",
    "aft_simple",
    "aft_local",
    "aft_conv",
)

#: Leaf names of the random synthesizer's alignment arrays (plain R; factorized R_1, R_2).  The
#: paper trains them or keeps them fixed at their initial draw ("Fixed Random"); the layers
#: (torch ``freeze_random``, NNX ``freeze_random``) freeze exactly these, also inside a mixture.
RANDOM_ARRAYS = ("r", "r_1", "r_2")

#: Every option a ``Spec`` can take beyond (variant, d_model, n_heads, max_len).
OPTIONS = ("k", "factors", "tiling", "components", "pos_rank", "window", "kernel_size", "spatial_dims")

SYNTHESIZER_PAPER = "Tay et al., Synthesizer: Rethinking Self-Attention in Transformer Models (2020)"
AFT_PAPER = "Zhai et al., An Attention Free Transformer (2021)"


@dataclass(frozen=True)
class Variant:
    """What is fixed about a variant, independent of sizes.

    Attributes
    ----------
    name, title, paper:
        Registry key, human title, source paper.
    family:
        ``"softmax"`` (a row-softmax of logits S mixes the values) or ``"aft"`` (per-channel
        weighting of values by exp(K + w')).
    options:
        The ``Spec`` options this variant accepts; any other option given is an error.
    multihead:
        Whether ``n_heads`` may be other than 1.
    synth_weights:
        Names of the synthesizing function's weight matrices: with ``n_heads=1`` their sizes add up to
        the parameter cost the Synthesizer paper's table gives (biases and the value/output
        projections are not counted there).
    paper_cost:
        That cost as the paper writes it (LaTeX).
    formula:
        The canonical math (LaTeX, MyST ``$$`` blocks are built from it).
    conventions:
        ``(what we pin down, why)`` pairs where the papers are vague.
    shapes:
        ``spec -> {name: shape}``: this variant's own arrays (the shared projections are added by
        ``Spec.param_shapes``).
    """

    name: str
    title: str
    paper: str
    family: str
    options: tuple[str, ...]
    multihead: bool
    synth_weights: tuple[str, ...]
    paper_cost: str
    formula: str
    conventions: tuple[tuple[str, str], ...] = ()
    shapes: Callable[[Any], dict[str, tuple[int, ...]]] | None = None


_SLICE = (
    "Lengths l < max_len use the leading l positions of every length-indexed parameter "
    "(R[:l, :l], the first l logits of a dense row, the first l entries of C).",
    "The parameters are sized for max_len; slicing keeps position t meaning the same position at "
    "every length, which is what causal decoding and variable-length batches need.",
)
_MASKED_ROW = (
    "A query row whose keys are all masked gets weight 0 everywhere (output b_o), never NaN.",
    "softmax over an empty set is undefined; 0 is the limit of a row whose logits all tend to "
    "-inf and keeps gradients finite.",
)
_NO_SCALE = (
    "Synthesizer logits are not scaled by 1/sqrt(e); only dot_product is.",
    "The paper scales only the query-key dot product; synthesized logits have a learned scale.",
)
_AFT_EMPTY = (
    "A position with no allowed key (all masked) outputs Y = 0 before the output projection.",
    "The normalizer is an empty sum; 0 keeps the layer finite and its gradient defined.",
)
_AFT_POS_INIT = (
    "Spec.init starts w at exactly 0: pos_bias = 0, or pos_u ~ N(0, 0.1^2) with pos_v = 0.  The "
    "paper's experiments draw u and v (and the unfactorized w of its ablation) from N(0, 10^-2), "
    "which starts w near 0 (std about 0.01 sqrt(r)) but not at it.",
    "A zero bias starts the layer as AFT-simple, as the paper's own AFT-conv initialization "
    "(gamma = beta = 0) does, and makes the initial layer independent of the seed's draw of the "
    "biases; with pos_v = 0, pos_v gets a gradient at once and pos_u from the second step.",
)
_AFT_STABLE = (
    "Before exp, each (t, channel) subtracts the maximum of K[t', c] + w'[t, t'] over its allowed "
    "t' only.",
    "A global key maximum is not enough under a causal mask: a large future key underflows every "
    "visible term to 0/0 (a defect seen in public code).",
)


# --- each variant's own arrays (h = n_heads, d = d_model, e = d / h, L = max_len) -------------

def _dot_product_shapes(s):
    d = s.d_model
    return {"w_q": (d, d), "b_q": (d,), "w_k": (d, d), "b_k": (d,)}


def _dense_shapes(s):
    h, d, e, L = s.n_heads, s.d_model, s.head_dim, s.max_len
    return {"w_1": (h, d, e), "b_1": (h, e), "w_2": (h, e, L), "b_2": (h, L)}


def _random_shapes(s):
    return {"r": (s.n_heads, s.max_len, s.max_len)}


def _factorized_dense_shapes(s):
    h, d, e = s.n_heads, s.d_model, s.head_dim
    a, b = s.factors
    return {"w_1": (h, d, e), "b_1": (h, e), "w_a": (h, e, a), "b_a": (h, a),
            "w_b": (h, e, b), "b_b": (h, b)}


def _factorized_random_shapes(s):
    h, L, k = s.n_heads, s.max_len, s.k
    return {"r_1": (h, L, k), "r_2": (h, L, k)}


def _mixture_shapes(s):
    out = {"mix_logits": (len(s.components),)}
    for c in s.components:
        out.update({f"{c}.{n}": shape for n, shape in REGISTRY[c].shapes(s).items()})
    return out


def _position_shapes(s):
    L = s.max_len
    if s.pos_rank is None:
        return {"pos_bias": (L, L)}
    return {"pos_u": (L, s.pos_rank), "pos_v": (L, s.pos_rank)}


def _no_shapes(s):
    return {}


def _conv_shapes(s):
    h, k = s.n_heads, s.kernel_size
    return {"conv_w": (h,) + (k,) * s.spatial_dims, "conv_gamma": (h,), "conv_beta": (h,)}


REGISTRY: dict[str, Variant] = {}


def _add(v: Variant) -> None:
    REGISTRY[v.name] = v


_add(Variant(
    name="dot_product",
    shapes=_dot_product_shapes,
    title="Dot-product attention",
    paper=SYNTHESIZER_PAPER,
    family="softmax",
    options=(),
    multihead=True,
    synth_weights=("w_q", "w_k"),
    paper_cost="2d^2",
    formula=r"S_i = \frac{Q_i K_i^\top}{\sqrt{e}},\quad Q = x W_q + b_q,\ K = x W_k + b_k",
    conventions=(_MASKED_ROW,),
))
_add(Variant(
    name="dense",
    shapes=_dense_shapes,
    title="Dense Synthesizer",
    paper=SYNTHESIZER_PAPER,
    family="softmax",
    options=(),
    multihead=True,
    synth_weights=("w_1", "w_2"),
    paper_cost="d^2 + d L",
    formula=(r"H_i = \mathrm{relu}(x W_{1,i} + b_{1,i}),\quad "
             r"S_i = (H_i W_{2,i} + b_{2,i})_{[:, :l]}"),
    conventions=(
        ("Head i has its own two-layer MLP d -> e -> L (w_1[i], w_2[i]).",
         "With n_heads = 1 this is exactly the paper's F(X) = W2 relu(W1 X + b1) + b2 with cost "
         "d^2 + dL; heads split the hidden layer so the cost stays d^2 + dL.  The authors' Mesh "
         "TensorFlow code (synthesize_mode='dense_minus') splits the hidden layer the same way but "
         "shares one e x L output matrix among the heads (cost d^2 + eL); a W2 per head is the "
         "reading whose cost is the paper's."),
        _SLICE, _NO_SCALE, _MASKED_ROW,
    ),
))
_add(Variant(
    name="random",
    shapes=_random_shapes,
    title="Random Synthesizer",
    paper=SYNTHESIZER_PAPER,
    family="softmax",
    options=(),
    multihead=True,
    synth_weights=("r",),
    paper_cost="L^2",
    formula=r"S_i = R_{i,[:l,:l]}",
    conventions=(
        ("R is one parameter per head, shared by every batch element, and the softmax is applied "
         "to it.", "The paper's Y = softmax(R) G(X); public code that skips the softmax or draws "
         "R per batch slot computes another function."),
        _SLICE, _MASKED_ROW,
    ),
))
_add(Variant(
    name="factorized_dense",
    shapes=_factorized_dense_shapes,
    title="Factorized Dense Synthesizer",
    paper=SYNTHESIZER_PAPER,
    family="softmax",
    options=("factors", "tiling"),
    multihead=True,
    synth_weights=("w_1", "w_a", "w_b"),
    paper_cost="d^2 + d(a + b)",
    formula=(r"H_i = \mathrm{relu}(x W_{1,i} + b_{1,i}),\ A = H_i W_{a,i} + b_{a,i},\ "
             r"B = H_i W_{b,i} + b_{b,i},\quad "
             r"C_{[p b + q]} = A_{[p]} B_{[q]}\ (\text{outer}),\ "
             r"C_{[m]} = A_{[m \bmod a]} B_{[m \bmod b]}\ (\text{tile}),\quad S_i = C_{[:, :l]}"),
    conventions=(
        ("factors=(a, b) with a * b = max_len; default: the most balanced pair, a <= b.",
         "The paper requires a x b = l and gives no default."),
        ("tiling='outer' (default) uses every product A[p] * B[q] exactly once; tiling='tile' is "
         "the literal reading 'duplicate the vector'.",
         "With tiling, only lcm(a, b) = L / gcd(a, b) of the a b pairs A[p] B[q] ever appear (half "
         "or fewer when gcd(a, b) > 1) and the logits repeat with period lcm(a, b) < L; the "
         "paper's stated aim, 'to avoid having similar values within the same block', is met only "
         "by the outer composition."),
        _SLICE, _NO_SCALE, _MASKED_ROW,
    ),
))
_add(Variant(
    name="factorized_random",
    shapes=_factorized_random_shapes,
    title="Factorized Random Synthesizer",
    paper=SYNTHESIZER_PAPER,
    family="softmax",
    options=("k",),
    multihead=True,
    synth_weights=("r_1", "r_2"),
    paper_cost="2 L k",
    formula=r"S_i = R_{1,i,[:l]} R_{2,i,[:l]}^\top",
    conventions=(
        ("The two factors are contracted over their rank axis k: S = R1 R2^T, an (l x l) matrix.",
         "Contracting over the length axis (a defect seen in public code) gives every query row "
         "the same logits."),
        _SLICE, _MASKED_ROW,
    ),
))
_add(Variant(
    name="mixture",
    shapes=_mixture_shapes,
    title="Mixture of Synthesizers",
    paper=SYNTHESIZER_PAPER,
    family="softmax",
    options=("components", "k", "factors", "tiling"),
    multihead=True,
    synth_weights=(),  # the sum of its components'
    paper_cost=r"\sum_c \text{cost}_c",
    formula=r"S_i = \sum_c \alpha_c S_i^{(c)},\quad \alpha = \mathrm{softmax}(\text{mix\_logits})",
    conventions=(
        ("The mixture weights are alpha = softmax(mix_logits), one learned scalar per component, "
         "shared by heads; the logits are mixed before the one softmax.",
         "The paper's Y = softmax(a_1 S_1(X) + ... + a_N S_N(X)) G(X) with sum(a) = 1 and "
         "trainable a."),
        ("Each component keeps its own arrays, named '<component>.<name>'; the value and output "
         "projections are shared.", "The components differ only in how they synthesize logits."),
        _MASKED_ROW,
    ),
))
_add(Variant(
    name="aft_full",
    shapes=_position_shapes,
    title="AFT-full",
    paper=AFT_PAPER,
    family="aft",
    options=("pos_rank",),
    multihead=False,
    synth_weights=("pos_bias",),
    paper_cost="L^2",
    formula=(r"Y_t = \sigma(Q_t) \odot \frac{\sum_{t'} \exp(K_{t'} + w_{t,t'}) \odot V_{t'}}"
             r"{\sum_{t'} \exp(K_{t'} + w_{t,t'})},\quad w = \text{pos\_bias}_{[:l,:l]}"
             r"\ \text{or}\ U_{[:l]} V_{[:l]}^\top"),
    conventions=(
        ("K and w add inside exp (exp(K + w) = exp(K) exp(w)); they never multiply.",
         "The paper's definition; K * w (a defect seen in public code) is another function and "
         "NaNs under -inf masks."),
        ("pos_rank=r factorizes w as pos_u pos_v^T.", "The paper's factorized position biases."),
        _AFT_POS_INIT, _AFT_STABLE, _AFT_EMPTY, _SLICE,
    ),
))
_add(Variant(
    name="aft_simple",
    shapes=_no_shapes,
    title="AFT-simple",
    paper=AFT_PAPER,
    family="aft",
    options=(),
    multihead=False,
    synth_weights=(),
    paper_cost="0",
    formula=(r"Y_t = \sigma(Q_t) \odot \frac{\sum_{t'} \exp(K_{t'}) \odot V_{t'}}"
             r"{\sum_{t'} \exp(K_{t'})}"),
    conventions=(
        ("Under a causal mask both sums run over t' <= t and are divided once, at t.",
         "Dividing each term by its own prefix sum (a defect seen in public code) gives 1 instead "
         "of 0.5 for T = 2, K = 0, V = [1, 0]."),
        _AFT_STABLE, _AFT_EMPTY,
    ),
))
_add(Variant(
    name="aft_local",
    shapes=_position_shapes,
    title="AFT-local",
    paper=AFT_PAPER,
    family="aft",
    options=("window", "pos_rank"),
    multihead=False,
    synth_weights=("pos_bias",),
    paper_cost="L^2",
    formula=(r"w'_{t,t'} = \begin{cases} w_{t,t'} & |t - t'| < s \\ 0 & \text{otherwise} "
             r"\end{cases}\quad\text{(then as AFT-full)}"),
    conventions=(
        ("Outside the window the bias is 0, not -inf: tokens outside the window still count, "
         "weighted by exp(K) alone.",
         "The paper keeps global connectivity ('while maintaining global connectivity'); -inf "
         "would make it local attention."),
        ("window=s keeps |t - t'| < s; s >= l equals AFT-full.", "The paper's definition."),
        ("The position bias is stored whole for every window: pos_bias (L, L), or pos_u, pos_v "
         "(L, r); only entries with |t - t'| < s are read, and paper_param_count counts what is "
         "stored (L^2 or 2Lr).",
         "One layout for aft_full and aft_local, so parameters move between them.  The paper "
         "counts the same way: its Table 3 gives AFT-local-256 9.6M parameters per layer unfactorized "
         "and 0.6M factorized at T = 3072, d = 256, r = 64, i.e. T^2 + 3d^2 and 2Tr + 3d^2; the band "
         "alone would have L(2s - 1) - s(s - 1) entries (s <= L)."),
        _AFT_POS_INIT, _AFT_STABLE, _AFT_EMPTY, _SLICE,
    ),
))
_add(Variant(
    name="aft_conv",
    shapes=_conv_shapes,
    title="AFT-conv",
    paper=AFT_PAPER,
    family="aft",
    options=("kernel_size", "spatial_dims"),
    multihead=True,
    synth_weights=("conv_w",),
    paper_cost="h s^{\\,n}",
    formula=(r"\hat w_i = \gamma_i \frac{w_i - \mathrm{mean}(w_i)}{\sqrt{\mathrm{var}(w_i) + "
             r"10^{-5}}} + \beta_i,\quad w'_{t,t'} = \hat w_{i,[t'-t+c]}\ (0 \le t'-t+c < s),"
             r"\ 0\ \text{otherwise}"),
    conventions=(
        ("Each head normalises its own kernel (mean and population variance over that head's "
         "s or s x s taps), then scales by gamma_i and shifts by beta_i.",
         "The paper's per-head reparameterization; normalising all heads jointly (a defect seen "
         "in public code) couples heads."),
        ("std(w_i) is sqrt(var(w_i) + 1e-5), not the paper's plain standard deviation.",
         "The paper's std is 0 for a constant kernel (always so for s = 1), where its formula "
         "divides 0 by 0; 1e-5, as in layer normalisation, keeps w_hat finite and moves a kernel "
         "of unit variance by about 5e-6 relative."),
        ("For float16 and bfloat16 parameters w_hat is computed in float32 and rounded once.",
         "The derivative of w_hat in var(w_i) carries (var + 1e-5)^(-3/2) / 2, 1.6e7 at var = 0: "
         "past float16's 65504, so jax's autodiff in float16 gave NaN gradients for single-tap "
         "kernels and nearly equal taps (as layer normalisation under mixed precision, "
         "the statistics are kept in float32)."),
        ("K has one channel per feature (w_k is (d, d)), as in the other AFT variants; the paper "
         "ties K to the heads (K in R^{T x h}, W^K in R^{d x h}).",
         "One projection layout for every AFT variant, and a per-channel key is a strict "
         "generalization: the paper's layer is exactly the case where the columns of w_k and b_k "
         "are equal within each head (tests/test_spec_paper.py checks Eq. 6 that way).  The "
         "price is d^2 - d h more parameters in w_k than the paper's W^K."),
        ("Offsets: c = (s - 1) / 2 (s odd) when not causal; causal: c = s - 1, so t' runs over "
         "t - s + 1 ... t.", "A centred kernel needs s odd; the causal kernel looks back only."),
        ("spatial_dims=2: x is (B, H, W, d), positions are grid cells (H * W <= max_len), the "
         "kernel is s x s and centred; causal and key_padding_mask are errors.",
         "The paper's 2-D AFT-conv for images; no causal order is defined on a grid here."),
        ("Outside the kernel the bias is 0, as in AFT-local.", "Global connectivity is kept."),
        _AFT_STABLE, _AFT_EMPTY,
    ),
))

assert tuple(REGISTRY) == VARIANTS


def get(name: str) -> Variant:
    """The registry entry for ``name``, with a clear error for an unknown name."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"variant: expected one of {', '.join(VARIANTS)}; got {name!r}"
        ) from None
