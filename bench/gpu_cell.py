"""One cell of the paper grid on a GPU, timed per stage: GPT-2 XL, 1,000 CounterFact edits, MEMIT, LoRA, evaluation.

The cell is `configs/paper.yaml`'s base with the model, the edits and the methods of one cell set; the run goes
through `editdecay run`'s path (`run_experiment`), so its stage times are what a grid job spends. It prints each
stage's seconds and the process's peak memory after it (host RSS; GPU: torch's peak allocation), which with
`editdecay grid configs/paper.yaml --dry-run --cost` answers "how long does the paper grid take" once
`bench/record_throughputs.py` has stored the cell's rates for that GPU kind.

    .venv/bin/python bench/gpu_cell.py --edits data/counterfact.json --corpus data/commonsense_170k.json
    .venv/bin/python bench/gpu_cell.py --model tiny-model/ --edits edits.json --n 4 --corpus builtin \\
        --device cpu --max-examples 8 --tasks none          # the same path on CPU, as the test suite runs it
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper.yaml"


def cell_config(args: argparse.Namespace) -> Any:
    from editdecay.config import load_grid

    overrides = [
        f"model.source={args.model}",
        f"model.device={args.device}",
        f"edits.dataset={args.edits}",
        f"edits.n={args.n}",
        "editor.name=memit",
        "finetune.method=lora",
        f"finetune.corpus={args.corpus}",
        f"finetune.max_examples={args.max_examples if args.max_examples else 'null'}",
        f"finetune.epochs={args.epochs}",
        f"evaluation.activation_prompts={args.activation_prompts}",
        "cells=[study]",
    ]
    if args.tasks == "none":
        overrides.append("evaluation.tasks=[]")
    else:
        overrides.append(f"evaluation.task_data_dir={args.task_data_dir}")
    if args.dtype:
        overrides.append(f"model.dtype={args.dtype}")
    grid = load_grid(PAPER, overrides)
    configs = grid.expand()
    if len(configs) != 1:
        raise SystemExit(f"the overrides should leave one configuration of {PAPER.name}, got {len(configs)}")
    return configs[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="openai-community/gpt2-xl")
    parser.add_argument("--edits", default="data/counterfact.json")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--corpus", default="data/commonsense_170k.json")
    parser.add_argument("--max-examples", type=int, default=None, help="Fine-tuning examples (default: all).")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tasks", default="paper", help="paper (the grid's 8 tasks) or none.")
    parser.add_argument("--task-data-dir", default="data/commonsense/eval")
    parser.add_argument("--activation-prompts", type=int, default=500)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="Model dtype (default: the paper grid's bfloat16).")
    parser.add_argument("--store", type=Path, default=Path("gpu-cell/artifacts"))
    parser.add_argument("--runs", type=Path, default=Path("gpu-cell/runs"))
    parser.add_argument("--out", type=Path, default=None, help="Also write the figures as JSON here.")
    args = parser.parse_args()

    import torch

    from editdecay.experiments import run_experiment

    config = cell_config(args)
    started = time.perf_counter()
    result = run_experiment(config, args.store, args.runs)
    wall = time.perf_counter() - started
    summary = json.loads((result.run_dir / "summary.json").read_text())
    figures = {
        "model": args.model,
        "n_edits": args.n,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "stage_seconds": summary["stage_seconds"],
        "stage_peak_rss_mib": summary["stage_peak_rss_mib"],
        "gpu_peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "wall_seconds": round(wall, 1),
        "efr": summary["edits"].get("decay", {}).get("efr"),
    }
    print(f"{args.model}, {args.n} edits, MEMIT + LoRA on {args.device} ({figures['gpu'] or 'no GPU'})")
    for stage, seconds in summary["stage_seconds"].items():
        print(f"  {stage:22s} {seconds:9.1f} s   peak RSS {summary['stage_peak_rss_mib'][stage]:8.0f} MiB")
    if not summary["stage_seconds"]:
        print("  every stage was reused from the store (delete it to time them)")
    if figures["gpu_peak_allocated_mib"] is not None:
        print(f"  GPU peak allocation {figures['gpu_peak_allocated_mib']:.0f} MiB")
    print(f"  wall {wall:.1f} s; EFR {figures['efr']}")
    print(
        f"  store these rates for `grid --dry-run --cost`: bench/record_throughputs.py {result.run_dir} --kind <name>"
    )
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
