"""MEMIT: closed form, batched targets, subject indices, model safety, hyperparameter files, clear errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import test_edit_support
from editdecay.data import EditRequest
from editdecay.editing import (
    EditContext,
    EditInputError,
    MemitEditor,
    MemitHyperParams,
    SolveError,
    StatsStore,
    TargetOptimisationError,
    WeightPatch,
    build_editor,
    memit_delta,
)
from editdecay.editing.hparams import preset_for_model
from editdecay.editing.outnorm import post_mlp_norm, preimage_change
from editdecay.editing.subject import prompt_tokens, subject_last_index
from editdecay.editing.subject_keys import compute_keys
from editdecay.editing.target_values import TargetSettings, _adam_step, compute_targets
from editdecay.models import DtypeResolver, arch_for, mlp_out
from test_edit_support import capital_requests, edit_success, fast_hparams, same_state, state_of, write_corpus
from tiny import tiny_config, tiny_model, tiny_tokenizer

smollm2_stats = test_edit_support.smollm2_stats  # a session fixture shared with test_alphaedit
single_thread = test_edit_support.single_thread  # autouse: tiny models run fastest on one thread


def test_memit_closed_form_matches_direct_least_squares() -> None:
    """Delta = R K^T (lam C + K K^T)^-1 minimises ||Delta K - R||^2 + lam ||Delta C^1/2||^2."""
    g = torch.Generator().manual_seed(0)
    d, m, n, lam = 7, 12, 5, 3.0
    R, K = torch.randn(d, n, generator=g), torch.randn(m, n, generator=g)
    A = torch.randn(m, 3 * m, generator=g)
    C = (A @ A.T / (3 * m)).double()
    L = torch.linalg.cholesky(C)
    # Stack [K, sqrt(lam) L] as columns: Delta [K, sqrt(lam) L] ~ [R, 0] in the least-squares sense.
    lhs = torch.cat([K.double(), lam**0.5 * L], dim=1)
    rhs = torch.cat([R.double(), torch.zeros(d, m, dtype=torch.float64)], dim=1)
    direct = torch.linalg.lstsq(lhs.T, rhs.T).solution.T
    torch.testing.assert_close(memit_delta(R, K, C, lam), direct, rtol=1e-9, atol=1e-10)


def test_memit_solve_errors_name_the_layer() -> None:
    K = torch.randn(6, 2)
    with pytest.raises(SolveError, match=r"layer 5.*more tokens.*mom2_update_weight"):
        memit_delta(torch.randn(3, 2), K, torch.zeros(6, 6), 100.0, layer=5)
    C = torch.eye(6)
    C[0, 0] = float("nan")
    with pytest.raises(SolveError, match="layer 2: C has non-finite"):
        memit_delta(torch.randn(3, 2), K, C, 1.0, layer=2)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_targets_equal_one_at_a_time(arch: str) -> None:
    model = tiny_model(arch, dtype=torch.float64)
    tok = tiny_tokenizer(add_bos=arch == "llama")
    contexts = ["{}", "The weather is nice. {}", "I like guitar. {}"]
    settings = TargetSettings(z_layer=2, steps=8)
    batched = compute_targets(model, tok, capital_requests(5), contexts, settings, batch_size=5, progress=False)
    single = compute_targets(model, tok, capital_requests(5), contexts, settings, batch_size=1, progress=False)
    full = compute_targets(
        model, tok, capital_requests(5), contexts, settings, batch_size=5, mode="full", progress=False
    )
    assert batched.modes == ["suffix"] and full.modes == ["full"]
    assert (batched.z - batched.z_init).norm(dim=1).min() > 0.1  # the targets moved
    torch.testing.assert_close(batched.z, single.z, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(batched.z, full.z, rtol=1e-9, atol=1e-9)
    assert batched.steps == single.steps == full.steps


def test_bfloat16_steps_approximate_float32_targets_without_touching_the_model() -> None:
    model = tiny_model("llama")
    before = state_of(model)
    contexts = ["{}", "The weather is nice. {}"]
    exact = compute_targets(
        model,
        tiny_tokenizer(add_bos=True),
        capital_requests(4),
        contexts,
        TargetSettings(z_layer=2, steps=6),
        progress=False,
    )
    low = compute_targets(
        model,
        tiny_tokenizer(add_bos=True),
        capital_requests(4),
        contexts,
        TargetSettings(z_layer=2, steps=6, compute_dtype="bfloat16"),
        progress=False,
    )
    assert same_state(before, state_of(model)) and next(model.parameters()).dtype == torch.float32
    assert low.z.dtype == torch.float32 and torch.equal(low.z_init, exact.z_init)  # z_init: float32 pass
    moved = (exact.z - exact.z_init).norm()
    assert 0 < (low.z - exact.z).norm() < 0.1 * moved
    with pytest.raises(ValueError, match="not a floating-point"):
        compute_targets(
            model,
            tiny_tokenizer(),
            capital_requests(1),
            contexts,
            TargetSettings(z_layer=2, steps=1, compute_dtype="int8"),
            progress=False,
        )


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_keys_resumed_at_an_unchanged_block_equal_a_full_pass(arch: str) -> None:
    model = tiny_model(arch, dtype=torch.float64)
    tok = tiny_tokenizer(add_bos=arch == "llama")
    requests, contexts = capital_requests(5), ["{}", "The weather is nice. {}"]
    first = compute_keys(model, tok, requests, contexts, [1], z_layer=3, keep_inputs_of=1)
    with torch.no_grad():  # the edit of layer 1 changes what blocks 1.. compute, not their inputs
        mlp_out(model, 1).weight.add_(0.5 * torch.randn_like(mlp_out(model, 1).weight))
    resumed = compute_keys(model, tok, requests, contexts, [2], z_layer=3, resume=first.inputs, keep_inputs_of=2)
    full = compute_keys(model, tok, requests, contexts, [2], z_layer=3, keep_inputs_of=2)
    assert not torch.allclose(resumed.z_current, first.z_current)
    torch.testing.assert_close(resumed.keys[2], full.keys[2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(resumed.z_current, full.z_current, rtol=1e-12, atol=1e-12)
    assert resumed.inputs is not None and full.inputs is not None
    for a, b in zip(resumed.inputs.hidden, full.inputs.hidden, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # The resumed pass really starts at block 1: a change below it is not seen.
    with torch.no_grad():
        mlp_out(model, 0).weight.mul_(3.0)
    again = compute_keys(model, tok, requests, contexts, [2], z_layer=3, resume=first.inputs)
    torch.testing.assert_close(again.keys[2], resumed.keys[2], rtol=0, atol=0)
    assert not torch.allclose(compute_keys(model, tok, requests, contexts, [2], z_layer=3).keys[2], again.keys[2])
    with pytest.raises(ValueError, match="Cannot read layer 1"):
        compute_keys(model, tok, requests, contexts, [1], z_layer=3, resume=resumed.inputs)
    with pytest.raises(ValueError, match="same requests and contexts"):
        compute_keys(model, tok, requests[:1], contexts[:1], [2], z_layer=3, resume=first.inputs)


def test_row_wise_adam_matches_torch_adam_and_frozen_rows_stay() -> None:
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    reference = torch.zeros(3, 5, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([reference], lr=0.5)
    param, m, v = (torch.zeros(3, 5, dtype=torch.float64) for _ in range(3))
    for t, grad in enumerate(grads, 1):
        reference.grad = grad.clone()
        optimizer.step()
        rows = torch.tensor([0, 2])  # row 1 has converged: it must not move
        _adam_step(param, m, v, grad[rows], rows, t, 0.5)
    torch.testing.assert_close(param[[0, 2]], reference.detach()[[0, 2]], rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(param[1]) == 0


def test_batched_and_single_editing_give_the_same_patch(tmp_path) -> None:
    model, tok = tiny_model("llama", dtype=torch.float64), tiny_tokenizer(add_bos=True)
    corpus, store = write_corpus(tmp_path), StatsStore(tmp_path / "stats")
    a = build_editor("memit", fast_hparams(corpus, z_batch_size=4, mom2_dtype="float64"))
    b = build_editor("memit", fast_hparams(corpus, z_batch_size=1, mom2_dtype="float64"))
    pa = a.edit(model, tok, capital_requests(4), EditContext(stats=store))
    pb = b.edit(model, tok, capital_requests(4), EditContext(stats=store))
    assert pa.deltas.keys() == pb.deltas.keys()
    for name in pa.deltas:
        torch.testing.assert_close(pa.deltas[name], pb.deltas[name], rtol=1e-7, atol=1e-9)


def test_only_edit_layers_change_and_the_callers_model_is_untouched(tmp_path) -> None:
    model, tok = tiny_model("gpt2"), tiny_tokenizer()  # GPT-2: Conv1D weights are stored transposed
    before = state_of(model)
    editor = build_editor("memit", fast_hparams(write_corpus(tmp_path)))
    store = StatsStore(tmp_path / "stats")
    patch = editor.edit(model, tok, capital_requests(4), EditContext(stats=store))
    assert same_state(before, state_of(model))
    assert sorted(patch.deltas) == ["transformer.h.1.mlp.c_proj.weight", "transformer.h.2.mlp.c_proj.weight"]
    assert patch.layers == [1, 2] and patch.request_ids == ["0", "1", "2", "3"]
    assert all(float(d.norm()) > 0 for d in patch.deltas.values())
    assert patch.manifest["protocol"]["sequential"] is False
    assert len(patch.manifest["context_templates"]) == 3

    edited = editor.edit(model, tok, capital_requests(4), EditContext(stats=store), in_place=True)
    after = state_of(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(patch.deltas)
    assert edited.patch_id == patch.patch_id  # seeded: the same edit twice gives the same patch
    twin = tiny_model("gpt2")
    WeightPatch.load(patch.save(tmp_path / "patch")).apply(twin)
    assert same_state(after, state_of(twin))


def test_the_updates_carry_the_wanted_change_at_the_z_layer(tmp_path) -> None:
    """After the edit, block L_z's output at the subject reaches most of the way to z (small lambda), and
    a huge lambda carries almost nothing (the solve is dominated by lambda C)."""
    model, tok = tiny_model("llama", dtype=torch.float64), tiny_tokenizer(add_bos=True)
    corpus, store = write_corpus(tmp_path), StatsStore(tmp_path / "stats")
    carried = {}
    for lam in (1e-3, 1e6):
        editor = build_editor("memit", fast_hparams(corpus, mom2_update_weight=lam, mom2_dtype="float64"))
        patch = editor.edit(model, tok, capital_requests(3), EditContext(stats=store))
        carried[lam] = patch.manifest["batches"][0]["carried_fraction_mean"]
    assert carried[1e-3] > 0.9
    assert carried[1e6] < 0.05


def test_post_mlp_norm_preimage_is_right_to_first_order() -> None:
    """Gemma 3 norms the MLP output before the residual add: the wanted output change dx must move
    N(x) by the wanted residual r (up to the direction N cannot move, and second-order terms)."""
    model = tiny_model("gemma3", dtype=torch.float64)
    norm = post_mlp_norm(model, 1)
    assert norm is not None and post_mlp_norm(tiny_model("llama"), 1) is None
    with torch.no_grad():
        norm.weight.uniform_(-0.5, 0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 32, generator=g, dtype=torch.float64)
    r = 1e-3 * torch.randn(32, 4, generator=g, dtype=torch.float64)
    dx = preimage_change(norm, x, r)
    with torch.no_grad():
        moved = (norm(x + dx.T) - norm(x)).T
    gain = 1 + norm.weight.detach()
    unit = x / x.norm(dim=1, keepdim=True)
    reachable = r - (gain[:, None] * unit.T) * ((r.T / gain) * unit).sum(dim=1)
    # Gemma's norm computes in float32: differences are exact to ~1e-7 only.
    assert float((moved - reachable).abs().max()) < 0.02 * float(reachable.abs().max())
    assert float((moved - r).abs().max()) > 0.02 * float(r.abs().max())  # the x direction is out of reach


def test_gemma3_updates_stay_on_the_scale_of_the_mlp_output(tmp_path) -> None:
    """Without the post-norm correction the tiny Gemma 3 updates explode (~1e3); with it they stay ~1."""
    model, tok = tiny_model("gemma3", dtype=torch.float64), tiny_tokenizer(add_bos=True)
    patch = build_editor("memit", fast_hparams(write_corpus(tmp_path), mom2_dtype="float64")).edit(
        model, tok, capital_requests(3), EditContext(stats=StatsStore(tmp_path / "stats"))
    )
    norms = [layer["update_norm"] for layer in patch.manifest["batches"][0]["layers"].values()]
    assert max(norms) < 20
    assert patch.manifest["batches"][0]["carried_fraction_mean"] > 0.3


def test_an_exception_mid_edit_leaves_the_weights_as_they_were(tmp_path, monkeypatch) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    before = state_of(model)
    editor = build_editor("memit", fast_hparams(write_corpus(tmp_path)))
    calls = []
    original = MemitEditor._layer_delta

    def failing(self, layer, *args):
        calls.append(layer)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return original(self, layer, *args)

    monkeypatch.setattr(MemitEditor, "_layer_delta", failing)
    with pytest.raises(RuntimeError, match="boom"):
        editor.edit(model, tok, capital_requests(2), EditContext(stats=StatsStore(tmp_path / "stats")), in_place=True)
    assert calls == [1, 2]
    assert same_state(before, state_of(model))


@pytest.mark.parametrize("add_bos", [False, True])
def test_subject_index_with_and_without_bos(add_bos: bool) -> None:
    tok = tiny_tokenizer(add_bos=add_bos)
    request = EditRequest("x", "Michael Jordan", "Who is {}? He plays", "piano", "basketball")
    for context in ("{}", "I like guitar. {}"):
        tokens = prompt_tokens(tok, context, request)
        text = context.format(request.prompt)
        assert tokens.ids == tok(text).input_ids
        upto = tok(text[: text.index("Jordan") + len("Jordan")]).input_ids
        assert tokens.subject_index == len(upto) - 1
        assert tok.decode(tokens.ids[tokens.subject_index]).strip().endswith("an")
        assert (tokens.ids[0] == tok.bos_token_id) == add_bos
    # A subject that ends inside a token: the index is the token holding its last character.
    ids, index = subject_last_index(tok, "The capital of ", "Par", "is")
    assert tok.decode(ids[index]) == " Paris" and index == 3 + add_bos


def test_targets_do_not_depend_on_the_tokenizers_padding_side() -> None:
    model = tiny_model("llama", dtype=torch.float64)
    settings = TargetSettings(z_layer=2, steps=4)
    out = [
        compute_targets(
            model,
            tiny_tokenizer(add_bos=True, padding_side=side),
            capital_requests(3),
            ["{}", "The weather is nice. {}"],
            settings,
            progress=False,
        ).z
        for side in ("left", "right")
    ]
    assert torch.equal(out[0], out[1])


def test_bad_input_gets_clear_errors(tmp_path) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    store = StatsStore(tmp_path / "stats")
    hp = fast_hparams(write_corpus(tmp_path))
    good = capital_requests(1)[0]
    with pytest.raises(ValueError, match=r"Layers \[7\] are outside the model"):
        build_editor("memit", {**hp, "layers": [1, 7]}).edit(model, tok, [good], EditContext(stats=store))
    no_subject = EditRequest("bad", "France", "The capital is", "Rome", "Paris")
    with pytest.raises(EditInputError, match=r"'bad'.*does not occur"):
        build_editor("memit", hp).edit(model, tok, [no_subject], EditContext(stats=store))
    blank = EditRequest("blank", "France", "The capital of {} is", "  ", "Paris")
    with pytest.raises(EditInputError, match=r"'blank'.*target_new is empty"):
        build_editor("memit", hp).edit(model, tok, [blank], EditContext(stats=store))
    with pytest.raises(EditInputError, match="No edit requests"):
        build_editor("memit", hp).edit(model, tok, [], EditContext(stats=store))
    with pytest.raises(ValueError, match="Unknown editor 'grace'"):
        build_editor("grace")
    with pytest.raises(ValueError, match="v_lr must be > 0"):
        build_editor("memit", {"v_lr": 0})
    with pytest.raises(ValueError, match="v_loss_layer=2"):
        build_editor("memit", {**hp, "v_loss_layer": 2}).edit(model, tok, [good], EditContext(stats=store))
    # A step so large that the hidden states overflow: the optimisation must stop with a clear error.
    before = state_of(model)
    wild = {**hp, "v_lr": 1e38, "clamp_norm_factor": 1e38}
    with pytest.raises(TargetOptimisationError, match=r"NaN/inf loss .* \['0'\]"):
        build_editor("memit", wild).edit(model, tok, [good], EditContext(stats=store))
    assert same_state(before, state_of(model))
    with torch.no_grad():
        model.get_parameter("model.layers.3.mlp.up_proj.weight").fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN/inf logits"):
        build_editor("memit", hp).edit(model, tok, [good], EditContext(stats=store))


def test_hparams_files_load_with_unknown_keys_recorded(tmp_path, caplog) -> None:
    memit_json = {
        "layers": [3, 4, 5, 6, 7, 8],
        "layer_selection": "all",
        "fact_token": "subject_last",
        "v_num_grad_steps": 25,
        "v_lr": 5e-1,
        "v_loss_layer": 27,
        "v_weight_decay": 0.5,
        "clamp_norm_factor": 0.75,
        "kl_factor": 0.0625,
        "mom2_adjustment": True,
        "mom2_update_weight": 15000,
        "rewrite_module_tmp": "transformer.h.{}.mlp.fc_out",
        "mom2_dataset": "wikipedia",
        "mom2_n_samples": 100000,
        "mom2_dtype": "float32",
        "extra_knob": 1,
    }
    path = tmp_path / "gpt-j.json"
    path.write_text(json.dumps(memit_json))
    with caplog.at_level(logging.WARNING, logger="editdecay.editing.hparams"):
        hp = MemitHyperParams.from_file(path)
    assert hp.layers == [3, 4, 5, 6, 7, 8] and hp.clamp_norm_factor == 0.75 and hp.v_loss_layer == 27
    assert hp.ignored == {"rewrite_module_tmp": "transformer.h.{}.mlp.fc_out", "extra_knob": 1}
    assert "extra_knob" in caplog.text
    yaml_path = tmp_path / "alphaedit.yaml"
    yaml_path.write_text(
        "alg_name: AlphaEdit\nmodel_name: x\nlayers: [1, 2]\nnullspace_threshold: 2e-2\nL2: 10\nv_lr: 1e-1\n"
    )
    editor = build_editor("alphaedit", yaml_path)
    model = tiny_model("llama")
    resolved = editor.resolved_hparams(model)
    assert resolved.layers == [1, 2] and resolved.L2 == 10 and resolved.v_lr == 0.1 and resolved.batch_size == 100
    assert set(resolved.ignored) == {"alg_name", "model_name"}


def test_presets_are_recognised_from_the_model_shape() -> None:
    def meta(**config) -> torch.nn.Module:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(LlamaConfig(**{"vocab_size": 64, **config}))

    smol = meta(
        num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3
    )
    assert preset_for_model(smol) == "smollm2-135m"
    fast = DtypeResolver(forced="bfloat16")  # what the probe answers on an AVX512-BF16 CPU
    assert build_editor("memit", dtypes=fast).resolved_hparams(smol).mom2_update_weight == 1500
    # Every preset and the fallback leave the target steps' dtype to the probe (v_dtype auto); an override
    # can pin the model's own dtype (null).
    assert build_editor("memit", dtypes=fast).resolved_hparams(smol).v_dtype == "bfloat16"
    assert build_editor("memit", {"v_dtype": None}, dtypes=fast).resolved_hparams(smol).v_dtype is None
    with pytest.raises(ValueError, match="v_dtype='int8'"):
        build_editor("memit", {"v_dtype": "int8"})
    llama3 = meta(num_hidden_layers=32, hidden_size=4096, vocab_size=128256, num_attention_heads=32)
    assert preset_for_model(llama3) == "llama-3-8b"
    hp = build_editor("memit", dtypes=DtypeResolver(forced="float32")).resolved_hparams(llama3)
    assert (hp.layers, hp.v_lr, hp.mom2_update_weight, hp.v_dtype) == ([4, 5, 6, 7, 8], 0.1, 15000, "float32")
    with pytest.raises(ValueError, match="outside the model"):
        build_editor("memit", preset="gpt2-xl").resolved_hparams(tiny_model("gpt2"))
    fallback = build_editor("memit", dtypes=fast).resolved_hparams(tiny_model("llama"))
    assert fallback.mom2_update_weight == tiny_config("llama").intermediate_size
    assert fallback.layers == [0, 1, 2, 3] and fallback.v_dtype == "bfloat16"
    with pytest.raises(ValueError, match="Unknown preset"):
        build_editor("memit", preset="gpt5")


def test_edit_layers_are_where_the_patch_is(tmp_path) -> None:
    model, tok = tiny_model("gpt_neox"), tiny_tokenizer()
    patch = build_editor("memit", fast_hparams(write_corpus(tmp_path), layers=[0, 3])).edit(
        model, tok, capital_requests(2), EditContext(stats=StatsStore(tmp_path / "stats"))
    )
    arch = arch_for(model)
    assert sorted(patch.deltas) == [arch.mlp_out_weight_name(0), arch.mlp_out_weight_name(3)]
    assert patch.deltas[arch.mlp_out_weight_name(0)].shape == mlp_out(model, 0).weight.shape


@pytest.mark.slow
def test_memit_on_smollm2_edits_at_least_9_of_10(smollm2, smollm2_stats) -> None:
    store, overrides = smollm2_stats
    assert edit_success(smollm2, build_editor("memit", overrides), store) >= 9


def test_target_store_shares_targets_between_editors(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MEMIT and AlphaEdit on the same model and requests optimise targets once; the patches are unchanged."""
    import editdecay.editing.target_values as target_values
    from editdecay.editing import TargetStore

    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    corpus, stats = write_corpus(tmp_path), StatsStore(tmp_path / "stats")
    requests = capital_requests(3)
    uncached = {
        name: build_editor(name, fast_hparams(corpus)).edit(model, tok, requests, EditContext(stats=stats))
        for name in ("memit", "alphaedit")
    }

    calls = []
    real = target_values._optimise
    monkeypatch.setattr(target_values, "_optimise", lambda *a, **k: calls.append(1) or real(*a, **k))
    store = TargetStore(tmp_path / "targets")
    shared = {
        name: build_editor(name, fast_hparams(corpus)).edit(
            model, tok, requests, EditContext(stats=stats, targets=store)
        )
        for name in ("memit", "alphaedit")
    }
    assert len(calls) == 1  # the second editor read the first one's targets
    for name in uncached:
        assert uncached[name].deltas.keys() == shared[name].deltas.keys()
        for param, delta in uncached[name].deltas.items():
            assert torch.equal(delta, shared[name].deltas[param]), (name, param)

    # Any input of the optimisation changes the key: other steps, other requests, another model.
    build_editor("memit", fast_hparams(corpus, v_num_grad_steps=3)).edit(
        model, tok, requests, EditContext(stats=stats, targets=store)
    )
    build_editor("memit", fast_hparams(corpus)).edit(model, tok, requests[:2], EditContext(stats=stats, targets=store))
    build_editor("memit", fast_hparams(corpus)).edit(
        tiny_model("llama", seed=1), tok, requests, EditContext(stats=stats, targets=store)
    )
    assert len(calls) == 4


