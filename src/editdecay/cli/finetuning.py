"""`editdecay finetune`: full / LoRA / DoRA fine-tuning of a (possibly edited) model on a corpus."""

from __future__ import annotations

from pathlib import Path

import typer

from editdecay.cli.app import app, parse_blocks

_POLICIES = ("all", "edited", "non_edited")
_DEFAULTS = {  # FinetuneSpec's defaults, repeated here so `--help` needs no torch import (checked by a test)
    "r": 8, "alpha": 16.0, "dropout": 0.05, "epochs": 3, "batch_size": 16, "grad_accum": 1, "warmup_steps": 0,
    "warmup_ratio": 0.05, "weight_decay": 0.0, "seed": 0, "cutoff_len": 256, "train_on_inputs": True,
    "compute_dtype": "auto",
}


def parse_layers(text: str) -> str | tuple[int, ...]:
    """`all`, `edited`, `non_edited`, or block indices such as `4,5,6` or `4-8`."""
    text = text.strip()
    if text in _POLICIES:
        return text
    blocks = parse_blocks(text, "all, edited, non_edited, or block indices like 4,5,6 or 4-8")
    return tuple(blocks)


@app.command("finetune")
def finetune_command(
    out: Path = typer.Option(..., "--out", help="Result directory (created when the run completes)."),
    model: str = typer.Option("smollm2-135m", "--model", help="Built-in alias, .gguf file, directory or hub id."),
    patch: Path = typer.Option(None, "--patch", help="WeightPatch directory applied first; defines 'edited'."),
    method: str = typer.Option("lora", "--method", help="full, lora or dora."),
    layers: str = typer.Option("all", "--layers", help="all, edited, non_edited, or block indices (4,5,6 / 4-8)."),
    targets: str = typer.Option("q,k,v,up,down", "--targets", help="Short module names or block-relative paths."),
    corpus: str = typer.Option("builtin", "--corpus", help="builtin, a JSON/JSONL file, or a directory of them."),
    corpus_format: str = typer.Option("auto", "--corpus-format", help="auto, alpaca, hotpotqa or prompt-response."),
    max_examples: int = typer.Option(None, "--max-examples", help="Seeded random subset of the corpus."),
    corpus_seed: int = typer.Option(0, "--corpus-seed", help="Seed of the --max-examples subset."),
    r: int = typer.Option(_DEFAULTS["r"], "--r", help="LoRA/DoRA rank."),
    alpha: float = typer.Option(_DEFAULTS["alpha"], "--alpha", help="LoRA/DoRA alpha."),
    dropout: float = typer.Option(_DEFAULTS["dropout"], "--dropout", help="LoRA/DoRA dropout."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default: LoRA/DoRA 2e-4, full 2e-5)."),
    epochs: int = typer.Option(_DEFAULTS["epochs"], "--epochs"),
    batch_size: int = typer.Option(_DEFAULTS["batch_size"], "--batch-size", help="Micro-batch size."),
    grad_accum: int = typer.Option(_DEFAULTS["grad_accum"], "--grad-accum", help="Micro-batches per step."),
    warmup_steps: int = typer.Option(_DEFAULTS["warmup_steps"], "--warmup-steps"),
    warmup_ratio: float = typer.Option(_DEFAULTS["warmup_ratio"], "--warmup-ratio"),
    weight_decay: float = typer.Option(_DEFAULTS["weight_decay"], "--weight-decay"),
    seed: int = typer.Option(_DEFAULTS["seed"], "--seed"),
    cutoff_len: int = typer.Option(_DEFAULTS["cutoff_len"], "--cutoff-len", help="Tokens kept per example."),
    train_on_inputs: bool = typer.Option(_DEFAULTS["train_on_inputs"], "--train-on-inputs/--no-train-on-inputs",
                                         help="Take the loss on prompt tokens too."),
    dtype: str = typer.Option(_DEFAULTS["compute_dtype"], "--dtype",
                              help="Compute dtype: auto (bfloat16 where a probe measures it faster), bfloat16 or "
                              "float32."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    val_fraction: float = typer.Option(None, "--val-fraction", help="Hold out this fraction for a validation loss."),
    checkpoint_every: float = typer.Option(300.0, "--checkpoint-every", help="Seconds between checkpoints."),
) -> None:
    """Fine-tune a model (optionally with a WeightPatch applied) and save an adapter or weight delta."""
    from editdecay.data import DataFormatError, corpus_id, load_corpus
    from editdecay.finetuning import FinetuneSpec, finetune
    from editdecay.models import ModelLoadError, load_model

    target_names = tuple(t.strip() for t in targets.split(",") if t.strip())
    try:
        spec = FinetuneSpec(
            method=method, layers=parse_layers(layers), targets=target_names,
            r=r, alpha=alpha, dropout=dropout, lr=lr, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
            warmup_steps=warmup_steps, warmup_ratio=warmup_ratio, weight_decay=weight_decay, seed=seed,
            cutoff_len=cutoff_len, train_on_inputs=train_on_inputs, compute_dtype=dtype,  # type: ignore[arg-type]
            max_steps=max_steps, val_fraction=val_fraction,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    if patch is None and spec.layers in ("edited", "non_edited"):
        raise typer.BadParameter(f"--layers {spec.layers} needs --patch (the patch defines the edited blocks).",
                                 param_hint="--layers")
    try:
        examples = load_corpus(corpus, max_examples=max_examples, seed=corpus_seed, fmt=corpus_format)  # type: ignore[arg-type]
    except (DataFormatError, FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--corpus") from err
    try:
        loaded = load_model(model)
    except ModelLoadError as err:
        raise typer.BadParameter(str(err), param_hint="--model") from err

    edited_layers, base_fingerprint = None, loaded.fingerprint
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
    typer.echo(f"{len(examples)} examples from {corpus}; {spec.method} on {model}, spec {spec.spec_id()}.")
    try:
        result = finetune(loaded.model, loaded.tokenizer, examples, spec, out_dir=out, edited_layers=edited_layers,
                          base_fingerprint=base_fingerprint,
                          corpus_id=corpus_id(corpus, max_examples, corpus_seed, corpus_format),  # type: ignore[arg-type]
                          checkpoint_every_s=checkpoint_every)
    except (ValueError, FileExistsError) as err:
        raise typer.BadParameter(str(err)) from err
    manifest = result.manifest
    losses = result.train_losses
    typer.echo(f"Done: {result.path}  ({manifest['steps']} steps, {manifest['tokens']:,} tokens, "
               f"{manifest['tokens_per_s']:.0f} tokens/s; loss {losses[0]:.4f} -> {losses[-1]:.4f}"
               + (f"; validation loss {result.val_loss:.4f}" if result.val_loss is not None else "") + ")")
