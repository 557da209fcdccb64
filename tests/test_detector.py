"""The edited-layer detector: planted low-rank edits are found, with and without fine-tuning noise elsewhere."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from editdecay.cli import app
from editdecay.durability.detector import detect_edited_layers, hit_rate
from editdecay.models import arch_for
from tiny import tiny_model, tiny_tokenizer


def _plant(model, layer: int, relative: float, rank: int = 2, seed: int = 0) -> None:
    """Add a rank-`rank` update of the given relative norm to the block's MLP output projection."""
    weight = model.get_parameter(arch_for(model).mlp_out_weight_name(layer))
    generator = torch.Generator().manual_seed(seed + layer)
    update = torch.randn(weight.shape[0], rank, generator=generator) @ torch.randn(
        rank, weight.shape[1], generator=generator
    )
    with torch.no_grad():
        weight.add_(update * (relative * weight.norm() / update.norm()))


def test_a_patch_is_found_exactly() -> None:
    base = tiny_model("llama")
    suspect = copy.deepcopy(base)
    for layer in (1, 2):
        _plant(suspect, layer, 1e-2)
    table = detect_edited_layers(base, suspect)
    assert set(table.loc[table["flagged"], "layer"]) == {1, 2}
    assert table["layer"].tolist()[:2] in ([1, 2], [2, 1])
    torch.testing.assert_close(float(table["down_rel"].iloc[0]), 1e-2, rtol=1e-4, atol=0)
    assert (table.loc[table["flagged"], "down_stable_rank"] <= 2 + 1e-6).all()
    assert not detect_edited_layers(base, copy.deepcopy(base))["flagged"].any()


def test_an_edit_stands_out_from_fine_tuning_changes_everywhere() -> None:
    base = tiny_model("llama")
    suspect = copy.deepcopy(base)
    with torch.no_grad():  # fine-tuning-like changes of every matrix, about 1e-3 of its norm
        for i, (name, param) in enumerate(suspect.named_parameters()):
            if param.ndim == 2 and ".layers." in name:
                param.mul_(1 + (0.8e-3 + 0.1e-3 * (i % 5)))
    _plant(suspect, 2, 5e-2)
    table = detect_edited_layers(base, suspect)
    assert set(table.loc[table["flagged"], "layer"]) == {2}
    assert hit_rate({2}, {2}) == {"precision": 1.0, "recall": 1.0, "exact": 1.0}
    assert hit_rate({2, 3}, {2}) == {"precision": 0.5, "recall": 1.0, "exact": 0.0}


def test_cli_detect_on_saved_models(tmp_path: Path) -> None:
    base = tiny_model("llama")
    suspect = copy.deepcopy(base)
    _plant(suspect, 3, 1e-2)
    for model, name in ((base, "m"), (suspect, "s")):
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer(add_bos=True).save_pretrained(tmp_path / name)
    out = tmp_path / "d.json"
    args = ["detect", "--model", str(tmp_path / "m"), "--suspect", str(tmp_path / "s"), "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "probably edited blocks: [3]" in result.output
    assert json.loads(out.read_text())["flagged"] == [3]
    missing = ["detect", "--model", str(tmp_path / "m"), "--suspect", str(tmp_path / "missing" / "model.gguf")]
    assert CliRunner().invoke(app, missing).exit_code == 2
