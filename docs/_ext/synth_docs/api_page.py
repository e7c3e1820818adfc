"""The API reference page: synth_ref, its registry, and every built-in adapter module.

The adapter modules are listed from ``synth_ref.backends.BUILTIN``, so a new built-in adapter
appears here without editing the docs.
"""

from __future__ import annotations

from . import markdown as md


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
    return "\n".join(out)
