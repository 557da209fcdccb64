"""Experiment/grid config validation, overrides and grid expansion."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from editdecay.config import (
    ConfigError,
    ExperimentConfig,
    FinetuneConfig,
    GridConfig,
    load_experiment,
    load_grid,
    parse_overrides,
    unknown_editor_hparams,
)
from editdecay.editing import EDITORS

REGISTERED_EDITORS = tuple(EDITORS)
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
    path = write(tmp_path, "edits:\n  n: 0\neditor:\n  name: grace\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    message = str(info.value)
    assert "edits.n" in message and "(got 0)" in message
    assert "editor.name" in message and "'grace'" in message


def test_overrides_are_parsed_as_yaml_and_applied(tmp_path: Path) -> None:
    path = write(tmp_path, "edits:\n  n: 10\n")
    config = load_experiment(
        path,
        ["edits.n=25", "finetune.layers=[3, 4]", "evaluation.tasks=[boolq]", "edits.seed=null", "model.dtype=bfloat16"],
    )
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
        ExperimentConfig.model_validate({"finetune": {"lr": 1e-4}}),
        ExperimentConfig.model_validate({"evaluation": {"task_limit": 5}}),
    ]
    hashes = {c.config_hash() for c in changed}
    assert len(hashes) == len(changed) and a.config_hash() not in hashes


def test_grid_expands_cartesian_product() -> None:
    grid = GridConfig(
        name="g",
        base={"edits": {"n": 10}},
        grid={
            "editor.name": ["memit", "alphaedit"],
            "finetune.method": ["lora", "dora", "full"],
            "finetune.layers": ["all", "edited"],
        },
    )
    configs = grid.expand()
    assert len(configs) == 12
    assert len({c.config_hash() for c in configs}) == 12
    assert all(c.edits.n == 10 for c in configs)
    assert {(c.editor.name, c.finetune.method, c.finetune.layers) for c in configs} == {
        (e, m, layer) for e in ("memit", "alphaedit") for m in ("lora", "dora", "full") for layer in ("all", "edited")
    }


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


@pytest.mark.parametrize("editor", sorted(REGISTERED_EDITORS))
@pytest.mark.parametrize("preset", ["demo.yaml", "demo-quick.yaml"])
def test_the_demo_runs_any_registered_editor(preset: str, editor: str) -> None:
    """The demo's base carries MEMIT-family settings; an editor that does not take them ignores them, and a trained
    editor gets its training records the same way."""
    takes = {key: not unknown_editor_hparams(editor, {key: None}) for key in ("mom2_n_tokens", "train_data")}
    extra = ["editor.hparams.train_data=edits.json"] if takes["train_data"] else []
    configs = load_grid(PRESETS / preset, [f"grid.editor.name=[{editor}]", *extra]).expand()
    assert {c.editor.name for c in configs} == {editor}
    own = configs[0].editor.hparams
    assert ("mom2_n_tokens" in own) == takes["mom2_n_tokens"] and ("train_data" in own) == takes["train_data"]


def test_other_editors_settings_are_dropped_only_in_a_grid_over_editors(tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "base:\n  editor:\n    hparams:\n      mom2_n_tokens: 512\n      train_data: builtin\n"
        "grid:\n  editor.name: [memit, mend, ftl]\n"
    )
    hparams = {c.editor.name: c.editor.hparams for c in load_grid(grid).expand()}
    assert hparams == {"memit": {"mom2_n_tokens": 512}, "mend": {"train_data": "builtin"}, "ftl": {}}
    # One experiment stays strict: a setting its editor does not take is an error, whoever else takes it.
    assert "hparams.mom2_n_tokens: unknown key for ftl" in problems(
        tmp_path, "editor:\n  name: ftl\n  hparams:\n    mom2_n_tokens: 5\n"
    )
    grid.write_text("base:\n  editor:\n    hparams:\n      mom2_n_tokenz: 5\ngrid:\n  editor.name: [memit, ftl]\n")
    with pytest.raises(ConfigError, match="mom2_n_tokenz: unknown key for memit"):
        load_grid(grid)


@pytest.mark.parametrize("preset", ["demo.yaml", "demo-quick.yaml", "paper.yaml", "small-grid.yaml"])
def test_presets_validate(preset: str) -> None:
    configs = load_grid(PRESETS / preset).expand()
    assert configs
    if preset == "paper.yaml":
        # 4 models x 2 datasets x 3 edit counts x 3 editors (the study's two, the MEND cell) x 3 methods
        assert len(configs) == 216
        assert {c.edits.n for c in configs} == {100, 1000, 10000}
        mend = [c for c in configs if c.editor.name == "mend"]
        assert len(mend) == 72 and {c.editor.hparams["train_data"] for c in mend} == {"data/zsre_mend_train.json"}
        assert all("train_data" not in c.editor.hparams for c in configs if c.editor.name != "mend")
        assert len(load_grid(PRESETS / preset, ["cells=[study]"]).expand()) == 144
        with pytest.raises(ConfigError, match="has the cells"):
            load_grid(PRESETS / preset, ["cells=[appendix]"])
    elif preset == "small-grid.yaml":
        # 2 editors x 2 fine-tuning methods x 2 layer policies
        assert len(configs) == 8
        assert {(c.editor.name, c.finetune.method, c.finetune.layers) for c in configs} == {
            (e, m, p) for e in ("memit", "alphaedit") for m in ("lora", "dora") for p in ("all", "edited")
        }
    else:
        assert len(configs) == 4


def test_single_experiment_preset_validates() -> None:
    config = load_experiment(PRESETS / "experiment.yaml")
    assert (config.editor.name, config.finetune.method, config.edits.n) == ("memit", "lora", 50)


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_experiment(write(tmp_path, text))
    return str(info.value)


def test_finetune_section_is_finetune_spec_with_its_defaults() -> None:
    from editdecay.finetuning import FinetuneSpec

    fields = FinetuneConfig.model_fields
    for field in dataclasses.fields(FinetuneSpec):
        assert field.name in fields, field.name
        default = fields[field.name].default
        assert default == (list(field.default) if isinstance(field.default, tuple) else field.default), field.name
    corpus_fields = {
        "corpus",
        "max_examples",
        "corpus_seed",
        "fact_statements",
        "fact_fraction",
        "strategy",
        "replay_fraction",
    }
    assert set(fields) == {f.name for f in dataclasses.fields(FinetuneSpec)} | corpus_fields
    config = load_experiment(PRESETS / "experiment.yaml")
    spec = config.finetune.spec()
    assert (spec.lr, spec.epochs, spec.batch_size, spec.train_on_inputs, spec.r) == (0.001, 1, 16, False, 8)
    assert FinetuneConfig().spec() == FinetuneSpec()


def test_finetune_values_are_checked_by_the_spec_naming_the_key(tmp_path: Path) -> None:
    message = problems(tmp_path, "finetune:\n  lr: -1\n  dropout: 1.5\n  r: 2\n")
    assert "finetune.lr: lr must be > 0 (got -1.0)" in message
    assert "finetune.dropout: dropout must be in [0, 1) (got 1.5)" in message
    assert "finetune.r" not in message
    message = problems(tmp_path, "finetune:\n  method: qlora\n  layers: middle\n")
    assert "finetune.method: Unknown fine-tuning method 'qlora'; choose one of full, lora, dora" in message
    assert "finetune.layers: Unknown layer policy 'middle'; choose one of all, edited, non_edited" in message
    assert "finetune.epochs: Input should be a valid integer" in problems(tmp_path, "finetune:\n  epochs: many\n")
    assert "finetune.compute_dtype: compute_dtype must be one of" in problems(
        tmp_path, "finetune:\n  compute_dtype: float16\n"
    )


def test_the_old_finetune_hparams_section_says_where_its_keys_go(tmp_path: Path) -> None:
    message = problems(tmp_path, "finetune:\n  hparams:\n    lr: 0.001\n    epochs: 1\n")
    assert "finetune.hparams: removed; move these keys up into finetune: (lr, epochs)" in message
    grid = write(tmp_path, "grid:\n  finetune.hparams.lr: [0.1, 0.2]\n")
    with pytest.raises(ConfigError, match=r"finetune\.hparams: removed"):
        load_grid(grid)


def test_editor_hparams_are_checked_against_the_editors_class(tmp_path: Path) -> None:
    message = problems(tmp_path, "editor:\n  hparams:\n    v_lrr: 1\n    v_lr: -1\n")
    assert "editor.hparams.v_lrr: unknown key for memit (did you mean v_lr?)" in message
    assert "editor.hparams.v_lr: v_lr must be > 0, got -1" in message
    assert "editor.hparams.layers" in problems(tmp_path, "editor:\n  hparams:\n    layers: [5, 4]\n")
    # AlphaEdit's keys belong to AlphaEdit; harness keys of published hparams files are allowed and ignored.
    assert "editor.hparams.L2: unknown key for memit" in problems(tmp_path, "editor:\n  hparams:\n    L2: 5\n")
    config = load_experiment(
        write(
            tmp_path,
            "editor:\n  name: alphaedit\n  hparams:\n    L2: 5\n    model_name: gpt2-xl\n    mom2_n_tokens: 512\n",
        )
    )
    assert config.editor.hparams == {"L2": 5, "model_name": "gpt2-xl", "mom2_n_tokens": 512}
    assert "editor.preset: Unknown preset 'gpt5'" in problems(tmp_path, "editor:\n  preset: gpt5\n")


def test_the_statistics_shorthands_are_gone(tmp_path: Path) -> None:
    message = problems(tmp_path, "editor:\n  stats_tokens: 2048\n  stats_corpus: wikipedia\n")
    assert "editor.stats_tokens: removed; write editor.hparams.mom2_n_tokens: 2048" in message
    assert "editor.stats_corpus: removed; write editor.hparams.mom2_dataset: wikipedia" in message


def test_names_are_checked_against_their_registries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from editdecay.editing import EDITORS
    from editdecay.finetuning import FINETUNE_METHODS

    assert "choose one of memit, alphaedit" in problems(tmp_path, "editor:\n  name: grace\n")
    monkeypatch.setitem(EDITORS, "grace", dataclasses.replace(EDITORS["memit"], name="grace"))
    monkeypatch.setitem(FINETUNE_METHODS, "qlora", FINETUNE_METHODS["lora"])
    config = load_experiment(write(tmp_path, "editor:\n  name: grace\nfinetune:\n  method: qlora\n"))
    assert (config.editor.name, config.finetune.method) == ("grace", "qlora")
    message = problems(tmp_path, "evaluation:\n  tasks: [boolq, arc-e, builtin-commonsense, squad]\n")
    assert "evaluation.tasks: Unknown downstream task 'squad'" in message and "boolq" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [("editor:\n  hparams:\n    v_lrr: 1\n", "editor.hparams.v_lrr"), ("finetune:\n  lr: -1\n", "finetune.lr")],
)
def test_run_reports_a_config_error_before_any_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, key: str
) -> None:
    import editdecay.experiments.runner
    import editdecay.models
    from editdecay.cli import app

    def no_model(*args: object, **kwargs: object) -> None:
        pytest.fail("a model was loaded before the config was validated")

    monkeypatch.setattr(editdecay.models, "load_model", no_model)
    monkeypatch.setattr(editdecay.experiments.runner, "load_model", no_model)
    result = CliRunner().invoke(
        app, ["run", str(write(tmp_path, text)), "--store", str(tmp_path / "store"), "--runs", str(tmp_path / "runs")]
    )
    assert result.exit_code == 2, result.output
    assert key in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "store").exists()
