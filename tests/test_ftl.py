"""FT-L (docs/algorithms.md §11): the L-infinity bound holds exactly, the first step is Adam's sign step on the
autograd gradient (an independent reference), and the edit lowers the targets' NLL."""

from __future__ import annotations

import pytest
import torch

from editdecay.editing import build_editor
from editdecay.editing.edit_loss import model_logits, target_batch, target_nll
from editdecay.editing.ftl import FtlHyperParams
from editdecay.models import DtypeResolver, ModelShape, arch_for
from test_edit_support import capital_requests, same_state, state_of
from tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_weight_change_never_leaves_the_linf_ball() -> None:
    model, tok = tiny_model("llama", seed=2), tiny_tokenizer(add_bos=True)
    before = state_of(model)
    epsilon = 2e-3
    patch = build_editor("ftl", {"layers": [1], "num_steps": 8, "lr": 5e-2, "norm_constraint": epsilon}).edit(
        model, tok, capital_requests(4)
    )
    assert same_state(before, state_of(model))
    name = arch_for(model).mlp_out_weight_name(1)
    delta = patch.deltas[name]
    assert float(delta.abs().max()) == pytest.approx(epsilon, rel=1e-6)  # the bound binds ...
    assert bool((delta.abs() <= epsilon).all())  # ... and holds exactly
    assert (delta.abs() == delta.abs().max()).float().mean() > 0.5  # most entries sit on the bound at this lr
    patch.apply(model)
    applied = model.get_parameter(name).detach() - before[name]
    assert float(applied.abs().max()) <= epsilon * (1 + 1e-5)  # float32 rounding of W0 + D only
    nll = patch.manifest["target_nll"]
    assert nll["per_pass"][0] == pytest.approx(nll["before"], abs=1e-6)  # one batch: pass 1 starts at W0
    assert nll["after"] < nll["before"] - 1e-3  # measured 6.0019 -> 5.9962 (a tiny random model, a tight bound)


def test_first_step_is_adams_sign_step_on_the_autograd_gradient() -> None:
    """Adam's first update is -lr * g / (|g| + eps); with lr below epsilon nothing is clipped."""
    model, tok = tiny_model("llama", seed=4), tiny_tokenizer(add_bos=True)
    requests = capital_requests(3)
    name = arch_for(model).mlp_out_weight_name(2)
    weight = model.get_parameter(name)
    batch = target_batch(tok, [r.prompt for r in requests], [r.target_new for r in requests])
    (grad,) = torch.autograd.grad(target_nll(model_logits(model, batch), batch).mean(), [weight])
    lr = 1e-4
    patch = build_editor(
        "ftl", {"layers": [2], "num_steps": 1, "lr": lr, "norm_constraint": 1.0}, dtypes=DtypeResolver()
    ).edit(model, tok, requests)
    expected = -lr * grad / (grad.abs() + 1e-8)
    torch.testing.assert_close(patch.deltas[name], expected, rtol=1e-4, atol=1e-9)


def test_batches_and_rules() -> None:
    model, tok = tiny_model("llama", seed=1), tiny_tokenizer(add_bos=True)
    patch = build_editor("ftl", {"layers": [1], "num_steps": 2, "batch_size": 2}).edit(model, tok, capital_requests(3))
    assert patch.manifest["protocol"] == {"n_requests": 3, "batch_size": 2, "passes": 2, "seed": 0}
    with pytest.raises(ValueError, match="one layer"):
        FtlHyperParams.from_dict({"layers": [1, 2]})
    with pytest.raises(ValueError, match="norm_constraint must be > 0"):
        FtlHyperParams.from_dict({"norm_constraint": 0})
    with pytest.raises(ValueError, match="outside the model"):
        build_editor("ftl", {"layers": [9]}).edit(model, tok, capital_requests(1))
    with pytest.raises(ValueError, match="Unknown FT-L preset 'gpt2-xl'"):
        build_editor("ftl", preset="gpt2-xl")
    smollm2 = build_editor("ftl", preset="smollm2-135m").resolved_hparams(ModelShape("llama", 30, 576, 1536, 49152))
    assert (smollm2.layers, smollm2.norm_constraint, smollm2.lr, smollm2.num_steps) == ([7], 2e-2, 5e-3, 25)
    other = build_editor("ftl").resolved_hparams(ModelShape("gpt2", 48, 1600, 6400, 50257))  # GPT-2 XL: published
    assert (other.layers, other.norm_constraint, other.lr) == ([17], 5e-4, 5e-4)
