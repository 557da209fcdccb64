"""How much fine-tuning decays edits: decay curves of one edited model under several fine-tuning settings.

Edits SmolLM2-135M once (MEMIT or AlphaEdit, CounterFact from ../shared/data when present, else the built-in
edits), then fine-tunes the edited model once per setting, scoring the edits and the control facts every
`--every` steps (the `CurveProbe` of the fine-tuning loop). Prints one line per (setting, step): ES / PS, the share
of edits still successful, the Edit Flip Ratio against Med, and the share of control facts still known; writes
`curves.parquet` and `decay_regime.png` to --out.

A setting is `method:layers:lr:steps:loss` (loss: `inputs` = train on the whole text, `response` = response
tokens only), e.g.

    .venv/bin/python bench/decay_regime.py --n 50 --settings lora:all:1e-3:64:inputs full:edited:1e-4:64:inputs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def parse_setting(text: str) -> dict[str, object]:
    try:
        method, layers, lr, steps, loss = text.split(":")
    except ValueError:
        raise SystemExit(f"setting {text!r}: expected method:layers:lr:steps:loss") from None
    if loss not in ("inputs", "response"):
        raise SystemExit(f"setting {text!r}: loss must be 'inputs' or 'response'")
    return {"method": method, "layers": layers, "lr": float(lr), "max_steps": int(steps), "toi": loss == "inputs"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="edits")
    parser.add_argument("--editor", default="memit")
    parser.add_argument("--settings", nargs="+", required=True)
    parser.add_argument("--every", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--control-n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="fine-tuning seed")
    parser.add_argument("--mom2-n-tokens", type=int, default=20000)
    parser.add_argument("--store", type=Path, default=Path("/tmp/editdecay-bench-store"))
    parser.add_argument("--out", type=Path, default=Path("bench-out/decay_regime"))
    parser.add_argument("--dtype", default="auto", help="fine-tuning compute dtype")
    parser.add_argument(
        "--corpus", default=None, help="fine-tuning corpus (default: Commonsense train files, else builtin)"
    )
    args = parser.parse_args()

    import copy

    import pandas as pd

    from editdecay.data import load_corpus, load_edit_requests
    from editdecay.editing import EditContext, StatsStore, TargetStore, build_editor
    from editdecay.evaluation.curve import curve_summary, edit_curve_measure
    from editdecay.finetuning import CurveProbe, FinetuneSpec, finetune
    from editdecay.models import DtypeResolver, load_model

    settings = [parse_setting(s) for s in args.settings]
    edits_file = SHARED / "counterfact" / "counterfact-edit.json"
    corpus_dir = SHARED / "commonsense" / "train_parts"
    requests = load_edit_requests(edits_file if edits_file.is_file() else "builtin", args.n)
    control = load_edit_requests("builtin-control", args.control_n)
    corpus = args.corpus or (corpus_dir if corpus_dir.is_dir() else "builtin")
    print(f"edits: {args.n} from {edits_file if edits_file.is_file() else 'builtin'}; corpus: {corpus}")

    dtypes = DtypeResolver()
    base = load_model("smollm2-135m")
    editor = build_editor(args.editor, {"mom2_n_tokens": args.mom2_n_tokens}, dtypes=dtypes)
    context = EditContext(StatsStore(args.store / "stats"), TargetStore(args.store / "targets"), 0, base.fingerprint)
    started = time.perf_counter()
    patch = editor.edit(base.model, base.tokenizer, requests, context)
    print(f"edit: {time.perf_counter() - started:.0f} s, layers {patch.layers}")
    med = copy.deepcopy(base.model)
    patch.apply(med, fingerprint=base.fingerprint)
    measure = edit_curve_measure(base.tokenizer, requests, control)

    args.out.mkdir(parents=True, exist_ok=True)
    frames = []
    for setting, text in zip(settings, args.settings, strict=True):
        max_steps = int(setting["max_steps"])  # type: ignore[call-overload]
        examples = load_corpus(corpus, max_examples=max_steps * args.batch_size, seed=args.seed)
        spec = FinetuneSpec(
            method=str(setting["method"]),
            layers=str(setting["layers"]),  # type: ignore[arg-type]
            lr=float(setting["lr"]),  # type: ignore[arg-type]
            max_steps=max_steps,
            batch_size=args.batch_size,
            train_on_inputs=bool(setting["toi"]),
            seed=args.seed,
            compute_dtype=args.dtype,  # type: ignore[arg-type]
            r=32 if setting["method"] != "full" else 8,
            alpha=64 if setting["method"] != "full" else 16,
        )
        out_dir = (
            args.out
            / "finetunes"
            / f"{text.replace(':', '_')}-s{args.seed}-{args.editor}-{args.n}-{Path(str(corpus)).stem}"
        )
        started = time.perf_counter()
        result = finetune(
            med,
            base.tokenizer,
            examples,
            spec,
            out_dir=out_dir,
            edited_layers=patch.layers,
            probe=CurveProbe(args.every, measure),
            probe_key=f"{args.editor}-{args.n}-control{args.control_n}",
            dtypes=dtypes,
        )
        assert result.curve is not None
        summary = curve_summary(result.curve)
        summary.insert(0, "setting", text)
        frames.append(summary)
        print(
            f"\n{text}: {time.perf_counter() - started:.0f} s, losses {result.train_losses[0]:.2f} -> "
            f"{result.train_losses[-1]:.2f}"
        )
        wide = summary.pivot(index="step", columns="set", values=["retained", "flip_ratio", "margin_pp"])
        print(wide.round(2).to_string())
    curves = pd.concat(frames, ignore_index=True)
    curves.to_parquet(args.out / "curves.parquet", index=False)
    _figure(curves, args.out / "decay_regime.png")
    print(f"\nwrote {args.out}/curves.parquet and decay_regime.png")


def _figure(curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (setting, set_name), table in curves.groupby(["setting", "set"], sort=False):
        ax.plot(
            table["step"],
            table["retained"],
            linestyle="-" if set_name == "edits" else ":",
            marker=".",
            label=f"{setting} ({set_name})",
        )
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("% retained (edits: success; control: known)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
