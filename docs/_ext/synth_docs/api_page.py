"""The API reference page: synth_ref, its registry, and every built-in adapter module.

The adapter modules are listed from ``synth_ref.backends.BUILTIN``, so a new built-in adapter
appears here without editing the docs.
"""

from __future__ import annotations

from . import markdown as md

#: The framework layer modules and the JAX dispatch, with the members a user calls: the README's
#: backend table and docs/jax-paths.md name them, but no adapter registry entry points at them.
#: (module, its classes, its other members)
LAYER_MODULES = [
    ("synth_ref.backends.torch_nn", ("MixingLayer",), ()),
    ("synth_ref.backends.jax_nnx", ("SynthLayer",), ()),
    ("synth_ref.backends.jax_pallas", (), ("apply", "plan_call")),
    ("synth_ref.backends.jax_plan", (), ("plan", "select_path", "default_path", "PATHS",
                                         "IMPLEMENTATIONS", "ENV")),
]


def init_signature(module: str, cls: str) -> str:
    """``cls.__init__``'s parameters (without self and annotations), read from the module's source.

    The docs build mocks torch and flax (``autodoc_mock_imports``), so a class deriving from
    ``nn.Module`` or ``nnx.Module`` would show the mock's ``(*args, **kwargs)``; the source is the
    signature's one home and needs neither framework."""
    import ast
    import importlib.util

    origin = importlib.util.find_spec(module).origin
    tree = ast.parse(open(origin, encoding="utf-8").read())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    args = init.args
    args.args = args.args[1:]  # drop self
    for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
        if a is not None:
            a.annotation = None
    return ast.unparse(args)


def _modules() -> list[str]:
    from synth_ref import backends  # ImportError is handled by render

    if not hasattr(backends, "BUILTIN"):  # a namespace package: adapter files but no registry yet
        raise ImportError("synth_ref.backends has no adapter registry (BUILTIN)")
    seen = []
    for target in backends.BUILTIN.values():
        mod = target.partition(":")[0]
        if mod not in seen:
            seen.append(mod)
    return seen


def render() -> str:
    try:
        modules = _modules()
    except ImportError as exc:  # a checkout without the adapters (issue 3) still gets its docs
        modules = None
        missing = f"```{{warning}}\nsynth_ref.backends is not importable here ({md.text(exc)}).\n```\n"
    out = ["# API reference\n",
           "## synth_ref\n",
           "```{eval-rst}\n.. automodule:: synth_ref\n   :members: apply, attention_weights\n\n"
           ".. autoclass:: synth_ref.Spec\n   :members:\n\n"
           ".. automodule:: synth_ref.variants\n   :members: Variant, get\n```\n",
           "## synth_ref.backends\n"]
    if modules is None:
        return "\n".join([*out, missing])
    out.append("```{eval-rst}\n.. automodule:: synth_ref.backends\n   :members:\n\n"
               ".. automodule:: synth_ref.backends._protocol\n   :members:\n```\n")
    for mod in modules:
        out += [f"### {mod}\n", f"```{{eval-rst}}\n.. automodule:: {mod}\n   :members:\n```\n"]
    out.append("## Framework layers and the JAX dispatch\n")
    for mod, classes, members in LAYER_MODULES:
        rst = [f".. automodule:: {mod}"] + ([f"   :members: {', '.join(members)}"] if members else [])
        for cls in classes:
            rst += ["", f".. autoclass:: {mod}.{cls}({init_signature(mod, cls)})", "   :members:"]
        out += [f"### {mod}\n", "```{eval-rst}\n" + "\n".join(rst) + "\n```\n"]
    return "\n".join(out)
