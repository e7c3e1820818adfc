"""The sizes, dtypes, lengths and budgets of each mode, and the layer every variant is measured as.

A mode is (device, quick or full).  Lengths are powers of two from 256; a series (one
implementation x variant x dtype x pass) stops at the first length whose call exceeds the time
budget, or before a length whose predicted call time or memory exceeds a budget (predicted from the
growth between the last two lengths), or on running out of memory; why it stopped is recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import synth_ref as sr

#: Each variant's options in the sweep.  k = 8 is a small rank; the mixture is the anchors' "mixture
#: R + dot-product"; window 64 is issue 4's AFT-local setting, and its AFT-conv kernel of 64 becomes 63
#: because a centred (non-causal) kernel must be odd.
VARIANT_OPTIONS = {
    "dot_product": {},
    "dense": {},
    "random": {},
    "factorized_dense": {},
    "factorized_random": {"k": 8},
    "mixture": {"components": ("random", "dot_product")},
    "aft_full": {},
    "aft_simple": {},
    "aft_local": {"window": 64},
    "aft_conv": {"kernel_size": 63},
}


@dataclass(frozen=True)
class ClaimSetting:
    """Random synthesizer vs dynamic convolution.  The paper reports its 60% on whole models (LM1B);
    it gives no layer shapes we could copy, so this is our stated setting: one decoder (causal)
    layer of Transformer-base width (d = 512, 8 heads), dynamic convolution with kernel 31 and 8
    heads (Wu et al.'s largest per-layer kernel), forward + backward (training speed)."""

    batch: int
    lengths: tuple[int, ...]
    d_model: int = 512
    n_heads: int = 8
    kernel_size: int = 31
    causal: bool = True


@dataclass(frozen=True)
class Settings:
    mode: str
    device: str  # "cpu" | "cuda"
    batch: int
    d_model: int
    n_heads: int
    dtypes: tuple[str, ...]
    lengths: tuple[int, ...]
    budget_s: (
        float  # one call may take at most this long; the next length is tried only if predicted under it
    )
    memory_budget: int  # bytes one call may need
    warmup: int
    repeats: int
    claim: ClaimSetting
    causal: bool = False
    matmul_n: int = 1024
    copy_bytes: int = 1 << 27
    conv_kernel: int = 31  # the dynamic/lightweight convolution baselines of the sweep
    variants: tuple[str, ...] = field(default=sr.VARIANTS)
    threads: int = 1  # CPU threads of every library (benchmarks/__main__.py sets them before import)
    backends: tuple[str, ...] | None = None  # synth_ref.backends names to run; None: every available one
    #: The AFT memory claim's forward-only probe: lengths and the time one call may take.
    probe_lengths: tuple[int, ...] = ()
    probe_budget_s: float = 5.0

    @property
    def time_basis(self) -> str:
        """What ``time_s`` is.  CPU with one thread per library: the process's CPU time, which equals
        an idle machine's wall time for single-threaded work and which the other processes sharing
        this machine's cores cannot inflate.  Otherwise wall time (CUDA events on a GPU)."""
        return "cpu" if self.device == "cpu" and self.threads == 1 else "wall"

    def spec(self, variant: str, length: int) -> sr.Spec:
        """The layer measured: max_len = length, so parameters are sized for the input."""
        heads = self.n_heads if sr.REGISTRY[variant].multihead else 1
        return sr.Spec(
            variant, d_model=self.d_model, n_heads=heads, max_len=length, **VARIANT_OPTIONS[variant]
        )

    def to_json(self) -> dict:
        out = asdict(self)
        out["variant_options"] = {v: VARIANT_OPTIONS[v] for v in self.variants}
        out["time_basis"] = self.time_basis
        return out


def _powers(lo: int, hi: int) -> tuple[int, ...]:
    out, n = [], lo
    while n <= hi:
        out.append(n)
        n *= 2
    return tuple(out)


GiB = 1 << 30


def make(device: str, quick: bool, **override) -> Settings:
    """The settings of a mode; ``override`` replaces fields (the smoke test shrinks everything)."""
    if device == "cpu" and quick:
        s = Settings(
            mode="cpu-quick",
            device="cpu",
            batch=1,
            d_model=64,
            n_heads=2,
            dtypes=("float32",),
            lengths=_powers(256, 1024),
            budget_s=0.3,
            memory_budget=2 * GiB,
            warmup=1,
            repeats=3,
            claim=ClaimSetting(batch=1, lengths=(256, 512)),
            copy_bytes=1 << 27,
            probe_lengths=_powers(256, 2048),
            probe_budget_s=2.0,
        )
    elif device == "cpu":
        s = Settings(
            mode="cpu",
            device="cpu",
            batch=2,
            d_model=256,
            n_heads=4,
            dtypes=("float32", "float64"),
            lengths=_powers(256, 8192),
            budget_s=3.0,
            memory_budget=8 * GiB,
            warmup=2,
            repeats=5,
            claim=ClaimSetting(batch=4, lengths=(256, 512, 1024)),
            copy_bytes=1 << 28,
            probe_lengths=_powers(256, 8192),
            probe_budget_s=30.0,
        )
    elif quick:  # the anchors' shapes: h = 8, e = 64
        s = Settings(
            mode="cuda-quick",
            device="cuda",
            batch=4,
            d_model=512,
            n_heads=8,
            dtypes=("bfloat16",),
            lengths=_powers(256, 4096),
            budget_s=0.2,
            memory_budget=24 * GiB,
            warmup=3,
            repeats=10,
            claim=ClaimSetting(batch=8, lengths=(256, 512, 1024)),
            matmul_n=8192,
            copy_bytes=1 << 30,
            probe_lengths=_powers(256, 16384),
            probe_budget_s=2.0,
        )
    else:
        s = Settings(
            mode="cuda",
            device="cuda",
            batch=4,
            d_model=512,
            n_heads=8,
            dtypes=("bfloat16", "float16", "float32"),
            lengths=_powers(256, 65536),
            budget_s=1.0,
            memory_budget=48 * GiB,
            warmup=3,
            repeats=20,
            claim=ClaimSetting(batch=8, lengths=(256, 512, 1024, 2048)),
            matmul_n=8192,
            copy_bytes=1 << 30,
            probe_lengths=_powers(256, 65536),
            probe_budget_s=5.0,
        )
    if override:
        from dataclasses import replace

        s = replace(s, **override)
    return s
