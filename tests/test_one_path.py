"""`editdecay evaluate` and `run_experiment` share one evaluation path: the same tables, the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from editdecay.cli import app
from editdecay.config import ExperimentConfig
from editdecay.experiments import run_experiment
from pipeline_fixtures import write_tiny_experiment

pytestmark = pytest.mark.usefixtures("single_thread")

TABLES = {
    "edits",
    "edits_per_edit",
    "control",
    "control_per_edit",
    "outcomes",
    "downstream",
    "downstream_accuracy",
    "metrics",
    "decay",
    "activations",
}


def test_evaluate_writes_the_tables_of_the_run_it_is_pointed_at(tmp_path: Path) -> None:
    raw = write_tiny_experiment(tmp_path)
    raw["evaluation"].update({"control": True, "control_n": 2, "tasks": ["builtin-commonsense"], "task_limit": 2})
    store = tmp_path / "store"
    run = run_experiment(ExperimentConfig.model_validate(raw), store, tmp_path / "runs")
    summary = json.loads((run.run_dir / "summary.json").read_text())
    keys, evaluation = summary["artifacts"], raw["evaluation"]
    out = tmp_path / "evaluate"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            raw["model"]["source"],
            "--patch",
            str(store / "patches" / keys["patch"] / "patch"),
            "--adapter",
            str(store / "finetunes" / keys["ft_edited"] / "result"),
            "--base-adapter",
            str(store / "finetunes" / keys["ft_base"] / "result"),
            "--dataset",
            raw["edits"]["dataset"],
            "--n",
            str(raw["edits"]["n"]),
            "--control",
            "builtin-control",
            "--control-n",
            str(evaluation["control_n"]),
            "--tasks",
            ",".join(evaluation["tasks"]),
            "--limit",
            str(evaluation["task_limit"]),
            "--activation-prompts",
            str(evaluation["activation_prompts"]),
            "--batch-size",
            str(evaluation["batch_size"]),
            "--no-progress",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output

    run_tables = {p.stem for p in run.run_dir.glob("*.parquet")} - {"run"}
    assert run_tables == {p.stem for p in out.glob("*.parquet")} == TABLES
    for name in sorted(TABLES):
        ran = pd.read_parquet(run.run_dir / f"{name}.parquet")
        assert list(ran.columns[:1]) == ["run_id"] and (ran["run_id"] == run.run_id).all(), name
        evaluated = pd.read_parquet(out / f"{name}.parquet")
        assert "run_id" not in evaluated.columns and len(evaluated) > 0, name
        pd.testing.assert_frame_equal(ran.drop(columns="run_id"), evaluated, check_exact=True, obj=name)
    evaluated_summary = json.loads((out / "summary.json").read_text())
    assert evaluated_summary["groups"] == summary["groups"] == ["M", "Med", "Mft", "Med_ft"]
    for section in ("edits", "control", "downstream"):
        assert evaluated_summary[section] == summary[section], section
    # The one ns_agreement rule: against M in every group, M's own agreement included.
    per_edit = pd.read_parquet(out / "edits_per_edit.parquet")
    assert (per_edit.loc[per_edit["group"] == "M", "ns_agreement"] == 1.0).all()
    assert per_edit["ns_agreement"].notna().all()


def test_base_adapter_needs_a_patch(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            str(tmp_path / "model"),
            "--base-adapter",
            str(tmp_path / "ft"),
            "--no-progress",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2
    assert "--base-adapter" in result.output and "Mft" in result.output
    assert not (tmp_path / "out").exists()
