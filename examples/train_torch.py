"""Train a small causal sequence model built on each variant, on a copying task generated here.

    python examples/train_torch.py                      # every variant, 300 steps each, CPU
    python examples/train_torch.py --variant dense aft_conv --steps 600 --device cuda

The task: a sequence of ``n`` random tokens, a separator, then the same ``n`` tokens again.  The
model reads it left to right (causal) and predicts each next token; only the copied half is
predictable, so the loss is measured there.  Copying needs to look back exactly n + 1 positions,
which every variant can learn: from content and position embeddings (dot product, dense, AFT's
gates and keys), or from learned position logits alone (random synthesizer, AFT position biases).
Chance level is log(vocab - 1) (the copied tokens are drawn from 1 .. vocab - 1; 0 is the
separator); a model that copies perfectly reaches 0.

Prints, per variant: held-out loss and copy accuracy before and after training, seconds, and the
path the first layer's forward took (``MixingLayer.last_path``).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import synth_ref as sr
from synth_ref.backends.torch_nn import MixingLayer


def spec_for(variant: str, d_model: int, max_len: int) -> sr.Spec:
    """A small spec of each variant (options picked to fit max_len)."""
    heads = 1 if variant in ("aft_full", "aft_simple", "aft_local") else 2
    opts = {
        "factorized_dense": dict(factors=_factors(max_len)),
        "factorized_random": dict(k=8),
        "mixture": dict(components=("dot_product", "random")),
        "aft_local": dict(window=max_len // 2),
        "aft_conv": dict(kernel_size=max_len),
    }.get(variant, {})
    return sr.Spec(variant, d_model=d_model, n_heads=heads, max_len=max_len, **opts)


def _factors(n: int) -> tuple[int, int]:
    a = max(f for f in range(1, math.isqrt(n) + 1) if n % f == 0)
    return a, n // a


class CopyModel(nn.Module):
    """Embeddings -> [mixing layer + MLP, each residual with a pre-LayerNorm] x depth -> logits."""

    def __init__(self, spec: sr.Spec, vocab: int, depth: int = 2, **layer_kw):
        super().__init__()
        d = spec.d_model
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(spec.max_len, d) * 0.5)
        self.blocks = nn.ModuleList()
        for i in range(depth):
            self.blocks.append(nn.ModuleDict({
                "norm1": nn.LayerNorm(d),
                "mix": MixingLayer(spec, seed=i, **layer_kw),
                "norm2": nn.LayerNorm(d),
                "mlp": nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)),
            }))
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, vocab))

    def forward(self, tokens):
        h = self.tok(tokens) + self.pos[: tokens.shape[1]]
        for b in self.blocks:
            h = h + b["mix"](b["norm1"](h), causal=True)
            h = h + b["mlp"](b["norm2"](h))
        return self.out(h)


def copy_batch(batch: int, n: int, vocab: int, generator: torch.Generator, device):
    """(inputs, targets, scored): tokens 1..vocab-1, separator 0; targets are inputs shifted by one;
    ``scored`` marks the positions whose next token is a copy (the only predictable ones)."""
    first = torch.randint(1, vocab, (batch, n), generator=generator)
    seq = torch.cat([first, torch.zeros(batch, 1, dtype=torch.long), first], dim=1).to(device)
    inputs, targets = seq[:, :-1], seq[:, 1:]
    scored = torch.zeros(inputs.shape[1], dtype=torch.bool, device=device)
    scored[n:] = True  # from the separator on, the next token is known
    return inputs, targets, scored


def evaluate(model, data):
    inputs, targets, scored = data
    with torch.no_grad():
        logits = model(inputs)[:, scored]
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets[:, scored].flatten())
        acc = (logits.argmax(-1) == targets[:, scored]).float().mean()
    return loss.item(), acc.item()


def train(variant: str, *, steps: int = 300, n: int = 6, vocab: int = 8, d_model: int = 32,
          batch: int = 32, lr: float = 3e-3, seed: int = 0, device: str = "cpu") -> dict:
    """Train one variant; returns losses and accuracy before and after, and the path the layers took."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    max_len = 2 * n  # the model sees 2n positions (the last token is only a target)
    model = CopyModel(spec_for(variant, d_model, max_len), vocab).to(device)
    held_out = copy_batch(256, n, vocab, gen, device)
    loss0, acc0 = evaluate(model, held_out)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    for _ in range(steps):
        inputs, targets, scored = copy_batch(batch, n, vocab, gen, device)
        logits = model(inputs)[:, scored]
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets[:, scored].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    loss1, acc1 = evaluate(model, held_out)
    return {"variant": variant, "loss_before": loss0, "loss_after": loss1, "acc_before": acc0,
            "acc_after": acc1, "chance_loss": math.log(vocab - 1), "seconds": seconds,
            "path": model.blocks[0]["mix"].last_path}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", nargs="*", default=list(sr.VARIANTS), choices=sr.VARIANTS)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n", type=int, default=6, help="tokens to copy")
    ap.add_argument("--vocab", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    print(f"{'variant':<18} {'loss before':>11} {'after':>7} {'acc before':>10} {'after':>6} {'s':>6}  path")
    for v in args.variant:
        r = train(v, steps=args.steps, n=args.n, vocab=args.vocab, d_model=args.d_model,
                  seed=args.seed, device=args.device)
        print(f"{v:<18} {r['loss_before']:>11.3f} {r['loss_after']:>7.3f} {r['acc_before']:>10.2f} "
              f"{r['acc_after']:>6.2f} {r['seconds']:>6.1f}  {r['path']}")


if __name__ == "__main__":
    main()
