"""Grids designed per question: cells, tied keys, configurations shared by cells run once (config.GridConfig)."""

from __future__ import annotations

from pathlib import Path

import pytest

from editdecay.config import ConfigError, GridConfig, load_grid

PRESETS = Path(__file__).resolve().parents[1] / "src" / "editdecay" / "presets"


def test_tied_keys_set_every_key_to_the_same_value() -> None:
    grid = GridConfig(base={"edits": {"n": 5}}, grid={"edits.seed+finetune.seed": [0, 1, 2]})
    configs = grid.expand()
    assert [(c.edits.seed, c.finetune.seed) for c in configs] == [(0, 0), (1, 1), (2, 2)]


def test_cells_are_a_union_of_products_and_shared_configurations_run_once() -> None:
    grid = GridConfig.model_validate(
        {
            "name": "g",
            "base": {"edits": {"n": 5}},
            "grid": {"edits.seed+finetune.seed": [0, 1]},
            "cells": {
                "reference": {},
                "editors": {"grid": {"editor.name": ["memit", "alphaedit"]}},  # memit repeats the reference
                "full": {"set": {"finetune.method": "full", "finetune.lr": 1e-4}},
                "one_seed": {"set": {"finetune.layers": "edited"}, "grid": {"edits.seed+finetune.seed": [7]}},
            },
        }
    )
    configs = grid.expand()
    combos = [(c.editor.name, c.finetune.method, c.finetune.layers, c.edits.seed) for c in configs]
    assert combos == [
        ("memit", "lora", "all", 0),
        ("memit", "lora", "all", 1),
        ("alphaedit", "lora", "all", 0),
        ("alphaedit", "lora", "all", 1),
        ("memit", "full", "all", 0),
        ("memit", "full", "all", 1),
        ("memit", "lora", "edited", 7),
    ]
    assert configs[0].name == "g/reference[seed=0]"


def test_a_bad_cell_names_the_cell(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("cells:\n  broken:\n    set: {finetune.method: qlora}\n")
    with pytest.raises(ConfigError, match="broken"):
        load_grid(path)
    path.write_text("cells:\n  empty:\n    grid: {editor.name: []}\n")
    with pytest.raises(ConfigError, match="empty"):
        load_grid(path)


def test_the_findings_grid_has_three_seeds_per_claim_cell() -> None:
    configs = load_grid(PRESETS / "findings.yaml").expand()
    cells: dict[str, set[int | None]] = {}
    for config in configs:
        cells.setdefault(config.name.split("[")[0].split("/")[1], set()).add(config.finetune.seed)
    for cell in ("reference", "editors", "methods", "full", "layers", "edit_count", "model_size"):
        assert cells[cell] == {0, 1, 2}, cell
    assert all(c.edits.seed == c.finetune.seed for c in configs)
    assert len(configs) == 30
