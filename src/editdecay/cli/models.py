"""`editdecay models`: list the built-in models and check that one loads."""

import typer

from editdecay.cli.app import app
from editdecay.models import BUILTIN_MODELS, KNOWN_MODELS, ModelLoadError, arch_for, default_edit_layers, load_model


@app.command("models")
def models_command(
    load: str = typer.Option(None, "--load", help="Load this model (alias, .gguf, directory or hub id)."),
    prompt: str = typer.Option("The capital of France is", help="Prompt completed after --load."),
) -> None:
    """List built-in models and recorded edit layers; optionally load one and complete a prompt."""
    for alias, builtin in BUILTIN_MODELS.items():
        typer.echo(f"{alias:14s} {builtin.description}  (install: {builtin.install})")
    typer.echo("\nRecorded edit layers:")
    for known in KNOWN_MODELS:
        typer.echo(f"  {known.label:26s} layers {list(known.edit_layers)}  ({known.how_chosen})")
    if load:
        try:
            loaded = load_model(load)
        except ModelLoadError as err:
            raise typer.BadParameter(str(err), param_hint="--load") from err
        model, tokenizer = loaded
        inputs = tokenizer(prompt, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        completion = tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
        typer.echo(
            f"\n{load}: {loaded.origin}\n  architecture {arch_for(model).name}, edit layers "
            f"{list(default_edit_layers(model))}, fingerprint {loaded.fingerprint}"
        )
        typer.echo(f"  {prompt!r} -> {completion!r}")
