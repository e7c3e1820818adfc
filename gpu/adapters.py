"""JAX adapters for the GPU run (gpu/run.py), named apart from CI's CPU ``jax`` entry.

The report keys its entries by adapter name, so a GPU run of the built-in ``jax`` backend would
overwrite (or be overwritten by) CI's CPU entry of the same name.  These are the built-in adapter
under other names, and they refuse to run anywhere but on a GPU: a JAX that silently fell back to
its CPU client would otherwise certify the CPU path under a GPU label.

``python -m synth_ref.conformance --adapter gpu.adapters:jax_gpu`` (the repository root on
PYTHONPATH).
"""

from __future__ import annotations

from synth_ref.backends.jax import JaxAdapter


class GpuOnlyJaxAdapter(JaxAdapter):
    def available(self):
        ok, why = super().available()
        if not ok:
            return ok, why
        import jax

        backend = jax.default_backend()
        if backend != "gpu":
            return False, f"jax's default backend is {backend!r}, not 'gpu' ({why})"
        return True, why


#: The platform's default path on a GPU ("xla": cuDNN attention and the batch-folded random rewrite).
jax_gpu = GpuOnlyJaxAdapter("jax-gpu")
#: The Pallas kernels compiled for the GPU (written for the TPU lowering; gpu/pallas_probe.py says
#: whether they lower at all before the suite runs them).
jax_pallas_gpu = GpuOnlyJaxAdapter("jax-pallas-gpu", path="pallas")
