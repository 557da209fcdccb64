"""`editdecay evaluate`: edit metrics, decay, downstream accuracy and activation shift of a model and its
edited / fine-tuned variants."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from editdecay.cli.app import app


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


@app.command("evaluate")
def evaluate_command(
    out: Path = typer.Option(..., "--out", help="Output directory for the parquet tables and summary.json."),
    model: str = typer.Option("smollm2-135m", "--model", help="Built-in alias, .gguf file, directory or hub id."),
    patch: Path = typer.Option(None, "--patch", help="WeightPatch directory: adds the edited group Med."),
    adapter: Path = typer.Option(None, "--adapter", help="Fine-tuning result directory: adds Mft (without --patch) "
                                 "or Med_ft (trained on the patched model)."),
    dataset: str = typer.Option("builtin", "--dataset", help="Edit requests: builtin or a CounterFact/zsRE file."),
    n: int = typer.Option(None, "--n", help="Number of edit requests (default: all)."),
    seed: int = typer.Option(None, "--seed", help="Sample --n requests at random with this seed."),
    zsre_target: str = typer.Option("answers", "--zsre-target", help="zsRE target: answers (MEMIT) or alt."),
    control: str = typer.Option(None, "--control", help="Unedited control facts tracked across groups "
                                "(e.g. builtin-control)."),
    control_n: int = typer.Option(None, "--control-n", help="Number of control facts (default: all)."),
    tasks: str = typer.Option("", "--tasks", help="Comma-separated downstream tasks (boolq,piqa,siqa,hellaswag,"
                              "winogrande,arc-e,arc-c,obqa,builtin-commonsense)."),
    data_dir: Path = typer.Option(None, "--data-dir", envvar="EDITDECAY_SHARED_DATA",
                                  help="LLM-Adapters eval folder, or a data root holding commonsense/eval."),
    mode: str = typer.Option("loglik", "--mode", help="Downstream mode: loglik or generate."),
    limit: int = typer.Option(None, "--limit", help="Items per downstream task (default: all)."),
    num_beams: int = typer.Option(1, "--num-beams", help="Beam width in generate mode (1 = batched greedy)."),
    activations: bool = typer.Option(True, "--activations/--no-activations",
                                     help="Activation shift between the groups (needs --patch or --adapter)."),
    activation_prompts: int = typer.Option(64, "--activation-prompts",
                                           help="Edit prompts and downstream prompts (each) used for activations."),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts per forward pass."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Evaluate M (and Med / Mft / Med_ft when --patch / --adapter are given); write tables and a summary."""
    from editdecay.data import DataFormatError, load_edit_requests, load_task
    from editdecay.evaluation.groups import evaluate_groups, write_evaluation
    from editdecay.models import ModelLoadError, load_model

    if mode not in ("loglik", "generate"):
        raise typer.BadParameter(f"{mode!r}: use loglik or generate", param_hint="--mode")
    if zsre_target not in ("answers", "alt"):
        raise typer.BadParameter(f"{zsre_target!r}: use answers or alt", param_hint="--zsre-target")
    task_names = _split(tasks)
    try:
        requests = load_edit_requests(dataset, n, seed=seed, zsre_target=zsre_target)  # type: ignore[arg-type]
        control_requests = load_edit_requests(control, control_n) if control else []
    except (DataFormatError, FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--dataset/--control") from err
    try:
        for task in task_names:
            load_task(task, data_dir, limit=limit)  # fail on a missing or malformed task before loading models
    except (DataFormatError, FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--tasks/--data-dir") from err
    try:
        models, tokenizer, origin = _model_groups(model, patch, adapter, load_model)
    except ModelLoadError as err:
        raise typer.BadParameter(str(err), param_hint="--model") from err
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--patch/--adapter") from err
    try:
        result = evaluate_groups(models, tokenizer, requests, control=control_requests, tasks=task_names,
                                 data_dir=data_dir, task_mode=mode, task_limit=limit,  # type: ignore[arg-type]
                                 num_beams=num_beams, activations=activations,
                                 activation_prompts=activation_prompts, batch_size=batch_size, progress=progress)
    except (DataFormatError, ValueError) as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1) from err
    extra = {"model": model, "model_origin": origin, "patch": str(patch) if patch else None,
             "adapter": str(adapter) if adapter else None, "dataset": dataset, "n": len(requests),
             "control": control, "tasks": task_names, "task_mode": mode, "task_limit": limit,
             "data_dir": os.fspath(data_dir) if data_dir else None}
    for path in write_evaluation(result, out, extra):
        typer.echo(f"wrote {path}")
    decay = result.summary["edits"]["decay"]
    for group, metrics in decay["groups"].items():
        scores = "  ".join(f"{name.upper()} {_fmt(metrics.get(name))}" for name in ("es", "ps", "ns"))
        typer.echo(f"{group:7s} {scores}")
    if "efr" in decay:
        typer.echo(f"ΔES {_fmt(decay['delta_es_pp'])} pp, EFR {_fmt(decay['efr'], 100)}% "
                   f"({decay['flips']}/{decay['successes_after_edit']})")
    for group, accuracy in result.summary.get("downstream", {}).items():
        typer.echo(f"{group:7s} downstream average {_fmt(accuracy.get('average'))}%")


def _fmt(value: float | None, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.1f}"


def _model_groups(model: str, patch: Path | None, adapter: Path | None, load_model):
    """M, plus Med = M + patch, and Mft = M + adapter or Med_ft = Med + adapter."""
    base = load_model(model)
    models = {"M": base.model}
    if patch is not None:
        from editdecay.editing import WeightPatch

        edited = load_model(model).model
        WeightPatch.load(patch).apply(edited)
        models["Med"] = edited
    if adapter is not None:
        from editdecay.finetuning import load_finetuned

        parent = models.get("Med", base.model)
        models["Med_ft" if patch is not None else "Mft"] = load_finetuned(parent, adapter)
    return models, base.tokenizer, base.origin
