"""The pipeline commands' parsing and error handling (no heavy stage runs here)."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from editdecay.cli import app

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "run", "grid", "report", "edit", "finetune", "evaluate", "stats", "models"):
        assert re.search(rf"│ {command}\b", result.output), command


def test_paper_grid_dry_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["grid", str(CONFIGS / "paper.yaml"), "--dry-run",
                                      "--store", str(tmp_path / "store"), "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "144 configurations, 0 already complete" in result.output
    # 4 models x 2 datasets x 3 sizes x 2 editors = 48 patches; fine-tunings: 12 of M + 144 of Med.
    assert re.search(r"edits\s+48 to run,\s+0 cached", result.output)
    assert re.search(r"fine-tunings\s+156 to run,\s+0 cached", result.output)
    assert not (tmp_path / "runs").exists()


def test_bad_config_gives_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("edits:\n  n: -1\nfinetune:\n  lr: 0.1\n")
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert "edits.n" in result.output and "finetune.lr: unknown key" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["grid", str(CONFIGS / "demo.yaml"), "--dry-run", "--executor", "slurm",
                                      "--set", "grid.finetune.method=[lora, qlora]"])
    assert result.exit_code == 2 and "finetune.method" in result.output


def test_report_on_empty_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "report")])
    assert result.exit_code == 2
    assert "No complete runs" in result.output
