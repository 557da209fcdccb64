"""Experiment/grid config validation, overrides and grid expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from editdecay.config import ConfigError, ExperimentConfig, GridConfig, load_experiment, load_grid, parse_overrides

PRESETS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "finetune:\n  metod: lora\n")
    with pytest.raises(ConfigError, match=r"finetune\.metod: unknown key"):
        load_experiment(path)


def test_bad_value_is_named_with_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, "edits:\n  n: 0\neditor:\n  name: rome\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    message = str(info.value)
    assert "edits.n" in message and "(got 0)" in message
    assert "editor.name" in message and "'rome'" in message


def test_overrides_are_parsed_as_yaml_and_applied(tmp_path: Path) -> None:
    path = write(tmp_path, "edits:\n  n: 10\n")
    config = load_experiment(path, ["edits.n=25", "finetune.layers=[3, 4]", "evaluation.tasks=[boolq]",
                                    "edits.seed=null", "model.dtype=bfloat16"])
    assert config.edits.n == 25
    assert config.finetune.layers == [3, 4]
    assert config.evaluation.tasks == ["boolq"]
    assert config.edits.seed is None
    assert config.model.dtype == "bfloat16"


def test_malformed_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_overrides(["edits.n"])
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_experiment(write(tmp_path, "- a\n- b\n"))


def test_config_hash_ignores_name_and_tracks_every_input() -> None:
    a = ExperimentConfig(name="a")
    assert a.config_hash() == ExperimentConfig(name="b").config_hash()
    changed = [
        ExperimentConfig.model_validate({"edits": {"n": 51}}),
        ExperimentConfig.model_validate({"editor": {"name": "alphaedit"}}),
        ExperimentConfig.model_validate({"finetune": {"hparams": {"lr": 1e-4}}}),
        ExperimentConfig.model_validate({"evaluation": {"task_limit": 5}}),
    ]
    hashes = {c.config_hash() for c in changed}
    assert len(hashes) == len(changed) and a.config_hash() not in hashes


def test_grid_expands_cartesian_product() -> None:
    grid = GridConfig(name="g", base={"edits": {"n": 10}},
                      grid={"editor.name": ["memit", "alphaedit"], "finetune.method": ["lora", "dora", "full"],
                            "finetune.layers": ["all", "edited"]})
    configs = grid.expand()
    assert len(configs) == 12
    assert len({c.config_hash() for c in configs}) == 12
    assert all(c.edits.n == 10 for c in configs)
    assert {(c.editor.name, c.finetune.method, c.finetune.layers) for c in configs} == {
        (e, m, layer) for e in ("memit", "alphaedit") for m in ("lora", "dora", "full") for layer in ("all", "edited")}


def test_grid_bad_combination_names_key(tmp_path: Path) -> None:
    path = write(tmp_path, "base: {}\ngrid:\n  finetune.method: [lora, qlora]\n")
    with pytest.raises(ConfigError, match=r"finetune\.method"):
        load_grid(path)
    with pytest.raises(ConfigError, match="empty list"):
        load_grid(write(tmp_path, "grid:\n  editor.name: []\n"))


def test_grid_overrides_base_and_lists(tmp_path: Path) -> None:
    path = write(tmp_path, "base:\n  edits: {n: 5}\ngrid:\n  editor.name: [memit, alphaedit]\n")
    grid = load_grid(path, ["edits.n=7", "grid.finetune.method=[lora, dora]"])
    configs = grid.expand()
    assert len(configs) == 4 and all(c.edits.n == 7 for c in configs)
    single = load_grid(path, ["editor.name=alphaedit"]).expand()
    assert [c.editor.name for c in single] == ["alphaedit"]


@pytest.mark.parametrize("preset", ["demo.yaml", "demo-quick.yaml", "paper.yaml", "small-grid.yaml"])
def test_presets_validate(preset: str) -> None:
    configs = load_grid(PRESETS / preset).expand()
    assert configs
    if preset == "paper.yaml":
        # 4 models x 2 datasets x 3 edit counts x 2 editors x 3 fine-tuning methods
        assert len(configs) == 144
        assert {c.edits.n for c in configs} == {100, 1000, 10000}
    elif preset == "small-grid.yaml":
        # 2 editors x 2 fine-tuning methods x 2 layer policies
        assert len(configs) == 8
        assert {(c.editor.name, c.finetune.method, c.finetune.layers) for c in configs} == {
            (e, m, p) for e in ("memit", "alphaedit") for m in ("lora", "dora") for p in ("all", "edited")}
    else:
        assert len(configs) == 4


def test_single_experiment_preset_validates() -> None:
    config = load_experiment(PRESETS / "experiment.yaml")
    assert (config.editor.name, config.finetune.method, config.edits.n) == ("memit", "lora", 50)
