"""A Flax NNX module for any ``synth_ref.Spec``, holding the canonical parameters.

>>> import jax.numpy as jnp, synth_ref as sr
>>> from synth_ref.backends.jax_nnx import SynthLayer
>>> spec = sr.Spec("mixture", d_model=8, n_heads=2, max_len=6, components=("dense", "random"))
>>> layer = SynthLayer(spec, spec.init(seed=0))
>>> sorted(layer.params())[:3]
['b_o', 'b_v', 'dense.b_1']
>>> layer(jnp.ones((1, 5, 8))).shape
(1, 5, 8)

Name mapping.  A canonical name is the attribute path of its ``nnx.Param`` joined by '.': plain names
(``w_v``, ``r``) are attributes of the layer, a mixture's ``"<component>.<name>"`` is attribute
``<name>`` of a child module stored as attribute ``<component>`` (``layer.random.r``).  So the paths
``nnx.state(layer, nnx.Param)`` reports, joined by '.', are exactly ``spec.param_shapes()``'s names,
and checkpoints written by NNX tools carry the canonical names.  This works because no canonical
name is a Python keyword or an ``nnx.Module`` attribute, and component names never collide with
the shared names (w_v, b_v, w_o, b_o, mix_logits), which have no '.'.

Training options, as :class:`synth_ref.backends.torch_nn.MixingLayer` has them: ``freeze_random``
holds the random synthesizer's R (``r``; ``r_1``, ``r_2``) as :class:`Frozen` variables instead of
``nnx.Param`` (the paper's "Fixed Random": ``nnx.grad`` and ``nnx.Optimizer(..., wrt=nnx.Param)``
leave them alone, and the layer stops their gradient), under the same canonical paths;
``dropout`` drops entries of the attention weights P in training mode (``layer.train()``, the
default; ``layer.eval()`` turns it off), running the reference's softmax step with dropout between
P and V.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import synth_ref as sr
from synth_ref import _softmax
from synth_ref._inputs import check_layer_options, param_shapes_of
from synth_ref.variants import RANDOM_ARRAYS

from . import jax_pallas


class _Component(nnx.Module):
    """Holds one mixture component's arrays (``layer.<component>.<name>``)."""


class Frozen(nnx.Variable):
    """A canonical array the layer holds fixed: the random synthesizer's R under ``freeze_random``.
    Not an ``nnx.Param``, so parameter-only transforms and optimizers skip it."""


