"""Editing speed and quality on SmolLM2-135M: statistics, target optimisation, solves, ES/PS/NS, peak RSS.

Jobs run one after another, each in its own subprocess (peak RSS is a per-process high-water mark):
  stats      fresh second-moment statistics for the edit layers (one pass, all layers), tokens/s
  targets    the dtype probe (what `v_dtype: auto` chooses here, and why), then target optimisation on a
             subset, steps in float32: batched vs one request at a time (same math, same z) vs one at a
             time without the prefix cache (the reference's cost structure); then batched in bfloat16 side
             by side (its speed-up or slow-down on this CPU, and how far z moves)
  memit      the full n-request MEMIT edit (statistics from the stats job), time split, ES/PS/NS;
             `memit:float32` / `memit:bfloat16` pin v_dtype (default: auto)
  alphaedit  the same with AlphaEdit
Wall seconds depend on what else runs on the machine; CPU seconds (with --threads 1: single-core time)
are the robust figure, and ratios are taken within one invocation. The peer figures are those given in
issue 3 (EasyEdit on the same CPU, 20 CounterFact records).

    .venv/bin/python bench/edit_speed.py --n 100 --threads 1
    .venv/bin/python bench/edit_speed.py --n 100 --jobs stats,targets,memit:float32,memit:bfloat16
    .venv/bin/python bench/edit_speed.py --n 20 --subset 4 --corpus ../shared/data/wikipedia   # quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from child_result import run_child_result

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PEER = {
    "stats_s_per_layer_82k": 95.0,
    "stats_layers": 5,
    "targets_s_per_request": 13.5,
    "es_ps_ns": {"unedited": (30, 30, 60), "memit": (65, 60, 60), "alphaedit": (75, 70, 60)},
}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _requests(n: int):
    from editdecay.data import load_edit_requests

    path = SHARED / "counterfact" / "counterfact-edit.json"
    return load_edit_requests(path, n) if path.is_file() else load_edit_requests("builtin", n)


def _scores(loaded, requests) -> dict[str, float]:
    from editdecay.evaluation import edit_metrics, score_edits, summarize_edit_metrics

    summary = summarize_edit_metrics(
        edit_metrics(score_edits(loaded.model, loaded.tokenizer, requests, progress=False))
    )
    return {k: round(float(summary[k]), 1) for k in ("es", "ps", "ns")}


def child(args: argparse.Namespace) -> None:
    import torch

    from editdecay.editing import EditContext, StatsStore, build_editor
    from editdecay.editing.context_templates import sample_context_templates
    from editdecay.editing.target_values import compute_targets
    from editdecay.models import DtypeResolver, load_model, mlp_shape

    torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m")
    store = StatsStore(args.stats_dir)
    out: dict[str, object] = {"job": args.job}
    if args.job == "stats":
        layers = build_editor("memit").resolved_hparams(loaded.model).layers
        wall, cpu = time.perf_counter(), _cpu()
        found = store.get_layer_stats(
            loaded.model,
            loaded.tokenizer,
            layers,
            corpus=args.corpus,
            n_tokens=args.tokens,
            fingerprint=loaded.fingerprint,
        )
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
        pass_s = next(iter(found.values())).seconds
        out.update(
            layers=layers,
            tokens=args.tokens,
            corpus=args.corpus,
            wall_s=wall,
            cpu_s=cpu,
            pass_s=pass_s,
            sampling_s=wall - pass_s,
            pass_tokens_per_s=args.tokens / pass_s,
            tokens_per_s=args.tokens / wall,
        )
    elif args.job == "targets":
        requests = _requests(args.subset)
        dtypes = DtypeResolver()
        hp = build_editor("memit", dtypes=dtypes).resolved_hparams(loaded.model)
        contexts = sample_context_templates(loaded.model, loaded.tokenizer, seed=0)
        float32 = dataclasses.replace(hp.target_settings(), compute_dtype="float32")
        bfloat16 = dataclasses.replace(float32, compute_dtype="bfloat16")
        runs = {}
        for name, size, mode, chosen in (
            ("batched", len(requests), "auto", float32),
            ("one_at_a_time", 1, "auto", float32),
            ("one_at_a_time_no_prefix_cache", 1, "full", float32),
            ("batched_bfloat16", len(requests), "auto", bfloat16),
        ):
            wall, cpu = time.perf_counter(), _cpu()
            result = compute_targets(
                loaded.model, loaded.tokenizer, requests, contexts, chosen, batch_size=size, mode=mode, progress=False
            )
            runs[name] = {
                "wall_s": time.perf_counter() - wall,
                "cpu_s": _cpu() - cpu,
                "z": result.z,
                "steps": sum(result.steps) / len(requests),
            }
        base = runs["batched"]["z"]
        out.update(
            subset=len(requests),
            v_dtype_auto=hp.v_dtype,
            probe=dtypes.probe("cpu", *mlp_shape(loaded.model.config)).to_dict(),
        )
        for name, run in runs.items():
            z = run.pop("z")
            run["max_abs_z_diff_vs_batched"] = float((z - base).abs().max())
            run["rel_z_diff_vs_batched"] = float((z - base).norm() / base.norm())
            out[name] = run
    else:
        requests = _requests(args.n)
        editor, _, v_dtype = args.job.partition(":")
        overrides = {"mom2_dataset": args.corpus, "mom2_n_tokens": args.tokens, "v_dtype": v_dtype or "auto"}
        before = _scores(loaded, requests)
        wall, cpu = time.perf_counter(), _cpu()
        patch = build_editor(editor, overrides).edit(
            loaded.model, loaded.tokenizer, requests, EditContext(stats=store, fingerprint=loaded.fingerprint)
        )
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
        patch.apply(loaded.model, fingerprint=loaded.fingerprint)
        out.update(
            n=len(requests),
            v_dtype=patch.manifest["hparams"]["v_dtype"],
            wall_s=wall,
            cpu_s=cpu,
            timings=patch.manifest["timings"],
            before=before,
            after=_scores(loaded, requests),
            update_norms=patch.manifest["update_norms"],
            carried=[b["carried_fraction_mean"] for b in patch.manifest["batches"]],
            target_steps=[b["target_steps_mean"] for b in patch.manifest["batches"]],
            nullspace=patch.manifest.get("nullspace"),
        )
    out["peak_rss_mib"] = _rss_mib()
    print("RESULT " + json.dumps(out))


def run_child(args: argparse.Namespace, job: str, stats_dir: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--job",
        job,
        "--stats-dir",
        stats_dir,
        "--n",
        str(args.n),
        "--subset",
        str(args.subset),
        "--threads",
        str(args.threads),
        "--tokens",
        str(args.tokens),
        "--corpus",
        args.corpus,
    ]
    return run_child_result(job, command)


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    stats, targets = results["stats"], results["targets"]
    print(f"\nSmolLM2-135M, {args.threads} thread(s); corpus {args.corpus}, {args.tokens} tokens")
    print(
        f"statistics: {stats['wall_s']:.1f} s wall ({stats['cpu_s']:.1f} CPU s) for {len(stats['layers'])} "
        f"layers in one pass: sampling {stats['sampling_s']:.1f} s, pass {stats['pass_s']:.1f} s "
        f"({stats['pass_tokens_per_s']:.0f} tokens/s), {stats['tokens_per_s']:.0f} tokens/s overall"
    )
    peer_stats = PEER["stats_s_per_layer_82k"] * PEER["stats_layers"]
    print(
        f"  vs peer: {stats['wall_s']:.0f} s ({args.tokens} tokens, all layers in one pass) vs {peer_stats:.0f} s "
        f"(82k tokens, one pass per layer) -> {peer_stats / stats['wall_s']:.1f}x"
    )
    probe = targets["probe"]
    print(
        f"dtype probe ({probe['shape']} matmul): float32 {probe['float32_s'] * 1e3:.2f} ms, bfloat16 "
        f"{probe['bfloat16_s'] * 1e3:.2f} ms -> {probe['reason']}: v_dtype auto = {targets['v_dtype_auto']}"
    )
    print(
        f"target optimisation on {targets['subset']} requests; steps in float32, the last row in bfloat16 "
        "(speed-ups and z differences relative to the first row):"
    )
    batched = targets["batched"]
    for name in ("batched", "one_at_a_time", "one_at_a_time_no_prefix_cache", "batched_bfloat16"):
        run = targets[name]
        print(
            f"  {name:32s} {run['wall_s']:7.1f} s wall {run['cpu_s']:7.1f} CPU s "
            f"({run['cpu_s'] / targets['subset']:.2f} CPU s/request, {run['steps']:.1f} steps) "
            f"{run['cpu_s'] / batched['cpu_s']:.2f}x the batched CPU time; "
            f"rel. z diff {run['rel_z_diff_vs_batched']:.1e}"
        )
    for job in (j for j in results if j not in ("stats", "targets")):
        run, editor = results[job], job.partition(":")[0]
        t = run["timings"]
        parts = {k: t.get(k, 0.0) for k in ("statistics", "targets", "keys", "solve")}
        other = t["total"] - sum(parts.values())
        print(
            f"{job} (target steps in {run['v_dtype']}): {run['n']} requests in {run['wall_s']:.1f} s wall "
            f"({run['cpu_s']:.1f} CPU s): "
            + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
            + f", other {other:.1f}; "
            f"peak RSS {run['peak_rss_mib']:.0f} MiB"
        )
        print(
            f"  ES/PS/NS unedited {run['before']['es']}/{run['before']['ps']}/{run['before']['ns']}, "
            f"edited {run['after']['es']}/{run['after']['ps']}/{run['after']['ns']} "
            f"(peer {'/'.join(map(str, PEER['es_ps_ns'][editor]))}); carried {run['carried']}; "
            f"target steps {run['target_steps']}" + (f"; null space {run['nullspace']}" if run["nullspace"] else "")
        )
        peer_s = PEER["stats_s_per_layer_82k"] * PEER["stats_layers"] + PEER["targets_s_per_request"] * run["n"]
        ours_s = stats["wall_s"] + run["wall_s"]
        print(
            f"  end to end (statistics uncached + {run['n']} edits): ours {ours_s:.0f} s vs peer ~{peer_s:.0f} s "
            f"-> {peer_s / ours_s:.1f}x; with statistics cached: {run['wall_s']:.0f} s vs "
            f"{PEER['targets_s_per_request'] * run['n']:.0f} s -> "
            f"{PEER['targets_s_per_request'] * run['n'] / run['wall_s']:.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="Requests edited by each editor.")
    parser.add_argument("--subset", type=int, default=8, help="Requests in the batched vs one-at-a-time comparison.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=None, help="Statistics tokens (default: the preset's).")
    parser.add_argument("--corpus", default="model-sampled")
    parser.add_argument("--jobs", default="stats,targets,memit,alphaedit")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--stats-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tokens is None:
        from editdecay.editing.hparams import PRESETS

        args.tokens = int(PRESETS["smollm2-135m"]["mom2_n_tokens"])
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as stats_dir:
        results = {job: run_child(args, job, stats_dir) for job in args.jobs.split(",")}
    print(json.dumps(results, indent=1))
    if {"stats", "targets"} <= set(results):
        report(results, args)


if __name__ == "__main__":
    main()
