"""Hooks: reading module inputs/outputs and adding vectors at positions, for tensor- and tuple-returning blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from editdecay.models import arch_for, block, mlp_out, num_blocks
from editdecay.models.hooks import (
    StopForward,
    add_at_positions,
    edit_output,
    gather_positions,
    hidden_of,
    record,
    replace_hidden,
    run_until,
    stop_after,
)
from tiny import tiny_model

IDS = torch.tensor([[5, 17, 42, 99, 3, 250], [8, 8, 120, 7, 64, 300]])


def _block_output_type(model: nn.Module) -> type:
    seen: list[type] = []
    handle = block(model, 0).register_forward_hook(lambda _m, _a, out: seen.append(type(out)))
    with torch.no_grad():
        model(input_ids=IDS)
    handle.remove()
    return seen[0]


@pytest.fixture(scope="module")
def tuple_model() -> nn.Module:
    model = tiny_model("gptj", seed=3)  # GPT-J blocks return (hidden, ...) up to transformers 5.23
    if _block_output_type(model) is not tuple:
        import transformers

        pytest.skip(
            f"GPT-J blocks return a bare tensor in transformers {transformers.__version__}: no tuple-output "
            "architecture to test the tuple path on (constraints.txt pins a version that has one)"
        )
    return model


@pytest.fixture(scope="module")
def tensor_model() -> nn.Module:
    model = tiny_model("llama", seed=3)  # Llama decoder layers return a bare tensor in transformers 5
    assert _block_output_type(model) is torch.Tensor
    return model


@pytest.fixture(params=["tuple", "tensor"])
def model(request, tuple_model, tensor_model) -> nn.Module:
    return tuple_model if request.param == "tuple" else tensor_model


def _block_names(model: nn.Module) -> list[str]:
    return [arch_for(model).block_path(layer) for layer in range(num_blocks(model))]


def test_record_block_outputs_and_inputs_match_hidden_states(model):
    names = _block_names(model)
    with torch.no_grad():
        with record(model, names, "output") as outputs:
            reference = model(input_ids=IDS, output_hidden_states=True).hidden_states
        with record(model, names, "input") as inputs:
            model(input_ids=IDS)
    # hidden_states[0] is the embedding output, [i + 1] block i's output (the last one after the final norm).
    for layer, name in enumerate(names):
        torch.testing.assert_close(inputs[name], reference[layer])
        if layer < len(names) - 1:
            torch.testing.assert_close(outputs[name], reference[layer + 1])
    positions = torch.tensor([2, 5])
    torch.testing.assert_close(
        gather_positions(outputs[names[1]], positions), torch.stack([reference[2][0, 2], reference[2][1, 5]])
    )


def test_record_mlp_out_input_is_the_key(model):
    """The input of the down projection (the MEMIT key) recorded at a token reproduces its output there."""
    name = arch_for(model).mlp_out_path(1)
    with torch.no_grad():
        with record(model, [name], "input") as keys, record(model, [name], "output") as values:
            model(input_ids=IDS)
        module = mlp_out(model, 1)
        picked = gather_positions(keys[name], [[0, 3], [4]])
        torch.testing.assert_close(module(picked), gather_positions(values[name], [[0, 3], [4]]))
    assert keys[name].shape == (2, IDS.shape[1], module.in_features)


def test_record_last_forward_wins_and_hooks_are_removed(tensor_model):
    name = _block_names(tensor_model)[0]
    module = tensor_model.get_submodule(name)
    hooks_before = (dict(module._forward_hooks), dict(module._forward_pre_hooks))  # transformers adds its own
    with torch.no_grad(), record(tensor_model, [name]) as seen, record(tensor_model, [name], "input"):
        tensor_model(input_ids=IDS[:1])
        tensor_model(input_ids=IDS)
    assert seen[name].shape[0] == 2
    assert (dict(module._forward_hooks), dict(module._forward_pre_hooks)) == hooks_before
    with pytest.raises(ValueError, match="'input' or 'output'"), record(tensor_model, [name], "weights"):  # type: ignore[arg-type]
        pass


class _TupleModule(nn.Module):
    """Returns (hidden, extra) like older transformers blocks; may be called by keyword only."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, str]:
        return self.proj(hidden_states), "extra"


class _Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _TupleModule()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
        return self.inner(hidden_states=x)


def test_synthetic_tuple_module_record_edit_and_add():
    torch.manual_seed(0)
    wrapper = _Wrapper()
    x = torch.randn(2, 3, 4)
    with torch.no_grad():
        plain, extra = wrapper(x)
        with record(wrapper, ["inner"], "input") as seen_in, record(wrapper, ["inner"], "output") as seen_out:
            wrapper(x)
        torch.testing.assert_close(seen_in["inner"], x)  # keyword-only call
        torch.testing.assert_close(seen_out["inner"], plain)
        with edit_output(wrapper.inner, lambda h: h * 2):
            doubled, extra2 = wrapper(x)
        torch.testing.assert_close(doubled, plain * 2)
        assert extra2 == extra == "extra"
        vec = torch.arange(4.0)
        with add_at_positions(wrapper.inner, vec, torch.tensor([0, 2])):
            added, extra3 = wrapper(x)
    expected = plain.clone()
    expected[0, 0] += vec
    expected[1, 2] += vec
    torch.testing.assert_close(added, expected)
    assert extra3 == "extra"