def test_a_killed_target_optimisation_resumes_at_the_first_unsaved_chunk(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of z_batch_size requests are stored one by one: a run killed in its third chunk recomputes only that
    chunk, and its patch equals an uninterrupted run's."""
    import editdecay.editing.target_values as target_values
    from editdecay.editing import TargetStore

    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    corpus, stats = write_corpus(tmp_path), StatsStore(tmp_path / "stats")
    requests, hparams = capital_requests(4), fast_hparams(corpus, z_batch_size=1)
    reference = build_editor("memit", hparams).edit(model, tok, requests, EditContext(stats=stats))

    real, calls = target_values._optimise, []

    def killed_at_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    store = TargetStore(tmp_path / "targets")
    monkeypatch.setattr(target_values, "_optimise", killed_at_third)
    with pytest.raises(KeyboardInterrupt):
        build_editor("memit", hparams).edit(model, tok, requests, EditContext(stats=stats, targets=store))
    monkeypatch.setattr(target_values, "_optimise", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = build_editor("memit", hparams).edit(model, tok, requests, EditContext(stats=stats, targets=store))
    assert len(calls) == 3 + 2  # chunks 1 and 2 were read back; 3 (interrupted) and 4 were optimised
    for param, delta in reference.deltas.items():
        assert torch.equal(resumed.deltas[param], delta), param
