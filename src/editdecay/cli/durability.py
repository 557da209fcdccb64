"""`editdecay verify` (do the edits still hold? exit 0 yes, 1 no, 2 bad input) and `editdecay detect` (which
blocks of a suspect model were probably edited?)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from editdecay.cli.app import app, load_patch_option

if TYPE_CHECKING:
    from editdecay.durability.verify import VerifyResult


@app.command("verify")
def verify_command(
    model: str = typer.Option("smollm2-135m", "--model", help="Built-in alias, .gguf file, directory or hub id."),
    patch: Path = typer.Option(None, "--patch", help="WeightPatch directory applied to --model (the edits)."),
    adapter: Path = typer.Option(
        None, "--adapter", help="Fine-tuning result directory, applied after --patch (the model under test)."
    ),
    dataset: str = typer.Option(
        None, "--dataset", help="Edit requests: builtin or a CounterFact/zsRE file (default: the patch's own)."
    ),
    n: int = typer.Option(None, "--n", help="Number of edit requests (default: all)."),
    seed: int = typer.Option(None, "--seed", help="Sample --n requests with this seed (default: the first n)."),
    zsre_target: str = typer.Option("answers", "--zsre-target", help="zsRE target: answers (MEMIT) or alt."),
    control: str = typer.Option(None, "--control", help="Control facts that must stay known (e.g. builtin-control)."),
    control_n: int = typer.Option(None, "--control-n", help="Number of control facts (default: all)."),
    min_success: float = typer.Option(1.0, "--min-success", help="Required share of edits that hold (0-1)."),
    min_control: float = typer.Option(0.0, "--min-control", help="Required share of control facts known (0-1)."),
    json_out: Path = typer.Option(None, "--json", help="Write the per-edit table and summary as JSON."),
    markdown_out: Path = typer.Option(None, "--markdown", help="Write a Markdown report."),
    junit_out: Path = typer.Option(None, "--junit", help="Write JUnit XML (one test case per edit)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Prompts per forward pass."),
    quiet: bool = typer.Option(False, "--quiet", help="Print the verdict line only."),
) -> None:
    """Score each edit on the model under test (--model + --patch + --adapter) and on the model before its last
    change; print a table; exit 0 if the edits hold, 1 if not, 2 on bad input."""
    from editdecay.data import DataFormatError, load_edit_requests
    from editdecay.durability.verify import summary_line, verify_edits, write_json, write_junit, write_markdown
    from editdecay.models import ModelLoadError, load_model

    for name, value in (("--min-success", min_success), ("--min-control", min_control)):
        if not 0.0 <= value <= 1.0:
            raise typer.BadParameter(f"{value}: a share between 0 and 1", param_hint=name)
    if zsre_target not in ("answers", "alt"):
        raise typer.BadParameter(f"{zsre_target!r}: use answers or alt", param_hint="--zsre-target")
    loaded_patch = load_patch_option(patch)
    try:
        if dataset is not None:
            requests = load_edit_requests(dataset, n, seed=seed, zsre_target=zsre_target)  # type: ignore[arg-type]
        elif loaded_patch is not None and loaded_patch.requests:
            requests = loaded_patch.requests[:n] if n else loaded_patch.requests
        else:
            raise typer.BadParameter(
                "no edit requests: give --dataset, or a --patch that saved its requests (patch format 3)",
                param_hint="--dataset",
            )
        control_requests = load_edit_requests(control, control_n) if control else []
    except (DataFormatError, FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--dataset/--control") from err
    try:
        base = load_model(model)
    except ModelLoadError as err:
        raise typer.BadParameter(str(err), param_hint="--model") from err
    chain = [base.model]
    try:
        if loaded_patch is not None:
            edited = copy.deepcopy(base.model)
            loaded_patch.apply(edited, fingerprint=base.fingerprint)
            chain.append(edited)
        if adapter is not None:
            from editdecay.finetuning import load_finetuned

            chain.append(load_finetuned(chain[-1], adapter, merge=True))
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--patch/--adapter") from err
    try:
        result = verify_edits(
            chain[-1],
            base.tokenizer,
            requests,
            control_requests,
            before=chain[-2] if len(chain) > 1 else None,
            min_success=min_success,
            min_control=min_control,
            batch_size=batch_size,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--dataset") from err
    if not quiet:
        _print_table(result)
    for path, write in ((json_out, write_json), (markdown_out, write_markdown), (junit_out, write_junit)):
        if path is not None:
            typer.echo(f"wrote {write(result, path)}")
    typer.echo(summary_line(result))
    raise typer.Exit(0 if result.passed else 1)


def _print_table(result: VerifyResult) -> None:
    before = "success_before" in result.edits.columns
    header = f"{'':4s} {'edit':14s} {'margin':>7s}  {'answer':24s}" + ("  before" if before else "")
    typer.echo(header)
    for _, row in result.edits.iterrows():
        mark = "ok" if row["success"] else "FAIL"
        line = f"{mark:4s} {str(row['case_id'])[:14]:14s} {row['margin']:7.2f}  {str(row['answer'])[:24]!r:26s}"
        if before:
            line += f"{'ok' if row['success_before'] else 'fail':5s} {str(row['answer_before'])[:24]!r}"
        typer.echo(line)


@app.command("detect")
def detect_command(
    model: str = typer.Option(..., "--model", help="The original model M (alias, .gguf file, directory, hub id)."),
    suspect: str = typer.Option(..., "--suspect", help="The suspect model (same architecture), without any patch."),
    z: float = typer.Option(3.5, "--z", help="Robust z-score above which a block is flagged."),
    json_out: Path = typer.Option(None, "--json", help="Write the per-block table and the flagged blocks as JSON."),
) -> None:
    """Rank the suspect's blocks by how much their MLP output projection differs from M's; flag the outliers."""
    from editdecay.durability.detector import detect_edited_layers
    from editdecay.models import ModelLoadError, load_model
    from editdecay.storage import atomic_write_json

    try:
        base, other = load_model(model), load_model(suspect)
    except ModelLoadError as err:
        raise typer.BadParameter(str(err), param_hint="--model/--suspect") from err
    try:
        table = detect_edited_layers(base.model, other.model, z=z)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--suspect") from err
    typer.echo(f"{'layer':>5s} {'down Δ/W':>10s} {'others':>10s} {'rank':>6s} {'z':>7s}")
    for row in table.itertuples(index=False):
        flag = "  <- edited?" if row.flagged else ""
        typer.echo(f"{row.layer:5d} {row.down_rel:10.2e} {row.other_rel:10.2e} {row.down_stable_rank:6.1f} "
                   f"{row.z:7.1f}{flag}")  # fmt: skip
    flagged = sorted(int(layer) for layer in table.loc[table["flagged"], "layer"])
    typer.echo(f"probably edited blocks: {flagged if flagged else 'none'}")
    if json_out is not None:
        rows = table.replace([float("inf"), float("-inf")], None).to_dict(orient="records")
        atomic_write_json(json_out, {"flagged": flagged, "z": z, "blocks": rows})
        typer.echo(f"wrote {json_out}")
