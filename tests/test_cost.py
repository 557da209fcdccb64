"""`grid --dry-run --cost`: the work of each stage by hand, stages shared by configurations counted once, stages
in the store not counted, rates recorded from a run giving back that run's stage times, and the CLI's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from editdecay.cli.app import app
from editdecay.config import ExperimentConfig
from editdecay.evaluation import GROUPS
from editdecay.experiments import ArtifactStore, run_experiment
from editdecay.experiments.cost import (
    PROMPT_TOKENS,
    STAGE_KINDS,
    Assumptions,
    DeviceRates,
    config_work,
    grid_cost,
    load_rates,
    record_rates,
)
from editdecay.finetuning import FinetuneSpec
from pipeline_fixtures import write_tiny_experiment

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper.yaml"


def _work(raw: dict, n: int, parameters: float) -> dict[str, float]:
    config = ExperimentConfig.model_validate({**raw, "edits": {**raw["edits"], "n": n}})
    keys = {name: name for name in ("patch", "ft_base", "ft_edited", "activations", *(f"eval_{g}" for g in GROUPS))}
    hparams = {"mom2_n_tokens": 1000, "v_num_grad_steps": 5, "context_template_count": 1, "context_template_tokens": 4}
    spec = FinetuneSpec(epochs=2, cutoff_len=64)
    stages = config_work(config, keys, parameters, hparams, spec, 4, 8, 2, Assumptions())
    return {f"{s.kind}/{s.key}": s.flops for s in stages}


def test_stage_work_by_hand(tmp_path: Path) -> None:
    raw = write_tiny_experiment(tmp_path)  # 6 edits on file; builtin corpus
    work = _work(raw, 4, 1e6)
    # edit: 2N x 1000 statistic tokens + 6N x 4 edits x 5 steps x (1 + 1) sequences x (4 + PROMPT_TOKENS) tokens
    assert work["edit/patch"] == pytest.approx(2e6 * 1000 + 6e6 * 4 * 5 * 2 * (4 + PROMPT_TOKENS))
    assert work["fine-tune/ft_base"] == work["fine-tune/ft_edited"] > 0
    assert {k.split("/")[0] for k in work} == set(STAGE_KINDS) and sum(k.startswith("evaluate") for k in work) == 4
    doubled = _work(raw, 4, 2e6)
    assert all(doubled[k] == pytest.approx(2 * v) for k, v in work.items())  # linear in the parameters
    more = _work(raw, 6, 1e6)
    targets = 6e6 * 5 * 2 * (4 + PROMPT_TOKENS)
    assert more["edit/patch"] - work["edit/patch"] == pytest.approx(2 * targets)  # two more edits
    assert more["fine-tune/ft_base"] == work["fine-tune/ft_base"]  # fine-tuning does not depend on the edits
    assert more["evaluate/eval_M"] > work["evaluate/eval_M"]


def test_shared_stages_once_and_stored_stages_not_at_all(tmp_path: Path) -> None:
    raw = write_tiny_experiment(tmp_path)
    configs = [
        ExperimentConfig.model_validate({**raw, "finetune": {**raw["finetune"], "method": method}})
        for method in ("lora", "dora")
    ]
    cost = grid_cost(configs)
    counts = {kind: sum(s.kind == kind for s in cost.stages) for kind in STAGE_KINDS}
    # one patch; Mft and Med_ft per method; M and Med evaluated once, Mft and Med_ft per method
    assert counts == {"edit": 1, "fine-tune": 4, "evaluate": 6, "activations": 2}

    result = run_experiment(configs[0], tmp_path / "store", tmp_path / "runs")
    left = grid_cost(configs, ArtifactStore(tmp_path / "store"))
    counts = {kind: sum(s.kind == kind for s in left.stages) for kind in STAGE_KINDS}
    assert counts == {"edit": 0, "fine-tune": 2, "evaluate": 2, "activations": 1}  # what only dora needs

    # Rates recorded from the run give back its stage times for the same configuration.
    rates = DeviceRates("here", record_rates(result.run_dir), True, "test")
    seconds = json.loads((result.run_dir / "summary.json").read_text())["stage_seconds"]
    totals = grid_cost(configs[:1]).totals(rates)
    assert totals["edit"][1] == pytest.approx(seconds["edit"])
    assert totals["fine-tune"][1] == pytest.approx(seconds["finetune M"] + seconds["finetune Med"])
    assert totals["evaluate"][1] == pytest.approx(sum(seconds[f"evaluate {g}"] for g in GROUPS))
    assert totals["activations"][1] == pytest.approx(seconds["activations"])


def test_stored_rates_cover_every_stage_and_the_paper_grid_is_costed() -> None:
    kinds = load_rates()
    assert kinds and all(set(k.flops_per_s) == set(STAGE_KINDS) for k in kinds)
    out = CliRunner().invoke(app, ["grid", str(PAPER), "--dry-run", "--cost", "--store", "/nonexistent"])
    assert out.exit_code == 0, out.output
    assert "device-hours" in out.output and "nvidia-h100 (ASSUMED, not measured" in out.output
    assert "assumed: data/commonsense_170k.json is not readable here" in out.output
    refused = CliRunner().invoke(app, ["grid", str(PAPER), "--cost"])
    assert refused.exit_code != 0 and "--dry-run" in refused.output
