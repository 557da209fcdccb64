"""Store a device kind's measured throughputs from a finished run, for `editdecay grid --dry-run --cost`.

The run must have executed every stage (a fresh store): each stage kind's rate is its work, as the estimate counts
it (editdecay/experiments/cost.py), over the seconds the run spent on it, so an estimate of that same run gives
back its times. Run it on the machine the run ran on: the kind's record names the CPU (and bf16 flags) or GPU.

    .venv/bin/python bench/record_throughputs.py runs/<run id> --kind cpu-avx512bf16
    .venv/bin/python bench/record_throughputs.py runs/<run id> --kind nvidia-h100     # after bench/gpu_cell.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

from editdecay.experiments.cost import THROUGHPUTS, record_rates


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "")
    bf16 = [flag for flag in ("avx512_bf16", "amx_bf16") if f" {flag}" in flags]
    return f"{model or platform.processor()} ({', '.join(bf16) or 'no bf16 flags'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--kind", required=True, help="Name of the device kind, e.g. cpu-avx512bf16, nvidia-h100.")
    parser.add_argument("--file", type=Path, default=THROUGHPUTS)
    args = parser.parse_args()
    rates = record_rates(args.run_dir)
    summary = json.loads((args.run_dir / "summary.json").read_text())
    data = json.loads(args.file.read_text())
    data["kinds"][args.kind] = {
        "measured": True,
        "source": f"run {summary['run_id']} ({summary['name']}) on {machine()}, {datetime.date.today()}",
        "flops_per_s": {kind: float(f"{rate:.4g}") for kind, rate in rates.items()},
    }
    args.file.write_text(json.dumps(data, indent=2) + "\n")
    for kind, rate in rates.items():
        print(f"{args.kind} {kind:12s} {rate / 1e9:10.2f} GFLOP/s effective")
    print(f"written to {args.file}")


if __name__ == "__main__":
    main()
