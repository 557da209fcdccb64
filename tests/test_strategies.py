"""Edit-preserving fine-tuning strategies: each one's invariant on tiny models, the registry in configs and
store keys, and `reedit` through the pipeline."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

import test_edit_support
from editdecay.config import ConfigError, validate_experiment
from editdecay.data import EditRequest, InstructionExample
from editdecay.durability import STRATEGIES
from editdecay.durability.corda import CordaInit, calibration_texts
from editdecay.durability.projection import KeyProjection, input_projector, key_basis, project_out_keys
from editdecay.durability.replay import mix_replay, replay_examples
from editdecay.experiments.resolve import resolve_experiment, stage_keys
from editdecay.finetuning import FinetuneSpec, finetune, load_finetuned
from editdecay.models import DtypeResolver, ModelShape, arch_for
from pipeline_fixtures import write_tiny_experiment
from tiny import tiny_model, tiny_tokenizer

single_thread = test_edit_support.single_thread  # autouse
EXAMPLES = [InstructionExample(f"Say {w} twice.", "", f"{w} {w}", None) for w in ("Paris", "Rome", "tennis", "piano")]
LAYERS = (1, 2)
REQUESTS = [
    EditRequest("a", "France", "The capital of {} is", "Rome", "Paris", paraphrase_prompts=("France's capital is",)),
    EditRequest("b", "Italy", "The capital of {} is", "Paris", "Rome", paraphrase_prompts=("Italy's capital is",)),
]


def _keys(m: int = 64, n: int = 3, seed: int = 0) -> dict[int, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {layer: torch.randn(n, m, generator=generator) for layer in LAYERS}


def _spec(method: str, **changes) -> FinetuneSpec:
    values = {"method": method, "lr": 5e-2, "max_steps": 3, "batch_size": 2, "cutoff_len": 48, "dropout": 0.0}
    return FinetuneSpec(**{**values, **changes})


def test_key_basis_spans_the_keys_like_a_pseudo_inverse() -> None:
    keys = torch.randn(5, 16, dtype=torch.float64)
    keys = torch.cat([keys, keys[:1] * 3])  # a repeated direction adds no dimension
    basis = key_basis(keys)
    assert basis.shape == (16, 5)
    torch.testing.assert_close(basis.T @ basis, torch.eye(5), atol=1e-5, rtol=0)
    reference = keys.T @ torch.linalg.pinv(keys @ keys.T) @ keys  # projector onto span of the rows
    torch.testing.assert_close(input_projector(basis, "confine").double(), reference, atol=1e-5, rtol=0)
    protect = input_projector(basis, "protect").double()
    assert float((keys @ protect).abs().max()) < 1e-4


def _weight_change(model, tuned, layer: int) -> torch.Tensor:
    name = arch_for(model).mlp_out_weight_name(layer)
    return tuned.get_parameter(name).detach().double() - model.get_parameter(name).detach().double()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_protect_leaves_the_edit_keys_outputs_unchanged(tmp_path: Path, method: str) -> None:
    model, tokenizer, keys = tiny_model("llama"), tiny_tokenizer(add_bos=True), _keys()
    spec = _spec(method, lr=5e-2 if method == "lora" else 1e-2, weight_decay=0.1)
    plain_result = finetune(model, tokenizer, EXAMPLES, spec, out_dir=tmp_path / "p", progress=False)
    plain = load_finetuned(model, plain_result, merge=True)
    hooks = KeyProjection(keys)
    result = finetune(model, tokenizer, EXAMPLES, spec, out_dir=tmp_path / "k", progress=False, hooks=hooks)
    assert result.manifest["hooks"] == hooks.identity()
    protected = load_finetuned(model, result, merge=True)
    for layer in LAYERS:
        K = keys[layer].double().T
        for tuned, bound in ((protected, lambda r: r < 1e-5), (plain, lambda r: r > 1e-2)):
            delta = _weight_change(model, tuned, layer)
            assert float(delta.norm()) > 1e-4  # the layer was trained
            ratio = float((delta @ K).norm() / (delta.norm() * K.norm()))
            assert bound(ratio), (layer, ratio)


def test_protect_projects_doras_a_factor(tmp_path: Path) -> None:
    model, tokenizer, keys = tiny_model("llama"), tiny_tokenizer(add_bos=True), _keys()
    result = finetune(
        model, tokenizer, EXAMPLES, _spec("dora"), out_dir=tmp_path / "d", progress=False, hooks=KeyProjection(keys)
    )
    adapted = load_finetuned(model, result, merge=False)
    for layer in LAYERS:
        module = adapted.get_submodule(arch_for(model).mlp_out_path(layer))
        A = module.lora_A["default"].weight.detach().double()
        assert float(A.norm()) > 0 and float((A @ keys[layer].double().T).norm() / A.norm()) < 1e-5


def test_protect_refuses_a_run_that_does_not_train_the_edited_projections(tmp_path: Path) -> None:
    model, tokenizer = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    with pytest.raises(ValueError, match="not fine-tuned"):
        finetune(
            model,
            tokenizer,
            EXAMPLES,
            _spec("lora", targets=("q", "v")),
            out_dir=tmp_path / "x",
            progress=False,
            hooks=KeyProjection(_keys()),
        )


def test_project_out_keys_zeroes_the_layers_answer_to_them() -> None:
    model, keys = tiny_model("llama"), _keys(n=2)
    before = copy.deepcopy(model)
    changes = project_out_keys(model, keys)
    for layer in LAYERS:
        name = arch_for(model).mlp_out_weight_name(layer)
        W, W0 = model.get_parameter(name).detach().double(), before.get_parameter(name).detach().double()
        K = keys[layer].double().T
        assert float((W @ K).norm()) < 1e-5 * float((W0 @ K).norm())
        # nothing changes on inputs orthogonal to the keys
        other = torch.linalg.qr(torch.cat([K, torch.randn(64, 3, dtype=torch.float64)], 1)).Q[:, 2:]
        torch.testing.assert_close(W @ other, W0 @ other, atol=1e-5, rtol=0)
        assert 0 < changes[layer] < 1


def test_replay_holds_exactly_the_requested_share() -> None:
    replay = replay_examples(REQUESTS)
    assert [[e.output for e in r] for r in replay] == [["Rome", "Rome"], ["Paris", "Paris"]]
    assert "The capital of France is" in replay[0][0].instruction and "France's" in replay[0][1].instruction
    replayed = {e for r in replay for e in r}
    corpus = [InstructionExample(f"corpus {i}", "", "x", None) for i in range(40)]
    for fraction in (0.05, 0.1, 0.25, 0.5):
        mixed = mix_replay(corpus, replay, fraction, seed=3)
        n_replay = sum(e in replayed for e in mixed)
        assert len(mixed) == 40 and n_replay == round(fraction * 40)
        assert len({e.instruction for e in mixed if e not in replayed}) == 40 - n_replay  # corpus kept, no repeats
    # two slots: one per request, both rewrite prompts, before any paraphrase
    two = [e for e in mix_replay(corpus, replay, 0.05, seed=3) if e in replayed]
    assert sorted(e.instruction for e in two) == sorted(r[0].instruction for r in replay)
    assert mix_replay(corpus, replay, 0.25, seed=3) == mix_replay(corpus, replay, 0.25, seed=3)


def test_corda_saves_a_lora_of_the_original_weights(tmp_path: Path) -> None:
    model, tokenizer = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    texts = calibration_texts(REQUESTS) * 8
    assert len(texts) == 64 and texts[0] == "The capital of France is Rome"
    # With a vanishing learning rate the trained adapter is its CorDA initialisation, so the saved result must
    # give back the original weights: without PEFT's conversion it would add B0 A0 to them.
    spec = _spec("lora", lr=1e-12, targets=("down",))
    result = finetune(
        model, tokenizer, EXAMPLES, spec, out_dir=tmp_path / "c", progress=False, hooks=CordaInit(texts, tokenizer)
    )
    config = json.loads((result.path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 2 * spec.r
    tuned = load_finetuned(model, result, merge=True)
    for layer in range(4):
        assert float(_weight_change(model, tuned, layer).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="use lora"):
        finetune(model, tokenizer, EXAMPLES, _spec("dora"), out_dir=tmp_path / "d", progress=False,
                 hooks=CordaInit(texts, tokenizer))  # fmt: skip


def test_every_strategy_is_a_config_value_with_its_own_store_key(tmp_path: Path) -> None:
    raw = write_tiny_experiment(tmp_path)
    with pytest.raises(ConfigError, match=r"finetune\.strategy: unknown strategy 'protekt'"):
        validate_experiment({**raw, "finetune": {**raw["finetune"], "strategy": "protekt"}})
    shape = ModelShape.of(tiny_model("llama"))
    keys = {}
    for name, fraction in [(s, 0.25) for s in STRATEGIES] + [("replay", 0.5)]:
        config = validate_experiment(
            {**raw, "finetune": {**raw["finetune"], "strategy": name, "replay_fraction": fraction}}
        )
        keys[(name, fraction)] = stage_keys(resolve_experiment(config, shape, DtypeResolver()))
    assert len({k["ft_edited"] for k in keys.values()}) == len(keys)
    assert len({k["ft_base"] for k in keys.values()}) == 1  # Mft is plain fine-tuning whatever the strategy
    assert len({k["patch"] for k in keys.values()}) == 1


def test_reedit_run_edits_the_fine_tuned_model(tmp_path: Path) -> None:
    from editdecay.editing import WeightPatch
    from editdecay.experiments.runner import run_experiment
    from editdecay.models import model_fingerprint

    raw = write_tiny_experiment(tmp_path)
    config = validate_experiment({**raw, "finetune": {**raw["finetune"], "strategy": "reedit"}})
    result = run_experiment(config, tmp_path / "store", tmp_path / "runs")
    assert "reedit Mft" in result.executed and "finetune Med" not in result.executed
    summary = json.loads((result.run_dir / "summary.json").read_text())
    reedit = WeightPatch.load(tmp_path / "store" / "patches" / summary["artifacts"]["ft_edited"] / "patch")
    first = WeightPatch.load(tmp_path / "store" / "patches" / summary["artifacts"]["patch"] / "patch")
    assert reedit.request_ids == first.request_ids and reedit.patch_id != first.patch_id
    from editdecay.finetuning import FinetuneResult

    base_loaded = AutoModelForCausalLM.from_pretrained(raw["model"]["source"])
    mft = load_finetuned(base_loaded, FinetuneResult.load(
        tmp_path / "store" / "finetunes" / summary["artifacts"]["ft_base"] / "result"), merge=True)  # fmt: skip
    assert reedit.base_fingerprint == model_fingerprint(mft)


def test_cli_finetune_with_a_strategy(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from editdecay.cli import app
    from editdecay.editing import WeightPatch
    from editdecay.finetuning import FinetuneResult
    from editdecay.models import model_fingerprint

    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer(add_bos=True).save_pretrained(model_dir)
    name = "model.layers.2.mlp.down_proj.weight"
    keys = {2: _keys()[2]}
    patch = WeightPatch(
        {name: torch.randn(32, 64, generator=torch.Generator().manual_seed(0)) * 0.1},
        {"base_fingerprint": model_fingerprint(tiny_model("llama")), "layers": [2]},
        keys=keys,
        requests=REQUESTS,
    )
    patch.save(tmp_path / "patch")
    reloaded = WeightPatch.load(tmp_path / "patch")
    assert reloaded.requests == REQUESTS and torch.equal(reloaded.keys[2], keys[2])
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps([ex.to_dict() for ex in EXAMPLES]))
    args = ["finetune", "--model", str(model_dir), "--corpus", str(corpus), "--method", "full", "--lr", "1e-2",
            "--max-steps", "2", "--batch-size", "2", "--cutoff-len", "48", "--dtype", "float32"]  # fmt: skip
    runner = CliRunner()
    done = runner.invoke(app, [*args, "--patch", str(tmp_path / "patch"), "--strategy", "protect", "--out",
                               str(tmp_path / "out")])  # fmt: skip
    assert done.exit_code == 0, done.output
    result = FinetuneResult.load(tmp_path / "out")
    assert result.manifest["hooks"]["strategy"] == "key-projection/protect"
    med = tiny_model("llama")
    patch.apply(med)
    delta = _weight_change(med, load_finetuned(med, result, merge=True), 2)
    assert float(delta.norm()) > 1e-4 and float((delta @ keys[2].double().T).norm() / delta.norm()) < 1e-5
    assert runner.invoke(app, [*args, "--strategy", "replay", "--out", str(tmp_path / "x")]).exit_code == 2
    reedit = runner.invoke(app, [*args, "--patch", str(tmp_path / "patch"), "--strategy", "reedit", "--out",
                                 str(tmp_path / "y")])  # fmt: skip
    assert reedit.exit_code == 2 and "finetune.strategy=reedit" in reedit.output


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_registered_strategy_runs_through_the_pipeline(tmp_path: Path, name: str) -> None:
    from editdecay.experiments.runner import run_experiment

    raw = write_tiny_experiment(tmp_path)
    config = validate_experiment({**raw, "finetune": {**raw["finetune"], "strategy": name}})
    result = run_experiment(config, tmp_path / "store", tmp_path / "runs")
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert (result.run_dir / "DONE").is_file() and set(summary["edits"]["decay"]["groups"]) == {
        "M",
        "Med",
        "Mft",
        "Med_ft",
    }
    assert pd.read_parquet(result.run_dir / "run.parquet")["ft_strategy"].tolist() == [name]


def test_strategy_table_and_report_against_the_per_edit_tables(tmp_path: Path) -> None:
    from editdecay.experiments.runner import run_experiment
    from editdecay.reporting import write_report
    from editdecay.reporting.durability import strategy_table
    from editdecay.reporting.findings import load_runs

    raw = write_tiny_experiment(tmp_path, n=6)
    dirs = {}
    for name in ("none", "protect", "replay"):
        config = validate_experiment({**raw, "finetune": {**raw["finetune"], "strategy": name}})
        dirs[name] = run_experiment(config, tmp_path / "store", tmp_path / "runs").run_dir
    table = strategy_table(load_runs(tmp_path / "runs")).set_index("strategy")
    assert list(table.index) == ["none", "protect", "replay 0.25"]
    for name, label in (("none", "none"), ("protect", "protect"), ("replay", "replay 0.25")):
        per_edit = pd.read_parquet(dirs[name] / "edits_per_edit.parquet").pivot(
            index="case_id", columns="group", values="success"
        )
        before, after = per_edit["Med"] == 1, per_edit["Med_ft"] == 1
        efr = 100 * (before & ~after).sum() / before.sum() if before.sum() else float("nan")
        assert table.loc[label, "efr"] == pytest.approx(efr, nan_ok=True)
        assert table.loc[label, "es"] == pytest.approx(100 * per_edit["Med_ft"].mean())
    plain = pd.read_parquet(dirs["none"] / "edits_per_edit.parquet")
    protected = pd.read_parquet(dirs["protect"] / "edits_per_edit.parquet")
    difference = (
        protected[protected["group"] == "Med_ft"]["success"].mean()
        - plain[plain["group"] == "Med_ft"]["success"].mean()
    )
    assert table.loc["protect", "delta_es_vs_plain"] == pytest.approx(100 * difference)
    written = write_report(tmp_path / "runs", tmp_path / "report")
    assert {p.name for p in written} >= {"strategies.md", "strategies.csv", "fig5_strategies.png"}
    assert "| 0.0002  |" in (tmp_path / "report" / "strategies.md").read_text()  # LoRA's default rate, as written


def test_key_drift_reads_the_patch_keys_and_sees_protect_hold(tmp_path: Path) -> None:
    from editdecay.editing import WeightPatch
    from editdecay.experiments.geometry import key_drift
    from editdecay.experiments.runner import run_experiment
    from editdecay.experiments.store import ArtifactStore
    from editdecay.finetuning import FinetuneResult

    raw = write_tiny_experiment(tmp_path)
    config = validate_experiment({**raw, "finetune": {**raw["finetune"], "strategy": "protect", "lr": 5e-2}})
    summary = json.loads(
        (run_experiment(config, tmp_path / "store", tmp_path / "runs").run_dir / "summary.json").read_text()
    )
    store = ArtifactStore(tmp_path / "store")
    patch = WeightPatch.load(store.path("patches", summary["artifacts"]["patch"]) / "patch")
    base = AutoModelForCausalLM.from_pretrained(raw["model"]["source"])
    tokenizer = tiny_tokenizer(add_bos=True)
    med = copy.deepcopy(base)
    patch.apply(med)
    from editdecay.editing.subject_keys import compute_keys

    with torch.no_grad():
        recomputed = compute_keys(
            med, tokenizer, patch.requests, patch.manifest["context_templates"], patch.layers
        ).keys
    for layer in patch.layers:  # the saved keys are Med's inputs to the edited projections
        torch.testing.assert_close(recomputed[layer], patch.keys[layer], atol=1e-4, rtol=1e-4)
    still = key_drift(med, med, tokenizer, patch, patch.requests)
    assert (still[["key_drift", "old_key_change", "new_key_change"]].abs() < 1e-9).all().all()
    result = FinetuneResult.load(store.path("finetunes", summary["artifacts"]["ft_edited"]) / "result")
    drift = key_drift(med, load_finetuned(med, result, merge=True), tokenizer, patch, patch.requests)
    assert (drift["old_key_change"] < 1e-4).all() and (drift["key_drift"] > 1e-4).all()


def test_balancing_keeps_the_lora_product_and_equalises_the_factors() -> None:
    from peft import LoraConfig, get_peft_model

    from editdecay.durability.corda import balance_factors

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["down_proj"], init_lora_weights=False))
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    with torch.no_grad():
        layer.lora_A["default"].weight.mul_(torch.tensor([100.0, 1.0, 0.01, 3.0])[:, None])
    product = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).clone()
    balance_factors(model)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    torch.testing.assert_close(B @ A, product, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(A.norm(dim=1), B.norm(dim=0), rtol=1e-5, atol=0)


def test_dry_run_counts_a_reedit_as_an_edit_not_a_fine_tuning(tmp_path: Path) -> None:
    from editdecay.experiments.grid import plan_grid
    from editdecay.experiments.store import ArtifactStore

    raw = write_tiny_experiment(tmp_path)
    configs = [validate_experiment({**raw, "finetune": {**raw["finetune"], "strategy": s}}) for s in ("none", "reedit")]
    plan = plan_grid(configs, ArtifactStore(tmp_path / "store"), tmp_path / "runs")
    assert len(plan.stages["edits"].to_run) == 2  # the patch of M and the re-edit of Mft
    assert len(plan.stages["fine-tunings"].to_run) == 2  # Mft (shared) and the plain run's Med_ft
