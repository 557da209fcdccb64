"""The strategy table: every edit-preserving strategy against plain fine-tuning (docs/durability.md).

Runs the grid `configs/durability.yaml` (SmolLM2-135M, 100 CounterFact edits, MEMIT and AlphaEdit, LoRA; needs
../shared/data), then prints one row per (editor, strategy): the final model's ES / PS / NS, the Edit Flip Ratio
with its 95% bootstrap interval, ΔES against plain fine-tuning (paired over edits), control facts still known,
downstream accuracy, and the time to make the final model. Writes strategies.csv / .md and strategies.png / .pdf.

    .venv/bin/python bench/durability.py --store /tmp/durability/store --runs /tmp/durability/runs
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, default=ROOT / "configs" / "durability.yaml")
    parser.add_argument("--set", nargs="*", default=[], help="overrides such as edits.n=50 or grid.editor.name=[memit]")
    parser.add_argument("--store", type=Path, default=Path("/tmp/durability/store"))
    parser.add_argument("--runs", type=Path, default=Path("/tmp/durability/runs"))
    parser.add_argument("--out", type=Path, default=Path("bench-out/durability"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import pandas as pd

    from editdecay.config import load_grid
    from editdecay.experiments.runner import run_experiment
    from editdecay.models import DtypeResolver
    from editdecay.reporting.durability import plot_strategies, strategy_markdown, strategy_of, strategy_table
    from editdecay.reporting.findings import load_runs

    configs = load_grid(args.grid, args.set).expand()
    dtypes = DtypeResolver()
    started = time.perf_counter()
    run_ids = set()
    for i, config in enumerate(configs, 1):
        tick = time.perf_counter()
        try:
            result = run_experiment(config, args.store, args.runs, dtypes=dtypes)
        except Exception as err:  # one failing strategy must not hide the others' numbers
            logging.exception("%s failed", config.name)
            print(f"[{i}/{len(configs)}] {config.name}: FAILED ({type(err).__name__}: {err})", flush=True)
            continue
        run_ids.add(result.run_id)
        print(f"[{i}/{len(configs)}] {config.name}: {time.perf_counter() - tick:.0f} s", flush=True)
    runs = [r for r in load_runs(args.runs) if r.run_id in run_ids]
    table = strategy_table(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "strategies.csv", index=False)
    (args.out / "strategies.md").write_text(strategy_markdown(table) + "\n")
    plot_strategies(table, args.out / "strategies")
    print(strategy_markdown(table))
    # Why protect does (not) keep the edits: the edited layers still answer the old keys, but do the keys move?
    from editdecay.experiments.geometry import run_key_drift
    from editdecay.experiments.store import ArtifactStore

    drift_runs = [r for r in runs if r.value(("finetune", "strategy")) in ("none", "protect")]
    drift = pd.concat(
        [run_key_drift(r.path, ArtifactStore(args.store)) for r in drift_runs if r.path], ignore_index=True
    )
    drift.to_csv(args.out / "key_drift.csv", index=False)
    summary = drift.groupby(["editor", "ft_lr", "strategy"])[["key_drift", "old_key_change", "new_key_change"]].mean()
    print(summary.to_markdown(floatfmt=".3f"))
    detector = pd.DataFrame([row for r in runs if strategy_of(r) == "none" for row in detector_rows(r, args.store)])
    detector.to_csv(args.out / "detector.csv", index=False)
    print(detector.to_markdown(index=False, floatfmt=".1f"))
    print(f"wall time {time.perf_counter() - started:.0f} s; wrote {args.out}")


def detector_rows(run, store: Path) -> list[dict[str, object]]:
    """The detector on Med (the bare patch) and on Med_ft (patch, then fine-tuning everywhere) of a plain run."""
    import copy
    import json

    from editdecay.config import validate_experiment
    from editdecay.durability.detector import detect_edited_layers, hit_rate
    from editdecay.editing import WeightPatch
    from editdecay.experiments.resolve import model_spec
    from editdecay.experiments.store import ArtifactStore
    from editdecay.finetuning import FinetuneResult, load_finetuned
    from editdecay.models import load_model

    summary = json.loads((run.path / "summary.json").read_text())
    config = validate_experiment(summary["config"])
    artifacts, artifact_store = summary["artifacts"], ArtifactStore(store)
    patch = WeightPatch.load(artifact_store.path("patches", artifacts["patch"]) / "patch")
    base = load_model(model_spec(config))
    med = copy.deepcopy(base.model)
    patch.apply(med, fingerprint=base.fingerprint)
    result = FinetuneResult.load(artifact_store.path("finetunes", artifacts["ft_edited"]) / "result")
    rows = []
    for name, suspect in (("Med", med), ("Med_ft", load_finetuned(med, result, merge=True))):
        table = detect_edited_layers(base.model, suspect)
        flagged = {int(x) for x in table.loc[table["flagged"], "layer"]}
        rate = hit_rate(flagged, set(patch.layers))
        rows.append(
            {
                "editor": config.editor.name,
                "ft_lr": config.finetune.lr,
                "suspect": name,
                "edited": ",".join(map(str, patch.layers)),
                "flagged": ",".join(map(str, sorted(flagged))),
                "precision": 100 * rate["precision"],
                "recall": 100 * rate["recall"],
            }
        )
    return rows


if __name__ == "__main__":
    main()
