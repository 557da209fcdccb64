"""The pipeline commands' parsing and error handling (no heavy stage runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from editdecay.cli import app

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "run", "grid", "report", "edit", "finetune", "evaluate", "stats", "models"):
        assert re.search(rf"│ {command}\b", result.output), command


def _bracketed(text: str) -> list[str]:
    """Square-bracketed phrases as the help should show them (rich markup needs a literal "[" escaped)."""
    return re.findall(r"\[[^\]\n]*\]", text.replace("\\[", "["))


def _flat(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


def test_every_command_help_renders_with_its_brackets() -> None:
    group = typer.main.get_command(app)
    names = [c.name or c.callback.__name__ for c in app.registered_commands]  # type: ignore[union-attr]
    assert set(names) == set(group.commands)  # type: ignore[attr-defined]
    for name in names:
        result = CliRunner().invoke(app, [name, "--help"], terminal_width=200)
        assert result.exit_code == 0, (name, result.output)
        command = group.commands[name]  # type: ignore[attr-defined]
        texts = [command.help or ""] + [getattr(param, "help", None) or "" for param in command.params]
        shown = _flat(result.output)
        for phrase in (p for text in texts for p in _bracketed(text)):
            assert _flat(phrase) in shown, (name, phrase)
    stats = _flat(CliRunner().invoke(app, ["stats", "--help"], terminal_width=200).output)
    assert "Collect (or load from the cache) E[k k^T] for every requested layer" in stats


@pytest.mark.parametrize(
    ("cells", "configs", "patches", "finetunings"),
    [
        # 4 models x 2 datasets x 3 sizes x 3 editors (MEMIT, AlphaEdit; MEND's cell) = 72 patches; 12 of M + 216.
        ([], 216, 72, 228),
        # the study's cell alone: 2 editors, 48 patches, 12 + 144 fine-tunings
        (["--set", "cells=[study]"], 144, 48, 156),
    ],
)
def test_paper_grid_dry_run(tmp_path: Path, cells: list[str], configs: int, patches: int, finetunings: int) -> None:
    result = CliRunner().invoke(
        app,
        [
            "grid",
            str(CONFIGS / "paper.yaml"),
            "--dry-run",
            "--store",
            str(tmp_path / "store"),
            "--runs",
            str(tmp_path / "runs"),
            *cells,
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"{configs} configurations, 0 already complete" in result.output
    assert re.search(rf"edits\s+{patches} to run,\s+0 cached", result.output)
    assert re.search(rf"fine-tunings\s+{finetunings} to run,\s+0 cached", result.output)
    assert not (tmp_path / "runs").exists()


def test_bad_config_gives_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("edits:\n  n: -1\nfinetune:\n  lrr: 0.1\n")
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert "edits.n" in result.output and "finetune.lrr: unknown key" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(
        app,
        [
            "grid",
            str(CONFIGS / "demo.yaml"),
            "--dry-run",
            "--executor",
            "slurm",
            "--set",
            "grid.finetune.method=[lora, qlora]",
        ],
    )
    assert result.exit_code == 2 and "finetune.method" in result.output
    result = CliRunner().invoke(app, ["grid", str(CONFIGS / "demo.yaml"), "--dry-run", "--executor", "slurm"])
    assert result.exit_code == 2 and "choose one of local, ray" in result.output


def test_report_on_empty_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "report")])
    assert result.exit_code == 2
    assert "No complete runs" in result.output
