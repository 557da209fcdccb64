"""Artifact keys change when, and only when, an input of that artifact changes; the store's DONE protocol."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from editdecay.config import ExperimentConfig
from editdecay.editing import hparams
from editdecay.experiments import GROUPS, ArtifactStore, resolve, resolve_experiment, stage_keys
from editdecay.locking import lock_path
from editdecay.models import DtypeResolver, read_model_shape
from tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer(add_bos=True).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def edits_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("edits") / "edits.json"
    records = [
        {
            "case_id": i,
            "prompt": f"The capital of Country{i} is",
            "subject": f"Country{i}",
            "target_new": "Rome",
            "ground_truth": "Paris",
            "rephrase_prompt": f"Country{i}'s capital is",
            "locality_prompt": "The capital of France is",
            "locality_ground_truth": "Paris",
        }
        for i in range(10)
    ]
    path.write_text(json.dumps(records))
    return path


def config(model_dir: Path, edits_file: Path, **sections: dict) -> ExperimentConfig:
    raw = {
        "model": {"source": str(model_dir)},
        "edits": {"dataset": str(edits_file), "n": 5},
        "evaluation": {"control": False},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return ExperimentConfig.model_validate(raw)


def changed_keys(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {name for name in a if a[name] != b[name]}


def keys(cfg: ExperimentConfig, dtype: str = "float32") -> dict[str, str]:
    """Store keys resolved as a run on a machine whose probe chose `dtype` resolves them."""
    shape = read_model_shape(cfg.model.source)
    assert shape is not None
    return stage_keys(resolve_experiment(cfg, shape, DtypeResolver(forced=dtype)))


def with_layers(layers: list[int], **sections: dict) -> dict:
    editor = sections.pop("editor", {})
    return {**sections, "editor": {**editor, "hparams": {"layers": layers}}}


def test_keys_are_stable(model_dir: Path, edits_file: Path) -> None:
    assert keys(config(model_dir, edits_file)) == keys(config(model_dir, edits_file))


def test_fine_tuning_change_leaves_model_and_patch_keys(model_dir: Path, edits_file: Path) -> None:
    base = keys(config(model_dir, edits_file))
    other = keys(config(model_dir, edits_file, finetune={"method": "dora"}))
    assert changed_keys(base, other) == {"ft_base", "ft_edited", "eval_Mft", "eval_Med_ft", "activations"}


def test_editor_change_leaves_base_fine_tuning_and_base_eval(model_dir: Path, edits_file: Path) -> None:
    base = keys(config(model_dir, edits_file))
    other = keys(config(model_dir, edits_file, editor={"name": "alphaedit"}))
    assert changed_keys(base, other) == {"patch", "ft_edited", "eval_Med", "eval_Med_ft", "activations"}


def test_edit_count_changes_everything_that_sees_the_requests(model_dir: Path, edits_file: Path) -> None:
    base = keys(config(model_dir, edits_file))
    other = keys(config(model_dir, edits_file, edits={"n": 7}))
    # Mft is fine-tuned from M alone: the edit requests do not enter it.
    assert changed_keys(base, other) == set(base) - {"model", "ft_base"}


def test_layer_policy_uses_edit_layers_only_when_it_depends_on_them(model_dir: Path, edits_file: Path) -> None:
    first, second = (config(model_dir, edits_file, **with_layers(layers)) for layers in ([1, 2], [2, 3]))
    assert keys(first)["ft_base"] == keys(second)["ft_base"]
    first, second = (
        config(model_dir, edits_file, **with_layers(layers, finetune={"layers": "edited"}))
        for layers in ([1, 2], [2, 3])
    )
    assert keys(first)["ft_base"] != keys(second)["ft_base"]


def test_model_weights_and_dtype_enter_the_model_key(model_dir: Path, edits_file: Path, tmp_path: Path) -> None:
    other_dir = tmp_path / "other"
    tiny_model("llama", seed=1).save_pretrained(other_dir)
    tiny_tokenizer(add_bos=True).save_pretrained(other_dir)
    base = keys(config(model_dir, edits_file))
    assert keys(config(other_dir, edits_file))["model"] != base["model"]
    assert keys(config(model_dir, edits_file, model={"dtype": "bfloat16"}))["model"] != base["model"]
    # The label and evaluation-independent parts do not move the model key.
    assert keys(config(model_dir, edits_file, evaluation={"task_limit": 3}))["model"] == base["model"]


def test_the_resolved_compute_dtype_enters_every_key_it_changes(model_dir: Path, edits_file: Path) -> None:
    # bfloat16 and float32 target steps / fine-tuning autocast give different artifacts.
    fast, slow = keys(config(model_dir, edits_file), "bfloat16"), keys(config(model_dir, edits_file), "float32")
    assert changed_keys(fast, slow) == set(fast) - {"model", "edits", "eval_M"}
    # An explicit dtype is the same artifact as `auto` resolved to it.
    explicit = config(
        model_dir, edits_file, editor={"hparams": {"v_dtype": "float32"}}, finetune={"compute_dtype": "float32"}
    )
    assert keys(explicit, "bfloat16") == slow


def test_keys_follow_resolved_values_not_the_config_as_written(
    model_dir: Path, edits_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = keys(config(model_dir, edits_file))
    # Writing a default out changes the config's text, not what runs: same keys.
    spelled = config(model_dir, edits_file, finetune={"r": 8, "alpha": 16.0}, editor={"hparams": {"kl_factor": 0.0625}})
    assert keys(spelled) == base
    # A changed preset value (the tiny model takes the fallback, built on the SmolLM2 preset) changes the patch.
    monkeypatch.setitem(hparams._MEASURED["smollm2-135m"], "v_lr", 2.0)
    assert changed_keys(base, keys(config(model_dir, edits_file))) == set(base) - {
        "model",
        "edits",
        "ft_base",
        "eval_M",
        "eval_Mft",
    }


def test_a_format_version_bump_invalidates_that_artifact(
    model_dir: Path, edits_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = keys(config(model_dir, edits_file))
    monkeypatch.setattr(resolve, "EVAL_FORMAT", "eval/999")
    assert changed_keys(base, keys(config(model_dir, edits_file))) == {f"eval_{g}" for g in GROUPS}
    monkeypatch.setattr(resolve, "PATCH_FORMAT", "patch/999")
    assert "patch" in changed_keys(base, keys(config(model_dir, edits_file)))


def test_store_done_marker_and_lock(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(ValueError, match="unknown artifact kind"):
        store.path("weights", "k")
    assert not store.is_done("patches", "k")
    order: list[str] = []

    def worker(name: str) -> None:
        with store.lock("patches", "k") as path:
            order.append(f"{name}-in")
            if not store.is_done("patches", "k"):
                path.mkdir(parents=True, exist_ok=True)
                time.sleep(0.2)
                store.mark_done("patches", "k")
                order.append(f"{name}-computed")
            order.append(f"{name}-out")

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.is_done("patches", "k")
    assert sum(item.endswith("computed") for item in order) == 1
    assert lock_path(store.path("patches", "k")) == tmp_path / "patches" / ".k.lock"
    # The lock serialises: each worker leaves before the other enters.
    assert order[2].endswith("out") and order[1].endswith("computed")


def test_the_curve_changes_only_med_ft_and_fact_statements_change_both_fine_tunings(
    model_dir: Path, edits_file: Path
) -> None:
    base = keys(config(model_dir, edits_file))
    curve = keys(config(model_dir, edits_file, evaluation={"control": False, "curve_every": 2}))
    assert changed_keys(base, curve) == {"ft_edited", "eval_Med_ft", "activations"}
    facts = keys(config(model_dir, edits_file, finetune={"fact_statements": "true"}))
    assert {"ft_base", "ft_edited"} <= changed_keys(base, facts)
    assert "patch" not in changed_keys(base, facts)
    other_fraction = keys(config(model_dir, edits_file, finetune={"fact_statements": "true", "fact_fraction": 0.5}))
    assert {"ft_base", "ft_edited"} <= changed_keys(facts, other_fraction)
