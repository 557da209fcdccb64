"""`editdecay finetune`: full / LoRA / DoRA fine-tuning of a (possibly edited) model on a corpus."""

from __future__ import annotations

from pathlib import Path

import typer

from editdecay.cli.app import app, parse_blocks
from editdecay.durability import STRATEGIES
from editdecay.finetuning.methods import FINETUNE_METHODS
from editdecay.finetuning.spec import COMPUTE_DTYPES, LAYER_POLICIES, spec_fields

SPEC_DEFAULTS = {name: default for name, (_, default) in spec_fields().items()}  # the options' defaults


def parse_layers(text: str) -> str | tuple[int, ...]:
    """A layer policy (`all`, `edited`, `non_edited`), or block indices such as `4,5,6` or `4-8`."""
    text = text.strip()
    if text in LAYER_POLICIES:
        return text
    blocks = parse_blocks(text, f"{', '.join(LAYER_POLICIES)}, or block indices like 4,5,6 or 4-8")
    return tuple(blocks)


@app.command("finetune")
def finetune_command(
    out: Path = typer.Option(..., "--out", help="Result directory (created when the run completes)."),
    model: str = typer.Option("smollm2-135m", "--model", help="Built-in alias, .gguf file, directory or hub id."),
    patch: Path = typer.Option(None, "--patch", help="WeightPatch directory applied first; defines 'edited'."),
    method: str = typer.Option(SPEC_DEFAULTS["method"], "--method", help=f"{', '.join(FINETUNE_METHODS)}."),
    layers: str = typer.Option(
        SPEC_DEFAULTS["layers"], "--layers", help=f"{', '.join(LAYER_POLICIES)}, or block indices (4,5,6 / 4-8)."
    ),
    targets: str = typer.Option(
        ",".join(SPEC_DEFAULTS["targets"]), "--targets", help="Short module names or block-relative paths."
    ),
    corpus: str = typer.Option("builtin", "--corpus", help="builtin, a JSON/JSONL file, or a directory of them."),
    corpus_format: str = typer.Option("auto", "--corpus-format", help="auto, alpaca, hotpotqa or prompt-response."),
    max_examples: int = typer.Option(None, "--max-examples", help="Seeded random subset of the corpus."),
    corpus_seed: int = typer.Option(0, "--corpus-seed", help="Seed of the --max-examples subset."),
    r: int = typer.Option(SPEC_DEFAULTS["r"], "--r", help="LoRA/DoRA rank."),
    alpha: float = typer.Option(SPEC_DEFAULTS["alpha"], "--alpha", help="LoRA/DoRA alpha."),
    dropout: float = typer.Option(SPEC_DEFAULTS["dropout"], "--dropout", help="LoRA/DoRA dropout."),
    lr: float = typer.Option(
        SPEC_DEFAULTS["lr"],
        "--lr",
        help="Learning rate (default: the method's, "
        + ", ".join(f"{m.name} {m.default_lr:g}" for m in FINETUNE_METHODS.values())
        + ").",
    ),
    epochs: int = typer.Option(SPEC_DEFAULTS["epochs"], "--epochs"),
    batch_size: int = typer.Option(SPEC_DEFAULTS["batch_size"], "--batch-size", help="Micro-batch size."),
    grad_accum: int = typer.Option(SPEC_DEFAULTS["grad_accum"], "--grad-accum", help="Micro-batches per step."),
    gradient_checkpointing: bool = typer.Option(
        SPEC_DEFAULTS["gradient_checkpointing"],
        "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Recompute activations (and the loss in chunks) in the backward pass: same loss, far less memory.",
    ),
    max_forward_tokens: int | None = typer.Option(
        SPEC_DEFAULTS["max_forward_tokens"],
        "--max-forward-tokens",
        help="Run each micro-batch in pieces of at most this many padded tokens: same loss, less memory.",
    ),
    warmup_steps: int = typer.Option(SPEC_DEFAULTS["warmup_steps"], "--warmup-steps"),
    warmup_ratio: float = typer.Option(SPEC_DEFAULTS["warmup_ratio"], "--warmup-ratio"),
    lr_schedule: str = typer.Option(
        SPEC_DEFAULTS["lr_schedule"], "--lr-schedule", help="After warmup: linear (decay to 0) or constant."
    ),
    weight_decay: float = typer.Option(SPEC_DEFAULTS["weight_decay"], "--weight-decay"),
    max_grad_norm: float = typer.Option(
        SPEC_DEFAULTS["max_grad_norm"], "--max-grad-norm", help="Clip the gradient norm to this (0: no clipping)."
    ),
    seed: int = typer.Option(SPEC_DEFAULTS["seed"], "--seed"),
    cutoff_len: int = typer.Option(SPEC_DEFAULTS["cutoff_len"], "--cutoff-len", help="Tokens kept per example."),
    train_on_inputs: bool = typer.Option(
        SPEC_DEFAULTS["train_on_inputs"],
        "--train-on-inputs/--no-train-on-inputs",
        help="Take the loss on prompt tokens too.",
    ),
    group_by_length: bool = typer.Option(
        SPEC_DEFAULTS["group_by_length"],
        "--group-by-length/--no-group-by-length",
        help="Batch examples of similar length together.",
    ),
    dtype: str = typer.Option(
        SPEC_DEFAULTS["compute_dtype"],
        "--dtype",
        help=f"Compute dtype: {', '.join(COMPUTE_DTYPES)} (auto: bfloat16 where a probe measures it faster).",
    ),
    max_steps: int = typer.Option(
        SPEC_DEFAULTS["max_steps"], "--max-steps", help="Stop after this many optimizer steps."
    ),
    val_fraction: float = typer.Option(
        SPEC_DEFAULTS["val_fraction"], "--val-fraction", help="Hold out this fraction for a validation loss."
    ),
    checkpoint_every: float = typer.Option(300.0, "--checkpoint-every", help="Seconds between checkpoints."),
    strategy: str = typer.Option(
        "none",
        "--strategy",
        help=f"Edit-preserving strategy ({', '.join(STRATEGIES)}); all but none need --patch. reedit is a "
        "pipeline strategy: `editdecay run` with finetune.strategy=reedit.",
    ),
    replay_fraction: float = typer.Option(
        0.25, "--replay-fraction", help="replay: share of the examples replaced by the edit requests."
    ),
) -> None:
    """Fine-tune a model (optionally with a WeightPatch applied) and save an adapter or weight delta."""
    from editdecay.data import DataFormatError, corpus_id, load_corpus
    from editdecay.finetuning import FinetuneSpec, finetune
    from editdecay.models import ModelLoadError, load_model

    target_names = tuple(t.strip() for t in targets.split(",") if t.strip())
    try:
        spec = FinetuneSpec(
            method=method,
            layers=parse_layers(layers),  # type: ignore[arg-type]  # parse_layers checked the policy name
            targets=target_names,
            r=r,
            alpha=alpha,
            dropout=dropout,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            grad_accum=grad_accum,
            gradient_checkpointing=gradient_checkpointing,
            max_forward_tokens=max_forward_tokens,
            warmup_steps=warmup_steps,
            warmup_ratio=warmup_ratio,
            lr_schedule=lr_schedule,  # type: ignore[arg-type]  # checked by FinetuneSpec
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm or None,
            seed=seed,
            cutoff_len=cutoff_len,
            train_on_inputs=train_on_inputs,
            group_by_length=group_by_length,
            compute_dtype=dtype,  # type: ignore[arg-type]
            max_steps=max_steps,
            val_fraction=val_fraction,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    if strategy not in STRATEGIES:
        raise typer.BadParameter(f"{strategy!r}: choose one of {', '.join(STRATEGIES)}", param_hint="--strategy")
    if STRATEGIES[strategy].reedits:
        raise typer.BadParameter(
            "reedit edits the fine-tuned model: fine-tune without --patch, then `editdecay edit` the result, or "
            "run the pipeline with finetune.strategy=reedit",
            param_hint="--strategy",
        )
    if strategy != "none" and patch is None:
        raise typer.BadParameter(f"--strategy {strategy} acts on the edits: give --patch", param_hint="--strategy")
    if patch is None and spec.layers in ("edited", "non_edited"):
        raise typer.BadParameter(
            f"--layers {spec.layers} needs --patch (the patch defines the edited blocks).", param_hint="--layers"
        )
    try:
        examples = load_corpus(corpus, max_examples=max_examples, seed=corpus_seed, fmt=corpus_format)  # type: ignore[arg-type]
    except (DataFormatError, FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--corpus") from err
    try:
        loaded = load_model(model)
    except ModelLoadError as err:
        raise typer.BadParameter(str(err), param_hint="--model") from err

    edited_layers, base_fingerprint, hooks = None, loaded.fingerprint, None
    if patch is not None:
        from editdecay.editing import WeightPatch

        try:
            weight_patch = WeightPatch.load(patch)
            weight_patch.apply(loaded.model, fingerprint=loaded.fingerprint)
        except (FileNotFoundError, ValueError) as err:
            raise typer.BadParameter(str(err), param_hint="--patch") from err
        edited_layers = list(weight_patch.layers)
        base_fingerprint = weight_patch.patched_fingerprint
        typer.echo(f"Applied patch {weight_patch.patch_id} (edited blocks {edited_layers}).")
        if strategy != "none":
            if not weight_patch.requests:
                raise typer.BadParameter(
                    f"--strategy {strategy} needs the edit requests saved with the patch (patch format 3); re-run "
                    "`editdecay edit`",
                    param_hint="--patch",
                )
            try:
                examples = STRATEGIES[strategy].corpus(examples, weight_patch.requests, replay_fraction, corpus_seed)
                hooks = STRATEGIES[strategy].hooks(weight_patch, weight_patch.requests, loaded.tokenizer)
            except ValueError as err:
                raise typer.BadParameter(str(err), param_hint="--strategy") from err
            typer.echo(f"Strategy {strategy}: {STRATEGIES[strategy].summary}.")
    typer.echo(f"{len(examples)} examples from {corpus}; {spec.method} on {model}, spec {spec.spec_id()}.")
    try:
        result = finetune(
            loaded.model,
            loaded.tokenizer,
            examples,
            spec,
            out_dir=out,
            edited_layers=edited_layers,
            base_fingerprint=base_fingerprint,
            corpus_id=corpus_id(corpus, max_examples, corpus_seed, corpus_format),  # type: ignore[arg-type]
            checkpoint_every_s=checkpoint_every,
            hooks=hooks,
        )
    except (ValueError, FileExistsError) as err:
        raise typer.BadParameter(str(err)) from err
    manifest = result.manifest
    losses = result.train_losses
    typer.echo(
        f"Done: {result.path}  ({manifest['steps']} steps, {manifest['tokens']:,} tokens, "
        f"{manifest['tokens_per_s']:.0f} tokens/s; loss {losses[0]:.4f} -> {losses[-1]:.4f}"
        + (f"; validation loss {result.val_loss:.4f}" if result.val_loss is not None else "")
        + ")"
    )
