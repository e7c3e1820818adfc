"""The fused kernels of benchmarks/torch_bench.py at l = 65536 (B = 1, h = 8, e = 64, bf16), forward +
backward, on the inputs that fit on one GPU.

``torch_bench.py --long`` cannot run this shape: its ``make_inputs`` draws every input, the
(h, l, l) R of random/mixture and the (h, l, l) w' of aft_conv included, in float32 on the CPU
(8 x 65536^2 x 4 B = 137 GB each, over the device's 128 GiB of memory) before any kernel runs.
Here the inputs are drawn on the GPU, only the O(l) ones and AFT-full's (1, l, l) w (8.6 GB in
bf16, and its gradient as much); the rows that need an (h, l, l) tensor are recorded as not run,
with the size.  Timing and rows are torch_bench's own (``measure``, ``ours``, ``table``); the input
scales follow its ``make_inputs``.

    python gpu/long_bench.py --out long_bench.json          # a GPU
    python gpu/long_bench.py --quick --out /tmp/lb.json     # CPU, tiny, kernels interpreted
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __name__ == "__main__" and "--quick" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import torch_bench as tb  # noqa: E402

#: Inputs left out, and the rows (torch_bench.ours names) that need them.
TOO_BIG = {"r": ("random", "mixture"), "wc": ("aft_conv",)}


def inputs(B, h, l, e, dtype, dev) -> dict:
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=dev, dtype=torch.float32) * scale).to(dtype)

    d, k = h * e, tb.K_RANK
    x = {"q": rnd(B, h, l, e), "k": rnd(B, h, l, e), "v": rnd(B, h, l, e),
         "hid": rnd(B, h, l, e, scale=0.5).relu(), "w2": rnd(h, e, l, scale=e**-0.5),
         "b2": torch.zeros(h, l, device=dev, dtype=dtype),
         "r1": rnd(h, l, k, scale=k**-0.25), "r2": rnd(h, l, k, scale=k**-0.25),
         "K": rnd(B, l, d), "V": rnd(B, l, d), "w": rnd(1, l, l, scale=0.1)}
    x = {n: t.requires_grad_(True) for n, t in x.items()}
    x.update({n: None for n in TOO_BIG})
    return x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU, l = 64, kernels under TRITON_INTERPRET=1")
    ap.add_argument("--out", default="long_bench.json")
    args = ap.parse_args(argv)
    if args.quick:
        dev, dtype, (B, h, l, e) = torch.device("cpu"), torch.float32, (1, 2, 64, 16)
    else:
        if not torch.cuda.is_available():
            ap.error("no CUDA device: pass --quick to exercise the script on CPU")
        dev, dtype, (B, h, l, e) = torch.device("cuda"), torch.bfloat16, tb.LONG_SHAPES[0]
    x = inputs(B, h, l, e, dtype, dev)
    skip = {v: n for n, vs in TOO_BIG.items() for v in vs}
    rows = []
    for name, variant, fn in tb.ours(x, B, h, l, e):
        row = {"impl": name, "variant": variant, "shape": [B, h, l, e], "dtype": str(dtype)[6:],
               "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"}
        if variant in skip:
            gb = h * l * l * dtype.itemsize / 1e9
            row.update(ms=None, error=f"not run: needs {skip[variant]} of shape (h, l, l) = {gb:.0f} GB "
                                      f"in {row['dtype']}, and its gradient as much")
        else:
            try:
                t, peak = tb.measure(fn, dev, args.quick)
                row.update(ms=t, peak_extra_bytes=peak)
            except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
                row.update(ms=None, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
        rows.append(row)
        print(tb._line(row), flush=True)
    result = {"rows": rows, "targets": [], "torch": torch.__version__}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print()
    print(tb.table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
