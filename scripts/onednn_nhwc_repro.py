"""Smallest reproduction of the oneDNN NHWC crash that made advmem keep some models contiguous on CPU.

    python scripts/onednn_nhwc_repro.py            # the matrix below, each case in its own process
    python scripts/onednn_nhwc_repro.py --case 4 8 32 2 1   # one case in this process

A case is (in_channels, out_channels, input size, stride, kernel): a convolution in channels_last
whose input and weight both need gradients, run forward+backward 300 times on batches of 8. Each
case runs in a subprocess with ONEDNN_MAX_CPU_ISA=AVX2 (the kernel an AVX2-only CPU gets; a no-op
on one; `--isa` to change it) and a 30 s limit, so a hang, a double free or a segfault is one line of the table.
What torch 2.13.0+cpu (oneDNN v3.12) gave on an AVX-512 Xeon capped at AVX2: docs/speed.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CASES = [  # (in, out, size, stride, kernel)
    (4, 8, 32, 2, 1), (2, 8, 32, 2, 1), (3, 8, 28, 2, 1), (6, 8, 32, 2, 1), (4, 8, 64, 2, 1),
    (1, 8, 32, 2, 1), (8, 16, 32, 2, 1), (12, 16, 32, 2, 1), (4, 8, 16, 2, 1),
    (8, 16, 64, 2, 1), (12, 16, 64, 2, 1), (16, 32, 64, 2, 1), (24, 32, 64, 2, 1),
    (4, 8, 32, 1, 1), (4, 8, 32, 2, 3), (3, 4, 32, 1, 3),
]


def run_case(cin: int, cout: int, size: int, stride: int, kernel: int, iters: int = 300) -> None:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    w = torch.randn(cout, cin, kernel, kernel).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    for _ in range(iters):
        x = torch.randn(8, cin, size, size).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        F.conv2d(x, w, stride=stride, padding=kernel // 2).sum().backward()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", nargs=5, type=int, metavar=("IN", "OUT", "SIZE", "STRIDE", "KERNEL"))
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per case, torch's import included")
    ap.add_argument("--isa", default="AVX2", help="ONEDNN_MAX_CPU_ISA for the cases ('default': leave it unset)")
    args = ap.parse_args()
    if args.case:
        run_case(*args.case)
        return 0
    import torch

    env = dict(os.environ)
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if args.isa != "default":
        env["ONEDNN_MAX_CPU_ISA"] = args.isa
    print(f"torch {torch.__version__}, ATen CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"ONEDNN_MAX_CPU_ISA={env.get('ONEDNN_MAX_CPU_ISA', '(unset)')}, {torch.get_num_threads()} threads")
    print("| in | out | size | stride | kernel | result |\n|---|---|---|---|---|---|")
    for case in CASES:
        try:
            rc = subprocess.run([sys.executable, __file__, "--case", *map(str, case)], env=env,
                                capture_output=True, timeout=args.timeout).returncode
            result = "ok" if rc == 0 else f"crashed (exit {rc})"
        except subprocess.TimeoutExpired:
            result = f"hung (> {args.timeout:g} s)"
        print("| " + " | ".join(map(str, case)) + f" | {result} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
