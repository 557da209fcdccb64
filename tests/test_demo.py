"""`editdecay demo --quick` on the real SmolLM2-135M: every model group gets numbers, the report is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from editdecay.cli import app
from editdecay.experiments import GROUPS


@pytest.mark.slow
def test_quick_demo(tmp_path: Path, smollm2) -> None:
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/summary.json")]
    assert len(summaries) == 4  # MEMIT and AlphaEdit x all / edited layers
    for summary in summaries:
        for set_name in ("edits", "control"):
            groups = summary[set_name]["groups"]
            assert set(groups) == set(GROUPS)
            for group in GROUPS:
                assert 0 <= groups[group]["es"] <= 100
        assert summary["downstream"]
    for group in GROUPS:
        assert f"ES({group})" in result.output
    report = tmp_path / "report"
    assert (report / "fig2_es_before_after.png").stat().st_size > 1000
    assert (report / "table1_es_before_after.md").is_file()
