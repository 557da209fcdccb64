"""Fine-tuning speed on SmolLM2-135M: tokens/s and peak RSS for full / LoRA / DoRA in bf16 and fp32 side by side.

Each configuration runs in its own subprocess (peak RSS is a per-process high-water mark), one after
the other, on the same built-in examples. Ratios (DoRA/LoRA time per token, fp32/bf16) are computed from
runs of one invocation, using CPU seconds per token (wall time is at the mercy of other processes on a
shared machine; with --threads 1, tokens per CPU-second is the single-core throughput). `--demo` instead
times one demo-sized LoRA run (one epoch, compute dtype `auto`) end to end, model load excluded. The dtype
probe runs first: it prints what `compute_dtype: auto` chooses on this machine and the matmul times behind it.

    .venv/bin/python bench/finetune_speed.py --examples 200 --max-steps 3 --threads 1
    .venv/bin/python bench/finetune_speed.py --demo --examples 256 --lr 3e-4
    # memory: LoRA r 32, batch 16, float32 on 256-token examples (Wikipedia articles cut at cutoff_len 256),
    # without and with gradient checkpointing, whole micro-batches and pieces of 256 / 512 tokens
    .venv/bin/python bench/finetune_speed.py --methods lora --dtypes float32 --r 32 --max-steps 2 --examples 32 \
        --wikipedia ../shared/data/wikipedia/AA/wiki_00 --checkpointing off,on --pieces none,256,512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(args: argparse.Namespace) -> None:
    import torch

    from editdecay.data import load_corpus
    from editdecay.finetuning import FinetuneSpec, finetune
    from editdecay.models import load_model

    torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m")
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.wikipedia:
        examples = wikipedia_examples(Path(args.wikipedia), args.examples)
    else:
        examples = load_corpus(args.corpus, max_examples=args.examples, seed=0)
    spec = FinetuneSpec(
        method=args.method,
        r=args.r,
        alpha=2.0 * args.r,
        gradient_checkpointing=args.gradient_checkpointing,
        max_forward_tokens=args.max_forward_tokens,
        cutoff_len=args.cutoff_len,
        compute_dtype=args.dtype,
        epochs=1,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        lr=args.lr,
        dropout=args.dropout,
        train_on_inputs=not args.no_train_on_inputs,
    )
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        result = finetune(loaded.model, loaded.tokenizer, examples, spec, out_dir=Path(tmp) / "out", progress=False)
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    manifest = result.manifest
    print(
        json.dumps(
            {
                "method": args.method,
                "dtype": manifest["spec"]["compute_dtype"],
                "checkpointing": args.gradient_checkpointing,
                "pieces": args.max_forward_tokens,
                "examples": len(examples),
                "steps": manifest["steps"],
                "tokens": manifest["tokens"],
                "train_s": manifest["train_seconds"],
                "tokens_per_s": manifest["tokens_per_s"],
                "wall_s": wall,
                "cpu_s": cpu,
                "rss_model_mib": rss_model,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "first_loss": manifest["train_losses"][0],
                "last_loss": manifest["train_losses"][-1],
            }
        )
    )


def wikipedia_examples(file: Path, n: int) -> list:
    """`n` examples "Continue the article." -> an article of a WikiExtractor file, each longer than any cutoff
    used here (3,000+ characters), so every example is cut at exactly `cutoff_len` tokens."""
    from editdecay.data import InstructionExample

    articles = [doc.split(">", 1)[1].replace("</doc>", "").strip() for doc in file.read_text().split("<doc ")[1:]]
    long = [text for text in articles if len(text) > 3000][:n]
    if len(long) < n:
        raise SystemExit(f"{file} has only {len(long)} articles of 3,000+ characters; ask for fewer --examples.")
    return [InstructionExample("Continue the article.", "", text[:4000], "") for text in long]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(args: argparse.Namespace, method: str, dtype: str, checkpointing: bool, pieces: int | None) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--method",
        method,
        "--dtype",
        dtype,
        "--examples",
        str(args.examples),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--dropout",
        str(args.dropout),
        "--r",
        str(args.r),
        "--corpus",
        args.corpus,
        "--cutoff-len",
        str(args.cutoff_len),
    ]
    if checkpointing:
        command.append("--gradient-checkpointing")
    if pieces is not None:
        command += ["--max-forward-tokens", str(pieces)]
    if args.wikipedia:
        command += ["--wikipedia", args.wikipedia]
    for flag, value in (("--max-steps", args.max_steps), ("--lr", args.lr)):
        if value is not None:
            command += [flag, str(value)]
    if args.no_train_on_inputs:
        command.append("--no-train-on-inputs")
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--max-steps", type=int, default=None, help="Stop each run early (default: one epoch).")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="full,lora,dora")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--no-train-on-inputs", action="store_true")
    parser.add_argument("--r", type=int, default=8, help="LoRA/DoRA rank (alpha = 2r).")
    parser.add_argument("--corpus", default="builtin", help="builtin, or an instruction-corpus file.")
    parser.add_argument("--wikipedia", default=None, help="A WikiExtractor file: long examples instead of --corpus.")
    parser.add_argument("--cutoff-len", type=int, default=256)
    parser.add_argument("--checkpointing", default="off", help="off, on, or off,on (side by side).")
    parser.add_argument(
        "--pieces", default="none", help="max_forward_tokens values side by side, e.g. none,256,512 (none: whole)."
    )
    parser.add_argument("--max-forward-tokens", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--gradient-checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--demo", action="store_true", help="Time one demo-sized LoRA run (1 epoch, dtype auto).")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="lora", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    print(
        f"SmolLM2-135M, {args.examples} examples of {args.wikipedia or args.corpus}, cutoff {args.cutoff_len}, "
        f"batch {args.batch_size}, {args.threads} threads, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    import torch

    from editdecay.models import DtypeResolver

    torch.set_num_threads(args.threads)
    probe = DtypeResolver().probe("cpu", 576, 1536)  # SmolLM2-135M's MLP shape
    print(
        f"dtype probe ({probe.shape} matmul): float32 {probe.float32_s * 1e3:.2f} ms, bfloat16 "
        f"{probe.bfloat16_s * 1e3:.2f} ms -> {probe.reason}: compute_dtype auto = {probe.chosen}"
    )
    switches = [{"off": False, "on": True}[value] for value in args.checkpointing.split(",")]
    pieces = [None if value == "none" else int(value) for value in args.pieces.split(",")]
    configs = (
        [("lora", "auto", False, None)]
        if args.demo
        else [
            (m, d, c, p)
            for m in args.methods.split(",")
            for d in args.dtypes.split(",")
            for c in switches
            for p in pieces
        ]
    )
    rows = []
    for method, dtype, checkpointing, piece in configs:
        row = run_child(args, method, dtype, checkpointing, piece)
        rows.append(row)
        print(
            f"{method:5s} {dtype:9s} {'checkpointed ' if checkpointing else 'plain        '}"
            f"pieces {piece or 'whole'!s:5s} "
            f"steps {row['steps']:3d}  tokens {row['tokens']:6d}  "
            f"train {row['train_s']:6.1f} s  {row['tokens_per_s']:6.1f} tok/s  wall {row['wall_s']:6.1f} s  "
            f"CPU {row['cpu_s']:6.1f} s ({row['tokens'] / row['cpu_s']:5.1f} tok/CPU-s)  "
            f"peak RSS {row['peak_rss_mib']:6.0f} MiB (model loaded: {row['rss_model_mib']:.0f})  "
            f"loss {row['first_loss']:.3f} -> {row['last_loss']:.3f}",
            flush=True,
        )
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    # Ratios from CPU time per token: robust to other processes sharing the machine.
    whole = [r for r in rows if r["pieces"] is None]
    speed = {(r["method"], r["dtype"]): r["tokens"] / r["cpu_s"] for r in whole if not r["checkpointing"]}
    for plain in (r for r in whole if not r["checkpointing"]):
        for saved in (
            r
            for r in rows
            if (r["checkpointing"] or r["pieces"] is not None)
            and (r["method"], r["dtype"]) == (plain["method"], plain["dtype"])
        ):
            slower = (plain["tokens"] / plain["cpu_s"]) / (saved["tokens"] / saved["cpu_s"])
            setting = f"checkpointing {'on' if saved['checkpointing'] else 'off'}, pieces {saved['pieces'] or 'whole'}"
            print(
                f"{plain['method']} {plain['dtype']}: {setting}: peak RSS {plain['peak_rss_mib']:.0f} -> "
                f"{saved['peak_rss_mib']:.0f} MiB, CPU time per token x{slower:.2f}, "
                f"loss {plain['first_loss']:.6f} vs {saved['first_loss']:.6f}"
            )
    for dtype in args.dtypes.split(","):
        if ("lora", dtype) in speed and ("dora", dtype) in speed:
            print(f"DoRA/LoRA time per token ({dtype}): {speed[('lora', dtype)] / speed[('dora', dtype)]:.2f}")
    for method in args.methods.split(","):
        if (method, "bfloat16") in speed and (method, "float32") in speed:
            print(f"{method} fp32/bf16 time per token: {speed[(method, 'bfloat16')] / speed[(method, 'float32')]:.2f}")


if __name__ == "__main__":
    main()
