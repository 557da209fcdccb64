"""Evaluation speed on a real model (default SmolLM2-135M, float32, CPU).

1. Edit scoring of N CounterFact requests: `score_edits` batched vs one prompt at a time (the same code
   with batch_size=1) vs a naive reference (one full-logit forward per (prompt, target) pair plus
   `model.generate` per prompt), measured side by side, with a check that all three agree.
2. Downstream items/s in `loglik` (cloze and label targets) and `generate` (batched greedy, 32 tokens)
   modes on the first ITEMS items of each available task.

Usage: .venv/bin/python bench/eval_speed.py [--requests 100] [--items 100] [--threads 1] [--tasks boolq,piqa]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from editdecay.data import load_edit_requests
from editdecay.data.tasks import BUILTIN_TASK, STUDY_TASKS, task_available
from editdecay.evaluation import evaluate_tasks, score_edits
from editdecay.evaluation.batching import continuation_text, encode
from editdecay.models import load_model, pad_id_of

SHARED = Path(os.environ.get("EDITDECAY_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def naive_scores(model, tokenizer, requests) -> list[tuple[float, float, str]]:
    """Reference-style scoring: each (prompt, target) its own full forward; greedy answers via generate."""
    rows = []
    with torch.inference_mode():
        for request in requests:
            prompts = [
                (request.prompt, request.target_true),
                *((p, request.target_true) for p in request.paraphrase_prompts),
                *((n.prompt, n.answer) for n in request.neighborhood),
            ]
            for prompt, true in prompts:
                nlls, lengths = [], []
                context = encode(tokenizer, [prompt], specials=True)[0]
                for target in (request.target_new, true):
                    ids = encode(tokenizer, [continuation_text(target)], specials=False)[0]
                    logits = model(input_ids=torch.tensor([list(context) + list(ids)])).logits[0]
                    logp = torch.log_softmax(logits.float(), dim=-1)
                    start = len(context) - 1
                    nlls.append(-float(sum(logp[start + j, t] for j, t in enumerate(ids))) / len(ids))
                    lengths.append(len(ids))
                generated = model.generate(
                    input_ids=torch.tensor([context]),
                    max_new_tokens=max(lengths),
                    min_new_tokens=max(lengths),
                    do_sample=False,
                    pad_token_id=pad_id_of(tokenizer),
                )
                rows.append(
                    (nlls[0], nlls[1], tokenizer.decode(generated[0, len(context) :], skip_special_tokens=True))
                )
    return rows


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def bench_edits(model, tokenizer, n: int) -> None:
    source = SHARED / "counterfact" / "counterfact-edit.json"
    requests = load_edit_requests(source if source.is_file() else "builtin", n)
    rows = sum(1 + len(r.paraphrase_prompts) + len(r.neighborhood) for r in requests)
    print(
        f"\n== edit scoring: {len(requests)} requests from {source if source.is_file() else 'builtin'}, "
        f"{rows} prompts, {2 * rows} (prompt, target) pairs =="
    )
    score_edits(model, tokenizer, requests[:2], progress=False)  # warm-up
    batched, t_batched = timed(lambda: score_edits(model, tokenizer, requests, batch_size=32, progress=False))
    single, t_single = timed(lambda: score_edits(model, tokenizer, requests, batch_size=1, progress=False))
    naive, t_naive = timed(lambda: naive_scores(model, tokenizer, requests))
    nll_diff = np.abs(batched[["nll_new", "nll_true"]].to_numpy() - single[["nll_new", "nll_true"]].to_numpy()).max()
    naive_nll = np.array([(a, b) for a, b, _ in naive])
    naive_diff = np.abs(batched[["nll_new", "nll_true"]].to_numpy() - naive_nll).max()
    print(f"batched (32/forward)     {t_batched:8.1f} s  {rows / t_batched:7.2f} prompts/s")
    print(
        f"one prompt at a time     {t_single:8.1f} s  {rows / t_single:7.2f} prompts/s   "
        f"batched speed-up {t_single / t_batched:5.1f}x"
    )
    print(
        f"naive reference          {t_naive:8.1f} s  {rows / t_naive:7.2f} prompts/s   "
        f"batched speed-up {t_naive / t_batched:5.1f}x"
    )
    print(f"max |nll| difference: batched vs single {nll_diff:.2e}, batched vs naive {naive_diff:.2e}")
    print(
        f"identical success flags: {(batched['success'] == single['success']).all()}, identical greedy answers: "
        f"batched==single {(batched['greedy'] == single['greedy']).all()}, "
        f"batched==generate {sum(g == n for g, (_, _, n) in zip(batched['greedy'], naive, strict=True))}/{rows}"
    )


def bench_tasks(model, tokenizer, tasks: list[str], items: int) -> None:
    data_dir = SHARED / "commonsense" / "eval"
    available = [t for t in tasks if task_available(t, data_dir)]
    skipped = sorted(set(tasks) - set(available))
    print(f"\n== downstream: {items} items per task; tasks {available}" + (f" (absent: {skipped})" if skipped else ""))
    print(f"{'task':15s} {'loglik-cloze':>14s} {'loglik-label':>14s} {'generate':>14s}   accuracy cloze/label/gen (%)")
    for task in available:
        figures, accuracy = [], []
        for mode, target in (("loglik", "cloze"), ("loglik", "label"), ("generate", "cloze")):
            records, seconds = timed(
                lambda m=mode, t=target, name=task: evaluate_tasks(
                    model,
                    tokenizer,
                    [name],
                    data_dir=data_dir,
                    mode=m,
                    limit=items,
                    loglik_target=t,
                    batch_size=16,
                    progress=False,
                )
            )
            figures.append(len(records) / seconds)
            accuracy.append(100 * records["correct"].mean())
        print(
            f"{task:15s} "
            + " ".join(f"{f:9.2f} it/s " for f in figures)
            + "  "
            + " / ".join(f"{a:.0f}" for a in accuracy)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--tasks", default=",".join([*STUDY_TASKS, BUILTIN_TASK]))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-edits", action="store_true")
    parser.add_argument("--skip-tasks", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    print(
        f"model {args.model}, {torch.get_num_threads()} torch threads, dtype {next(model.parameters()).dtype}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    if not args.skip_edits:
        bench_edits(model, tokenizer, args.requests)
    if not args.skip_tasks:
        bench_tasks(model, tokenizer, [t for t in args.tasks.split(",") if t], args.items)


if __name__ == "__main__":
    main()
