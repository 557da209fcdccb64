"""Fine-tuning on tiny random models: layer policies, methods, determinism, resume, save/load, CLI."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from editdecay.data import InstructionExample, format_prompt
from editdecay.finetuning import (
    FinetuneResult,
    FinetuneSpec,
    checkpoint_dir,
    corpus_loss,
    finetune,
    load_finetuned,
    resolve_trainable_modules,
    split_validation,
    tokenize_example,
)
from editdecay.finetuning import finetune_run as runner_module
from editdecay.finetuning import loop as loop_module
from editdecay.finetuning.collate import IGNORE_INDEX, collate, epoch_batches
from editdecay.finetuning.loop import learning_rate, plan_steps
from editdecay.models import model_fingerprint, pad_id_of
from tiny import tiny_model, tiny_tokenizer

EXAMPLES = [
    InstructionExample(
        f"Is {a} more than {b}?",
        "",
        f"the correct answer is {'true' if a > b else 'false'}",
        "true" if a > b else "false",
    )
    for a, b in [
        (17, 4),
        (3, 9),
        (12, 2),
        (5, 8),
        (20, 1),
        (6, 7),
        (9, 3),
        (2, 14),
        (11, 10),
        (4, 13),
        (15, 5),
        (1, 19),
    ]
]
LLAMA_ALL = [
    f"model.layers.{i}.{m}"
    for i in range(4)
    for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj")
]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matrices gain nothing from threads, and OpenMP threads on a busy machine slow them ~50x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(**overrides) -> FinetuneSpec:
    base = {
        "method": "lora",
        "epochs": 1,
        "batch_size": 4,
        "cutoff_len": 112,
        "compute_dtype": "float32",
        "warmup_ratio": 0.0,
        "lr": 1e-2,
    }
    return FinetuneSpec(**(base | overrides))


def _run(tmp_path: Path, name: str, spec: FinetuneSpec, model=None, **kwargs) -> tuple[FinetuneResult, torch.nn.Module]:
    model = model if model is not None else tiny_model("llama")
    result = finetune(
        model,
        tiny_tokenizer(add_bos=True),
        kwargs.pop("examples", EXAMPLES),
        spec,
        out_dir=tmp_path / name,
        progress=False,
        **kwargs,
    )
    return result, model


def _result_tensors(result: FinetuneResult) -> dict[str, torch.Tensor]:
    name = "delta.safetensors" if result.method == "full" else "adapter/adapter_model.safetensors"
    return load_file(str(result.path / name))


# --- layer policies and module resolution -------------------------------------------------------------------


def test_layer_policies_resolve_exact_module_names() -> None:
    model = tiny_model("llama")
    assert resolve_trainable_modules(model, _spec(), verbose=False) == LLAMA_ALL
    edited = resolve_trainable_modules(model, _spec(layers="edited"), [2, 1], verbose=False)
    assert edited == [n for n in LLAMA_ALL if n.split(".")[2] in "12"]
    rest = resolve_trainable_modules(model, _spec(layers="non_edited"), [1, 2], verbose=False)
    assert rest == [n for n in LLAMA_ALL if n.split(".")[2] in "03"]
    explicit = resolve_trainable_modules(model, _spec(layers=[3], targets=("down", "mlp.gate_proj")), verbose=False)
    assert explicit == ["model.layers.3.mlp.down_proj", "model.layers.3.mlp.gate_proj"]


def test_resolution_prints_per_block_counts(capsys) -> None:
    resolve_trainable_modules(tiny_model("llama"), _spec(layers=[0, 1, 3], r=2), verbose=True)
    out = capsys.readouterr().out
    # Per block: q (32->32), k and v (32->16, two KV heads of 8), up (32->64), down (64->32); LoRA r * (in + out).
    per_block = 2 * (64 + 48 + 48 + 96 + 96)
    assert f"training 15 modules (q,k,v,up,down) in 3 blocks, {3 * per_block:,} parameters" in out
    assert f"blocks 0-1: 5 modules, {per_block:,} parameters each" in out
    assert f"block 3: 5 modules, {per_block:,} parameters" in out


def test_gpt2_fused_qkv_is_listed_once() -> None:
    names = resolve_trainable_modules(
        tiny_model("gpt2"), _spec(layers=[1], targets=("q", "k", "v", "down")), verbose=False
    )
    assert names == ["transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_proj"]


@pytest.mark.parametrize(
    ("arch", "spec", "edited", "message"),
    [
        ("gpt2", _spec(targets=("q", "gate")), None, "Target 'gate' matches nothing in block 0"),
        ("llama", _spec(targets=("mlp.nope",)), None, "no module 'model.layers.0.mlp.nope'"),
        ("llama", _spec(targets=("input_layernorm",)), None, "only linear layers"),
        ("llama", _spec(layers=[2, 7]), None, "outside the model"),
        ("llama", _spec(layers="edited"), None, "needs the edited layers"),
        ("llama", _spec(layers="non_edited"), [0, 1, 2, 3], "selects nothing"),
        ("llama", _spec(layers="edited"), [9], "outside the model"),
    ],
)
def test_requests_that_match_nothing_fail_loudly(arch: str, spec: FinetuneSpec, edited, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_trainable_modules(tiny_model(arch), spec, edited, verbose=False)


def test_spec_round_trip_id_and_validation() -> None:
    spec = _spec(layers=[3, 1], targets=("q", "down"), method="dora")
    assert spec.layers == (1, 3)
    assert FinetuneSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert FinetuneSpec.from_dict(spec.to_dict()).spec_id() == spec.spec_id()
    assert dataclasses.replace(spec, lr=2e-2).spec_id() != spec.spec_id()
    assert FinetuneSpec(method="full").lr == 2e-5 and FinetuneSpec().lr == 2e-4
    assert FinetuneSpec(lr=None).spec_id() == FinetuneSpec(lr=2e-4).spec_id()
    with pytest.raises(ValueError, match="Unknown fine-tuning method"):
        FinetuneSpec(method="qlora")
    with pytest.raises(ValueError, match="dropout must be in"):
        FinetuneSpec(dropout=1.5)
    with pytest.raises(ValueError, match="Unknown layer policy"):
        FinetuneSpec(layers="middle")
    with pytest.raises(ValueError, match="Unknown FinetuneSpec fields"):
        FinetuneSpec.from_dict({"method": "lora", "rank": 4})


def test_cli_defaults_match_the_spec() -> None:
    import typer.main

    from editdecay.cli import app

    command = typer.main.get_command(app).commands["finetune"]  # type: ignore[attr-defined]
    options = {param.name: param.default for param in command.params}
    options["compute_dtype"] = options.pop("dtype")
    options["targets"] = tuple(options["targets"].split(","))
    spec_defaults = {f.name: f.default for f in dataclasses.fields(FinetuneSpec)}
    assert {k: options[k] for k in spec_defaults} == spec_defaults  # every spec field is an option, same default


# --- tokenization and batching ------------------------------------------------------------------------------


def test_tokenization_masks_the_prompt_and_cuts_at_cutoff() -> None:
    tokenizer = tiny_tokenizer(add_bos=True)
    example = EXAMPLES[0]
    full = tokenizer(format_prompt(example, True)).input_ids
    n_prompt = len(tokenizer(format_prompt(example, False)).input_ids)
    masked = tokenize_example(tokenizer, example, 200, train_on_inputs=False)
    assert list(masked.input_ids) == [*full, tokenizer.eos_token_id]
    assert list(masked.labels) == [IGNORE_INDEX] * n_prompt + [*full[n_prompt:], tokenizer.eos_token_id]
    assert masked.n_targets == len(full) - n_prompt + 1
    whole = tokenize_example(tokenizer, example, 200, train_on_inputs=True)
    assert whole.labels == whole.input_ids and whole.n_targets == len(full)
    cut = tokenize_example(tokenizer, example, n_prompt - 3, train_on_inputs=False)
    assert len(cut.input_ids) == n_prompt - 3 and cut.n_targets == 0


def test_batches_plan_and_schedule() -> None:
    lengths = [5, 50, 7, 30, 9, 60, 3, 40, 8, 20]
    batches = epoch_batches(lengths, 3, seed=1, epoch=0, group_by_length=True)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert batches == epoch_batches(lengths, 3, seed=1, epoch=0, group_by_length=True)
    assert batches != epoch_batches(lengths, 3, seed=1, epoch=1, group_by_length=True)
    for batch in batches:  # sorted by length within the (single) window
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    tokenizer = tiny_tokenizer()
    tokenized = [tokenize_example(tokenizer, ex, 112, True) for ex in EXAMPLES]
    spec = _spec(batch_size=2, grad_accum=2, epochs=2)
    steps = plan_steps(tokenized, spec)
    assert len(steps) == 6 and all(len(s) == 2 for s in steps)
    assert len(plan_steps(tokenized, dataclasses.replace(spec, max_steps=8))) == 8
    warm = _spec(lr=1.0, warmup_steps=2)
    assert [learning_rate(s, 6, warm) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    constant = _spec(lr=1.0, warmup_steps=2, lr_schedule="constant")
    assert [learning_rate(s, 6, constant) for s in range(6)] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="lr_schedule"):
        _spec(lr_schedule="cosine")


def test_validation_split_is_seeded_and_disjoint() -> None:
    train, val = split_validation(EXAMPLES, 0.25, seed=3)
    assert len(val) == 3 and len(train) == 9 and not set(train) & set(val)
    assert (train, val) == split_validation(EXAMPLES, 0.25, seed=3)
    assert split_validation(EXAMPLES, None, seed=3) == (EXAMPLES, [])


# --- methods --------------------------------------------------------------------------------------------------


def test_full_finetune_edited_policy_changes_only_chosen_blocks(tmp_path: Path) -> None:
    base = tiny_model("llama")
    before = model_fingerprint(base)
    result, _ = _run(tmp_path, "full", _spec(method="full", layers="edited", lr=1e-3), base, edited_layers=[1, 2])
    assert model_fingerprint(base) == before, "finetune must not touch the caller's model"
    tuned = load_finetuned(base, result)
    trained = {f"{name}.weight" for name in LLAMA_ALL if name.split(".")[2] in "12"}
    assert set(_result_tensors(result)) == trained
    base_params = dict(base.named_parameters())
    for name, param in tuned.named_parameters():
        if name in trained:
            assert (param != base_params[name]).float().mean() > 0.9, name
        else:
            assert torch.equal(param, base_params[name]), name
    assert result.manifest["layers"] == [1, 2] and result.manifest["edited_layers"] == [1, 2]


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapters_exist_exactly_in_chosen_blocks_and_targets(tmp_path: Path, method: str) -> None:
    base = tiny_model("llama")
    result, _ = _run(
        tmp_path, method, _spec(method=method, layers="non_edited", dropout=0.05), base, edited_layers=[1, 2]
    )
    wanted = [n for n in LLAMA_ALL if n.split(".")[2] in "03"]
    tuned = load_finetuned(base, result)
    adapted = [name for name, module in tuned.named_modules() if hasattr(module, "lora_A")]
    assert adapted == wanted
    magnitudes = [n for n, _ in tuned.named_parameters() if "lora_magnitude_vector" in n]
    assert len(magnitudes) == (len(wanted) if method == "dora" else 0)
    assert all(module.lora_A["default"].weight.shape[0] == 8 for n, module in tuned.named_modules() if n in wanted)
    merged = load_finetuned(base, result, merge=True)
    base_params = dict(base.named_parameters())
    for name, param in merged.named_parameters():
        changed = not torch.equal(param, base_params[name])
        assert changed == (name.removesuffix(".weight") in wanted), name


@pytest.mark.parametrize(
    ("arch", "method"), [("gpt2", "dora"), ("gpt_neox", "lora"), ("gemma3", "dora"), ("gptj", "full")]
)
def test_methods_run_on_every_architecture(tmp_path: Path, arch: str, method: str) -> None:
    base = tiny_model(arch)
    spec = _spec(method=method, max_steps=2, lr=1e-3, targets=("q", "v", "down"))
    result = finetune(
        base, tiny_tokenizer(add_bos=arch == "gemma3"), EXAMPLES, spec, out_dir=tmp_path / arch, progress=False
    )
    ids = torch.tensor([[5, 6, 7, 8]])
    merged = load_finetuned(base, result, merge=True)
    assert not torch.allclose(merged(ids).logits, base(ids).logits)
    if method != "full":
        unmerged = load_finetuned(base, result)
        torch.testing.assert_close(unmerged(ids).logits, merged(ids).logits, rtol=1e-4, atol=1e-5)


def test_loss_goes_down(tmp_path: Path) -> None:
    spec = _spec(method="full", epochs=6, batch_size=6, lr=1e-2)
    result, base = _run(tmp_path, "fit", spec)
    losses = result.train_losses
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.15, losses
    tokenizer = tiny_tokenizer(add_bos=True)
    before = corpus_loss(base, tokenizer, EXAMPLES, spec)
    assert corpus_loss(load_finetuned(base, result), tokenizer, EXAMPLES, spec) < before - 0.2


def test_same_seed_same_weights_different_seed_different(tmp_path: Path) -> None:
    spec = _spec(dropout=0.1, epochs=2)
    first = _result_tensors(_run(tmp_path, "a", spec)[0])
    second = _result_tensors(_run(tmp_path, "b", spec)[0])
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = _result_tensors(_run(tmp_path, "c", dataclasses.replace(spec, seed=1))[0])
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_gradient_accumulation_matches_one_big_batch(tmp_path: Path) -> None:
    common = {"method": "full", "lr": 1e-3, "epochs": 2, "group_by_length": False, "dropout": 0.0}
    big = _result_tensors(_run(tmp_path, "big", _spec(batch_size=4, **common))[0])
    split = _result_tensors(_run(tmp_path, "split", _spec(batch_size=2, grad_accum=2, **common))[0])
    for name in big:
        torch.testing.assert_close(split[name], big[name], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_chunked_checkpointed_loss_equals_the_plain_one(arch: str) -> None:
    """token_loss_sum(chunked) under gradient checkpointing: the plain loss and gradients of every weight."""
    model = tiny_model(arch, seed=5)
    model.train()  # checkpointing acts in training mode only; dropout off, so both passes see the same model
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    tokenizer = tiny_tokenizer(add_bos=arch == "gemma3")
    batch = [tokenize_example(tokenizer, ex, 64, True) for ex in EXAMPLES[:3]]
    inputs = collate(batch, pad_id_of(tokenizer))

    def loss_and_grads(chunked: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss = loop_module.token_loss_sum(model, inputs, chunked=chunked, chunk=7)  # several chunks, one short
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def checkpointing() -> bool:
        return any(getattr(module, "gradient_checkpointing", False) is True for module in model.modules())

    plain_loss, plain = loss_and_grads(False)
    loop_module.activation_checkpointing(model, True)
    try:
        assert checkpointing()
        chunked_loss, chunked = loss_and_grads(True)
    finally:
        loop_module.activation_checkpointing(model, False)
    assert not checkpointing()
    torch.testing.assert_close(chunked_loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert chunked.keys() == plain.keys()
    for name, grad in plain.items():
        # float sums in another order: measured at most 3e-7 of the gradient's largest entry
        scale = float(grad.abs().max())
        torch.testing.assert_close(chunked[name], grad, rtol=1e-5, atol=1e-6 * scale, msg=name)


def test_a_checkpointed_run_trains_the_same_weights(tmp_path: Path) -> None:
    common = {"method": "lora", "epochs": 1, "group_by_length": False, "dropout": 0.0}
    plain = _result_tensors(_run(tmp_path, "plain", _spec(**common))[0])
    saved = _result_tensors(_run(tmp_path, "saved", _spec(gradient_checkpointing=True, **common))[0])
    for name in plain:
        torch.testing.assert_close(saved[name], plain[name], rtol=1e-4, atol=1e-7)


def test_forward_pieces_keep_order_and_bound_the_padded_size() -> None:
    lengths = [5, 3, 9, 2, 2, 30, 4]
    assert loop_module.forward_pieces([0, 1, 2, 3], lengths, None) == [[0, 1, 2, 3]]
    # Greedy and in order: [5, 3] pads to 2 x 5 = 10; adding 9 would make 3 x 9 = 27 > 20.
    pieces = loop_module.forward_pieces(list(range(7)), lengths, 20)
    assert pieces == [[0, 1], [2, 3], [4], [5], [6]]
    assert [i for piece in pieces for i in piece] == list(range(7))
    for piece in pieces:
        assert len(piece) == 1 or len(piece) * max(lengths[i] for i in piece) <= 20  # a 30-token row stands alone
    assert loop_module.forward_pieces([6, 0], lengths, 1) == [[6], [0]]


def test_a_run_in_forward_pieces_has_the_same_losses_and_weights(tmp_path: Path) -> None:
    """Each step's examples cut into pieces of at most 200 padded tokens (2 rows of these examples): the same
    per-step losses and trained weights as the whole micro-batch, up to float summation order."""
    common = {"method": "lora", "epochs": 2, "dropout": 0.0, "train_on_inputs": False}
    whole, _ = _run(tmp_path, "whole", _spec(**common))
    pieces, _ = _run(tmp_path, "pieces", _spec(max_forward_tokens=200, **common))
    torch.testing.assert_close(pieces.train_losses, whole.train_losses, rtol=1e-5, atol=1e-6)
    tokenizer = tiny_tokenizer(add_bos=True)
    lengths = [len(tokenize_example(tokenizer, e, 112, False).input_ids) for e in EXAMPLES]
    assert 2 * max(lengths) <= 200 < 3 * min(lengths)  # every batch of 4 really runs as 2 + 2 rows
    expected, actual = _result_tensors(whole), _result_tensors(pieces)
    for name in expected:  # Adam's normalisation magnifies summation-order differences of tiny gradients
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-3, atol=1e-5)


def test_bf16_compute_keeps_small_full_updates(tmp_path: Path) -> None:
    """bf16 autocast with float32 master weights: an lr of 1e-5 still moves (nearly) every weight."""
    result, base = _run(
        tmp_path, "bf16", _spec(method="full", lr=1e-5, compute_dtype="bfloat16", max_steps=2, layers=[1])
    )
    for name, delta in _result_tensors(result).items():
        assert (delta != 0).float().mean() > 0.95, name
        # Stored in bf16, most of these updates would round away (they are far below bf16's spacing).
        weight = base.get_parameter(name)
        rounded = (weight + delta).bfloat16().float() - weight.bfloat16().float()
        assert (rounded == 0).float().mean() > 0.5, name


# --- saving, loading, resuming -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["full", "dora"])
def test_save_load_round_trip_reproduces_the_validation_loss(tmp_path: Path, method: str) -> None:
    spec = _spec(method=method, val_fraction=0.25, lr=1e-3 if method == "full" else 1e-2)
    result, base = _run(tmp_path, method, spec)
    assert result.val_loss is not None
    _, val = split_validation(EXAMPLES, 0.25, spec.seed)
    tokenizer = tiny_tokenizer(add_bos=True)
    loaded = load_finetuned(base, FinetuneResult.load(result.path))
    assert corpus_loss(loaded, tokenizer, val, spec) == pytest.approx(result.val_loss, abs=1e-6)
    assert corpus_loss(base, tokenizer, val, spec) != pytest.approx(result.val_loss, abs=1e-3)
    merged = load_finetuned(base, result, merge=True)
    assert corpus_loss(merged, tokenizer, val, spec) == pytest.approx(result.val_loss, abs=1e-4)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_fine_tuned_model_comes_back_in_its_bases_precision(tmp_path: Path, method: str) -> None:
    base = tiny_model("llama").to(torch.bfloat16)
    result, _ = _run(tmp_path, method, _spec(method=method, max_steps=2, lr=1e-2), model=base)
    for merge in (False, True):
        loaded = load_finetuned(base, result, merge=merge)
        assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}, (method, merge)
    # Merged in float32 first, then rounded once: the same as rounding the float32 merge of a float32 base.
    merged = load_finetuned(base, result, merge=True)
    reference = load_finetuned(copy.deepcopy(base).float(), result, merge=True, check_base=False)
    for name, param in merged.named_parameters():
        torch.testing.assert_close(param, reference.get_parameter(name).bfloat16(), rtol=0, atol=0)


def interrupt_at_step(monkeypatch: pytest.MonkeyPatch, stop: int) -> None:
    """Make the training loop raise KeyboardInterrupt when it reaches optimizer step `stop` (a killed run)."""
    real_learning_rate = loop_module.learning_rate

    def interrupted(step: int, total: int, spec: FinetuneSpec) -> float:
        if step == stop:
            raise KeyboardInterrupt
        return real_learning_rate(step, total, spec)

    monkeypatch.setattr(loop_module, "learning_rate", interrupted)


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(epochs=2, dropout=0.1, batch_size=3)
    reference = _run(tmp_path, "reference", spec)[0]

    interrupt_at_step(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", spec, checkpoint_every_s=0.0)
    assert not (tmp_path / "resumed").exists(), "no half-written result"
    state = json.loads((checkpoint_dir(tmp_path / "resumed") / "state.json").read_text())
    assert state["state"]["step"] == 5
    monkeypatch.setattr(loop_module, "learning_rate", learning_rate)

    resumed = _run(tmp_path, "resumed", spec, checkpoint_every_s=0.0)[0]
    assert resumed.train_losses == reference.train_losses
    ref, got = _result_tensors(reference), _result_tensors(resumed)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert not checkpoint_dir(tmp_path / "resumed").exists()


def test_checkpoint_of_another_run_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec()

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "learning_rate", lambda step, total, s: stop() if step == 2 else 1e-2)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "out", dataclasses.replace(spec, seed=7), checkpoint_every_s=0.0)
    monkeypatch.undo()
    result = _run(tmp_path, "out", spec, checkpoint_every_s=0.0)[0]
    fresh = _run(tmp_path, "fresh", spec)[0]
    assert result.train_losses == fresh.train_losses


def test_rerun_reuses_the_result_and_refuses_a_different_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(max_steps=1)
    first, base = _run(tmp_path, "out", spec)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(runner_module, "train", no_training)
    again = finetune(base, tiny_tokenizer(add_bos=True), EXAMPLES, spec, out_dir=tmp_path / "out", progress=False)
    assert again.manifest == first.manifest
    with pytest.raises(FileExistsError, match="holds a different fine-tuning run"):
        finetune(
            base,
            tiny_tokenizer(add_bos=True),
            EXAMPLES,
            dataclasses.replace(spec, r=4),
            out_dir=tmp_path / "out",
            progress=False,
        )


def test_loading_onto_another_base_is_refused(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, "out", _spec(max_steps=1))
    with pytest.raises(ValueError, match="fine-tuned from a model with fingerprint"):
        load_finetuned(tiny_model("llama", seed=1), result)
    with pytest.raises(FileNotFoundError, match=r"manifest\.json is missing"):
        FinetuneResult.load(tmp_path / "nowhere")


def test_manifest_and_adapter_config_record_the_run(tmp_path: Path) -> None:
    # 21 target modules: PEFT rewrites lists of 20+ names into short suffixes when saving; they must still
    # select exactly these modules when the adapter is loaded.
    spec = _spec(max_steps=2, layers=[0, 1, 3], targets=("q", "k", "v", "o", "gate", "up", "down"))
    result, base = _run(tmp_path, "out", spec, base_fingerprint="model+patch", corpus_id="tiny-1")
    manifest = result.manifest
    assert manifest["base_fingerprint"] == "model+patch"
    assert manifest["model_fingerprint"] == model_fingerprint(base)
    assert manifest["corpus_id"] == "tiny-1" and manifest["spec"] == result.spec.to_dict()
    assert manifest["steps"] == 2 and len(manifest["train_losses"]) == 2 and manifest["versions"]["peft"]
    assert len(manifest["modules"]) == 21 and all(".layers.2." not in n for n in manifest["modules"])
    adapter_config = json.loads((result.path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    tuned = load_finetuned(base, result)
    assert [n for n, m in tuned.named_modules() if hasattr(m, "lora_A")] == manifest["modules"]


# --- command line -----------------------------------------------------------------------------------------------


def test_cli_finetune_on_a_local_model(tmp_path: Path) -> None:
    from editdecay.cli import app

    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer(add_bos=True).save_pretrained(model_dir)
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps([ex.to_dict() for ex in EXAMPLES]))
    runner = CliRunner()
    args = [
        "finetune",
        "--model",
        str(model_dir),
        "--corpus",
        str(corpus),
        "--out",
        str(tmp_path / "out"),
        "--method",
        "dora",
        "--layers",
        "1-2",
        "--targets",
        "q,down",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--cutoff-len",
        "112",
        "--dtype",
        "float32",
        "--val-fraction",
        "0.25",
    ]
    outcome = runner.invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    assert "Done:" in outcome.output and "validation loss" in outcome.output
    result = FinetuneResult.load(tmp_path / "out")
    assert result.manifest["modules"] == [
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
        "model.layers.2.self_attn.q_proj",
        "model.layers.2.mlp.down_proj",
    ]
    for layers, message in (("edited", "needs --patch"), ("four", "block indices like 4,5,6")):
        bad = runner.invoke(app, [*args[:5], "--out", str(tmp_path / layers), "--layers", layers])
        text = " ".join(bad.output.replace("│", " ").split())
        assert bad.exit_code == 2 and message in text, bad.output


def test_cli_finetune_with_a_weight_patch(tmp_path: Path) -> None:
    from editdecay.cli import app
    from editdecay.editing import WeightPatch

    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer(add_bos=True).save_pretrained(model_dir)
    reloaded_fp = model_fingerprint(tiny_model("llama"))
    delta = torch.randn(32, 64, generator=torch.Generator().manual_seed(0)) * 0.1
    patch = WeightPatch(
        {"model.layers.2.mlp.down_proj.weight": delta}, {"base_fingerprint": reloaded_fp, "layers": [2]}
    )
    patch.save(tmp_path / "patch")
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps([ex.to_dict() for ex in EXAMPLES]))
    args = [
        "finetune",
        "--model",
        str(model_dir),
        "--corpus",
        str(corpus),
        "--patch",
        str(tmp_path / "patch"),
        "--method",
        "full",
        "--layers",
        "edited",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--cutoff-len",
        "112",
        "--dtype",
        "float32",
    ]
    outcome = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert outcome.exit_code == 0, outcome.output
    result = FinetuneResult.load(tmp_path / "out")
    assert result.manifest["edited_layers"] == [2] and result.manifest["layers"] == [2]
    assert all(".layers.2." in name for name in result.manifest["modules"])
    assert result.manifest["base_fingerprint"] == patch.patched_fingerprint
    patched = tiny_model("llama")
    patch.apply(patched)
    assert result.manifest["model_fingerprint"] == model_fingerprint(patched)
    assert not torch.equal(
        load_finetuned(patched, result).get_parameter("model.layers.2.mlp.down_proj.weight"),
        patched.get_parameter("model.layers.2.mlp.down_proj.weight"),
    )
    with pytest.raises(ValueError, match="fine-tuned from a model"):
        load_finetuned(tiny_model("llama"), result)
    other = CliRunner().invoke(app, [*args, "--layers", "non_edited", "--out", str(tmp_path / "rest")])
    assert other.exit_code == 0, other.output
    assert FinetuneResult.load(tmp_path / "rest").manifest["layers"] == [0, 1, 3]


# --- real model -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_lora_on_edited_blocks(smollm2, tmp_path: Path) -> None:
    from editdecay.data import load_corpus

    model, tokenizer = smollm2
    spec = FinetuneSpec(method="lora", layers="edited", max_steps=2, batch_size=4, cutoff_len=128)
    result = finetune(
        model,
        tokenizer,
        load_corpus("builtin", max_examples=8),
        spec,
        out_dir=tmp_path / "out",
        edited_layers=[4, 5, 6, 7, 8],
        progress=False,
    )
    assert result.manifest["trainable_params"] == 5 * 8 * (576 + 576 + 2 * (576 + 192) + 2 * (576 + 1536))
    tuned = load_finetuned(model, result, merge=True)
    changed = {n for n, p in tuned.named_parameters() if not torch.equal(p, model.get_parameter(n))}
    assert changed == {f"{n}.weight" for n in result.manifest["modules"]}
    assert all(int(n.split(".")[2]) in range(4, 9) for n in changed)


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama", "gemma3"])
def test_target_only_logits_give_the_full_cross_entropy(arch: str) -> None:
    from editdecay.finetuning.collate import collate
    from editdecay.finetuning.loop import token_loss_sum

    model = tiny_model(arch)
    if arch == "gemma3":
        model.config.final_logit_softcapping = 5.0  # applied after the unembedding: must still be included
    tokenizer = tiny_tokenizer(add_bos=arch == "gemma3")
    batch = collate([tokenize_example(tokenizer, ex, 112, train_on_inputs=False) for ex in EXAMPLES[:3]], 0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    torch.testing.assert_close(token_loss_sum(model, batch), expected, rtol=1e-5, atol=1e-5)
    assert not model.get_output_embeddings()._forward_pre_hooks