class SynthLayer(nnx.Module):
    """One Synthesizer or AFT layer as an NNX module.

    Parameters
    ----------
    spec:
        The layer (:class:`synth_ref.Spec`); kept as a static attribute.
    params:
        ``{canonical name: array}`` as ``spec.init(...)`` returns (NumPy or JAX arrays), or None to
        draw ``spec.init(seed)``.  Cast to ``dtype``.
    seed:
        Used only when ``params`` is None.
    dtype:
        Parameter dtype name or JAX dtype (``"float32"`` default; ``"float64"`` needs
        ``jax_enable_x64``).
    compute_dtype:
        The dtype the layer computes in (Flax's ``dtype``; this class's ``dtype`` is Flax's
        ``param_dtype``).  None: the parameters' dtype, and x must have it (the spec's contract).
        Given: each call casts the parameters and x to it and returns that dtype, so that float32
        parameters train under bfloat16 compute (the gradients flow back through the casts in
        float32).
    path:
        Which implementation runs (see :func:`synth_ref.backends.jax_pallas.select_path`);
        None: chosen at call time, by ``$SYNTH_REF_JAX_PATH`` if set, else by the platform.
    dropout:
        Probability of zeroing an entry of the attention weights P in training mode (softmax
        variants only; AFT has no weight matrix to drop); kept entries are scaled by
        1 / (1 - dropout).  While it acts, the reference runs (``path`` is not used).
    freeze_random:
        Hold the random synthesizer's arrays (a mixture's random components too) as
        :class:`Frozen` instead of ``nnx.Param``; an error for a variant without them.
    rngs:
        ``nnx.Rngs`` with a ``dropout`` stream for the dropout masks; None: ``nnx.Rngs(dropout=seed)``.
    """

    def __init__(self, spec: sr.Spec, params: dict | None = None, *, seed: int = 0, dtype="float32",
                 path: str | None = None, compute_dtype=None, dropout: float = 0.0,
                 freeze_random: bool = False, rngs: nnx.Rngs | None = None):
        if not isinstance(spec, sr.Spec):
            raise TypeError(f"spec: expected a synth_ref.Spec; got {type(spec).__name__}")
        if path is not None:
            jax_pallas.check_path(path)
        self.dropout, self.freeze_random = check_layer_options(spec, dropout, freeze_random)
        # Assigned once: NNX fixes an attribute's kind (data or static) at its first assignment.
        self.drop = (nnx.Dropout(self.dropout, rngs=nnx.Rngs(dropout=seed) if rngs is None else rngs)
                     if self.dropout else None)
        self.spec = spec
        self.path = path
        self.dtype = _dtype(dtype)
        self.compute_dtype = None if compute_dtype is None else _dtype(compute_dtype, "compute_dtype")
        self.load(spec.init(seed=seed) if params is None else params)

    def load(self, params: dict) -> None:
        """Replace every parameter with ``params`` (canonical names and shapes, checked)."""
        want = param_shapes_of(self.spec, params)
        for name, shape in want.items():
            a = params[name]
            if tuple(np.shape(a)) != shape:
                raise ValueError(f"params[{name!r}]: expected shape {shape}; got {tuple(np.shape(a))}")
            value = jnp.asarray(a, dtype=self.dtype)
            owner, attr = self._owner(name, create=True)
            var = getattr(owner, attr, None)
            if isinstance(var, nnx.Variable):
                var[...] = value
            else:
                kind = Frozen if self.freeze_random and attr in RANDOM_ARRAYS else nnx.Param
                setattr(owner, attr, kind(value))

    def params(self) -> dict:
        """``{canonical name: jax.Array}``, ready for :func:`synth_ref.apply` or ``spec`` tools
        (a :class:`Frozen` array comes with its gradient stopped)."""
        out = {}
        for name in self.spec.param_shapes():
            owner, attr = self._owner(name)
            var = getattr(owner, attr)
            out[name] = jax.lax.stop_gradient(var[...]) if isinstance(var, Frozen) else var[...]
        return out

    def __call__(self, x, *, causal: bool = False, key_padding_mask=None):
        params = self.params()
        if self.compute_dtype is None and not isinstance(x, jax.Array):
            # The spec would refuse the pairing by naming params['w_v']; say it of x here.
            raise TypeError(f"x: expected a jax.Array (the layer holds JAX arrays; convert x with "
                            f"jnp.asarray, or give compute_dtype); got {type(x).__name__}")
        if self.compute_dtype is not None:
            dt = getattr(x, "dtype", None)  # an integer x is refused, as the spec refuses it
            if dt is None or not jnp.issubdtype(dt, jnp.floating):
                raise TypeError(f"x: expected a floating-point array; got {type(x).__name__} of dtype {dt}")
            params = {k: v.astype(self.compute_dtype) for k, v in params.items()}
            x = jnp.asarray(x).astype(self.compute_dtype)
        if self.drop is not None and not self.drop.deterministic:
            return self._forward_with_dropout(params, x, causal, key_padding_mask)
        return jax_pallas.apply(self.spec, params, x, causal=causal,
                                key_padding_mask=key_padding_mask, path=self.path)

    def _forward_with_dropout(self, params, x, causal, key_padding_mask):
        """The reference's softmax output step with dropout between P and V (as the torch layer
        does: dropout is a training device, not part of the spec's math)."""
        p = sr.attention_weights(self.spec, params, x, causal=causal, key_padding_mask=key_padding_mask)
        return _softmax.mix_values(self.spec, params, x, jnp, self.drop(p))

    def _owner(self, name: str, create: bool = False):
        """(module, attribute) holding canonical ``name``."""
        if "." not in name:
            return self, name
        comp, attr = name.split(".", 1)
        child = getattr(self, comp, None)
        if child is None and create:
            child = _Component()
            setattr(self, comp, child)
        return child, attr


def _dtype(dtype, what="dtype"):
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in ("float64", "float32", "float16", "bfloat16"):
        raise ValueError(f"{what}: expected float64, float32, float16 or bfloat16; got {dtype!r}")
    if dt.name == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(f"{what}: float64 needs jax_enable_x64 (jax.config.update('jax_enable_x64', True) "
                         "or the jax.enable_x64(True) context); got float64 with it off")
    return dt
