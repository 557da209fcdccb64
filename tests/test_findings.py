"""`editdecay findings`: claims matched from run configs, verdicts on planted results, the report on disk."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from editdecay.cli import app
from editdecay.reporting.findings import CLAIMS, FACTORS, Run, load_runs, pairs, write_findings

SEEDS = (0, 1, 2)
N = 40


def _config(seed: int, **changes: dict) -> dict:
    config = {
        "name": "planted",
        "model": {"source": "smollm2-135m", "dtype": "float32"},
        "edits": {"dataset": "builtin", "n": N, "seed": seed},
        "editor": {"name": "memit", "hparams": {}, "preset": None},
        "finetune": {"method": "lora", "layers": "all", "seed": seed, "lr": 1e-3, "fact_statements": None},
        "evaluation": {"control": True},
    }
    for section, values in changes.items():
        config[section] = {**config[section], **values}
    return config


def _run(seed: int, flip_rate: float, *, control_forget: float = 0.0, third: float | None = None, **changes) -> Run:
    """A run whose N edits all succeed after editing and a planted share of them fail after fine-tuning."""
    rng = np.random.default_rng(zlib.crc32(json.dumps([seed, flip_rate, changes], sort_keys=True).encode()))
    cases = [f"e{i}" for i in range(N)]
    flipped = rng.random(N) < flip_rate
    edits = pd.DataFrame(
        [{"group": "Med", "case_id": c, "success": 1.0, "knows_true": 0.0} for c in cases]
        + [
            {"group": "Med_ft", "case_id": c, "success": float(not f), "knows_true": 0.0}
            for c, f in zip(cases, flipped, strict=True)
        ]
    )
    forgotten = rng.random(N) < control_forget
    control = pd.DataFrame(
        [{"group": "Med", "case_id": f"k{i}", "success": 0.0, "knows_true": 1.0} for i in range(N)]
        + [
            {"group": "Med_ft", "case_id": f"k{i}", "success": 0.0, "knows_true": float(not f)}
            for i, f in enumerate(forgotten)
        ]
    )
    outcomes = None
    if third is not None:
        to_third = rng.random(N) < third
        erased_to = [("third" if t else "original") if f else None for f, t in zip(flipped, to_third, strict=True)]
        outcomes = pd.DataFrame(
            {"case_id": cases, "outcome": np.where(flipped, "erased", "stable"), "erased_to": erased_to}
        )
    config = _config(seed, **changes)
    run_id = f"{seed}-{flip_rate}-{json.dumps(changes, sort_keys=True)}"
    return Run(run_id, config, edits, control, outcomes, None, None, [4, 5, 6, 7, 8])


def _verdict(claim: str, runs: list[Run]) -> str:
    return CLAIMS[claim](runs).verdict


def test_runs_pair_only_when_everything_but_the_factor_and_what_follows_it_agrees() -> None:
    memit = [_run(s, 0.1) for s in SEEDS]
    alpha = [_run(s, 0.4, editor={"name": "alphaedit", "hparams": {"nullspace_threshold": 0.01}}) for s in SEEDS]
    other_lr = [_run(s, 0.4, editor={"name": "alphaedit"}, finetune={"lr": 5e-3}) for s in SEEDS]
    matched = pairs([*memit, *alpha, *other_lr], FACTORS["editor"], "alphaedit", "memit")
    assert sorted((a.run_id, b.run_id) for a, b in matched) == sorted(
        (a.run_id, m.run_id) for a, m in zip(alpha, memit, strict=True)
    )


@pytest.mark.parametrize(
    ("alpha_rate", "memit_rate", "expected"),
    [(0.5, 0.05, "replicates"), (0.05, 0.5, "contradicts"), (0.2, 0.2, "inconclusive")],
)
def test_c2_verdicts_on_planted_flip_rates(alpha_rate: float, memit_rate: float, expected: str) -> None:
    runs = [_run(s, memit_rate) for s in SEEDS] + [_run(s, alpha_rate, editor={"name": "alphaedit"}) for s in SEEDS]
    if expected == "inconclusive":  # the same planted flips in both: no difference at all
        runs = [_run(s, memit_rate) for s in SEEDS]
        runs += [
            Run(
                r.run_id + "a",
                _config(s, editor={"name": "alphaedit"}),
                r.edits,
                r.control,
                None,
                None,
                None,
                r.edit_layers,
            )
            for s, r in zip(SEEDS, runs, strict=True)
        ]
    result = CLAIMS["C2"](runs)
    assert result.verdict == expected
    if expected == "replicates":
        assert result.interval is not None and result.interval.low > 0
        assert result.effect == pytest.approx(
            np.mean([(~r.edits.query("group == 'Med_ft'")["success"].astype(bool)).mean() for r in runs[3:]])
            - np.mean([(~r.edits.query("group == 'Med_ft'")["success"].astype(bool)).mean() for r in runs[:3]])
        )


def test_c1_replicates_with_flips_and_is_inconclusive_without() -> None:
    assert _verdict("C1", [_run(s, 0.3) for s in SEEDS]) == "replicates"
    assert _verdict("C1", [_run(s, 0.0) for s in SEEDS]) == "inconclusive"
    flips = CLAIMS["C1"]([_run(s, 0.3) for s in SEEDS])
    assert "McNemar" in flips.test and flips.p_value is not None and flips.p_value < 1e-6


def test_claims_whose_factor_did_not_vary_are_not_run() -> None:
    runs = [_run(s, 0.3) for s in SEEDS]
    for claim in ("C2", "C3", "C4", "C6", "C10"):
        assert _verdict(claim, runs) == "not run"


def test_c4_needs_both_peft_methods() -> None:
    full = [_run(s, 0.5, finetune={"method": "full", "lr": 1e-4}) for s in SEEDS]
    lora = [_run(s, 0.05) for s in SEEDS]
    dora = [_run(s, 0.05, finetune={"method": "dora"}) for s in SEEDS]
    assert _verdict("C4", [*full, *lora, *dora]) == "replicates"
    assert _verdict("C4", [*full, *lora]) == "inconclusive"  # the DoRA half was not run


def test_c7_compares_edit_flips_with_forgotten_control_facts() -> None:
    assert _verdict("C7", [_run(s, 0.5, control_forget=0.05) for s in SEEDS]) == "replicates"
    assert _verdict("C7", [_run(s, 0.05, control_forget=0.5) for s in SEEDS]) == "contradicts"


def test_c9_counts_erased_edits_going_to_a_third_answer() -> None:
    result = CLAIMS["C9"]([_run(s, 0.6, third=0.9) for s in SEEDS])
    assert result.verdict == "replicates"
    back = CLAIMS["C9"]([_run(s, 0.6, third=0.1) for s in SEEDS])
    assert back.verdict == "contradicts"


def test_the_report_round_trips_through_run_directories(tmp_path: Path) -> None:
    runs = [_run(s, 0.05) for s in SEEDS] + [_run(s, 0.5, editor={"name": "alphaedit"}) for s in SEEDS]
    for i, run in enumerate(runs):
        directory = tmp_path / "runs" / f"r{i}"
        directory.mkdir(parents=True)
        run.edits.to_parquet(directory / "edits_per_edit.parquet")
        assert run.control is not None
        run.control.to_parquet(directory / "control_per_edit.parquet")
        summary = {"run_id": run.run_id, "config": run.config, "edit_layers": run.edit_layers}
        (directory / "summary.json").write_text(json.dumps(summary))
        (directory / "DONE").write_text("ok\n")
    loaded = load_runs(tmp_path / "runs")
    assert [r.run_id for r in loaded] == [r.run_id for r in runs]
    written = write_findings(tmp_path / "runs", tmp_path / "direct")
    assert sorted(p.name for p in written) == ["claims.csv", "findings.md"]
    result = CliRunner().invoke(app, ["findings", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    claims = pd.read_csv(tmp_path / "out" / "claims.csv").set_index("claim")
    assert claims.loc["C2", "verdict"] == "replicates"
    assert claims.loc["C6", "verdict"] == "not run"
    assert set(CLAIMS) <= set(claims.index)
    assert "Table 5" in (tmp_path / "out" / "findings.md").read_text()  # the study's figure beside ours


def test_an_empty_runs_directory_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["findings", str(tmp_path)])
    assert result.exit_code == 2
    assert "No complete runs" in result.output


def test_write_findings_refuses_a_directory_without_runs(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="No complete runs"):
        write_findings(tmp_path, tmp_path / "out")
