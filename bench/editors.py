"""Every registered editor on SmolLM2-135M, on the same CounterFact records: quality, time and memory.

Each job runs in its own subprocess (peak RSS is a per-process high-water mark), one after another:
  unedited   the base model's scores (the floor every editor starts from)
  <editor>   the edit of all n records with the editor's preset (MEND: its network trained first, on
             --mend-data, and timed apart from the edit), then ES/PS/NS in both metric families:
             the probability comparison (es/ps/ns) and generation-based success (gen_es/gen_ps/gen_ns,
             gen_es_true = the replaced answer still said), docs/algorithms.md §3 and §12
Statistics are cached in --stats-dir across jobs; the first job that needs a layer pays for it (its time is in
that job's `statistics` timing). Networks MEND trains are kept in --artifacts-dir.

    .venv/bin/python bench/editors.py --n 100
    .venv/bin/python bench/editors.py --n 20 --jobs unedited,rome,ftl --mend-steps 50   # quick
    .venv/bin/python bench/editors.py --n 100 --jobs unedited,mend \
        --records ../shared/data/zsre/zsre_mend_eval_portability_gpt4.json --zsre-target alt   # zsRE records
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from child_result import run_child_result

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_JOBS = "unedited,memit,alphaedit,rome,ftl,mend"
METRICS = ("es", "ps", "ns", "gen_es", "gen_ps", "gen_ns", "gen_es_true")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _requests(path: Path, n: int, zsre_target: str):
    from editdecay.data import load_edit_requests

    if not path.is_file():
        raise SystemExit(f"{path} is missing: this benchmark needs the shared benchmark data (../shared/data).")
    return load_edit_requests(path, n, zsre_target=zsre_target, on_invalid="skip")


def _scores(loaded, requests) -> dict[str, float | None]:
    from editdecay.evaluation import edit_metrics, score_edits, summarize_edit_metrics

    summary = summarize_edit_metrics(
        edit_metrics(score_edits(loaded.model, loaded.tokenizer, requests, progress=False))
    )
    return {k: None if summary.get(k) is None else round(float(summary[k]), 1) for k in METRICS}


def child(args: argparse.Namespace) -> None:
    import torch

    from editdecay.editing import EditContext, StatsStore, build_editor
    from editdecay.models import load_model

    torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m")
    requests = _requests(args.records, args.n, args.zsre_target)
    out: dict[str, object] = {"job": args.job, "n": len(requests)}
    if args.job == "unedited":
        out["scores"] = _scores(loaded, requests)
        out["peak_rss_mib"] = _rss_mib()
        print("RESULT " + json.dumps(out))
        return
    overrides: dict[str, object] = {}
    if args.job == "mend":
        overrides = {"train_data": str(args.mend_data), "train_steps": args.mend_steps}
    editor = build_editor(args.job, overrides or None)
    context = EditContext(
        stats=StatsStore(args.stats_dir), fingerprint=loaded.fingerprint, artifacts=Path(args.artifacts_dir)
    )
    if args.job == "mend":  # train (or load) the network first, so the edit time below is the edit's alone
        from editdecay.editing.mend import MendStore

        hp = editor.resolved_hparams(loaded.model)
        tick = time.perf_counter()
        trained = MendStore(Path(args.artifacts_dir) / "mend").get(
            loaded.model, loaded.tokenizer, hp, loaded.fingerprint
        )
        out["mend_training"] = {
            "wall_s": round(time.perf_counter() - tick, 1),
            "train_seconds": trained.meta["seconds"],
            "steps": trained.meta["steps"],
            "records": trained.meta["records"],
            "history": trained.meta["history"],
            "alpha": trained.meta["alpha"],
        }
    tick = time.perf_counter()
    patch = editor.edit(loaded.model, loaded.tokenizer, requests, context)
    wall = time.perf_counter() - tick
    patch.apply(loaded.model, fingerprint=loaded.fingerprint)
    out.update(
        layers=patch.layers,
        edit_s=round(wall, 1),
        s_per_request=round(wall / len(requests), 2),
        timings=patch.manifest["timings"],
        update_norms=patch.manifest["update_norms"],
        scores=_scores(loaded, requests),
        peak_rss_mib=_rss_mib(),
    )
    print("RESULT " + json.dumps(out))


def run_child(args: argparse.Namespace, job: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--job",
        job,
        "--n",
        str(args.n),
        "--threads",
        str(args.threads),
        "--stats-dir",
        args.stats_dir,
        "--artifacts-dir",
        args.artifacts_dir,
        "--mend-data",
        str(args.mend_data),
        "--mend-steps",
        str(args.mend_steps),
        "--records",
        str(args.records),
        "--zsre-target",
        args.zsre_target,
    ]
    return run_child_result(job, command)


def table(results: list[dict]) -> str:
    header = "| editor | layers | " + " | ".join(METRICS) + " | edit s | s/request | peak RSS MiB |"
    lines = [header, "|" + "---|" * (len(METRICS) + 5)]
    for result in results:
        scores = result["scores"]
        cells = [f"{scores[k]:.1f}" if scores[k] is not None else "-" for k in METRICS]
        layers = ",".join(map(str, result.get("layers", []))) or "-"
        timing = [str(result.get("edit_s", "-")), str(result.get("s_per_request", "-"))]
        lines.append(
            f"| {result['job']} | {layers} | " + " | ".join(cells + timing) + f" | {result['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", default=DEFAULT_JOBS)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stats-dir", default=str(Path(tempfile.gettempdir()) / "editdecay-bench-stats"))
    parser.add_argument("--artifacts-dir", default=str(Path(tempfile.gettempdir()) / "editdecay-bench-editors"))
    parser.add_argument("--mend-data", type=Path, default=SHARED / "zsre" / "zsre_mend_train-1k.json")
    parser.add_argument("--mend-steps", type=int, default=400)
    parser.add_argument("--records", type=Path, default=SHARED / "counterfact" / "counterfact-edit.json")
    parser.add_argument("--zsre-target", choices=("answers", "alt"), default="answers")
    parser.add_argument("--out", type=Path, default=None, help="Also write the results as JSON here.")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results = [run_child(args, job) for job in args.jobs.split(",")]
    print(f"\nSmolLM2-135M, the first {args.n} records of {args.records.name}, {args.threads} thread(s)")
    print(table(results))
    for result in results:
        if "mend_training" in result:
            training = result["mend_training"]
            first, last = training["history"][0], training["history"][-1]
            print(
                f"\nMEND network: {training['steps']} steps on {training['records']['train']} records "
                f"({args.mend_data.name}) in {training['wall_s']} s; held-out edit NLL "
                f"{first['heldout_nll_before']:.2f} unedited, {first['heldout_edit_nll']:.2f} with the untrained "
                f"network, {last['heldout_edit_nll']:.2f} trained (locality KL {last['heldout_loc_kl']:.4f}); "
                f"edit {result['s_per_request']} s per request"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
