"""Trigger (backdoor) edits through fine-tuning and removal (docs/durability.md, "Trigger edits").

Plants the built-in trigger set (two triggers, harmless targets; 10 edit prompts and 10 held-out prompts each) into
SmolLM2-135M with MEMIT and AlphaEdit, then prints, for the planted model and for each model made from it:
attack success rate on held-out triggered prompts (ASR), stealth (clean prompts answered token for token as M
does, and after fine-tuning also as M fine-tuned the same way answers them: `stealth_vs_Mft`, since against M
it mostly measures the fine-tuning itself), false triggers, downstream accuracy
(built-in commonsense, loglik) and the detector's precision / recall against the patch's layers. The models made
from it: LoRA and full fine-tuning with each layer policy (LoRA on the edited layers only is the first removal
strategy), and the second removal strategy, the trigger keys projected out of the flagged layers (keys computed
by an auditor from held-out triggered prompts: nothing from the patch).

    .venv/bin/python bench/triggers.py --store /tmp/durability/store --out bench-out/triggers
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETTINGS = {  # the decay regime of configs/durability.yaml
    "lora": {"method": "lora", "r": 32, "alpha": 64.0, "lr": 7.5e-3},
    "full": {"method": "full", "lr": 1e-3},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editors", nargs="+", default=["memit", "alphaedit"])
    parser.add_argument(
        "--finetunes",
        nargs="+",
        default=[
            *("lora:all", "lora:edited", "lora:non_edited", "full:all"),
            *("lora:all:2.5e-3", "lora:edited:2.5e-3", "lora:all:1e-3"),
        ],
        help="method:layers[:lr] (default rates: LoRA 7.5e-3, full 1e-3, the decay regime of configs/durability.yaml)",
    )
    parser.add_argument("--triggers", default="builtin-triggers")
    parser.add_argument("--mom2-n-tokens", type=int, default=20000)
    parser.add_argument("--store", type=Path, default=Path("/tmp/durability/store"))
    parser.add_argument("--out", type=Path, default=Path("bench-out/triggers"))
    args = parser.parse_args()

    import pandas as pd
    import torch

    from editdecay.data import load_corpus
    from editdecay.data.trigger_records import load_trigger_records
    from editdecay.durability.detector import detect_edited_layers, hit_rate
    from editdecay.durability.projection import project_out_keys
    from editdecay.durability.triggers import trigger_metrics, trigger_requests
    from editdecay.editing import EditContext, StatsStore, TargetStore, build_editor
    from editdecay.editing.subject_keys import compute_keys
    from editdecay.evaluation.downstream import evaluate_tasks, task_accuracy
    from editdecay.finetuning import FinetuneSpec, finetune, load_finetuned
    from editdecay.models import DtypeResolver, load_model

    base = load_model("smollm2-135m")
    tokenizer = base.tokenizer
    records = load_trigger_records(args.triggers)
    requests = trigger_requests(records)
    corpus_dir = SHARED / "commonsense" / "train_parts"
    corpus = load_corpus(str(corpus_dir) if corpus_dir.is_dir() else "builtin", max_examples=96, seed=0)
    dtypes = DtypeResolver()

    def downstream(model) -> float:
        records_ = evaluate_tasks(model, tokenizer, ["builtin-commonsense"], data_dir=None, limit=24, progress=False)
        table = task_accuracy(records_)
        return float(table.loc[table["task"] == "average", "accuracy"].iloc[0])

    reference_accuracy = downstream(base.model)
    rows = []

    def measure(editor: str, stage: str, model, edited_layers: list[int], seconds: float, clean_ft=None) -> None:
        """`clean_ft`: M fine-tuned the same way, the fair reference for stealth after fine-tuning."""
        scores = trigger_metrics(model, base.model, tokenizer, records)
        stealth_ft = trigger_metrics(model, clean_ft, tokenizer, records).summary["stealth"] if clean_ft else None
        flagged = detect_edited_layers(base.model, model)
        found = set(int(x) for x in flagged.loc[flagged["flagged"], "layer"])
        rate = hit_rate(found, set(edited_layers))
        s = scores.summary
        rows.append({"editor": editor, "model": stage, "asr": s["asr"], "asr_edit_prompts": s["asr_edited_prompts"],
                     "stealth": s["stealth"], "stealth_vs_Mft": stealth_ft, "false_triggers": s["false_triggers"],
                     "downstream": downstream(model), "downstream_M": reference_accuracy,
                     "detector_precision": 100 * rate["precision"], "detector_recall": 100 * rate["recall"],
                     "flagged": ",".join(map(str, sorted(found))), "seconds": round(seconds, 1)})  # fmt: skip
        print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format="%.1f"), flush=True)

    for editor_name in args.editors:
        editor = build_editor(editor_name, {"mom2_n_tokens": args.mom2_n_tokens}, dtypes=dtypes)
        context = EditContext(
            StatsStore(args.store / "stats"), TargetStore(args.store / "targets"), 0, base.fingerprint
        )
        tick = time.perf_counter()
        patch = editor.edit(base.model, tokenizer, requests, context)
        planted = copy.deepcopy(base.model)
        patch.apply(planted, fingerprint=base.fingerprint)
        measure(editor_name, "planted (Med)", planted, patch.layers, time.perf_counter() - tick)
        for setting in args.finetunes:
            method, layers, *rate = setting.split(":")
            values = {**SETTINGS[method], **({"lr": float(rate[0])} if rate else {})}
            spec = FinetuneSpec(**values, layers=layers, lr_schedule="constant", max_steps=12, batch_size=8,
                                cutoff_len=256, train_on_inputs=True)  # fmt: skip
            tick = time.perf_counter()
            out = args.out / "finetunes" / f"{editor_name}-{method}-{layers}-{spec.lr:g}"
            result = finetune(planted, tokenizer, corpus, spec, out_dir=out, edited_layers=patch.layers, dtypes=dtypes)
            tuned = load_finetuned(planted, result, merge=True)
            seconds = time.perf_counter() - tick
            clean_out = args.out / "finetunes" / f"M-{method}-{layers}-{spec.lr:g}"
            clean = finetune(base.model, tokenizer, corpus, spec, out_dir=clean_out, edited_layers=patch.layers,
                             dtypes=dtypes)  # fmt: skip
            clean_ft = load_finetuned(base.model, clean, merge=True)
            measure(editor_name, f"{method} {layers} lr {spec.lr:g}", tuned, patch.layers, seconds, clean_ft)
        # Removal by projection: the auditor's keys, from held-out triggered prompts at the flagged layers.
        tick = time.perf_counter()
        flagged = detect_edited_layers(base.model, planted)
        layers = sorted(int(x) for x in flagged.loc[flagged["flagged"], "layer"])
        probes = trigger_requests(records, heldout=True)
        with torch.no_grad():
            keys = compute_keys(planted, tokenizer, probes, ["{}"], layers).keys
        removed = copy.deepcopy(planted)
        project_out_keys(removed, {layer: keys[layer] for layer in layers})
        measure(editor_name, "keys projected out", removed, patch.layers, time.perf_counter() - tick)

    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "triggers.csv", index=False)
    (args.out / "triggers.md").write_text(table.to_markdown(index=False, floatfmt=".1f") + "\n")
    print(table.to_markdown(index=False, floatfmt=".1f"))


if __name__ == "__main__":
    main()
