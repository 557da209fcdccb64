"""`editdecay stats` and `editdecay edit`: second-moment statistics and knowledge edits (MEMIT, AlphaEdit)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from editdecay.cli.app import app, parse_blocks
from editdecay.editing.registry import EDITORS


def _layers(text: str | None) -> list[int] | None:
    """Block indices such as `4,5,6` or `4-8`."""
    return parse_blocks(text) if text else None


def _settings(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values are parsed as JSON when they can be (numbers, lists, true/false, null)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r}: expected key=value, e.g. mom2_update_weight=1500", param_hint="--set")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _load(model: str, threads: int | None):
    import torch

    from editdecay.models import ModelLoadError, load_model

    if threads:
        torch.set_num_threads(threads)
    try:
        return load_model(model)
    except ModelLoadError as err:
        raise typer.BadParameter(str(err), param_hint="--model") from err


def _stats_root(stats_dir: Path | None) -> Path:
    from editdecay.models import default_cache_dir

    return stats_dir or default_cache_dir() / "stats"


@app.command("stats")
def stats_command(
    model: str = typer.Option("smollm2-135m", "--model", help="Built-in alias, .gguf file, directory or hub id."),
    layers: str = typer.Option(None, "--layers", help="Block indices (4,5,6 or 4-8); default: the editor preset's."),
    corpus: str = typer.Option(
        None,
        "--corpus",
        help="model-sampled, a text/JSONL/WikiExtractor file or directory, or hf:NAME; default: the editor preset's.",
    ),
    tokens: int = typer.Option(None, "--tokens", min=1, help="Sample size in tokens; default: the editor preset's."),
    dtype: str = typer.Option(None, "--dtype", help="Accumulation dtype: float32 or float64; default: the preset's."),
    max_length: int = typer.Option(
        None, "--max-length", min=1, help="Tokens kept per document; default: the preset's."
    ),
    stats_dir: Path = typer.Option(None, "--stats-dir", help="Statistics cache (default: ~/.cache/editdecay/stats)."),
    threads: int = typer.Option(None, "--threads", min=1, help="torch intra-op threads."),
) -> None:
    r"""Collect (or load from the cache) E\[k k^T] for every requested layer in one pass over the corpus.

    Unset options take the values `editdecay edit` will use for this model (its MEMIT preset), so the
    statistics computed here are the ones the edit reuses."""
    import torch

    from editdecay.editing import MemitEditor, StatisticError, StatsStore

    loaded = _load(model, threads)
    preset = MemitEditor().resolved_hparams(loaded.model)
    chosen = _layers(layers) or list(preset.layers)
    store = StatsStore(_stats_root(stats_dir))
    try:
        found = store.get_layer_stats(
            loaded.model,
            loaded.tokenizer,
            chosen,
            corpus=corpus or preset.mom2_dataset,
            n_tokens=tokens or preset.mom2_n_tokens,
            dtype=dtype or preset.mom2_dtype,
            fingerprint=loaded.fingerprint,
            max_length=max_length or preset.mom2_max_length,
        )
    except (ValueError, FileNotFoundError, StatisticError, RuntimeError) as err:
        raise typer.BadParameter(str(err)) from err
    for layer, stats in sorted(found.items()):
        values = torch.linalg.eigvalsh(stats.moment.double())
        typer.echo(
            f"layer {layer:3d}: {stats.n_tokens} tokens, {stats.n_documents} documents, "
            f"{stats.seconds:.1f} s; eigenvalues min {values[0]:.3g} max {values[-1]:.3g}; "
            f"{store.path(stats.key)}"
        )


@app.command("edit")
def edit_command(
    out: Path = typer.Option(..., "--out", help="Output directory: patch/ (WeightPatch) and summary.json."),
    model: str = typer.Option("smollm2-135m", "--model", help="Built-in alias, .gguf file, directory or hub id."),
    editor: str = typer.Option("memit", "--editor", help=f"{', '.join(EDITORS)}."),
    dataset: str = typer.Option(
        "builtin", "--dataset", help="builtin, or a CounterFact (ROME/EasyEdit) / zsRE / built-in JSON(L) file."
    ),
    n: int = typer.Option(None, "--n", min=1, help="Number of edit requests (default: all)."),
    seed: int = typer.Option(
        None,
        "--seed",
        help="Sample --n requests at random with this seed (default: the first n), as in `editdecay evaluate`.",
    ),
    zsre_target: str = typer.Option("answers", "--zsre-target", help="zsRE target: answers (MEMIT) or alt."),
    editor_seed: int = typer.Option(0, "--editor-seed", help="Seed of the editor's context templates."),
    hparams: Path = typer.Option(
        None,
        "--hparams",
        help="MEMIT JSON / EasyEdit YAML hyperparameter file (keys it does not use are ignored and recorded).",
    ),
    preset: str = typer.Option(None, "--preset", help="Preset name (default: recognised from the model)."),
    settings: list[str] = typer.Option(
        [], "--set", help="Override a hyperparameter of the editor's hparams class: key=value (repeatable)."
    ),
    layers: str = typer.Option(None, "--layers", help="Edit layers (4,5,6 or 4-8)."),
    corpus: str = typer.Option(None, "--corpus", help="Statistics corpus (hparam mom2_dataset)."),
    tokens: int = typer.Option(None, "--tokens", min=1, help="Statistics sample size (hparam mom2_n_tokens)."),
    stats_dir: Path = typer.Option(
        None,
        "--stats-dir",
        help="Statistics cache (default: ~/.cache/editdecay/stats); target values and the progress of a "
        "sequential edit are kept beside it (targets/, edit-progress/), so a killed edit resumes.",
    ),
    artifacts_dir: Path = typer.Option(
        None,
        "--artifacts-dir",
        help="What editors train for a model, e.g. MEND's network (default: ~/.cache/editdecay/editors).",
    ),
    evaluate: bool = typer.Option(
        False, "--evaluate/--no-evaluate", help="Score ES/PS/NS before and after the edit and add them to the summary."
    ),
    threads: int = typer.Option(None, "--threads", min=1, help="torch intra-op threads."),
) -> None:
    """Edit requests into a model; write the WeightPatch and a summary (update norms, time split)."""
    from editdecay.config import unknown_editor_hparams
    from editdecay.data import DataFormatError, load_edit_requests
    from editdecay.editing import (
        EditContext,
        EditInputError,
        SolveError,
        StatisticError,
        StatsStore,
        TargetOptimisationError,
        TargetStore,
        build_editor,
    )
    from editdecay.editing.hparams import read_hparams_file
    from editdecay.storage import atomic_write_json

    if editor not in EDITORS:
        raise typer.BadParameter(f"{editor!r}: choose one of {', '.join(EDITORS)}", param_hint="--editor")
    explicit = _settings(settings)
    unknown = unknown_editor_hparams(editor, explicit)
    if unknown:
        raise typer.BadParameter(f"unknown {editor} hyperparameter {', '.join(unknown)}", param_hint="--set")
    if zsre_target not in ("answers", "alt"):
        raise typer.BadParameter(f"{zsre_target!r}: use answers or alt", param_hint="--zsre-target")
    try:
        requests = load_edit_requests(dataset, n, seed=seed, zsre_target=zsre_target)  # type: ignore[arg-type]
    except (DataFormatError, FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--dataset/--n") from err
    overrides: dict[str, Any] = {}
    try:
        if hparams:
            overrides.update(read_hparams_file(hparams))
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--hparams") from err
    overrides.update(explicit)
    options = {"layers": _layers(layers), "mom2_dataset": corpus, "mom2_n_tokens": tokens}
    given = {key: value for key, value in options.items() if value is not None}
    unused = unknown_editor_hparams(editor, given)
    if unused:
        flags = {"mom2_dataset": "--corpus", "mom2_n_tokens": "--tokens"}
        raise typer.BadParameter(
            f"{editor} uses no second-moment statistic", param_hint="/".join(flags[key] for key in unused)
        )
    overrides.update(given)
    try:
        chosen = build_editor(editor, overrides or None, preset=preset)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    loaded = _load(model, threads)
    summary: dict[str, Any] = {
        "model": model,
        "editor": editor,
        "dataset": dataset,
        "n_requests": len(requests),
        "seed": seed,
        "zsre_target": zsre_target,
        "editor_seed": editor_seed,
    }
    if evaluate:
        summary["before"] = _scores(loaded, requests)
    try:
        # Target values (per chunk) and a sequential edit's batches are kept beside the statistics, so a killed
        # edit resumes where it stopped; the batch progress is removed when the edit finishes.
        beside = _stats_root(stats_dir).parent
        context = EditContext(
            stats=StatsStore(_stats_root(stats_dir)),
            targets=TargetStore(beside / "targets"),
            seed=editor_seed,
            fingerprint=loaded.fingerprint,
            artifacts=artifacts_dir,
            progress=beside / "edit-progress",
        )
        patch = chosen.edit(loaded.model, loaded.tokenizer, requests, context)
    except (EditInputError, SolveError, StatisticError, TargetOptimisationError, ValueError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err)) from err
    patch.save(out / "patch")
    manifest = patch.manifest
    summary.update(
        {
            "patch_id": patch.patch_id,
            "layers": patch.layers,
            "update_norms": manifest["update_norms"],
            "timings": manifest["timings"],
            "statistics": manifest.get("statistics", {}),
            "batches": manifest.get("batches", []),
            "hparams": manifest["hparams"],
            **{key: value for key, value in manifest.items() if key in ("target_nll", "training")},
            **({"nullspace": manifest["nullspace"]} if "nullspace" in manifest else {}),
        }
    )
    if evaluate:
        patch.apply(loaded.model, fingerprint=loaded.fingerprint)
        summary["after"] = _scores(loaded, requests)
    atomic_write_json(out / "summary.json", summary)
    _report(summary, out)


def _scores(loaded, requests) -> dict[str, float | None]:
    from editdecay.evaluation import edit_metrics, score_edits, summarize_edit_metrics

    per_edit = edit_metrics(score_edits(loaded.model, loaded.tokenizer, requests))
    summary = summarize_edit_metrics(per_edit)
    return {k: summary.get(k) for k in ("es", "ps", "ns", "es_magnitude", "es_accuracy")}


def _report(summary: dict[str, Any], out: Path) -> None:
    t = summary["timings"]
    typer.echo(
        f"Edited {summary['n_requests']} requests with {summary['editor']} into layers {summary['layers']} "
        f"(patch {summary['patch_id'][:12]}) -> {out}"
    )
    typer.echo(
        "  time: "
        + ", ".join(
            f"{k} {t[k]:.1f} s" for k in ("statistics", "targets", "keys", "solve", "network", "total") if k in t
        )
    )
    typer.echo("  update norms: " + ", ".join(f"L{k} {v:.3g}" for k, v in summary["update_norms"].items()))
    carried = [b.get("carried_fraction_mean") for b in summary["batches"]]
    if carried:
        typer.echo(
            "  share of the wanted change carried at the last edit layer: "
            + ", ".join(f"{c:.2f}" for c in carried if c is not None)
        )
    if "target_nll" in summary:
        nll = summary["target_nll"]
        typer.echo(f"  mean target NLL: {nll['before']:.3f} -> {nll['after']:.3f}")
    for when in ("before", "after"):
        if when in summary:
            scores = summary[when]
            typer.echo(
                f"  {when}: "
                + ", ".join(
                    f"{k.upper()} {v:.1f}" for k, v in scores.items() if v is not None and k in ("es", "ps", "ns")
                )
            )
