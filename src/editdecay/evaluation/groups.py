"""The one evaluation path of the model groups M, Med, Mft, Med_ft (docs/algorithms.md §3-§4, §6-§7).

1. `score_group`: the raw tables of one model (scored edit prompts, scored control facts, downstream records),
   what a run caches as its "evaluate <group>" artifact;
2. `summarize_groups`: a pure function of those tables for every group: per-edit metrics (with `ns_agreement`
   against M), per-group metrics, decay, outcome classes, the control summary, downstream accuracy by group;
3. `group_activations`: the activation shift, its own step because it compares the groups prompt by prompt
   (it uses them one at a time through `ModelGroups`, so one resident model can serve them all).

`editdecay evaluate` (`evaluate_groups`) and the experiment runner both go through these functions and write the
same tables with `write_summary`; a run adds only its `run_id` column and its own files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from editdecay.data import EditRequest
from editdecay.data.tasks import TaskItem, load_task
from editdecay.evaluation.activations import activation_shift, probe_prompts
from editdecay.evaluation.decay import GROUPS, control_summary, decay_summary, outcome_classes
from editdecay.evaluation.downstream import AnswerExtraction, Mode, evaluate_tasks, task_accuracy
from editdecay.evaluation.edit_metrics import edit_metrics, neighborhood_agreement, summarize_edit_metrics
from editdecay.evaluation.edit_scoring import score_edits
from editdecay.evaluation.model_groups import ModelGroups, as_model_groups
from editdecay.storage import atomic_write_json, atomic_write_parquet

SCORE_TABLES = ("edits", "control", "downstream")
EDIT_SETS = ("edits", "control")


@dataclass(frozen=True)
class GroupScores:
    """The raw tables of one model group: `score_edits` of the edit requests and of the control facts (None
    without control facts), and the `evaluate_tasks` records (None without downstream tasks)."""

    edits: pd.DataFrame
    control: pd.DataFrame | None = None
    downstream: pd.DataFrame | None = None

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: table for name in SCORE_TABLES if (table := getattr(self, name)) is not None}

    def save(self, directory: str | Path) -> None:
        for name, table in self.tables().items():
            atomic_write_parquet(Path(directory) / f"{name}.parquet", table)

    @classmethod
    def load(cls, directory: str | Path) -> GroupScores:
        directory = Path(directory)
        tables = {
            name: pd.read_parquet(file) for name in SCORE_TABLES if (file := directory / f"{name}.parquet").is_file()
        }
        if "edits" not in tables:
            raise FileNotFoundError(f"{directory} holds no edits.parquet: not a group's scores.")
        return cls(**tables)


@dataclass
class Summary:
    """Tables by file stem (each with a `group` column where it has rows per group) and the JSON summary."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def score_group(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    control: Sequence[EditRequest] = (),
    *,
    tasks: Sequence[str] = (),
    data_dir: str | Path | None = None,
    task_mode: Mode = "loglik",
    task_limit: int | None = None,
    num_beams: int = 1,
    answer_extraction: AnswerExtraction = "lenient",
    batch_size: int = 32,
    progress: bool = True,
) -> GroupScores:
    """Score the edit requests, the control facts (if any) and the downstream tasks (if any) on one model."""
    edits = score_edits(model, tokenizer, requests, batch_size=batch_size, progress=progress)
    control_table = (
        score_edits(model, tokenizer, control, batch_size=batch_size, progress=progress) if control else None
    )
    downstream = None
    if tasks:
        downstream = evaluate_tasks(
            model,
            tokenizer,
            list(tasks),
            data_dir=data_dir,
            mode=task_mode,
            limit=task_limit,
            batch_size=batch_size,
            num_beams=num_beams,
            answer_extraction=answer_extraction,
            progress=progress,
        )
    return GroupScores(edits, control_table, downstream)


def _check_names(names: Sequence[str]) -> None:
    if set(names) - set(GROUPS) or not names:
        raise ValueError(f"Model groups must be among {GROUPS}; got {sorted(names)}.")


def _ordered(groups: Mapping[str, Any]) -> dict[str, Any]:
    _check_names(list(groups))
    return {g: groups[g] for g in GROUPS if g in groups}


def with_group(table: pd.DataFrame, group: str) -> pd.DataFrame:
    table = table.copy()
    table.insert(0, "group", group)
    return table


