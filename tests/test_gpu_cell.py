"""bench/gpu_cell.py (the paper cell a lent GPU times) runs end to end on a tiny model on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline_fixtures import write_tiny_experiment

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_cell.py"


def test_gpu_cell_script_times_every_stage_of_one_paper_cell(tmp_path: Path) -> None:
    raw = write_tiny_experiment(tmp_path)
    out = tmp_path / "cell.json"
    command = [sys.executable, str(SCRIPT), "--model", raw["model"]["source"], "--edits", raw["edits"]["dataset"]]
    command += ["--n", "4", "--corpus", "builtin", "--max-examples", "8", "--epochs", "1", "--tasks", "none"]
    command += ["--activation-prompts", "4", "--device", "cpu", "--dtype", "float32", "--out", str(out)]
    command += ["--store", str(tmp_path / "store"), "--runs", str(tmp_path / "runs")]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert {"edit", "finetune M", "finetune Med", "evaluate Med_ft"} <= set(figures["stage_seconds"])
    assert set(figures["stage_peak_rss_mib"]) == set(figures["stage_seconds"])
    assert figures["device"] == "cpu" and figures["gpu_peak_allocated_mib"] is None
    assert "finetune Med" in done.stdout and "peak RSS" in done.stdout
