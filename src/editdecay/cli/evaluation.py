"""`editdecay evaluate`: edit metrics, decay, downstream accuracy and activation shift of a model and its
edited / fine-tuned variants, through the same evaluation path and into the same tables as `editdecay run`."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from editdecay.cli.app import app, load_patch_option

if TYPE_CHECKING:
    from editdecay.data import EditRequest
    from editdecay.editing import WeightPatch


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


@app.command("evaluate")
def evaluate_command(
    out: Path = typer.Option(..., "--out", help="Output directory for the parquet tables and summary.json."),
    model: str = typer.Option("smollm2-135m", "--model", help="Built-in alias, .gguf file, directory or hub id."),
    patch: Path = typer.Option(None, "--patch", help="WeightPatch directory: adds the edited group Med."),
    allow_other_requests: bool = typer.Option(
        False, "--allow-other-requests", help="Evaluate requests other than the ones --patch edited (warns)."
    ),
    adapter: Path = typer.Option(
        None,
        "--adapter",
        help="Fine-tuning result directory: adds Mft (without --patch) or Med_ft (trained on the patched model).",
    ),
    base_adapter: Path = typer.Option(
        None,
        "--base-adapter",
        help="With --patch: the fine-tuning result of the base model, adding Mft beside Med and Med_ft.",
    ),
    dataset: str = typer.Option("builtin", "--dataset", help="Edit requests: builtin or a CounterFact/zsRE file."),
    n: int = typer.Option(None, "--n", help="Number of edit requests (default: all)."),
    seed: int = typer.Option(
        None,
        "--seed",
        help="Sample --n requests at random with this seed (default: the first n), as in `editdecay edit`.",
    ),
    zsre_target: str = typer.Option("answers", "--zsre-target", help="zsRE target: answers (MEMIT) or alt."),
    control: str = typer.Option(
        None, "--control", help="Unedited control facts tracked across groups (e.g. builtin-control)."
    ),
    control_n: int = typer.Option(None, "--control-n", help="Number of control facts (default: all)."),
    tasks: str = typer.Option(
        "",
        "--tasks",
        help="Comma-separated downstream tasks (boolq,piqa,siqa,hellaswag,"
        "winogrande,arc-e,arc-c,obqa,builtin-commonsense).",
    ),
    data_dir: Path = typer.Option(
        None,
        "--data-dir",
        envvar="EDITDECAY_SHARED_DATA",
        help="LLM-Adapters eval folder, or a data root holding commonsense/eval.",
    ),
    mode: str = typer.Option("loglik", "--mode", help="Downstream mode: loglik or generate."),
    limit: int = typer.Option(None, "--limit", help="Items per downstream task (default: all)."),
    num_beams: int = typer.Option(1, "--num-beams", min=1, help="Beam width in generate mode (1 = batched greedy)."),
    answer_extraction: str = typer.Option(
        "lenient",
        "--answer-extraction",
        help="Generate mode: lenient (case-insensitive) or study (case-sensitive, "
        "first match, as the LLM-Adapters evaluator).",
    ),
    activations: bool = typer.Option(
        True, "--activations/--no-activations", help="Activation shift between the groups (needs --patch or --adapter)."
    ),
    activation_prompts: int = typer.Option(
        64, "--activation-prompts", help="Edit prompts and downstream prompts (each) used for activations."
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts per forward pass."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Evaluate M (and Med / Mft / Med_ft when --patch / --adapter / --base-adapter are given); write tables and
    a summary."""
    from editdecay.data import DataFormatError, load_edit_requests, load_task
    from editdecay.evaluation.groups import evaluate_groups, write_summary
    from editdecay.models import ModelLoadError, load_model

    if mode not in ("loglik", "generate"):
        raise typer.BadParameter(f"{mode!r}: use loglik or generate", param_hint="--mode")
    if zsre_target not in ("answers", "alt"):
        raise typer.BadParameter(f"{zsre_target!r}: use answers or alt", param_hint="--zsre-target")
    if answer_extraction not in ("lenient", "study"):
        raise typer.BadParameter(f"{answer_extraction!r}: use lenient or study", param_hint="--answer-extraction")
    if base_adapter is not None and patch is None:
        raise typer.BadParameter(
            "without --patch, --adapter is the base model's fine-tuning (Mft)", param_hint="--base-adapter"
        )
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
    loaded_patch = load_patch_option(patch)
    if loaded_patch is not None:
        _check_patch_requests(loaded_patch, requests, allow_other_requests)
    try:
        models, tokenizer, origin = _model_groups(model, loaded_patch, adapter, base_adapter, load_model)
    except ModelLoadError as err:
        raise typer.BadParameter(str(err), param_hint="--model") from err
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--patch/--adapter/--base-adapter") from err
    try:
        result = evaluate_groups(
            models,
            tokenizer,
            requests,
            control=control_requests,
            tasks=task_names,
            data_dir=data_dir,
            task_mode=mode,  # type: ignore[arg-type]  # checked against loglik/generate above
            task_limit=limit,
            num_beams=num_beams,
            answer_extraction=answer_extraction,  # type: ignore[arg-type]
            activations=activations,
            activation_prompts=activation_prompts,
            edit_layers=loaded_patch.layers if loaded_patch is not None else None,
            batch_size=batch_size,
            progress=progress,
        )
    except (DataFormatError, ValueError) as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1) from err
    extra = {
        "model": model,
        "model_origin": origin,
        "patch": str(patch) if patch else None,
        "adapter": str(adapter) if adapter else None,
        "base_adapter": str(base_adapter) if base_adapter else None,
        "dataset": dataset,
        "n": len(requests),
        "control": control,
        "tasks": task_names,
        "task_mode": mode,
        "task_limit": limit,
        "answer_extraction": answer_extraction if mode == "generate" else None,
        "data_dir": os.fspath(data_dir) if data_dir else None,
    }
    for path in write_summary(result, out, extra):
        typer.echo(f"wrote {path}")
    decay = result.summary["edits"]["decay"]
    for group, metrics in decay["groups"].items():
        scores = "  ".join(f"{name.upper()} {_fmt(metrics.get(name))}" for name in ("es", "ps", "ns"))
        typer.echo(f"{group:7s} {scores}")
    if "efr" in decay:
        typer.echo(
            f"ΔES {_fmt(decay['delta_es_pp'])} pp, EFR {_fmt(decay['efr'], 100)}% "
            f"({decay['flips']}/{decay['successes_after_edit']})"
        )
    for group, accuracy in result.summary.get("downstream", {}).items():
        typer.echo(f"{group:7s} downstream average {_fmt(accuracy.get('average'))}%")


