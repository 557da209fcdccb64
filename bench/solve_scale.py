"""MEMIT's batch solve and AlphaEdit's solve at 1,000 and 10,000 edits: seconds and peak memory per layer.

The closed-form updates (editing/solve.py) on random keys and residuals of a model's MLP shape: K (m, n), R (d, n),
C (m, m) from 4m random rows. Each (shape, n, solve) runs in its own subprocess, so its peak RSS is its own; the
figure printed beside it is the float64 working set the solve needs by its formula (K, R, A = lam C + K K^T, its
factor, X), the part that grows with n.

    .venv/bin/python bench/solve_scale.py                         # SmolLM2-135M and GPT-2 XL shapes
    .venv/bin/python bench/solve_scale.py --shapes 4096x14336     # Llama-3-8B's MLP (about 8 GB at 10,000)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SHAPES = {"576x1536": "SmolLM2-135M", "1600x6400": "GPT-2 XL", "4096x14336": "Llama-3-8B"}


def child(d: int, m: int, n: int, solve: str) -> None:
    import torch

    from editdecay.editing.solve import alphaedit_delta, memit_delta, nullspace_projector

    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(4 * m, m, generator=generator)
    C = rows.T @ rows / rows.shape[0]
    K = torch.randn(m, n, generator=generator)
    R = torch.randn(d, n, generator=generator) * 0.1
    del rows
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if solve == "memit":
        delta = memit_delta(R, K, C, 1e4)
    else:
        P = nullspace_projector(C, energy=1e-2).P
        delta = alphaedit_delta(R, K, P, torch.zeros(m, m, dtype=torch.float64), 10.0)
    seconds = time.perf_counter() - start
    assert torch.isfinite(delta).all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "before_mib": base}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="576x1536,1600x6400", help="d x m of the edited MLP projection.")
    parser.add_argument("--n", default="1000,10000")
    parser.add_argument("--solves", default="memit,alphaedit")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        d, m, n, solve = args.child
        child(int(d), int(m), int(n), solve)
        return
    for shape in args.shapes.split(","):
        d, m = (int(x) for x in shape.split("x"))
        for n in (int(x) for x in args.n.split(",")):
            formula = 8 * (m * n + d * n + 3 * m * m + m * n + d * m) / 2**20
            for solve in args.solves.split(","):
                command = [sys.executable, __file__, "--child", str(d), str(m), str(n), solve]
                row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
                print(
                    f"{SHAPES.get(shape, shape):13s} d {d:5d} m {m:5d} n {n:6d} {solve:9s} "
                    f"{row['seconds']:7.2f} s per layer  peak RSS {row['peak_mib']:7.0f} MiB "
                    f"(+{row['peak_mib'] - row['before_mib']:6.0f} over the inputs; float64 working set by "
                    f"formula {formula:6.0f} MiB)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
