"""model_fingerprint: a content hash of config + weights that every cache key uses."""

from __future__ import annotations

import hashlib

import torch
from transformers import AutoModelForCausalLM

from editdecay.models import combine_fingerprints, edit_matrix, embeddings_tied, model_fingerprint
from editdecay.models.fingerprint import file_sha256
from tiny import tiny_config, tiny_model


def test_same_weights_same_fingerprint_across_arches():
    for arch in ("gpt2", "llama", "gemma3"):
        a, b = tiny_model(arch, seed=4), tiny_model(arch, seed=4)
        assert model_fingerprint(a) == model_fingerprint(b)
        assert model_fingerprint(a) == model_fingerprint(a)  # hashing does not touch the model
        assert len(model_fingerprint(a)) == 32 and int(model_fingerprint(a), 16) >= 0
    assert model_fingerprint(tiny_model("llama", seed=4)) != model_fingerprint(tiny_model("llama", seed=5))
    assert model_fingerprint(tiny_model("llama")) != model_fingerprint(tiny_model("gemma3"))


def test_one_changed_element_changes_it_and_reverting_restores_it():
    model = tiny_model("llama")
    before = model_fingerprint(model)
    weight = edit_matrix(model, 2)
    with torch.no_grad():
        old = weight[3, 7].item()
        weight[3, 7] = old + 1e-6  # well below any tolerance a numeric comparison would use
        changed = model_fingerprint(model)
        weight[3, 7] = old
    assert changed != before
    assert model_fingerprint(model) == before


def test_dtype_changes_it():
    model = tiny_model("llama")
    fp32 = model_fingerprint(model)
    assert model_fingerprint(model.to(torch.bfloat16)) != fp32
    assert model_fingerprint(tiny_model("llama", dtype=torch.bfloat16)) == model_fingerprint(model)


def test_config_changes_it_but_bookkeeping_does_not():
    model = tiny_model("llama")
    before = model_fingerprint(model)
    model.config._name_or_path = "/somewhere/else"
    model.config.use_cache = not model.config.use_cache
    assert model_fingerprint(model) == before
    model.config.rms_norm_eps = 1e-3  # same weights, a different function
    assert model_fingerprint(model) != before


def test_tied_weights_hashed_once_and_followed():
    tied = tiny_model("llama")
    assert embeddings_tied(tied)
    state = tied.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    before = model_fingerprint(tied)
    tied.tie_weights()
    assert model_fingerprint(tied) == before

    # An untied model holding the very same values computes the same logits today, but diverges as soon as
    # one of the two matrices is trained, so it must not share the fingerprint.
    config = tiny_config("llama")
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    untied = AutoModelForCausalLM.from_config(config)
    untied.load_state_dict(tied.state_dict())
    assert not embeddings_tied(untied)
    torch.testing.assert_close(untied.lm_head.weight, tied.lm_head.weight)
    assert model_fingerprint(untied) != before

    # Writing through the output embedding of the tied model changes the (single) hashed tensor.
    with torch.no_grad():
        tied.get_output_embeddings().weight[0, 0] += 1.0
    assert model_fingerprint(tied) != before


def test_combine_fingerprints_and_file_hash(tmp_path):
    a, b = model_fingerprint(tiny_model("gpt2")), model_fingerprint(tiny_model("gptj"))
    assert combine_fingerprints(a, b) == combine_fingerprints(a, b)
    assert combine_fingerprints(a, b) != combine_fingerprints(b, a)
    assert combine_fingerprints(a, "patch-1") != combine_fingerprints(a, "patch-2")
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 4099
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