def _fmt(value: float | None, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.1f}"


def _check_patch_requests(patch: WeightPatch, requests: list[EditRequest], allow_other: bool) -> None:
    """Refuse (or, with --allow-other-requests, warn) when the evaluated requests are not the patch's."""
    patched = set(patch.request_ids)
    evaluated = [r.case_id for r in requests]
    in_patch = sum(case_id in patched for case_id in evaluated)
    not_evaluated = len(patched - set(evaluated))
    if in_patch == len(evaluated) and not not_evaluated:
        return
    message = (
        f"the evaluated requests are not the ones --patch edited: {in_patch} of the {len(evaluated)} "
        f"evaluated requests are in the patch, {not_evaluated} of the patch's {len(patched)} requests are "
        "not evaluated" + ("" if patched else " (its manifest records no request_ids)")
    )
    if not allow_other:
        raise typer.BadParameter(
            f"{message}. Select the patch's requests (the --dataset, --n and --seed given to `editdecay edit`), "
            "or pass --allow-other-requests.",
            param_hint="--patch/--dataset",
        )
    typer.echo(f"WARNING: {message}; continuing because of --allow-other-requests.", err=True)


def _model_groups(model: str, patch: WeightPatch | None, adapter: Path | None, base_adapter: Path | None, load_model):
    """M, plus Med = M + patch (a loaded WeightPatch), Mft = M + base_adapter, and Mft = M + adapter or
    Med_ft = Med + adapter; made as `editdecay run` makes them (a copy of M, adapters merged)."""
    base = load_model(model)
    models = {"M": base.model}
    if patch is not None:
        edited = copy.deepcopy(base.model)
        patch.apply(edited, fingerprint=base.fingerprint)
        models["Med"] = edited
    if adapter is not None or base_adapter is not None:
        from editdecay.finetuning import load_finetuned

        if base_adapter is not None:
            models["Mft"] = load_finetuned(base.model, base_adapter, merge=True)
        if adapter is not None:
            parent = models.get("Med", base.model)
            models["Med_ft" if patch is not None else "Mft"] = load_finetuned(parent, adapter, merge=True)
    return models, base.tokenizer, base.origin
