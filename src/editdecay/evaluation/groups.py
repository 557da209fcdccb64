"""Evaluate a set of model groups (any of M, Med, Mft, Med_ft) at once and write the tables.

This is what `editdecay evaluate` runs: edit tables and per-edit metrics per group, decay and outcome
classes across groups, the control set, downstream accuracy and the activation shift between groups.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from editdecay.data import EditRequest
from editdecay.data.tasks import load_task
from editdecay.evaluation.activations import activation_shift, probe_prompts
from editdecay.evaluation.decay import GROUPS, control_summary, decay_summary, outcome_classes
from editdecay.evaluation.downstream import AnswerExtraction, Mode, evaluate_tasks, task_accuracy
from editdecay.evaluation.edit_metrics import edit_metrics, neighborhood_agreement, summarize_edit_metrics
from editdecay.evaluation.edit_scoring import score_edits
from editdecay.storage import atomic_write_bytes, atomic_write_json


@dataclass
class GroupEvaluation:
    """Tables (each with a `group` column where it has one row set per group) and the JSON summary."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _stacked(per_group: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([t.assign(group=g) for g, t in per_group.items()], ignore_index=True)


def _edit_set(models: Mapping[str, nn.Module], tokenizer, requests: Sequence[EditRequest], batch_size: int,
              progress: bool) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    scored = {g: score_edits(m, tokenizer, requests, batch_size=batch_size, progress=progress)
              for g, m in models.items()}
    per_edit = {g: edit_metrics(t) for g, t in scored.items()}
    if "M" in scored:
        for group in per_edit:
            if group != "M":
                agreement = neighborhood_agreement(scored["M"], scored[group])
                per_edit[group] = per_edit[group].merge(agreement, on="case_id", how="left")
    return scored, per_edit


def evaluate_groups(
    models: Mapping[str, nn.Module],
    tokenizer,
    requests: Sequence[EditRequest],
    *,
    control: Sequence[EditRequest] = (),
    tasks: Sequence[str] = (),
    data_dir: str | Path | None = None,
    task_mode: Mode = "loglik",
    task_limit: int | None = None,
    num_beams: int = 1,
    answer_extraction: AnswerExtraction = "lenient",
    activations: bool = True,
    activation_prompts: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> GroupEvaluation:
    """Evaluate every group; cross-group metrics (decay, outcomes, activation shift) where the groups allow."""
    unknown = sorted(set(models) - set(GROUPS))
    if unknown or not models:
        raise ValueError(f"Model groups must be among {GROUPS}; got {sorted(models)}.")
    # Load the downstream items first: a missing task file fails before any model work.
    items = [item for task in tasks for item in load_task(task, data_dir, limit=task_limit)]
    result = GroupEvaluation()
    scored, per_edit = _edit_set(models, tokenizer, requests, batch_size, progress)
    result.tables["edits"] = _stacked(scored)
    result.tables["per_edit"] = _stacked(per_edit)
    result.summary["edits"] = {"groups": {g: summarize_edit_metrics(t) for g, t in per_edit.items()},
                               "decay": decay_summary(per_edit)}
    if "Med" in per_edit and "Med_ft" in per_edit:
        result.tables["outcomes"] = outcome_classes(per_edit["Med"], per_edit["Med_ft"], per_edit.get("M"))
    if control:
        control_scored, control_per_edit = _edit_set(models, tokenizer, control, batch_size, progress)
        result.tables["control"] = _stacked(control_scored)
        result.tables["control_per_edit"] = _stacked(control_per_edit)
        result.summary["control"] = control_summary(control_per_edit)
    if tasks:
        records = {g: evaluate_tasks(m, tokenizer, tasks, data_dir=data_dir, mode=task_mode, limit=task_limit,
                                     batch_size=batch_size, num_beams=num_beams,
                                     answer_extraction=answer_extraction, progress=progress)
                   for g, m in models.items()}
        accuracy = {g: task_accuracy(t) for g, t in records.items()}
        result.tables["downstream"] = _stacked(records)
        result.tables["downstream_accuracy"] = _stacked(accuracy)
        result.summary["downstream"] = {g: t.set_index("task")["accuracy"].to_dict() for g, t in accuracy.items()}
    if activations and len(models) > 1:
        prompts = probe_prompts(requests, items, limit=activation_prompts)
        result.tables["activations"] = activation_shift(models, tokenizer, prompts, batch_size=batch_size,
                                                        progress=progress)
    result.summary["groups"] = list(models)
    return result


def write_evaluation(result: GroupEvaluation, out_dir: str | Path,
                     extra: Mapping[str, Any] | None = None) -> list[Path]:
    """Each table as <name>.parquet and summary.json (plus `extra` fields), every file written atomically."""
    out = Path(out_dir)
    written = []
    for name, table in result.tables.items():
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        atomic_write_bytes(out / f"{name}.parquet", buffer.getvalue())
        written.append(out / f"{name}.parquet")
    atomic_write_json(out / "summary.json", {**(extra or {}), **result.summary})
    written.append(out / "summary.json")
    return written
