"""The stages of one experiment, each producing (or reusing) one artifact of the store, on a `RunContext`."""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from editdecay import __version__
from editdecay.data import EditRequest, load_corpus
from editdecay.data.fact_statements import fact_statements, mix_statements
from editdecay.durability import strategy
from editdecay.editing import EditContext, StatsStore, TargetStore, WeightPatch, build_editor
from editdecay.evaluation import (
    GroupScores,
    ModelGroups,
    group_activations,
    score_group,
    summarize_groups,
    task_available,
    write_summary,
)
from editdecay.evaluation.curve import curve_summary, edit_curve_measure
from editdecay.evaluation.groups import task_items
from editdecay.experiments.context import RunContext
from editdecay.experiments.resident import ResidentGroups
from editdecay.finetuning import CurveProbe, FinetuneResult, finetune
from editdecay.storage import atomic_write_json, atomic_write_parquet, atomic_write_text

log = logging.getLogger(__name__)


def edit_stage(
    run: RunContext, requests: list[EditRequest], key: str, model: nn.Module | None = None, name: str = "edit"
) -> WeightPatch:
    """The configured editor's patch of M (or of `model`, e.g. Mft for the `reedit` strategy; its statistics are
    then those of that model, computed unless the store has them)."""
    config, base, resolved = run.config, run.base, run.resolved

    def compute(path: Path) -> None:
        editor = build_editor(
            config.editor.name, resolved.editor_hparams, preset=config.editor.preset, dtypes=run.dtypes
        )
        context = EditContext(
            stats=StatsStore(run.store.stats_root),
            targets=TargetStore(run.store.targets_root),
            seed=config.editor.seed,
            fingerprint=base.fingerprint if model is None else None,
            artifacts=run.store.editors_root,
            progress=run.store.edit_progress_root,
        )
        patch = editor.edit(base.model if model is None else model, base.tokenizer, requests, context)
        patch.save(path / "patch")

    path = run.stage(name, "patches", key, compute)
    return WeightPatch.load(path / "patch")


def _finetune(
    run: RunContext,
    name: str,
    key: str,
    model: nn.Module,
    fingerprint: str,
    edit_layers: list[int],
    requests: list[EditRequest],
    probe: CurveProbe | None = None,
    patch: WeightPatch | None = None,
) -> Path:
    """Fine-tune `model` (Med when `patch` is given: then with the configured strategy; M otherwise, plainly)."""
    ft, base, resolved = run.config.finetune, run.base, run.resolved
    used = strategy(ft.strategy) if patch is not None else strategy("none")

    def compute(path: Path) -> None:
        examples = load_corpus(ft.corpus, max_examples=ft.max_examples, seed=ft.corpus_seed)
        if ft.fact_statements is not None:
            statements = fact_statements(requests, ft.fact_statements)
            examples = mix_statements(examples, statements, ft.fact_fraction, ft.corpus_seed)
        examples = used.corpus(examples, requests, ft.replay_fraction, ft.corpus_seed)
        finetune(
            model,
            base.tokenizer,
            examples,
            resolved.finetune_spec,
            out_dir=path / "result",
            edited_layers=edit_layers,
            base_fingerprint=fingerprint,
            dtypes=run.dtypes,
            probe=probe,
            probe_key=key if probe else None,  # the stage key holds the curve's identity (resolve.curve_identity)
            hooks=used.hooks(patch, requests, base.tokenizer) if patch is not None else None,
        )

    return run.stage(name, "finetunes", key, compute) / "result"


def build_groups(
    run: RunContext,
    patch: WeightPatch,
    keys: dict[str, str],
    requests: list[EditRequest],
    control: list[EditRequest],
) -> tuple[ResidentGroups, pd.DataFrame | None]:
    """Med = M + patch; Mft = fine-tuned M; Med_ft = fine-tuned Med under `finetune.strategy` (with `reedit`: Mft
    edited by the same editor), all on the one resident base model (experiments/resident.py). Returns the groups
    and Med's decay curve (the edits and control facts scored during its fine-tuning) when
    `evaluation.curve_every` is set (and Med is fine-tuned)."""
    base, config = run.base, run.config
    groups = ResidentGroups(base.model, base.fingerprint)
    groups.define("Med", [patch])
    ft_base = FinetuneResult.load(
        _finetune(run, "finetune M", keys["ft_base"], base.model, base.fingerprint, patch.layers, requests)
    )
    groups.define("Mft", [ft_base])
    if strategy(config.finetune.strategy).reedits:
        if config.evaluation.curve_every is not None:
            log.warning("No decay curve with finetune.strategy=reedit: the edited model is not fine-tuned.")
        with groups.use("Mft") as mft:
            reedit = edit_stage(run, requests, keys["ft_edited"], model=mft, name="reedit Mft")
        groups.define("Med_ft", [ft_base, reedit])
        return groups, None
    probe = None
    if config.evaluation.curve_every is not None:
        measure = edit_curve_measure(base.tokenizer, requests, control, batch_size=config.evaluation.batch_size)
        probe = CurveProbe(config.evaluation.curve_every, measure)
    with groups.use("Med") as med:
        ft_edited = _finetune(
            run, "finetune Med", keys["ft_edited"], med, patch.patched_fingerprint, patch.layers, requests, probe, patch
        )
    edited = FinetuneResult.load(ft_edited)
    groups.define("Med_ft", [patch, edited])
    return groups, edited.curve if probe else None


