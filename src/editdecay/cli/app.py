"""The Typer application every command module registers on."""

import logging

import typer

app = typer.Typer(
    name="editdecay",
    help="Do knowledge edits survive fine-tuning? Edit (MEMIT, AlphaEdit), fine-tune (full, LoRA, DoRA), "
    "measure edit decay.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
