"""Report tables and figures on a small hand-made set of stored results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from editdecay.reporting import ReportError, connect, demo_table, write_report
from editdecay.reporting.tables import (
    control_vs_edits,
    decrease_rate,
    delta_es_efr,
    es_before_after,
    outcome_examples,
    selective_layers,
)


def make_run(
    root: Path,
    run_id: str,
    editor: str,
    method: str,
    layers: str,
    es: dict[str, float],
    complete: bool = True,
    generation: bool = True,
) -> None:
    """A stored run; `generation=False` writes it as runs before the generation family (no gen_* columns)."""
    run = root / run_id
    run.mkdir(parents=True)
    pd.DataFrame(
        [
            {
                "run_id": run_id,
                "name": run_id,
                "model": "tiny",
                "dataset": "builtin",
                "n_edits": 4,
                "editor": editor,
                "ft_method": method,
                "ft_layers": layers,
                "edit_layers": "1,2",
            }
        ]
    ).to_parquet(run / "run.parquet")
    rows = [
        {
            "run_id": run_id,
            "set": "edits",
            "group": g,
            "es": v,
            "ps": v / 2,
            "ns": 100 - v,
            "es_magnitude": v - 50,
            "downstream_avg": 50.0 + i,
            **({"gen_es": v / 4} if generation else {}),
        }
        for i, (g, v) in enumerate(es.items())
    ]
    rows += [
        {
            "run_id": run_id,
            "set": "control",
            "group": g,
            "es": 5.0,
            "ps": 80.0,
            "ns": 70.0,
            "es_magnitude": -40.0,
            "knows_true": 95.0 - 10 * (g == "Med_ft"),
            "downstream_avg": None,
        }
        for g in es
    ]
    pd.DataFrame(rows).to_parquet(run / "metrics.parquet")
    before, after = es["Med"], es["Med_ft"]
    pd.DataFrame(
        [
            {
                "run_id": run_id,
                "delta_es_pp": before - after,
                "decrease_rate": (before - after) / before,
                "efr": 0.25,
                "flips": 1,
                "successes_after_edit": 4,
                "reverse_flip_ratio": 0.0,
                "reverse_flips": 0,
                **(
                    {
                        "generation.delta_es_pp": (before - after) / 4,
                        "generation.efr": 0.5,
                        "generation.flips": 1,
                        "generation.successes_after_edit": 2,
                    }
                    if generation
                    else {}
                ),
            }
        ]
    ).to_parquet(run / "decay.parquet")
    pd.DataFrame(
        [
            {
                "run_id": run_id,
                "case_id": str(i),
                "outcome": outcome,
                "prompt": f"p{i}",
                "target_true": "a",
                "target_new": "b",
                "answer_M": "a",
                "answer_Med": "b",
                "answer_Med_ft": "c",
                "erased_to": "third" if outcome == "erased" else None,
            }
            for i, outcome in enumerate(["stable", "stable", "erased", "impossible"])
        ]
    ).to_parquet(run / "outcomes.parquet")
    pd.DataFrame(
        [
            {
                "run_id": run_id,
                "layer": layer,
                "pair": pair,
                "drift": float(layer),
                "similarity": 0.5,
                "edited_layer": layer in (1, 2),
            }
            for layer in range(4)
            for pair in ("Med-M", "Mft-M")
        ]
    ).to_parquet(run / "activations.parquet")
    if complete:
        (run / "DONE").write_text("ok\n")


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    make_run(root, "r1", "memit", "lora", "all", {"M": 10.0, "Med": 100.0, "Mft": 10.0, "Med_ft": 80.0})
    make_run(root, "r2", "memit", "dora", "all", {"M": 10.0, "Med": 100.0, "Mft": 10.0, "Med_ft": 60.0})
    make_run(
        root, "r3", "alphaedit", "lora", "all", {"M": 10.0, "Med": 90.0, "Mft": 10.0, "Med_ft": 45.0}, generation=False
    )
    make_run(root, "r4", "memit", "lora", "edited", {"M": 10.0, "Med": 100.0, "Mft": 10.0, "Med_ft": 20.0})
    make_run(root, "r5", "memit", "full", "all", {"M": 0.0, "Med": 1.0, "Mft": 0.0, "Med_ft": 0.0}, complete=False)
    return root


def test_incomplete_runs_are_ignored_and_empty_dir_is_an_error(runs: Path, tmp_path: Path) -> None:
    con = connect(runs)
    assert sorted(con.execute("SELECT run_id FROM run").df()["run_id"]) == ["r1", "r2", "r3", "r4"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="No complete runs"):
        connect(tmp_path / "empty")


def test_table1_es_before_after_per_method(runs: Path) -> None:
    table = es_before_after(connect(runs)).set_index("editor")
    assert table.loc["memit", "lora es_before"] == 100.0
    assert table.loc["memit", "lora es_after"] == 80.0  # r4 (edited layers only) is not in Table 1
    assert table.loc["memit", "dora es_after"] == 60.0
    assert table.loc["alphaedit", "lora es_after"] == 45.0
    assert pd.isna(table.loc["alphaedit", "dora es_after"])
    assert (table.loc["memit", "lora gen_es_before"], table.loc["memit", "lora gen_es_after"]) == (25.0, 20.0)
    assert pd.isna(table.loc["alphaedit", "lora gen_es_after"])  # r3 was written before the generation family
    assert [c for c in table.columns if " es_" in c] == [
        "dora es_before",
        "dora es_after",
        "lora es_before",
        "lora es_after",
    ]


def test_table2_decrease_rate_with_averages(runs: Path) -> None:
    table = decrease_rate(connect(runs)).set_index("model")
    # lora: memit 20% and alphaedit 50% -> 35%; dora: memit 40%.
    assert table.loc["tiny", "lora"] == pytest.approx(35.0)
    assert table.loc["tiny", "dora"] == pytest.approx(40.0)
    assert table.loc["tiny", "Average"] == pytest.approx(37.5)
    assert table.loc["Average", "lora"] == pytest.approx(35.0)


def test_table3_and_table5(runs: Path) -> None:
    con = connect(runs)
    table3 = delta_es_efr(con)
    assert len(table3) == 4
    assert sorted(table3["delta_es_pp"]) == [20.0, 40.0, 45.0, 80.0]
    assert set(table3["efr"]) == {25.0}
    by_run = table3.set_index(["editor", "ft_method", "ft_layers"])
    assert by_run.loc[("memit", "dora", "all"), ["gen_delta_es_pp", "gen_efr", "gen_efr_count"]].tolist() == [
        10.0,
        50.0,
        1,
    ]
    assert pd.isna(by_run.loc[("alphaedit", "lora", "all"), "gen_efr"])
    table5 = selective_layers(con).set_index(["editor", "ft_method", "ft_layers"])
    assert table5.loc[("memit", "lora", "edited"), "es"] == 20.0
    assert table5.loc[("memit", "lora", "edited"), "ps"] == 10.0
    assert table5.loc[("memit", "lora", "edited"), "downstream_avg"] == 53.0


def test_outcome_examples_one_per_class_with_counts(runs: Path) -> None:
    table = outcome_examples(connect(runs))
    assert list(table["outcome"]) == ["stable", "erased", "impossible"]
    assert list(table["class_count"]) == [8, 4, 4]
    assert table.set_index("outcome").loc["erased", "erased_to"] == "third"


def test_write_report_writes_every_format_and_nonempty_figures(runs: Path, tmp_path: Path) -> None:
    written = write_report(runs, tmp_path / "report")
    names = {p.name for p in written}
    for stem in (
        "table1_es_before_after",
        "table2_decrease_rate",
        "table3_delta_es_efr",
        "table4_outcome_examples",
        "table5_selective_layers",
        "table6_downstream_by_edits",
    ):
        assert {f"{stem}.md", f"{stem}.tex", f"{stem}.csv"} <= names
    for stem in ("fig2_es_before_after", "fig3_activation_shift_memit", "fig3_activation_shift_alphaedit"):
        for suffix in (".png", ".pdf"):
            assert (tmp_path / "report" / f"{stem}{suffix}").stat().st_size > 1000
    assert "\\begin{tabular}" in (tmp_path / "report" / "table3_delta_es_efr.tex").read_text()


def test_demo_table_rows_and_values(runs: Path) -> None:
    decay_part, side_part = demo_table(runs).split("Side effects")
    rows = {tuple(cells[:2]): cells for cells in _markdown_rows(decay_part)}
    header = _markdown_rows(decay_part, header=True)
    assert set(rows) == {
        ("memit", "lora/all"),
        ("memit", "dora/all"),
        ("alphaedit", "lora/all"),
        ("memit", "lora/edited"),
    }  # the incomplete run r5 is left out
    memit = dict(zip(header, rows[("memit", "lora/all")], strict=True))
    assert (memit["ES(Med)"], memit["ES(Med_ft)"], memit["margin(Med_ft)"]) == ("100", "80", "30")
    assert (memit["ΔES"], memit["EFR%"], memit["flips"]) == ("20", "25", "1/4")
    assert (memit["genES(Med)"], memit["genES(Med_ft)"], memit["genEFR%"]) == ("25", "20", "50")
    side_header = _markdown_rows(side_part, header=True)
    side = dict(
        zip(side_header, {tuple(c[:2]): c for c in _markdown_rows(side_part)}[("alphaedit", "lora/all")], strict=True)
    )
    assert (side["known(M)"], side["known(Med_ft)"], side["downstream(Med_ft)"]) == ("95", "85", "53")


def _markdown_rows(text: str, header: bool = False) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return cells[0] if header else cells[2:]  # type: ignore[return-value]


def test_control_facts_report_the_share_still_known(runs: Path) -> None:
    table = control_vs_edits(connect(runs))
    control = table[(table["set"] == "control") & (table["editor"] == "memit") & (table["ft_layers"] == "all")]
    assert list(control["M"]) == [95.0, 95.0] and list(control["Med_ft"]) == [85.0, 85.0]
    edits = table[(table["set"] == "edits") & (table["editor"] == "alphaedit")]
    assert list(edits["Med"]) == [90.0]