def stack_groups(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([with_group(t, g) for g, t in tables.items()], ignore_index=True)


def per_edit_metrics(scored: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """`edit_metrics` of every group's `score_edits` table. When M is scored, every group, M included (1.0 by
    definition), gets `ns_agreement`: locality as agreement with M's neighborhood predictions (the toolkit
    variant, named apart from the published NS); without M there is no such column."""
    per_edit = {group: edit_metrics(table) for group, table in scored.items()}
    if "M" in scored:
        for group in per_edit:
            agreement = neighborhood_agreement(scored["M"], scored[group])
            per_edit[group] = per_edit[group].merge(agreement, on="case_id", how="left")
    return per_edit


def downstream_accuracy(scores: Mapping[str, GroupScores]) -> dict[str, dict[str, float]]:
    """Accuracy (%) per task and "average" of every group that has downstream records, keyed by group."""
    return {
        g: task_accuracy(records).set_index("task")["accuracy"].to_dict()
        for g in GROUPS
        if g in scores and (records := scores[g].downstream) is not None
    }


def request_frame(requests: Sequence[EditRequest]) -> pd.DataFrame:
    columns = ["case_id", "subject", "prompt", "target_new", "target_true"]
    return pd.DataFrame([{c: getattr(r, c) for c in columns} for r in requests], columns=columns)


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
    return flat


def summarize_groups(scores: Mapping[str, GroupScores], requests: Sequence[EditRequest]) -> Summary:
    """Every table and number computed from the groups' raw tables, in GROUPS order; cross-group parts (decay,
    outcomes, transitions) where the groups present allow them.

    Tables: edits, edits_per_edit, control, control_per_edit (with control facts), outcomes (with Med and
    Med_ft; `outcome_gen` is the generation family's class; the requests' subject, prompt and targets beside each
    edit), downstream, downstream_accuracy (with
    tasks), metrics (one row per set and group, `downstream_avg` on the edit rows) and decay (one row).
    """
    ordered: dict[str, GroupScores] = _ordered(scores)
    result = Summary(summary={"groups": list(ordered)})
    metric_rows: list[dict[str, Any]] = []
    for set_name in EDIT_SETS:
        scored = {g: table for g, s in ordered.items() if (table := getattr(s, set_name)) is not None}
        if not scored:
            continue
        per_edit = per_edit_metrics(scored)
        result.tables[set_name] = stack_groups(scored)
        result.tables[f"{set_name}_per_edit"] = stack_groups(per_edit)
        group_metrics = {g: summarize_edit_metrics(t) for g, t in per_edit.items()}
        decay = decay_summary(per_edit)
        result.summary[set_name] = {"groups": group_metrics, "decay": decay}
        metric_rows += [
            {
                "set": set_name,
                "group": group,
                "downstream_avg": None,
                **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            }
            for group, metrics in group_metrics.items()
        ]
        if set_name == "control":
            result.summary[set_name].update(control_summary(per_edit))
            continue
        if "Med" in per_edit and "Med_ft" in per_edit:
            outcomes = outcome_classes(per_edit["Med"], per_edit["Med_ft"], per_edit.get("M"))
            generated = outcome_classes(per_edit["Med"], per_edit["Med_ft"], per_edit.get("M"), indicator="gen_success")
            outcomes["outcome_gen"] = generated["outcome"].to_numpy()
            result.tables["outcomes"] = outcomes.merge(request_frame(requests), on="case_id", how="left")
        # Per-group metrics are in metrics.parquet and definitions in summary.json: keep the decay numbers.
        scalars = {k: v for k, v in decay.items() if k not in ("groups", "metric_definitions")}
        result.tables["decay"] = pd.DataFrame([_flat(scalars)])

    records = {g: s.downstream for g, s in ordered.items() if s.downstream is not None}
    if records:
        accuracy = {g: task_accuracy(t) for g, t in records.items()}
        result.tables["downstream"] = stack_groups(records)
        result.tables["downstream_accuracy"] = stack_groups(accuracy)
        by_group = downstream_accuracy(ordered)
        result.summary["downstream"] = by_group
        for row in metric_rows:
            if row["set"] == "edits":
                row["downstream_avg"] = by_group.get(row["group"], {}).get("average")
    result.tables["metrics"] = pd.DataFrame(metric_rows)
    return result


def task_items(tasks: Sequence[str], data_dir: str | Path | None, limit: int | None) -> list[TaskItem]:
    return [item for task in tasks for item in load_task(task, data_dir, limit=limit)]


def group_activations(
    models: Mapping[str, nn.Module] | ModelGroups,
    tokenizer,
    requests: Sequence[EditRequest],
    items: Sequence[TaskItem] = (),
    *,
    prompts: int | None = None,
    edit_layers: Sequence[int] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> pd.DataFrame:
    """`activation_shift` between the groups over `probe_prompts(requests, items, limit=prompts)`, with
    `edited_layer` when the edited layers are known."""
    groups = as_model_groups(_ordered(models) if isinstance(models, Mapping) else models)
    _check_names(groups.names)
    table = activation_shift(
        groups,
        tokenizer,
        probe_prompts(requests, items, limit=prompts),
        batch_size=batch_size,
        progress=progress,
    )
    if edit_layers is not None:
        table["edited_layer"] = table["layer"].isin(list(edit_layers))
    return table


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
    edit_layers: Sequence[int] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> Summary:
    """`score_group` on every group, `summarize_groups`, and the activation shift when there are two groups."""
    ordered: dict[str, nn.Module] = _ordered(models)
    # Load the downstream items first: a missing task file fails before any model work.
    items = task_items(tasks, data_dir, task_limit)
    scores = {
        g: score_group(
            m,
            tokenizer,
            requests,
            control,
            tasks=tasks,
            data_dir=data_dir,
            task_mode=task_mode,
            task_limit=task_limit,
            num_beams=num_beams,
            answer_extraction=answer_extraction,
            batch_size=batch_size,
            progress=progress,
        )
        for g, m in ordered.items()
    }
    result = summarize_groups(scores, requests)
    if activations and len(ordered) > 1:
        result.tables["activations"] = group_activations(
            ordered,
            tokenizer,
            requests,
            items,
            prompts=activation_prompts,
            edit_layers=edit_layers,
            batch_size=batch_size,
            progress=progress,
        )
    return result


def write_summary(
    result: Summary, out_dir: str | Path, extra: Mapping[str, Any] | None = None, *, run_id: str | None = None
) -> list[Path]:
    """Each table as <name>.parquet (with a leading `run_id` column when given) and summary.json (`extra`
    fields beside the summary's), every file written atomically; returns the paths in writing order."""
    out = Path(out_dir)
    written = []
    for name, table in result.tables.items():
        if run_id is not None:
            table = table.copy()
            table.insert(0, "run_id", run_id)
        atomic_write_parquet(out / f"{name}.parquet", table)
        written.append(out / f"{name}.parquet")
    atomic_write_json(out / "summary.json", {**(extra or {}), **result.summary})
    written.append(out / "summary.json")
    return written
