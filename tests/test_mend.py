"""MEND (docs/algorithms.md §10): gradient factors against autograd, the network's update rule, training that
lowers the held-out edit loss, resumable training, and the store's keys."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import torch

from editdecay.data import load_edit_requests
from editdecay.editing import EditContext, build_editor
from editdecay.editing.edit_loss import model_logits, target_nll
from editdecay.editing.mend import MendHyperParams, MendNetwork, MendStore
from editdecay.editing.mend import training as mend_training
from editdecay.editing.mend.apply import EditedLayers, edit_batch, edit_factors
from editdecay.editing.mend.gradients import Factors
from editdecay.editing.mend.training import train_network, training_records
from editdecay.models import DtypeResolver
from test_edit_support import capital_requests
from tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gradient_factors_rebuild_the_autograd_weight_gradient(arch: str) -> None:
    """sum_t delta_t u_t^T over the real tokens equals autograd's dL/dW of each edited projection (GPT-2 stores its
    Conv1D weight transposed)."""
    model = tiny_model(arch, seed=7)
    tok = tiny_tokenizer(add_bos=arch == "llama")
    edited = EditedLayers.of(model, [1, 3])
    batch = edit_batch(tok, capital_requests(3))  # prompts of different lengths: padding is excluded
    weights = [model.get_parameter(n) for n in edited.weight_names]
    loss = target_nll(model_logits(model, batch), batch).sum()
    expected = torch.autograd.grad(loss, weights)
    model.zero_grad()
    factors = edit_factors(model, edited, batch)
    for layer_factors, grad in zip(factors, expected, strict=True):
        rebuilt = layer_factors.weight_gradient()
        torch.testing.assert_close(rebuilt.T if edited.transposed else rebuilt, grad, rtol=1e-4, atol=1e-6)
    assert all(w.grad is None for w in weights)  # no parameter gradient was stored
    assert factors[0].inputs.shape[0] == int(batch.attention_mask.sum())


def test_untrained_network_update_is_the_normalised_gradient_step() -> None:
    """With W2 = 0 (the start) g is the identity: Delta W = -alpha * norm(delta)^T norm(u)."""
    g = torch.Generator().manual_seed(0)
    network = MendNetwork(m=5, d=3, n_layers=2, hidden=4, edit_lr=0.25)
    u, delta = torch.randn(40, 5, generator=g) * 3 + 1, torch.randn(40, 3, generator=g) * 0.01
    network.observe(1, Factors(u, delta))
    norm_u = (u - u.mean(0)) / u.std(0)
    norm_d = (delta - delta.mean(0)) / delta.std(0)
    got = network.update(1, Factors(u[:7], delta[:7]))
    torch.testing.assert_close(got, -0.25 * norm_d[:7].T @ norm_u[:7], rtol=1e-5, atol=1e-6)
    assert torch.equal(network.update(0, Factors(u[:7], delta[:7])), -0.25 * delta[:7].T @ u[:7])  # no statistics yet


def _hparams(**overrides: object) -> MendHyperParams:
    values = {
        "layers": [2, 3],
        "train_data": "builtin",
        "train_records": 40,
        "heldout_fraction": 0.2,
        "train_steps": 24,
        "train_batch_size": 4,
        "hidden": 32,
        "lr": 3e-3,
        "lr_lr": 3e-3,
        "edit_lr": 1e-3,
        "checkpoint_every": 4,
        **overrides,
    }
    return MendHyperParams.from_dict(values)


def test_training_lowers_the_heldout_edit_loss(tmp_path: Path) -> None:
    model, tok = tiny_model("llama", seed=3), tiny_tokenizer(add_bos=True)
    hp = _hparams()
    records = training_records(hp)
    assert (len(records.train), len(records.heldout)) == (32, 8)
    trained = train_network(model, tok, hp, records, tmp_path / "ckpt" / "checkpoint.pt", progress=False)
    start, end = trained.meta["history"][0], trained.meta["history"][-1]
    assert (start["step"], end["step"]) == (0, 24)
    # The held-out edits were never trained on; editing them with the trained network lowers their NLL more.
    assert end["heldout_edit_nll"] < start["heldout_edit_nll"] < start["heldout_nll_before"]
    assert end["heldout_edit_nll"] < start["heldout_edit_nll"] - 0.25  # measured: 5.98 -> 5.59 nats
    assert min(trained.meta["alpha"]) > 10 * hp.edit_lr  # the learned steps grew from their start


def test_interrupted_training_resumes_at_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = tiny_model("llama", seed=3), tiny_tokenizer(add_bos=True)
    hp = _hparams(train_steps=10)
    records = training_records(hp)
    whole = train_network(model, tok, hp, records, tmp_path / "a" / "checkpoint.pt", progress=False)

    real, calls = mend_training._losses, []

    def dies_in_step_seven(*args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        calls.append(True)
        # heldout scoring also calls _losses: 2 calls at step 0 (8 records, batches of 4), then 1 per step
        if len(calls) == 2 + 7:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mend_training, "_losses", dies_in_step_seven)
    checkpoint = tmp_path / "b" / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        train_network(model, tok, hp, records, checkpoint, progress=False)
    assert torch.load(checkpoint, weights_only=False)["step"] == 4
    monkeypatch.setattr(mend_training, "_losses", real)
    resumed = train_network(model, tok, hp, records, checkpoint, progress=False)
    for (name, a), b in zip(whole.network.state_dict().items(), resumed.network.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [h["step"] for h in resumed.meta["history"]] == [0, 4, 8, 10]


def test_store_trains_once_per_key_and_the_editor_uses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = tiny_model("llama", seed=3), tiny_tokenizer(add_bos=True)
    trainings: list[int] = []
    real = mend_training.train_network

    def counted(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        trainings.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("editdecay.editing.mend.store.train_network", counted)
    settings = {k: v for k, v in _hparams(train_steps=4).to_dict().items() if k != "ignored"}
    editor = build_editor("mend", settings, dtypes=DtypeResolver(forced="float32"))
    context = EditContext(artifacts=tmp_path, fingerprint="f" * 40)
    first = editor.edit(model, tok, capital_requests(4), context)
    second = editor.edit(model, tok, capital_requests(4), context)
    assert len(trainings) == 1 and first.patch_id == second.patch_id
    assert first.manifest["training"]["steps"] == 4 and first.manifest["training"]["records"]["train"] == 32
    assert first.manifest["target_nll"]["after"] < first.manifest["target_nll"]["before"]
    assert first.manifest["protocol"]["n_batches"] == 1
    assert first.manifest["requests_in_training_records"] == 0  # capital_requests are not built-in records
    builtin = load_edit_requests("builtin", 3)
    assert editor.edit(model, tok, builtin, context).manifest["requests_in_training_records"] == 3
    store = MendStore(tmp_path / "mend")
    digest = training_records(_hparams()).digest
    assert store.key("f" * 40, _hparams(train_steps=4), digest) != store.key("f" * 40, _hparams(train_steps=5), digest)
    assert store.key("f" * 40, _hparams(batch_size=1), digest) == store.key("f" * 40, _hparams(), digest)
    build_editor("mend", {**settings, "train_steps": 5}).edit(model, tok, capital_requests(2), context)
    assert len(trainings) == 2


def test_missing_or_unusable_training_data_is_named() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos=True)
    with pytest.raises(ValueError, match="MEND needs training records"):
        build_editor("mend", {"layers": [3]}).edit(model, tok, capital_requests(1))
    with pytest.raises(ValueError, match="no named presets"):
        build_editor("mend", preset="gpt2-xl")
    with pytest.raises(ValueError, match="heldout_fraction"):
        MendHyperParams.from_dict({"heldout_fraction": 1.5})


def test_the_same_records_under_another_path_reuse_the_network(tmp_path: Path) -> None:
    text = resources.files("editdecay.data").joinpath("builtin/edits.json").read_text(encoding="utf-8")
    keys = set()
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(text, encoding="utf-8")
        hp = _hparams(train_data=str(tmp_path / name))
        keys.add(MendStore(tmp_path / "mend").key("f" * 40, hp, training_records(hp).digest))
    assert len(keys) == 1
