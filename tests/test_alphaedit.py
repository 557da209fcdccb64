"""AlphaEdit: the null-space projector and its invariant, the update rule, sequential state."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import test_edit_support
from editdecay.editing import (
    AlphaEditEditor,
    AlphaEditState,
    EditContext,
    StatsStore,
    alphaedit_delta,
    build_editor,
)
from editdecay.editing import nullspace_projector as projector_of
from editdecay.editing.subject_keys import compute_keys
from editdecay.models import arch_for
from test_edit_support import capital_requests, edit_success, fast_hparams, same_state, state_of, write_corpus
from tiny import tiny_model, tiny_tokenizer

smollm2_stats = test_edit_support.smollm2_stats  # a session fixture shared with test_memit
single_thread = test_edit_support.single_thread  # autouse: tiny models run fastest on one thread


def _planted(m: int = 16, small: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A PSD matrix with `small` eigenvalues ~1e-4 and the rest in [0.5, 2]; returns C, U_small, U_large."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    values = torch.cat(
        [
            torch.full((small,), 1e-4, dtype=torch.float64),
            0.5 + 1.5 * torch.rand(m - small, generator=g, dtype=torch.float64),
        ]
    )
    return q @ torch.diag(values) @ q.T, q[:, :small], q[:, small:]


def test_projector_keeps_exactly_the_small_eigen_directions() -> None:
    C, small, _ = _planted()
    projector = projector_of(C, threshold=2e-2)
    assert projector.kept == 6 and projector.total == 16
    torch.testing.assert_close(projector.P, small @ small.T, rtol=0, atol=1e-10)
    torch.testing.assert_close(projector.P @ projector.P, projector.P, rtol=0, atol=1e-10)
    # Relative rule: the 6 tiny directions hold 6e-4 / trace of the energy.
    energy = float(6e-4 / torch.trace(C))
    assert projector_of(C, energy=energy * 1.01).kept == 6
    assert projector_of(C, energy=energy * 0.5).kept < 6
    assert projector_of(C, energy=0.0).kept == 0


def test_update_leaves_preserved_keys_unchanged() -> None:
    """For any k0 in the span of the large-eigenvalue directions, Delta k0 ~ 0 (docs/algorithms.md §2)."""
    C, _, large = _planted()
    g = torch.Generator().manual_seed(1)
    R, K = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)
    P = projector_of(C).P
    C_prev = torch.zeros(16, 16, dtype=torch.float64)
    delta = alphaedit_delta(R, K, P, C_prev, 10.0)
    assert delta.shape == (5, 16) and float(delta.norm()) > 1e-3
    k0 = large @ torch.randn(large.shape[1], 4, generator=g, dtype=torch.float64)
    assert float((delta @ k0).norm()) < 1e-10 * float(delta.norm()) * float(k0.norm())
    # Delta^T solves (P (K K^T + C_p) + alpha I) X = P K R^T.
    lhs = P @ (K @ K.T + C_prev) + 10.0 * torch.eye(16, dtype=torch.float64)
    torch.testing.assert_close(lhs @ delta.T, P @ K @ R.T, rtol=1e-9, atol=1e-12)


def test_with_no_direction_kept_the_update_is_zero(tmp_path, caplog) -> None:
    C, _, _ = _planted()
    P = projector_of(C, threshold=0.0).P
    delta = alphaedit_delta(torch.randn(5, 3), torch.randn(16, 3), P, torch.zeros(16, 16), 10.0)
    assert torch.count_nonzero(delta) == 0
    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    editor = build_editor("alphaedit", fast_hparams(write_corpus(tmp_path), nullspace_threshold=0.0))
    with caplog.at_level(logging.WARNING, logger="editdecay.editing.alphaedit"):
        patch = editor.edit(model, tok, capital_requests(2), EditContext(stats=StatsStore(tmp_path / "stats")))
    assert all(torch.count_nonzero(d) == 0 for d in patch.deltas.values())
    assert "no direction is kept" in caplog.text
    assert patch.manifest["nullspace"]["1"]["kept"] == 0


def test_real_update_is_blind_to_the_preserved_subspace(tmp_path) -> None:
    model, tok = tiny_model("llama", dtype=torch.float64), tiny_tokenizer(add_bos=True)
    corpus, store = write_corpus(tmp_path), StatsStore(tmp_path / "stats")
    hp = fast_hparams(corpus, mom2_dtype="float64", nullspace_energy=0.05)
    patch = build_editor("alphaedit", hp).edit(model, tok, capital_requests(3), EditContext(stats=store))
    moments = store.get(model, tok, [1, 2], corpus=str(corpus), n_tokens=2500, dtype="float64", max_length=64)
    for layer in (1, 2):
        values, vectors = torch.linalg.eigh(moments[layer])
        kept = patch.manifest["nullspace"][str(layer)]["kept"]
        assert 0 < kept < values.numel()
        preserved = vectors[:, kept:]  # the directions C uses
        delta = patch.deltas[arch_for(model).mlp_out_weight_name(layer)].double()
        assert float(delta.norm()) > 0
        k0 = preserved @ torch.randn(preserved.shape[1], 8, dtype=torch.float64)
        assert float((delta @ k0).norm()) < 1e-6 * float(delta.norm()) * float(k0.norm())


def test_sequential_batches_accumulate_the_key_cache_and_state_round_trips(tmp_path) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    store = StatsStore(tmp_path / "stats")
    before = state_of(model)
    editor = build_editor("alphaedit", fast_hparams(write_corpus(tmp_path), batch_size=2))
    assert isinstance(editor, AlphaEditEditor)
    patch, state = editor.edit_sequential(model, tok, capital_requests(5), EditContext(stats=store))
    assert same_state(before, state_of(model))
    assert (state.n_edits, state.n_batches) == (5, 3)
    assert patch.manifest["protocol"]["sequential"] is True
    assert patch.manifest["protocol"]["n_batches"] == 3 and len(patch.manifest["batches"]) == 3
    for layer in (1, 2):
        cache = state.cache[layer]
        torch.testing.assert_close(cache, cache.T)
        assert torch.linalg.matrix_rank(cache) == 5  # one averaged key per edited request
    # The cache holds each batch's keys on the model as edited by then (docs/algorithms.md §2): after one batch,
    # exactly K K^T of the keys recomputed on the patched model.
    first_patch, first_state = editor.edit_sequential(model, tok, capital_requests(2), EditContext(stats=store))
    edited = tiny_model("llama")
    first_patch.apply(edited)
    recomputed = compute_keys(edited, tok, capital_requests(2), first_patch.manifest["context_templates"], [1, 2])
    for layer in (1, 2):
        k = recomputed.keys[layer].double()
        torch.testing.assert_close(first_state.cache[layer], k.T @ k, rtol=1e-5, atol=1e-6)
    state.save(tmp_path / "state")
    loaded = AlphaEditState.load(tmp_path / "state")
    assert (loaded.layers, loaded.n_edits, loaded.n_batches) == (state.layers, 5, 3)
    assert all(torch.equal(loaded.cache[layer], state.cache[layer]) for layer in (1, 2))
    # Continue the sequence on the edited model; the caller's state object is not modified.
    patch.apply(model)
    _, later = editor.edit_sequential(model, tok, capital_requests(6)[5:], EditContext(stats=store), state=loaded)
    assert later.n_edits == 6 and loaded.n_edits == 5
    with pytest.raises(ValueError, match="layers"):
        build_editor("alphaedit", fast_hparams(write_corpus(tmp_path), layers=[2])).edit_sequential(
            model, tok, capital_requests(1), EditContext(stats=store), state=loaded
        )


@pytest.mark.slow
def test_alphaedit_on_smollm2_edits_at_least_9_of_10(smollm2, smollm2_stats) -> None:
    store, overrides = smollm2_stats
    assert edit_success(smollm2, build_editor("alphaedit", overrides), store) >= 9


def test_a_killed_sequential_edit_resumes_at_the_next_batch(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 1, killed in the third: the rerun edits only batches 3 and 4, and its patch, C_p and batch
    records equal an uninterrupted run's; the progress is removed once the edit is done."""
    import editdecay.editing.editor as editor_module

    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    stats, requests = StatsStore(tmp_path / "stats"), capital_requests(4)
    hparams = fast_hparams(write_corpus(tmp_path), batch_size=1)
    reference, reference_state = build_editor("alphaedit", hparams).edit_sequential(
        model, tok, requests, EditContext(stats=stats)
    )

    real, calls = editor_module.compute_targets, []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    progress = tmp_path / "progress"
    monkeypatch.setattr(editor_module, "SAVE_EVERY_S", 0.0)  # after every batch (tiny batches take milliseconds)
    monkeypatch.setattr(editor_module, "compute_targets", counted)
    with pytest.raises(KeyboardInterrupt):
        build_editor("alphaedit", hparams).edit(model, tok, requests, EditContext(stats=stats, progress=progress))
    assert len(list(progress.iterdir())) == 1  # two batches saved
    monkeypatch.setattr(editor_module, "compute_targets", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed, resumed_state = build_editor("alphaedit", hparams).edit_sequential(
        model, tok, requests, EditContext(stats=stats, progress=progress)
    )
    assert len(calls) == 3 + 2
    for param, delta in reference.deltas.items():
        assert torch.equal(resumed.deltas[param], delta), param
    for layer, cache in reference_state.cache.items():
        assert torch.equal(resumed_state.cache[layer], cache), layer
    as_saved = [json.loads(json.dumps(m["batches"])) for m in (resumed.manifest, reference.manifest)]
    assert as_saved[0] == as_saved[1]  # the records as the patch's manifest.json holds them
    assert list(progress.iterdir()) == []
    # A sequence continued from a state is not saved (its key would need that state).
    with pytest.raises(KeyboardInterrupt):
        calls.clear()
        monkeypatch.setattr(editor_module, "compute_targets", counted)
        build_editor("alphaedit", hparams).edit_sequential(
            model, tok, requests, EditContext(stats=stats, progress=progress), state=reference_state
        )
    assert list(progress.iterdir()) == []
