"""run_experiment end to end on a tiny model: the run directory, artifact reuse, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from editdecay.config import ExperimentConfig, GridConfig
from editdecay.experiments import GROUPS, ArtifactStore, expand_grid, plan_grid, run_experiment
from pipeline_fixtures import write_tiny_experiment

ALL_STAGES = {"edit", "finetune M", "finetune Med", *(f"evaluate {g}" for g in GROUPS), "activations"}


def test_run_writes_every_table_and_a_second_run_recomputes_nothing(tmp_path: Path) -> None:
    config = ExperimentConfig.model_validate(write_tiny_experiment(tmp_path))
    store, runs = tmp_path / "store", tmp_path / "runs"
    first = run_experiment(config, store, runs)
    assert set(first.executed) == ALL_STAGES
    for name in (
        "config.json",
        "run.parquet",
        "edits.parquet",
        "edits_per_edit.parquet",
        "metrics.parquet",
        "decay.parquet",
        "outcomes.parquet",
        "activations.parquet",
        "summary.json",
        "DONE",
    ):
        assert (first.run_dir / name).is_file(), name
    summary = json.loads((first.run_dir / "summary.json").read_text())
    assert set(summary["edits"]["groups"]) == set(GROUPS)
    peaks = [summary["stage_peak_rss_mib"][name] for name in summary["executed_stages"]]
    assert set(summary["stage_peak_rss_mib"]) == set(summary["stage_seconds"]) == ALL_STAGES
    assert peaks == sorted(peaks) and peaks[0] > 0  # a high-water mark, in the order the stages ran
    for group in GROUPS:
        assert summary["edits"]["groups"][group]["es"] is not None
    metrics = pd.read_parquet(first.run_dir / "metrics.parquet")
    assert set(metrics["group"]) == set(GROUPS)
    assert metrics[["es", "ps", "ns", "gen_es", "gen_ps", "gen_ns"]].notna().all().all()
    assert set(summary["edits"]["decay"]["generation"]["outcomes"]) == {"stable", "erased", "emergent", "impossible"}
    outcomes = pd.read_parquet(first.run_dir / "outcomes.parquet")
    assert outcomes["outcome_gen"].isin(["stable", "erased", "emergent", "impossible"]).all()
    # Locality against M (the toolkit variant): M agrees with itself everywhere, the others in [0, 100].
    agreement = metrics.set_index("group")["ns_agreement"]
    assert agreement["M"] == 100.0 and agreement.between(0, 100).all()
    per_edit = pd.read_parquet(first.run_dir / "edits_per_edit.parquet")
    assert (per_edit.loc[per_edit["group"] == "M", "ns_agreement"] == 1.0).all()

    # Same config again: the run directory is complete, nothing runs.
    assert run_experiment(config, store, runs).executed == []
    # Even without the run directory every stage is reused from the store.
    for path in first.run_dir.iterdir():
        path.unlink()
    first.run_dir.rmdir()
    again = run_experiment(config, store, runs)
    assert again.executed == []
    pd.testing.assert_frame_equal(pd.read_parquet(again.run_dir / "metrics.parquet"), metrics)


def test_a_bfloat16_run_evaluates_the_four_groups_in_one_precision(tmp_path: Path) -> None:
    raw = write_tiny_experiment(tmp_path)
    raw["model"]["dtype"] = "bfloat16"
    raw["evaluation"]["activations"] = False
    result = run_experiment(ExperimentConfig.model_validate(raw), tmp_path / "store", tmp_path / "runs")
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["evaluation_dtype"] == "bfloat16"
    resolved = summary["resolved"]
    assert resolved["finetune_spec"]["compute_dtype"] == resolved["editor_hparams"]["v_dtype"] == "float32"
    assert resolved["dtype_probes"][0]["reason"] == "EDITDECAY_AUTO_DTYPE=float32 set"


def test_configs_share_artifacts(tmp_path: Path) -> None:
    raw = write_tiny_experiment(tmp_path)
    store, runs = tmp_path / "store", tmp_path / "runs"
    run_experiment(ExperimentConfig.model_validate(raw), store, runs)
    raw["finetune"]["method"] = "dora"
    second = run_experiment(ExperimentConfig.model_validate(raw), store, runs)
    # The patch and the evaluations of M and Med are shared; only DoRA fine-tunings and what follows run.
    assert set(second.executed) == {"finetune M", "finetune Med", "evaluate Mft", "evaluate Med_ft", "activations"}


def test_dry_run_plan_counts_and_cache(tmp_path: Path) -> None:
    raw = write_tiny_experiment(tmp_path)
    grid = GridConfig(
        name="g", base=raw, grid={"editor.name": ["memit", "alphaedit"], "finetune.layers": ["all", "edited"]}
    )
    configs = expand_grid(grid)
    store, runs = ArtifactStore(tmp_path / "store"), tmp_path / "runs"
    plan = plan_grid(configs, store, runs)
    assert len(plan.stages["edits"].to_run) == 2
    # Edit layers are resolved before anything runs: M once per layer policy (both editors edit layers 1-2),
    # Med once per editor and policy.
    assert len(plan.stages["fine-tunings"].to_run) == 2 + 4
    assert not plan.stages["fine-tunings"].undetermined
    run_experiment(configs[0], store.root, runs)
    plan = plan_grid(configs, store, runs)
    assert plan.complete_runs == 1
    assert len(plan.stages["edits"].cached) == 1


def _finished_artifacts(store: Path) -> set[Path]:
    return {marker.parent for marker in store.glob("*/*/DONE") if marker.parent.parent.name != "stats"}


@pytest.mark.slow
def test_killed_run_resumes_and_loses_nothing(tmp_path: Path) -> None:
    write_tiny_experiment(tmp_path)
    store, runs = tmp_path / "store", tmp_path / "runs"
    command = [
        sys.executable,
        "-m",
        "editdecay",
        "run",
        str(tmp_path / "config.yaml"),
        "--store",
        str(store),
        "--runs",
        str(runs),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # Kill it in the middle of a fine-tuning stage: its directory exists, its DONE marker does not.
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if any(not (d / "DONE").exists() for d in (store / "finetunes").glob("*") if d.is_dir()):
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = _finished_artifacts(store)
    assert not list(runs.glob("*/DONE"))
    assert store / "patches" in {p.parent for p in finished}  # the edit stage had finished

    config = ExperimentConfig.model_validate(write_tiny_experiment(tmp_path))
    resumed = run_experiment(config, store, runs)
    # Nothing finished before the kill runs again, and everything else does, exactly once.
    assert "edit" not in resumed.executed
    assert len(resumed.executed) == len(ALL_STAGES) - len(finished)
    assert len(_finished_artifacts(store)) == len(ALL_STAGES)
    assert (resumed.run_dir / "DONE").is_file()


def test_a_run_with_a_decay_curve_starts_at_med_and_ends_at_med_ft(tmp_path: Path) -> None:
    raw = write_tiny_experiment(tmp_path)
    raw["finetune"] |= {"max_examples": 12, "max_steps": 3, "fact_statements": "true", "fact_fraction": 0.5}
    raw["evaluation"] |= {"curve_every": 2, "activations": False}
    result = run_experiment(ExperimentConfig.model_validate(raw), tmp_path / "store", tmp_path / "runs")
    curve = pd.read_parquet(result.run_dir / "curve.parquet")
    assert sorted(curve["step"].unique()) == [0, 2, 3]
    per_edit = pd.read_parquet(result.run_dir / "edits_per_edit.parquet")
    for group, step in (("Med", 0), ("Med_ft", 3)):
        expected = per_edit[per_edit["group"] == group].set_index("case_id")["success"]
        got = curve[(curve["step"] == step) & (curve["set"] == "edits")].set_index("case_id")["success"]
        pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    summary = pd.read_parquet(result.run_dir / "decay_curve.parquet")
    assert set(summary["run_id"]) == {result.run_id}
    assert summary.loc[summary["step"] == 0, "flip_ratio"].eq(0).all()


NEW_EDITORS = {
    "rome": {"layers": [2], "mom2_n_tokens": 512, "v_num_grad_steps": 4, "context_template_count": 2},
    "ftl": {"layers": [2], "num_steps": 4, "lr": 1e-2, "norm_constraint": 1e-2},
    "mend": {"layers": [2, 3], "train_data": "builtin", "train_steps": 4, "hidden": 16, "train_batch_size": 2},
}


def test_every_new_editor_runs_through_the_grid_with_decay_metrics_and_a_report(tmp_path: Path) -> None:
    """ROME, FT-L and MEND through the local executor: patches, fine-tuning, both metric families, the report."""
    from editdecay.experiments import LocalExecutor
    from editdecay.reporting import demo_table, write_report

    raw = write_tiny_experiment(tmp_path)
    raw["evaluation"]["activations"] = False
    configs = []
    for name, hparams in NEW_EDITORS.items():
        configs.append(
            ExperimentConfig.model_validate({**raw, "name": name, "editor": {"name": name, "hparams": hparams}})
        )
    store, runs = tmp_path / "store", tmp_path / "runs"
    LocalExecutor().run(configs, store, runs)
    for run_dir in sorted(runs.iterdir()):
        summary = json.loads((run_dir / "summary.json").read_text())
        decay = summary["edits"]["decay"]
        assert decay["efr"] is None or 0 <= decay["efr"] <= 1
        assert set(decay["generation"]) >= {"efr", "delta_es_pp", "outcomes"}
        med = summary["edits"]["groups"]["Med"]
        assert med["es"] is not None and med["gen_es"] is not None and "gen_es" in med["metric_definitions"]
    assert (ArtifactStore(store).editors_root / "mend").is_dir()  # MEND's network lives in the store
    table = demo_table(runs)
    assert all(name in table for name in NEW_EDITORS) and "genEFR%" in table
    assert any(p.name == "table3_delta_es_efr.md" for p in write_report(runs, tmp_path / "report"))
