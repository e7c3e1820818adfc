"""``Spec``: a validated, frozen description of one layer (variant, sizes, options)."""

from __future__ import annotations

import math
import numbers
from dataclasses import KW_ONLY, dataclass, fields

import numpy as np

from . import variants as _v

_FLOAT_NAMES = ("float64", "float32", "float16")


def _positive_int(name: str, value, variant: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer for variant {variant!r}; got {value!r}")
    return int(value)


def _balanced_factors(n: int) -> tuple[int, int]:
    a = max(f for f in range(1, math.isqrt(n) + 1) if n % f == 0)
    return a, n // a


@dataclass(frozen=True)
class Spec:
    """One layer: which variant, its sizes and its options.  Validated on construction.

    Parameters
    ----------
    variant:
        One of :data:`synth_ref.VARIANTS`.
    d_model:
        Feature size d of x and of the output.
    n_heads:
        Number of heads h (must divide d_model); aft_full, aft_simple and aft_local have no heads.
    max_len:
        L, the longest sequence the parameters cover (for 2-D aft_conv: the most grid cells H * W).
    k:
        factorized_random (also inside a mixture): the rank of R = R1 R2^T.  Required.
    factors:
        factorized_dense: (a, b) with a * b = max_len.  Default: the most balanced pair, a <= b.
    tiling:
        factorized_dense: ``"outer"`` (default) or ``"tile"``; see the variant's conventions.
    components:
        mixture: two or more distinct softmax variant names, a tuple or list (mix_logits[i]
        weighs components[i]).  Required.
    pos_rank:
        aft_full, aft_local: None for a full (L, L) bias, or r for pos_u pos_v^T of rank r.
    window:
        aft_local: keep the bias where ``|t - t'| < window``.  Required.
    kernel_size:
        aft_conv: s, the kernel's taps per spatial axis.  Required; odd for spatial_dims=2.  An
        even s is accepted for spatial_dims=1 but is causal only: :func:`synth_ref.apply` refuses
        it with ``causal=False`` (a centred kernel needs s odd).
    spatial_dims:
        aft_conv: 1 (sequences, default) or 2 (grids, x of shape (B, H, W, d)).
    """

    variant: str
    _: KW_ONLY
    d_model: int
    n_heads: int = 1
    max_len: int
    k: int | None = None
    factors: tuple[int, int] | None = None
    tiling: str | None = None
    components: tuple[str, ...] | None = None
    pos_rank: int | None = None
    window: int | None = None
    kernel_size: int | None = None
    spatial_dims: int | None = None

    def __post_init__(self):
        info = _v.get(self.variant)
        name = self.variant
        put = object.__setattr__
        put(self, "d_model", _positive_int("d_model", self.d_model, name))
        put(self, "n_heads", _positive_int("n_heads", self.n_heads, name))
        put(self, "max_len", _positive_int("max_len", self.max_len, name))
        if not info.multihead and self.n_heads != 1:
            raise ValueError(f"n_heads: variant {name!r} has no heads, expected 1; got {self.n_heads}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"n_heads: expected a divisor of d_model={self.d_model}; got {self.n_heads}"
            )

        # Which options this spec uses: a mixture takes the options of its components.
        if name == "mixture":
            comps = self.components
            if comps is None:
                raise ValueError("components: required for variant 'mixture'; got None")
            # a list or tuple: its order says which component mix_logits[i] weighs (a set's order
            # changes from process to process; a generator would be spent by the checks below)
            if not isinstance(comps, (tuple, list)) or not all(isinstance(c, str) for c in comps):
                raise ValueError(f"components: expected a tuple of variant names; got {comps!r}")
            comps = tuple(comps)
            bad = [c for c in comps if c not in _v.SOFTMAX_VARIANTS]
            if bad or len(comps) < 2 or len(set(comps)) != len(comps):
                raise ValueError(
                    "components: expected two or more distinct names among "
                    f"{', '.join(_v.SOFTMAX_VARIANTS)}; got {comps!r}"
                )
            put(self, "components", comps)
            allowed = {"components"} | {o for c in comps for o in _v.REGISTRY[c].options}
            uses = set(comps)
        else:
            allowed = set(info.options)
            uses = {name}
        for opt in _v.OPTIONS:
            if getattr(self, opt) is not None and opt not in allowed:
                takes = ", ".join(sorted(allowed)) or "none"
                raise ValueError(
                    f"{opt}: not an option of variant {name!r} (its options: {takes}); "
                    f"got {opt}={getattr(self, opt)!r}"
                )

        if "factorized_random" in uses:
            if self.k is None:
                raise ValueError("k: required (the rank of R1 R2^T) for factorized_random; got None")
            put(self, "k", _positive_int("k", self.k, name))
        if "factorized_dense" in uses:
            f = self.factors
            if f is None:
                f = _balanced_factors(self.max_len)
            if (
                not isinstance(f, (tuple, list))
                or len(f) != 2
                or any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1 for x in f)
            ):
                raise ValueError(f"factors: expected a pair of positive integers (a, b); got {f!r}")
            f = (int(f[0]), int(f[1]))
            if f[0] * f[1] != self.max_len:
                raise ValueError(
                    f"factors: expected a * b == max_len={self.max_len}; got {f} (product {f[0] * f[1]})"
                )
            put(self, "factors", f)
            tiling = "outer" if self.tiling is None else self.tiling
            if tiling not in ("outer", "tile"):
                raise ValueError(f"tiling: expected 'outer' or 'tile'; got {tiling!r}")
            put(self, "tiling", tiling)
        if name in ("aft_full", "aft_local") and self.pos_rank is not None:
            put(self, "pos_rank", _positive_int("pos_rank", self.pos_rank, name))
        if name == "aft_local":
            if self.window is None:
                raise ValueError("window: required for variant 'aft_local'; got None")
            put(self, "window", _positive_int("window", self.window, name))
        if name == "aft_conv":
            if self.kernel_size is None:
                raise ValueError("kernel_size: required for variant 'aft_conv'; got None")
            put(self, "kernel_size", _positive_int("kernel_size", self.kernel_size, name))
            dims = 1 if self.spatial_dims is None else self.spatial_dims
            if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or dims not in (1, 2):
                raise ValueError(f"spatial_dims: expected 1 or 2; got {dims!r}")
            put(self, "spatial_dims", int(dims))
            if dims == 2 and self.kernel_size % 2 == 0:
                raise ValueError(
                    f"kernel_size: expected an odd size for spatial_dims=2 (a centred kernel); "
                    f"got {self.kernel_size}"
                )

    # ----------------------------------------------------------------------------------------------
    @property
    def info(self) -> _v.Variant:
        """This variant's registry entry (formula, conventions, options)."""
        return _v.REGISTRY[self.variant]

    @property
    def family(self) -> str:
        """The variant's family, ``"softmax"`` or ``"aft"`` (its registry entry's)."""
        return self.info.family

    @property
    def head_dim(self) -> int:
        """e = d_model / n_heads."""
        return self.d_model // self.n_heads

    @property
    def components_used(self) -> tuple[str, ...]:
        """The softmax variants whose logits this spec sums (itself, or a mixture's components)."""
        return self.components if self.variant == "mixture" else (self.variant,)

    def options(self) -> dict:
        """The options this spec sets (defaults filled in), for display and reconstruction."""
        skip = {"variant", "d_model", "n_heads", "max_len", "_"}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in skip and getattr(self, f.name) is not None}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter array's name and shape, in canonical order."""
        d = self.d_model
        proj = {}
        if self.family == "aft":
            proj.update({"w_q": (d, d), "b_q": (d,), "w_k": (d, d), "b_k": (d,)})
        proj.update({"w_v": (d, d), "b_v": (d,), "w_o": (d, d), "b_o": (d,)})
        proj.update(self.info.shapes(self))
        return proj

    def init(self, seed: int = 0, dtype="float64") -> dict[str, np.ndarray]:
        """Draw parameters: NumPy arrays, float64 unless ``dtype`` says otherwise.

        Weight matrices are N(0, 1/fan_in); biases, mixture logits, position biases, conv_gamma
        and conv_beta start at 0; R and conv_w ~ N(0, 1); R1, R2 ~ N(0, k^-1/2) so R1 R2^T has unit
        variance; pos_u ~ N(0, 0.1^2) with pos_v = 0 so that w starts at 0 yet both train.
        conv_gamma = conv_beta = 0 is the AFT paper's ("both initialized as 0", Sec. 3.2): every
        kernel w_hat starts at 0 (AFT-conv starts as AFT-simple) and the gain trains from step one.
        """
        try:
            dt = np.dtype(dtype)
        except TypeError:  # a name NumPy does not know ("bfloat16"), or not a dtype at all
            dt = None
        if dt is None or dt.name not in _FLOAT_NAMES:
            raise ValueError(f"dtype: expected one of {', '.join(_FLOAT_NAMES)}; got {dtype!r}")
        try:
            rng = np.random.default_rng(seed)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"seed: expected a non-negative integer; got {seed!r}") from None
        out = {}
        for full, shape in self.param_shapes().items():
            n = full.rsplit(".", 1)[-1]
            if n in ("r",):
                a = rng.standard_normal(shape)
            elif n in ("r_1", "r_2"):
                a = rng.standard_normal(shape) * self.k ** -0.25
            elif n == "pos_u":
                a = rng.standard_normal(shape) * 0.1
            elif n == "conv_w":
                a = rng.standard_normal(shape)
            elif n.startswith("w_"):
                a = rng.standard_normal(shape) / math.sqrt(shape[-2])
            else:  # biases, mix_logits, pos_bias, pos_v, conv_gamma, conv_beta
                a = np.zeros(shape)
            out[full] = a.astype(dt)
        return out

    # --- costs ------------------------------------------------------------------------------------
    def _check_size(self, batch, length) -> None:
        """The counts are formulas: a negative, fractional or too long size would give a number
        with no meaning rather than an error.  Symbols (the docs print the formulas with SymPy)
        are not numbers and pass."""
        for name, v in (("batch", batch), ("length", length)):
            if isinstance(v, numbers.Number):
                _positive_int(name, v, self.variant)
        if isinstance(length, numbers.Integral) and isinstance(self.max_len, numbers.Integral) \
                and length > self.max_len:
            raise ValueError(f"length: expected at most max_len={self.max_len}; got {length}")

    def param_count(self) -> int:
        """Every parameter, projections and biases included."""
        return sum(math.prod(s) for s in self.param_shapes().values())

    def paper_param_count(self) -> int:
        """The synthesizing function's weight matrices only: the count the papers' tables give.

        With n_heads=1: dot product 2d^2, dense d^2 + dL, factorized dense d^2 + d(a + b),
        random L^2, factorized random 2Lk; a mixture sums its components'; AFT counts its
        position biases (L^2, or 2Lr factorized) or conv kernels.
        """
        shapes = self.param_shapes()
        total = 0
        for comp in self.components_used if self.family == "softmax" else (self.variant,):
            prefix = f"{comp}." if self.variant == "mixture" else ""
            names = _v.REGISTRY[comp].synth_weights
            if comp in ("aft_full", "aft_local") and self.pos_rank is not None:
                names = ("pos_u", "pos_v")
            total += sum(math.prod(shapes[prefix + n]) for n in names)
        return total

    def flops(self, batch: int, length: int) -> int:
        """Forward FLOPs of the canonical math (a multiply-add counts 2; cheap elementwise work
        is not counted except where it is the work, as in AFT's windowed sums)."""
        self._check_size(batch, length)
        return flops_of(self, batch, length)

    def memory(self, batch: int, length: int, itemsize: int = 4) -> dict[str, int]:
        """Bytes: ``parameters``; ``materialized``, the largest intermediate of a plain
        implementation (the (B, h, l, l) weights; AFT's (B, l, l, d) broadcast); ``streaming``,
        what a fused implementation must hold (inputs, outputs and row statistics, linear in l)."""
        self._check_size(batch, length)
        B, l, d, h = batch, length, self.d_model, self.n_heads
        linear = (4 * B * l * d + 2 * B * h * l) * itemsize
        if self.family == "softmax":
            materialized = B * h * l * l * itemsize
        else:
            materialized = B * l * l * d * itemsize
        return {"parameters": self.param_count() * itemsize,
                "materialized": materialized, "streaming": linear}


