"""One resident model for the four groups (experiments/resident.py): every group has, bit for bit, the weights of
the separate model a run used to build (deepcopy + patch, `load_finetuned(merge=True)`), M's weights come back
exactly after each group, the activation shift through rounds equals the one over separate models, and a run's
tables equal those of `evaluate_groups` over separately built models."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from editdecay.config import ExperimentConfig
from editdecay.data import InstructionExample, load_edit_requests
from editdecay.editing import WeightPatch
from editdecay.evaluation import GROUPS, SeparateModels, activation_shift, evaluate_groups
from editdecay.evaluation import activations as activations_module
from editdecay.experiments import run_experiment
from editdecay.experiments.resident import ResidentGroups
from editdecay.finetuning import FinetuneResult, FinetuneSpec, finetune, load_finetuned
from editdecay.models import load_model, model_fingerprint
from pipeline_fixtures import write_tiny_experiment
from tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

EXAMPLES = [
    InstructionExample(f"Add {a} and {b}.", "", f"The sum is {a + b}.", str(a + b)) for a in range(4) for b in (1, 2)
]
PROMPTS = ["The capital of France is", "Michael Jordan plays", "Toyota is based in", "An instruction:", "Hello"]


def _patch(model: torch.nn.Module, fingerprint: str, seed: int) -> WeightPatch:
    generator = torch.Generator().manual_seed(seed)
    deltas = {
        f"model.layers.{layer}.mlp.down_proj.weight": 0.05
        * torch.randn(model.get_parameter(f"model.layers.{layer}.mlp.down_proj.weight").shape, generator=generator)
        for layer in (1, 2)
    }
    return WeightPatch(deltas, {"base_fingerprint": fingerprint, "layers": [1, 2]})


def _finetune(model: torch.nn.Module, method: str, out: Path) -> FinetuneResult:
    spec = FinetuneSpec(method=method, epochs=1, batch_size=4, cutoff_len=48, compute_dtype="float32", lr=1e-2)
    return finetune(model, tiny_tokenizer(add_bos=True), EXAMPLES, spec, out_dir=out, progress=False)


def _groups(tmp_path: Path, method: str, dtype: torch.dtype):
    """The resident groups (with a re-edit group "reedit": [ft of M, patch of Mft]) and the separate models."""
    base = tiny_model("llama", dtype=dtype)
    fingerprint = model_fingerprint(base)
    patch = _patch(base, fingerprint, seed=1)
    med = copy.deepcopy(base)
    patch.apply(med)
    ft_base, ft_edited = _finetune(base, method, tmp_path / "m"), _finetune(med, method, tmp_path / "med")
    mft = load_finetuned(base, ft_base, merge=True)
    reedit = _patch(mft, model_fingerprint(mft), seed=2)
    reedited = copy.deepcopy(mft)
    reedit.apply(reedited)
    separate = {
        "M": copy.deepcopy(base),
        "Med": med,
        "Mft": mft,
        "Med_ft": load_finetuned(med, ft_edited, merge=True),
        "reedit": reedited,
    }
    groups = ResidentGroups(base, fingerprint)
    groups.define("Med", [patch])
    groups.define("Mft", [ft_base])
    groups.define("Med_ft", [patch, ft_edited])
    groups.define("reedit", [ft_base, reedit])
    return groups, separate


def _assert_same_weights(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    expected = reference.state_dict()
    actual = model.state_dict()
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("method", ["full", "lora", "dora"])
def test_every_group_has_the_weights_of_its_separate_model(tmp_path: Path, method: str, dtype: torch.dtype) -> None:
    groups, separate = _groups(tmp_path, method, dtype)
    # Twice through: checks run once, and a group used again is rebuilt identically.
    for _ in range(2):
        for group in ("M", "Med", "Mft", "Med_ft", "reedit"):
            with groups.use(group) as model:
                assert model is groups.model
                _assert_same_weights(model, separate[group])
            _assert_same_weights(groups.model, separate["M"])
    mft, m = separate["Mft"].state_dict(), separate["M"].state_dict()
    assert any(not torch.equal(mft[name], m[name]) for name in m)  # the fine-tuning changed something


def test_one_group_at_a_time_and_clear_errors(tmp_path: Path) -> None:
    groups, separate = _groups(tmp_path, "lora", torch.float32)
    with groups.use("Med"), pytest.raises(RuntimeError, match="one group at a time"), groups.use("Mft"):
        pass
    with pytest.raises(KeyError, match="No model group"), groups.use("Med_FT"):
        pass
    # The fine-tuning of M applied on top of the patch: not the model it was trained from.
    groups.define("wrong", [groups.changes["Med"][0], groups.changes["Mft"][0]])
    with pytest.raises(ValueError, match="fine-tuned from a model with fingerprint"), groups.use("wrong"):
        pass
    # A group checked once and then redefined wrongly is checked again.
    with groups.use("Mft"):
        pass
    groups.define("Mft", [groups.changes["Med_ft"][1]])  # Med's fine-tuning on M
    with pytest.raises(ValueError, match="fine-tuned from a model with fingerprint"), groups.use("Mft"):
        pass
    _assert_same_weights(groups.model, separate["M"])  # a failed switch leaves M's weights


def test_activation_shift_in_rounds_equals_the_separate_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    groups, separate = _groups(tmp_path, "lora", torch.float32)
    for name in ("reedit",):
        groups.changes.pop(name)
        separate.pop(name)
    tokenizer = tiny_tokenizer(add_bos=True)
    expected = activation_shift(SeparateModels(separate), tokenizer, PROMPTS, batch_size=2, progress=False)
    monkeypatch.setattr(activations_module, "ROUND_BYTES", 1)  # one batch per round: 3 rounds of 4 switches
    actual = activation_shift(groups, tokenizer, PROMPTS, batch_size=2, progress=False)
    pd.testing.assert_frame_equal(actual, expected)
    assert (expected.loc[expected["pair"] == "Mft-M", "drift"] > 0).all()
    _assert_same_weights(groups.model, separate["M"])


def test_a_run_on_one_resident_model_equals_separately_built_models(tmp_path: Path) -> None:
    raw = write_tiny_experiment(tmp_path)
    config = ExperimentConfig.model_validate(raw)
    result = run_experiment(config, tmp_path / "store", tmp_path / "runs")
    summary = json.loads((result.run_dir / "summary.json").read_text())
    keys = summary["artifacts"]
    store = tmp_path / "store"

    base = load_model(raw["model"]["source"])
    patch = WeightPatch.load(store / "patches" / keys["patch"] / "patch")
    med = copy.deepcopy(base.model)
    patch.apply(med)
    models = {
        "M": base.model,
        "Med": med,
        "Mft": load_finetuned(base.model, store / "finetunes" / keys["ft_base"] / "result", merge=True),
        "Med_ft": load_finetuned(med, store / "finetunes" / keys["ft_edited"] / "result", merge=True),
    }
    requests = load_edit_requests(raw["edits"]["dataset"], raw["edits"]["n"])
    reference = evaluate_groups(
        models,
        base.tokenizer,
        requests,
        activation_prompts=raw["evaluation"]["activation_prompts"],
        edit_layers=patch.layers,
        batch_size=raw["evaluation"]["batch_size"],
        progress=False,
    )
    for name in ("edits", "edits_per_edit", "metrics", "decay", "outcomes", "activations"):
        table = pd.read_parquet(result.run_dir / f"{name}.parquet").drop(columns="run_id")
        pd.testing.assert_frame_equal(table, reference.tables[name], check_dtype=False, obj=name)
    assert set(GROUPS) == set(summary["edits"]["groups"])