def _task_names(run: RunContext) -> tuple[list[str], Path | None]:
    evaluation = run.config.evaluation
    data_dir = Path(evaluation.task_data_dir) if evaluation.task_data_dir else None
    available = [t for t in evaluation.tasks if task_available(t, data_dir)]
    for missing in sorted(set(evaluation.tasks) - set(available)):
        log.warning("Downstream task %s skipped: its data is not available under %s", missing, data_dir)
    return available, data_dir


def evaluate_stage(
    run: RunContext,
    groups: ModelGroups,
    group: str,
    requests: list[EditRequest],
    control: list[EditRequest],
    key: str,
) -> GroupScores:
    """`score_group` of one model group: its edit table, control table and downstream records."""
    evaluation = run.config.evaluation
    tokenizer = run.base.tokenizer

    def compute(path: Path) -> None:
        tasks, data_dir = _task_names(run)
        with groups.use(group) as model:
            scores = score_group(
                model,
                tokenizer,
                requests,
                control,
                tasks=tasks,
                data_dir=data_dir,
                task_mode=evaluation.task_mode,
                task_limit=evaluation.task_limit,
                num_beams=evaluation.num_beams,
                answer_extraction=evaluation.answer_extraction,
                batch_size=evaluation.batch_size,
            )
        scores.save(path)

    return GroupScores.load(run.stage(f"evaluate {group}", "evals", key, compute))


def activation_stage(
    run: RunContext, groups: ModelGroups, requests: list[EditRequest], key: str, edit_layers: list[int]
) -> pd.DataFrame | None:
    evaluation = run.config.evaluation
    if not evaluation.activations:
        return None

    def compute(path: Path) -> None:
        tasks, data_dir = _task_names(run)
        table = group_activations(
            groups,
            run.base.tokenizer,
            requests,
            task_items(tasks, data_dir, evaluation.task_limit),
            prompts=evaluation.activation_prompts,
            edit_layers=edit_layers,
            batch_size=evaluation.batch_size,
        )
        atomic_write_parquet(path / "activations.parquet", table)

    return pd.read_parquet(run.stage("activations", "activations", key, compute) / "activations.parquet")


def write_run_dir(
    run: RunContext,
    run_dir: Path,
    requests: list[EditRequest],
    scores: dict[str, GroupScores],
    activations: pd.DataFrame | None,
    patch: WeightPatch,
    keys: dict[str, str],
    wall_seconds: float,
    curve: pd.DataFrame | None = None,
) -> None:
    """`summarize_groups` of the run's groups, written like `editdecay evaluate` writes it (plus a run_id
    column), with config.json, run.parquet and the run's record in summary.json; DONE last."""
    config, run_id = run.config, run.config.config_hash()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config.model_dump(mode="json"))
    atomic_write_parquet(run_dir / "run.parquet", pd.DataFrame([_run_row(run, patch)]))
    result = summarize_groups(scores, requests)
    if activations is not None:
        result.tables["activations"] = activations
    if curve is not None:
        result.tables["curve"] = curve
        result.tables["decay_curve"] = curve_summary(curve)
    record: dict[str, Any] = {
        "run_id": run_id,
        "name": config.name,
        "config": config.model_dump(mode="json"),
        "edit_layers": patch.layers,
        "artifacts": keys,
        "environment": environment_info(),
        "executed_stages": run.executed,
        "stage_seconds": run.timings,
        "stage_peak_rss_mib": run.peak_rss_mib,
        "wall_seconds": wall_seconds,
        "evaluation_dtype": str(next(run.base.model.parameters()).dtype).removeprefix("torch."),
        "resolved": _resolved_record(run),
    }
    write_summary(result, run_dir, record, run_id=run_id)
    atomic_write_text(run_dir / "DONE", "ok\n")


def _resolved_record(run: RunContext) -> dict[str, Any]:
    resolved = run.resolved
    return {
        "device": resolved.device,
        "editor_hparams": resolved.editor_hparams,
        "finetune_spec": resolved.finetune_spec.to_dict(),
        "dtype_probes": [probe.to_dict() for probe in run.dtypes.results.values()],
    }


def _run_row(run: RunContext, patch: WeightPatch) -> dict[str, Any]:
    config = run.config
    layers = config.finetune.layers
    return {
        "run_id": config.config_hash(),
        "name": config.name,
        "model": config.model.source,
        "dataset": Path(config.edits.dataset).stem if "/" in config.edits.dataset else config.edits.dataset,
        "n_edits": config.edits.n,
        "editor": config.editor.name,
        "ft_method": config.finetune.method,
        "ft_layers": layers if isinstance(layers, str) else ",".join(map(str, layers)),
        "ft_facts": config.finetune.fact_statements,
        "ft_strategy": config.finetune.strategy,
        "edit_seed": config.edits.seed,
        "ft_seed": config.finetune.seed,
        "edit_layers": ",".join(map(str, patch.layers)),
    }


def environment_info() -> dict[str, Any]:
    import peft
    import transformers

    return {
        "editdecay": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }
