"""The stages of one experiment, each producing (or reusing) one artifact of the store."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from editdecay.data import EditRequest, load_corpus
from editdecay.editing import StatsStore, TargetStore, WeightPatch, build_editor
from editdecay.evaluation import (
    activation_shift,
    decay_summary,
    edit_metrics,
    evaluate_tasks,
    load_task,
    neighborhood_agreement,
    outcome_classes,
    probe_prompts,
    score_edits,
    summarize_edit_metrics,
    task_accuracy,
    task_available,
)
from editdecay.experiments.runner import GROUPS, _Run, deep_copy_model, environment_info, with_group
from editdecay.finetuning import FinetuneResult, finetune, load_finetuned
from editdecay.storage import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def edit_stage(run: _Run, requests: list[EditRequest], key: str) -> WeightPatch:
    config, base, resolved = run.config, run.base, run.resolved
    assert base is not None and resolved is not None

    def compute(path: Path) -> None:
        editor = build_editor(config.editor.name, resolved.editor_hparams, preset=config.editor.preset,
                              dtypes=run.dtypes)
        patch = editor.edit(base.model, base.tokenizer, requests, stats=StatsStore(run.store.stats_root),
                            seed=config.editor.seed, fingerprint=base.fingerprint,
                            targets=TargetStore(run.store.targets_root))
        patch.save(path / "patch")

    path = run.stage("edit", "patches", key, compute)
    return WeightPatch.load(path / "patch")


def _finetune(run: _Run, name: str, key: str, model: nn.Module, fingerprint: str, edit_layers: list[int]) -> Path:
    ft, base, resolved = run.config.finetune, run.base, run.resolved
    assert base is not None and resolved is not None

    def compute(path: Path) -> None:
        examples = load_corpus(ft.corpus, max_examples=ft.max_examples, seed=ft.corpus_seed)
        finetune(model, base.tokenizer, examples, resolved.finetune_spec, out_dir=path / "result",
                 edited_layers=edit_layers, base_fingerprint=fingerprint, dtypes=run.dtypes)

    return run.stage(name, "finetunes", key, compute) / "result"


def build_groups(run: _Run, patch: WeightPatch, keys: dict[str, str]) -> None:
    """Med = M + patch; Mft = fine-tuned M; Med_ft = fine-tuned Med (each a separate model object)."""
    base = run.base
    assert base is not None
    med = deep_copy_model(base.model)
    patch.apply(med, fingerprint=base.fingerprint)  # med is a copy of the base: its fingerprint is known
    run.models["Med"] = med
    ft_base = _finetune(run, "finetune M", keys["ft_base"], base.model, base.fingerprint, patch.layers)
    ft_edited = _finetune(run, "finetune Med", keys["ft_edited"], med, patch.patched_fingerprint, patch.layers)
    run.models["Mft"] = load_finetuned(base.model, FinetuneResult.load(ft_base), merge=True)
    run.models["Med_ft"] = load_finetuned(med, FinetuneResult.load(ft_edited), merge=True)
    evaluation_dtype(run.models)  # fails now, before any evaluation, if the groups' precisions differ


def _task_names(run: _Run) -> tuple[list[str], Path | None]:
    evaluation = run.config.evaluation
    data_dir = Path(evaluation.task_data_dir) if evaluation.task_data_dir else None
    available = [t for t in evaluation.tasks if task_available(t, data_dir)]
    for missing in sorted(set(evaluation.tasks) - set(available)):
        log.warning("Downstream task %s skipped: its data is not available under %s", missing, data_dir)
    return available, data_dir


def evaluate_stage(run: _Run, group: str, requests: list[EditRequest], control: list[EditRequest],
                   key: str) -> dict[str, pd.DataFrame]:
    """Edit table, control table and downstream records of one model group."""
    evaluation, base = run.config.evaluation, run.base
    assert base is not None
    model, tokenizer = run.models[group], base.tokenizer

    def compute(path: Path) -> None:
        score_edits(model, tokenizer, requests, batch_size=evaluation.batch_size).to_parquet(path / "edits.parquet")
        if control:
            score_edits(model, tokenizer, control, batch_size=evaluation.batch_size).to_parquet(
                path / "control.parquet")
        tasks, data_dir = _task_names(run)
        if tasks:
            evaluate_tasks(model, tokenizer, tasks, data_dir=data_dir, mode=evaluation.task_mode,
                           limit=evaluation.task_limit, batch_size=evaluation.batch_size,
                           num_beams=evaluation.num_beams,
                           answer_extraction=evaluation.answer_extraction).to_parquet(path / "downstream.parquet")

    path = run.stage(f"evaluate {group}", "evals", key, compute)
    return {name: pd.read_parquet(file) for name in ("edits", "control", "downstream")
            if (file := path / f"{name}.parquet").is_file()}


def activation_stage(run: _Run, requests: list[EditRequest], key: str, edit_layers: list[int]) -> pd.DataFrame | None:
    evaluation, base = run.config.evaluation, run.base
    if not evaluation.activations:
        return None
    assert base is not None

    def compute(path: Path) -> None:
        tasks, data_dir = _task_names(run)
        items = [item for task in tasks for item in load_task(task, data_dir, limit=evaluation.task_limit)]
        prompts = probe_prompts(requests, items, limit=evaluation.activation_prompts)
        table = activation_shift({g: run.models[g] for g in GROUPS}, base.tokenizer, prompts,
                                 batch_size=evaluation.batch_size)
        table["edited_layer"] = table["layer"].isin(edit_layers)
        table.to_parquet(path / "activations.parquet")

    return pd.read_parquet(run.stage("activations", "activations", key, compute) / "activations.parquet")


def _per_edit(tables: dict[str, dict[str, pd.DataFrame]], name: str) -> dict[str, pd.DataFrame]:
    """Per-edit metrics of every group, with `ns_agreement`: locality as agreement with M's neighborhood
    predictions (the toolkit variant, named apart from the published NS; 100% for M itself)."""
    per_edit = {group: edit_metrics(tables[group][name]) for group in GROUPS if name in tables[group]}
    if "M" in per_edit:
        for group in per_edit:
            agreement = neighborhood_agreement(tables["M"][name], tables[group][name])
            per_edit[group] = per_edit[group].merge(agreement, on="case_id", how="left")
    return per_edit


def write_run_dir(run: _Run, run_dir: Path, requests: list[EditRequest], tables: dict[str, dict[str, pd.DataFrame]],
                  activations: pd.DataFrame | None, patch: WeightPatch, keys: dict[str, str],
                  wall_seconds: float) -> None:
    """All tables of the run plus summary.json, each written atomically, DONE last."""
    config, run_id = run.config, run.config.config_hash()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config.model_dump(mode="json"))

    run_row = _run_row(run, patch)
    _write_parquet(run_dir / "run.parquet", pd.DataFrame([run_row]))
    summary: dict[str, Any] = {"run_id": run_id, "name": config.name, "config": config.model_dump(mode="json"),
                               "edit_layers": patch.layers, "artifacts": keys, "environment": environment_info(),
                               "executed_stages": run.executed, "stage_seconds": run.timings,
                               "wall_seconds": wall_seconds, "evaluation_dtype": evaluation_dtype(run.models),
                               "resolved": _resolved_record(run)}
    metric_rows = []
    for set_name in ("edits", "control"):
        per_edit = _per_edit(tables, set_name)
        if not per_edit:
            continue
        scored = pd.concat([with_group(tables[g][set_name], g) for g in per_edit], ignore_index=True)
        _write_parquet(run_dir / f"{set_name}.parquet", _with_run_id(scored, run_id))
        per_edit_all = pd.concat([with_group(t, g) for g, t in per_edit.items()], ignore_index=True)
        _write_parquet(run_dir / f"{set_name}_per_edit.parquet", _with_run_id(per_edit_all, run_id))
        group_metrics = {g: summarize_edit_metrics(t) for g, t in per_edit.items()}
        decay = decay_summary(per_edit)
        summary[set_name] = {"groups": group_metrics, "decay": decay}
        for group, metrics in group_metrics.items():
            metric_rows.append({"run_id": run_id, "set": set_name, "group": group, "downstream_avg": None,
                                **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
        if set_name == "edits":
            outcomes = outcome_classes(per_edit["Med"], per_edit["Med_ft"], per_edit["M"])
            outcomes = outcomes.merge(_request_frame(requests), on="case_id", how="left")
            _write_parquet(run_dir / "outcomes.parquet", _with_run_id(outcomes, run_id))
            # Per-group metrics are in metrics.parquet and definitions in summary.json: keep the decay numbers.
            scalars = {k: v for k, v in decay.items() if k not in ("groups", "metric_definitions")}
            _write_parquet(run_dir / "decay.parquet", pd.DataFrame([{"run_id": run_id, **_flat(scalars)}]))

    downstream = [with_group(tables[g]["downstream"], g) for g in GROUPS if "downstream" in tables[g]]
    if downstream:
        records = pd.concat(downstream, ignore_index=True)
        _write_parquet(run_dir / "downstream.parquet", _with_run_id(records, run_id))
        accuracy = downstream_accuracy(tables)
        summary["downstream"] = accuracy
        for row in metric_rows:
            if row["set"] == "edits":
                row["downstream_avg"] = accuracy.get(row["group"], {}).get("average")
    _write_parquet(run_dir / "metrics.parquet", pd.DataFrame(metric_rows))
    if activations is not None:
        _write_parquet(run_dir / "activations.parquet", _with_run_id(activations, run_id))
    atomic_write_json(run_dir / "summary.json", summary)
    atomic_write_text(run_dir / "DONE", "ok\n")


def downstream_accuracy(tables: dict[str, dict[str, pd.DataFrame]]) -> dict[str, dict[str, float]]:
    """Accuracy (%) per task and "average" of every group that has downstream records, keyed by group."""
    return {g: task_accuracy(tables[g]["downstream"]).set_index("task")["accuracy"].to_dict()
            for g in GROUPS if "downstream" in tables.get(g, {})}


def evaluation_dtype(models: dict[str, nn.Module]) -> str:
    """The one dtype every group was evaluated in; mixed precisions would mix the fine-tuning effect with a
    precision change in ES/EFR, downstream deltas and activation drifts."""
    dtypes = {group: str(next(model.parameters()).dtype).removeprefix("torch.") for group, model in models.items()}
    if len(set(dtypes.values())) != 1:
        raise RuntimeError(f"The model groups are in different dtypes {dtypes}; they must share one precision.")
    return next(iter(dtypes.values()))


def _resolved_record(run: _Run) -> dict[str, Any]:
    resolved = run.resolved
    assert resolved is not None
    return {"device": resolved.device, "editor_hparams": resolved.editor_hparams,
            "finetune_spec": resolved.finetune_spec.to_dict(),
            "dtype_probes": [probe.to_dict() for probe in run.dtypes.results.values()]}


def _run_row(run: _Run, patch: WeightPatch) -> dict[str, Any]:
    config = run.config
    layers = config.finetune.layers
    return {"run_id": config.config_hash(), "name": config.name, "model": config.model.source,
            "dataset": Path(config.edits.dataset).stem if "/" in config.edits.dataset else config.edits.dataset,
            "n_edits": config.edits.n, "editor": config.editor.name, "ft_method": config.finetune.method,
            "ft_layers": layers if isinstance(layers, str) else ",".join(map(str, layers)),
            "edit_layers": ",".join(map(str, patch.layers))}


def _request_frame(requests: list[EditRequest]) -> pd.DataFrame:
    return pd.DataFrame([{"case_id": r.case_id, "subject": r.subject, "prompt": r.prompt,
                          "target_new": r.target_new, "target_true": r.target_true} for r in requests])


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
    return flat


def _with_run_id(table: pd.DataFrame, run_id: str) -> pd.DataFrame:
    table = table.copy()
    table.insert(0, "run_id", run_id)
    return table


def _write_parquet(path: Path, table: pd.DataFrame) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    table.to_parquet(staging, index=False)
    staging.replace(path)
