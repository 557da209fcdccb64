"""Second-moment statistics: exact values, one pass = per-layer passes, corpora, the disk cache."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

from editdecay.data.stats_text import SampledCorpus, TextCorpus
from editdecay.editing import StatisticError, StatsStore, collect_stats, open_corpus
from editdecay.editing import stats as stats_module
from editdecay.editing.keyed_tensors import write_keyed_tensors
from editdecay.editing.sampled_text import sample_sequences
from editdecay.models import mlp_out, model_fingerprint
from test_edit_support import single_thread  # noqa: F401  (autouse fixture)
from tiny import tiny_model, tiny_tokenizer

TEXT = [
    "The capital of France is Paris. The capital of Italy is Rome. " * 3,
    "Michael Jordan plays basketball. Lionel Messi plays soccer. Roger Federer plays tennis. " * 2,
    "Toyota is headquartered in Tokyo. Apple is based in Cupertino. The Eiffel Tower is in Paris. " * 2,
    "English German Japanese Chinese Berlin London Beijing Toronto piano guitar violin physicist actor " * 2,
] * 10


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"{i} {t}" for i, t in enumerate(TEXT)), encoding="utf-8")
    return path


def test_statistic_equals_a_direct_computation(corpus_file) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    n_tokens, max_length = 700, 40
    result = collect_stats(
        model, tok, [2], open_corpus(str(corpus_file)), n_tokens=n_tokens, max_length=max_length, dtype="float64"
    )[2]
    # Direct: run each document alone, take the first n_tokens keys in reading order.
    keys = []
    captured = {}
    handle = mlp_out(model, 2).register_forward_pre_hook(lambda _m, args: captured.update(k=args[0]))
    try:
        docs = list(TextCorpus(str(corpus_file), "x").documents())
        for doc in docs:
            ids = tok(doc, truncation=True, max_length=max_length, return_tensors="pt")
            with torch.no_grad():
                model(**ids)
            keys.append(captured["k"][0].double())
    finally:
        handle.remove()
    k = torch.cat(keys)[:n_tokens]
    expected = k.T @ k / n_tokens
    assert result.n_tokens == n_tokens
    assert result.n_documents == -(-n_tokens // max_length)
    torch.testing.assert_close(result.moment, expected, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(result.moment, result.moment.T)


def test_one_multi_layer_pass_equals_separate_passes(corpus_file) -> None:
    model, tok = tiny_model("gpt2"), tiny_tokenizer()
    corpus = open_corpus(str(corpus_file))
    together = collect_stats(model, tok, [0, 1, 3], corpus, n_tokens=900, max_length=64)
    for layer in (0, 1, 3):
        alone = collect_stats(model, tok, [layer], corpus, n_tokens=900, max_length=64)[layer]
        torch.testing.assert_close(together[layer].moment, alone.moment, rtol=1e-5, atol=1e-7)
        assert together[layer].n_tokens == alone.n_tokens == 900


def test_store_caches_and_never_serves_another_model(tmp_path, corpus_file, monkeypatch) -> None:
    model, tok = tiny_model("llama", seed=0), tiny_tokenizer(add_bos=True)
    store = StatsStore(tmp_path / "stats")
    first = store.get(model, tok, [1, 2], corpus=str(corpus_file), n_tokens=600)
    files = sorted((tmp_path / "stats").rglob("*.safetensors"))
    assert len(files) == 2

    def fail(*_a, **_k):
        raise AssertionError("should have been served from the cache")

    monkeypatch.setattr(stats_module, "collect_stats", fail)
    again = store.get(model, tok, [2, 1], corpus=str(corpus_file), n_tokens=600)
    assert all(torch.equal(first[layer], again[layer]) for layer in (1, 2))
    monkeypatch.undo()

    # Another model gets its own statistic, even if a file is planted at its path.
    other = tiny_model("llama", seed=1)
    key = stats_module.StatsKey(
        model_fingerprint(other), 1, open_corpus(str(corpus_file)).corpus_id, 600, "float32", 128
    )
    planted = store.path(key)
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(files[0].read_bytes())
    theirs = store.get(other, tok, [1], corpus=str(corpus_file), n_tokens=600)
    assert not torch.equal(theirs[1], first[1])
    # Different token counts and dtypes are different keys.
    assert store.get(model, tok, [1], corpus=str(corpus_file), n_tokens=500)[1].shape == first[1].shape
    assert store.get(model, tok, [1], corpus=str(corpus_file), n_tokens=600, dtype="float64")[1].dtype == torch.float64


def test_cache_files_carry_their_format_and_only_missing_layers_are_collected(
    tmp_path, corpus_file, monkeypatch
) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    store = StatsStore(tmp_path)
    first = store.get(model, tok, [1], corpus=str(corpus_file), n_tokens=300)
    collected: list[list[int]] = []
    real = stats_module.collect_stats

    def counting(model, tokenizer, layers, *args, **kwargs):
        collected.append(layers)
        return real(model, tokenizer, layers, *args, **kwargs)

    monkeypatch.setattr(stats_module, "collect_stats", counting)
    both = store.get(model, tok, [2, 1], corpus=str(corpus_file), n_tokens=300)
    assert collected == [[2]] and list(both) == [1, 2] and torch.equal(both[1], first[1])
    key = stats_module.StatsKey(
        model_fingerprint(model), 1, open_corpus(str(corpus_file)).corpus_id, 300, "float32", 128
    )
    assert key.format == stats_module.STATS_FORMAT
    assert store.path(key).name == "layer001-n300-len128-float32.stats-1.safetensors"
    # A file written by code of another format is not read, even at the current path.
    older = dataclasses.replace(key, format="stats/0")
    assert store.path(older) != store.path(key)
    write_keyed_tensors(
        store.path(key), {"moment": first[1]}, dataclasses.asdict(older), n_tokens="300", n_documents="1", seconds="0"
    )
    assert torch.equal(store.get(model, tok, [1], corpus=str(corpus_file), n_tokens=300)[1], first[1])
    assert collected == [[2], [1]]


def test_corpus_formats_and_identity(tmp_path) -> None:
    wiki = tmp_path / "wiki" / "AA"
    wiki.mkdir(parents=True)
    (wiki / "wiki_00").write_text(
        '<doc id="1" title="A">\nA\n\nAlpha text.\n</doc>\n<doc id="2" title="B">\nB\nBeta.\n</doc>\n'
    )
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    (tmp_path / "plain.txt").write_text("first doc\nstill first\n\nsecond doc\n")
    assert list(open_corpus(str(tmp_path / "wiki")).documents()) == ["A\n\nAlpha text.", "B\nBeta."]
    assert list(open_corpus(str(tmp_path / "docs.jsonl")).documents()) == ["one", "two"]
    assert list(open_corpus(str(tmp_path / "plain.txt")).documents()) == ["first doc\nstill first", "second doc"]
    before = open_corpus(str(tmp_path / "wiki")).corpus_id
    (wiki / "wiki_00").write_text('<doc id="1" title="A">\nchanged\n</doc>\n')
    assert open_corpus(str(tmp_path / "wiki")).corpus_id != before
    with pytest.raises(FileNotFoundError, match="model-sampled"):
        open_corpus(str(tmp_path / "nope"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="record 0"):
        list(open_corpus(str(tmp_path / "bad.jsonl")).documents())
    assert open_corpus("wikitext-103").corpus_id.startswith("hf:Salesforce/wikitext")


def test_model_sampled_corpus_is_seeded_and_logged(caplog) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    assert isinstance(open_corpus("model-sampled"), SampledCorpus)
    with caplog.at_level(logging.INFO, logger="editdecay.editing.sampled_text"):
        a = sample_sequences(model, tok, 50, length=10, seed=3)
    assert "from the model itself" in caplog.text
    b = sample_sequences(model, tok, 50, length=10, seed=3)
    c = sample_sequences(model, tok, 50, length=10, seed=4)
    assert len(a) == 5 and all(len(s) == 10 and s[0] == tok.bos_token_id for s in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_sampling_matches_a_cache_free_reference_and_never_ends_early() -> None:
    """The KV-cache loop samples what recomputing the whole prefix would (same generator stream), and the
    end-of-sequence token is suppressed even when the model strongly prefers it."""
    model, tok = tiny_model("llama", dtype=torch.float64), tiny_tokenizer(add_bos=True)
    with torch.no_grad():  # make EOS the favourite after most tokens
        model.lm_head.weight[tok.eos_token_id] = model.lm_head.weight.abs().max() * 50 * model.model.norm.weight.sign()
    sampled = sample_sequences(model, tok, 24, length=8, seed=5, batch_size=3)

    generator = torch.Generator().manual_seed(5)
    ids = torch.full((3, 1), tok.bos_token_id)
    eos_favoured = 0
    with torch.no_grad():
        for _ in range(7):
            logits = model(input_ids=ids).logits[:, -1].float()
            eos_favoured += int((logits.argmax(dim=-1) == tok.eos_token_id).sum())
            logits[:, tok.eos_token_id] = float("-inf")
            ids = torch.cat([ids, torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)], dim=1)
    assert torch.equal(torch.stack(sampled), ids)
    assert eos_favoured > 10 and not (ids == tok.eos_token_id).any()


def test_too_small_corpus_and_non_finite_statistic_are_clear_errors(corpus_file) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    with pytest.raises(StatisticError, match="holds only"):
        collect_stats(model, tok, [1], open_corpus(str(corpus_file)), n_tokens=10**6, max_length=8)
    with torch.no_grad():
        model.get_parameter("model.layers.0.mlp.up_proj.weight").fill_(float("inf"))
    with pytest.raises(StatisticError, match="layer 1"):
        collect_stats(model, tok, [1], open_corpus(str(corpus_file)), n_tokens=100)
