"""Entry point.  CPU thread counts must be fixed before NumPy, torch or JAX load their thread pools,
so ``--threads`` is read here, before anything heavy is imported."""

import argparse
import os
import sys

_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--threads", type=int, default=1)
_threads = max(1, _pre.parse_known_args()[0].threads)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(_threads)
# XLA's CPU client: Eigen's intra-op pool of this size (it otherwise uses every core).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen={'true' if _threads > 1 else 'false'}"
    f" intra_op_parallelism_threads={_threads}"
).strip()

# Triton's interpreter is a correctness tool (CI runs kernels under it at tiny sizes); timing it would
# measure the interpreter.  Adapters fall back to their eager path without it.
os.environ.pop("TRITON_INTERPRET", None)

from .run import main  # noqa: E402 - after the environment is set

sys.exit(main())
