"""Artifact keys change when, and only when, an input of that artifact changes; the store's DONE protocol."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from editdecay.config import ExperimentConfig
from editdecay.experiments import ArtifactStore, stage_keys
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
    records = [{"case_id": i, "prompt": f"The capital of Country{i} is", "subject": f"Country{i}",
                "target_new": "Rome", "ground_truth": "Paris", "rephrase_prompt": f"Country{i}'s capital is",
                "locality_prompt": "The capital of France is", "locality_ground_truth": "Paris"} for i in range(10)]
    path.write_text(json.dumps(records))
    return path


def config(model_dir: Path, edits_file: Path, **sections: dict) -> ExperimentConfig:
    raw = {"model": {"source": str(model_dir)}, "edits": {"dataset": str(edits_file), "n": 5},
           "evaluation": {"control": False}}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return ExperimentConfig.model_validate(raw)


def changed_keys(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {name for name in a if a[name] != b[name]}


def test_keys_are_stable(model_dir: Path, edits_file: Path) -> None:
    assert stage_keys(config(model_dir, edits_file), [1, 2]) == stage_keys(config(model_dir, edits_file), [1, 2])


def test_fine_tuning_change_leaves_model_and_patch_keys(model_dir: Path, edits_file: Path) -> None:
    base = stage_keys(config(model_dir, edits_file), [1, 2])
    other = stage_keys(config(model_dir, edits_file, finetune={"method": "dora"}), [1, 2])
    assert changed_keys(base, other) == {"ft_base", "ft_edited", "eval_Mft", "eval_Med_ft", "activations"}


def test_editor_change_leaves_base_fine_tuning_and_base_eval(model_dir: Path, edits_file: Path) -> None:
    base = stage_keys(config(model_dir, edits_file), [1, 2])
    other = stage_keys(config(model_dir, edits_file, editor={"name": "alphaedit"}), [1, 2])
    assert changed_keys(base, other) == {"patch", "ft_edited", "eval_Med", "eval_Med_ft", "activations"}


def test_edit_count_changes_everything_that_sees_the_requests(model_dir: Path, edits_file: Path) -> None:
    base = stage_keys(config(model_dir, edits_file), [1, 2])
    other = stage_keys(config(model_dir, edits_file, edits={"n": 7}), [1, 2])
    # Mft is fine-tuned from M alone: the edit requests do not enter it.
    assert changed_keys(base, other) == set(base) - {"model", "ft_base"}


def test_layer_policy_uses_edit_layers_only_when_it_depends_on_them(model_dir: Path, edits_file: Path) -> None:
    all_layers = config(model_dir, edits_file)
    assert stage_keys(all_layers, [1, 2])["ft_base"] == stage_keys(all_layers, [2, 3])["ft_base"]
    edited = config(model_dir, edits_file, finetune={"layers": "edited"})
    assert stage_keys(edited, [1, 2])["ft_base"] != stage_keys(edited, [2, 3])["ft_base"]


def test_model_weights_and_dtype_enter_the_model_key(model_dir: Path, edits_file: Path, tmp_path: Path) -> None:
    other_dir = tmp_path / "other"
    tiny_model("llama", seed=1).save_pretrained(other_dir)
    tiny_tokenizer(add_bos=True).save_pretrained(other_dir)
    base = stage_keys(config(model_dir, edits_file), [1])
    assert stage_keys(config(other_dir, edits_file), [1])["model"] != base["model"]
    assert stage_keys(config(model_dir, edits_file, model={"dtype": "bfloat16"}), [1])["model"] != \
        base["model"]
    # The label and evaluation-independent parts do not move the model key.
    assert stage_keys(config(model_dir, edits_file, evaluation={"task_limit": 3}), [1])["model"] == base["model"]


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
    # The lock serialises: each worker leaves before the other enters.
    assert order[2].endswith("out") and order[1].endswith("computed")
