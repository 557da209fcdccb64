"""`editdecay run`, `grid`, `report` and `demo`: the pipeline commands."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from editdecay.cli.app import app
from editdecay.config import ConfigError, load_experiment, load_grid
from editdecay.experiments.executors import EXECUTORS

STORE_OPTION = typer.Option(Path("artifacts"), "--store", help="Artifact store (statistics, patches, fine-tunes).")
RUNS_OPTION = typer.Option(Path("runs"), "--runs", help="Where run directories are written.")
SET_OPTION = typer.Option(None, "--set", "-s", help="Override a config key: section.key=value (repeatable).")


def _fail(err: Exception) -> typer.Exit:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@app.command("run")
def run_command(
    config: Path = typer.Argument(..., help="Experiment YAML file."),
    store: Path = STORE_OPTION,
    runs: Path = RUNS_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Run one experiment: edit, fine-tune, evaluate M / Med / Mft / Med_ft, write a run directory."""
    from editdecay.experiments import run_experiment
    from editdecay.reporting import format_run_summary

    try:
        experiment = load_experiment(config, overrides or [])
    except ConfigError as err:
        raise _fail(err) from None
    result = run_experiment(experiment, store, runs)
    typer.echo(format_run_summary(result.run_dir))
    typer.echo(f"\nrun directory: {result.run_dir}")


@app.command("grid")
def grid_command(
    config: Path = typer.Argument(..., help="Grid YAML file (base + lists of values)."),
    store: Path = STORE_OPTION,
    runs: Path = RUNS_OPTION,
    overrides: list[str] = SET_OPTION,
    executor: str = typer.Option("local", help=" | ".join(EXECUTORS)),
    address: str = typer.Option(None, help="Ray cluster address (auto, ray://host:10001)."),
    cluster: str = typer.Option(None, help="submitit: slurm, local or debug (default: slurm where srun exists)."),
    partition: str = typer.Option(None, help="submitit: the Slurm partition."),
    gpus_per_job: int = typer.Option(0, min=0, help="submitit: GPUs per job (editing and fine-tuning use them)."),
    cpus_per_job: int = typer.Option(2, min=1, help="submitit: CPUs per job."),
    mem_gb: float = typer.Option(None, min=0, help="submitit: host memory per job in GB."),
    timeout_min: int = typer.Option(240, min=1, help="submitit: time limit per job in minutes."),
    array_parallelism: int = typer.Option(16, min=1, help="submitit: jobs of the array running at once."),
    submitit_folder: Path = typer.Option(None, help="submitit: job pickles and logs (default RUNS/.submitit/%j)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would run and what is cached."),
    cost: bool = typer.Option(
        False, "--cost", help="With --dry-run: estimated time and memory of what would run, per device kind."
    ),
) -> None:
    """Run every configuration of a grid, reusing shared artifacts."""
    from editdecay.experiments import ArtifactStore, expand_grid, make_executor, plan_grid

    try:
        configs = expand_grid(load_grid(config, overrides or []))
    except ConfigError as err:
        raise _fail(err) from None
    if executor not in EXECUTORS:
        raise _fail(ValueError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}"))
    if cost and not dry_run:
        raise _fail(ValueError("--cost estimates a plan: use it with --dry-run."))
    for line in plan_grid(configs, ArtifactStore(store), runs).lines():
        typer.echo(line)
    if cost:
        from editdecay.experiments.cost import grid_cost, load_rates

        try:
            estimate = grid_cost(configs, ArtifactStore(store))
        except ValueError as err:
            raise _fail(err) from None
        typer.echo('\nEstimated cost of what would run (docs/cluster.md, "What a grid costs"):')
        for line in estimate.lines(load_rates()):
            typer.echo(line)
    if dry_run:
        return
    options: dict[str, object] = {}
    if executor == "ray":
        options = {"address": address}
    elif executor == "submitit":
        options = {
            "folder": submitit_folder,
            "cluster": cluster,
            "partition": partition,
            "gpus_per_job": gpus_per_job,
            "cpus_per_job": cpus_per_job,
            "mem_gb": mem_gb,
            "timeout_min": timeout_min,
            "array_parallelism": array_parallelism,
        }
    try:
        runner = make_executor(executor, **options)
    except ValueError as err:
        raise _fail(err) from None
    results = runner.run(configs, store, runs)
    typer.echo(f"\n{len(results)} runs in {runs}; make tables with: editdecay report {runs} --out report")


@app.command("report")
def report_command(
    runs_dir: Path = typer.Argument(..., help="Directory holding run directories."),
    out: Path = typer.Option(Path("report"), "--out", help="Report directory."),
) -> None:
    """Paper-style tables (markdown, LaTeX, CSV) and figures (PNG, PDF) from stored results only."""
    from editdecay.reporting import ReportError, write_report

    try:
        written = write_report(runs_dir, out)
    except ReportError as err:
        raise _fail(err) from None
    typer.echo(f"wrote {len(written)} files to {out}")


@app.command("findings")
def findings_command(
    runs_dir: Path = typer.Argument(..., help="Directory holding run directories (any grid's)."),
    out: Path = typer.Option(Path("findings"), "--out", help="Where findings.md and its tables go."),
    store: Path = typer.Option(None, "--store", help="The runs' artifact store: adds the null-space check."),
) -> None:
    """The study's claims C1-C10 on these runs: effect, 95% CI, paired test, the study's figure, verdict."""
    from editdecay.reporting import ReportError
    from editdecay.reporting.findings import write_findings

    try:
        written = write_findings(runs_dir, out, store)
    except ReportError as err:
        raise _fail(err) from None
    typer.echo((out / "findings.md").read_text())
    typer.echo(f"wrote {len(written)} files to {out}")


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Store, runs and report go here."),
    quick: bool = typer.Option(False, "--quick", help="Reduced sizes (CI smoke run)."),
    overrides: list[str] = SET_OPTION,
) -> None:
    """The main job: SmolLM2-135M, built-in edits, MEMIT and AlphaEdit, LoRA (all / edited layers), full report."""
    from editdecay.experiments import ArtifactStore, LocalExecutor, expand_grid, plan_grid
    from editdecay.reporting import demo_table, write_report

    preset = Path(__file__).resolve().parents[1] / "presets" / ("demo-quick.yaml" if quick else "demo.yaml")
    start = time.perf_counter()
    try:
        configs = expand_grid(load_grid(preset, overrides or []))
    except ConfigError as err:
        raise _fail(err) from None
    store, runs = out / "artifacts", out / "runs"
    for line in plan_grid(configs, ArtifactStore(store), runs).lines():
        typer.echo(line)
    LocalExecutor().run(configs, store, runs)
    written = write_report(runs, out / "report")
    typer.echo("\n" + demo_table(runs))
    typer.echo(f"\nreport: {out / 'report'} ({len(written)} files); wall time {time.perf_counter() - start:.0f} s")