def test_hidden_of_and_replace_hidden():
    h, other = torch.ones(2), torch.zeros(1)
    assert hidden_of((h, other)) is h and hidden_of(h) is h
    new = torch.full((2,), 3.0)
    replaced = replace_hidden((h, other), new)
    assert isinstance(replaced, tuple) and replaced[0] is new and replaced[1] is other
    assert replace_hidden(h, new) is new


def test_add_at_positions_changes_only_chosen_positions_downstream(model):
    names = _block_names(model)
    layer = 1
    vectors = torch.randn(2, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([2, 4])
    with torch.no_grad():
        with record(model, names) as clean:
            clean_logits = model(input_ids=IDS).logits
        with add_at_positions(block(model, layer), vectors, positions), record(model, names) as edited:
            edited_logits = model(input_ids=IDS).logits
    # At the block itself: exactly the vector, exactly at the position.
    expected = clean[names[layer]].clone()
    expected[0, 2] += vectors[0]
    expected[1, 4] += vectors[1]
    torch.testing.assert_close(edited[names[layer]], expected)
    # Causal attention: tokens before the position are untouched in every later block and in the logits;
    # the position itself and the tokens after it change.
    for row, pos in enumerate(positions.tolist()):
        for name in names[layer + 1 :]:
            torch.testing.assert_close(edited[name][row, :pos], clean[name][row, :pos])
        torch.testing.assert_close(edited_logits[row, :pos], clean_logits[row, :pos])
        assert not torch.allclose(edited_logits[row, pos:], clean_logits[row, pos:])
    # Blocks below are untouched.
    torch.testing.assert_close(edited[names[0]], clean[names[0]])


def test_add_at_positions_broadcast_and_list_forms(tensor_model):
    module = block(tensor_model, 0)
    name = _block_names(tensor_model)[0]
    d = tensor_model.config.hidden_size
    vec = torch.randn(d)
    per_row = torch.randn(2, d)
    with torch.no_grad():
        with record(tensor_model, [name]) as clean:
            tensor_model(input_ids=IDS)
        with add_at_positions(module, vec, torch.tensor([1, 1])), record(tensor_model, [name]) as broadcast:
            tensor_model(input_ids=IDS)
        with add_at_positions(module, per_row, [[0, 3], [5]]), record(tensor_model, [name]) as listed:
            tensor_model(input_ids=IDS)
    base = clean[name]
    expected = base.clone()
    expected[:, 1] += vec
    torch.testing.assert_close(broadcast[name], expected)
    expected = base.clone()
    expected[0, 0] += per_row[0]
    expected[0, 3] += per_row[0]
    expected[1, 5] += per_row[1]
    torch.testing.assert_close(listed[name], expected)
    with pytest.raises(ValueError, match="do not fit"), add_at_positions(module, torch.randn(3, d), [1, 2]):
        tensor_model(input_ids=IDS)
    with (
        pytest.raises(ValueError, match="positions for 1 rows but the batch has 2"),
        add_at_positions(module, per_row, [[1]]),
    ):
        tensor_model(input_ids=IDS)


def test_add_at_positions_gradients_flow_to_vectors(model):
    delta = torch.zeros(2, model.config.hidden_size, requires_grad=True)
    target = torch.tensor([7, 11])
    with add_at_positions(block(model, 1), delta, torch.tensor([3, 5])):
        logits = model(input_ids=IDS).logits
    loss = nn.functional.cross_entropy(logits[:, -1], target)
    loss.backward()
    assert delta.grad is not None
    assert delta.grad.abs().sum(dim=1).gt(0).all()  # each row's vector gets its own gradient
    # The gradient matches a finite difference along it.
    direction = delta.grad / delta.grad.norm()
    eps = 1e-3
    with torch.no_grad():
        losses = []
        for sign in (1, -1):
            with add_at_positions(block(model, 1), sign * eps * direction, torch.tensor([3, 5])):
                losses.append(nn.functional.cross_entropy(model(input_ids=IDS).logits[:, -1], target))
    assert float((losses[0] - losses[1]) / (2 * eps)) == pytest.approx(float(delta.grad.norm()), rel=2e-2)


def test_run_until_stops_after_the_module(model):
    names = _block_names(model)
    fired: list[int] = []
    handles = [block(model, i).register_forward_hook(lambda *_a, i=i: fired.append(i)) for i in range(len(names))]
    head_calls: list[int] = []
    handles.append(model.get_output_embeddings().register_forward_hook(lambda *_a: head_calls.append(1)))
    try:
        with torch.no_grad(), record(model, names[:2]) as seen:
            run_until(model, block(model, 1), input_ids=IDS)
            reference = model(input_ids=IDS, output_hidden_states=True).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    assert fired[:2] == [0, 1]
    assert fired[2:] == list(range(len(names)))  # only the full reference pass ran blocks 2 and 3
    assert head_calls == [1]
    torch.testing.assert_close(seen[names[1]], reference[2])


def test_stop_after_raises_stop_forward_and_cleans_up(tensor_model):
    module = block(tensor_model, 0)
    hooks_before = dict(module._forward_hooks)
    with pytest.raises(StopForward), stop_after(module), torch.no_grad():
        tensor_model(input_ids=IDS)
    assert dict(module._forward_hooks) == hooks_before
    with torch.no_grad():
        tensor_model(input_ids=IDS)  # runs to the end again
