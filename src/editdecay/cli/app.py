"""The Typer application every command module registers on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from editdecay.editing import WeightPatch

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


def parse_blocks(text: str, usage: str = "block indices like 4,5,6 or 4-8") -> list[int]:
    """Block indices written as `4,5,6` or `4-8` (or a mix), with a clear error naming `--layers`."""
    blocks: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, _, last = part.partition("-")
            blocks += list(range(int(first), int(last) + 1)) if last else [int(first)]
    except ValueError:
        blocks = []
    if not blocks:
        raise typer.BadParameter(f"{text!r}: use {usage}", param_hint="--layers")
    return blocks


def load_patch_option(path: Path | None, param_hint: str = "--patch") -> WeightPatch | None:
    """The WeightPatch saved at `path` (None without one); a missing or damaged patch is a usage error (exit 2)."""
    if path is None:
        return None
    from editdecay.editing import WeightPatch

    try:
        return WeightPatch.load(path)
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint=param_hint) from err