def _logit_flops(spec: Spec, comp: str, B: int, l: int) -> int:
    d, h, e = spec.d_model, spec.n_heads, spec.head_dim
    if comp == "dot_product":
        return 2 * (2 * B * l * d * d) + 2 * B * h * l * l * e
    if comp == "dense":
        return 2 * B * l * d * d + 2 * B * l * d * l
    if comp == "random":
        return 0
    if comp == "factorized_random":
        return 2 * h * l * l * spec.k
    a, b = spec.factors  # factorized_dense
    return 2 * B * l * d * d + 2 * B * l * d * (a + b) + B * h * l * l


def flops_of(spec, batch, length, *, minimum=min):
    """:meth:`Spec.flops`, for any ``spec`` with a Spec's attributes.  ``minimum`` is the one
    non-arithmetic step (AFT's window clipped to the length): the docs pass SymPy's ``Min`` and
    symbols for the sizes to print the count as a formula from this same code."""
    B, l, d, h, e = batch, length, spec.d_model, spec.n_heads, spec.head_dim
    n_proj = 4 if spec.family == "aft" else 2
    total = n_proj * 2 * B * l * d * d
    if spec.family == "softmax":
        for c in spec.components_used:
            total += _logit_flops(spec, c, B, l)
        total += 2 * B * h * l * l * e  # P V
        return total
    if spec.variant == "aft_full":
        return total + 4 * B * l * l * d  # exp(w) (exp(K) V) and exp(w) exp(K)
    if spec.variant == "aft_simple":
        return total + 4 * B * l * d
    s = 2 * spec.window - 1 if spec.variant == "aft_local" else spec.kernel_size ** spec.spatial_dims
    return total + 4 * B * l * d + 4 * B * l * minimum(s, l) * d  # global sums + windowed correction
