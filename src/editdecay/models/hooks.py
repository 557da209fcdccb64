"""Read module inputs/outputs and add vectors to block outputs, for blocks returning tensors or tuples."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from typing import Literal

import torch
from torch import nn

from editdecay.models.arch import block

Positions = torch.Tensor | Sequence[int] | Sequence[Sequence[int]]


class StopForward(Exception):
    """Raised by `stop_after` to end a forward pass once the needed modules have run."""


def hidden_of(output: torch.Tensor | tuple) -> torch.Tensor:
    """The hidden-state tensor of a module output (blocks may return a tuple whose first item it is)."""
    return output[0] if isinstance(output, tuple) else output


def replace_hidden(output: torch.Tensor | tuple, hidden: torch.Tensor) -> torch.Tensor | tuple:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def gather_positions(hidden: torch.Tensor, positions: Positions) -> torch.Tensor:
    """Pick token vectors from (batch, seq, dim).

    `positions` is one index per row (-> (batch, dim)) or a list of indices per row
    (-> (total indices, dim), rows concatenated in order).
    """
    if isinstance(positions, torch.Tensor):
        index = positions.to(hidden.device)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    rows, cols = _flatten(positions, hidden.shape[0])
    return hidden[rows.to(hidden.device), cols.to(hidden.device)]


def _flatten(positions: Sequence[int] | Sequence[Sequence[int]], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    if len(positions) != batch:
        raise ValueError(f"Got positions for {len(positions)} rows but the batch has {batch}.")
    rows: list[int] = []
    cols: list[int] = []
    entries: Sequence[int | Sequence[int]] = positions
    for row, item in enumerate(entries):
        items = [item] if isinstance(item, int) else list(item)
        rows.extend([row] * len(items))
        cols.extend(items)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


@contextmanager
def record(
    model: nn.Module, module_names: Sequence[str], what: Literal["input", "output"] = "output"
) -> Iterator[dict[str, torch.Tensor]]:
    """Record each named module's first input or its hidden output for the forward passes run inside.

    The dict is filled on each forward (last call wins): `{name: (batch, seq, dim)}`. The input is the
    first positional argument, or the `hidden_states` keyword when the module is called by keywords only.
    """
    if what not in ("input", "output"):
        raise ValueError(f"record(..., what={what!r}): choose 'input' or 'output'.")
    recorded: dict[str, torch.Tensor] = {}
    handles = []
    for name in module_names:
        module = model.get_submodule(name)
        if what == "input":

            def pre_hook(_mod: nn.Module, args: tuple, kwargs: dict, _name: str = name) -> None:
                recorded[_name] = args[0] if args else kwargs["hidden_states"]

            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:

            def hook(_mod: nn.Module, _args: tuple, output: torch.Tensor | tuple, _name: str = name) -> None:
                recorded[_name] = hidden_of(output)

            handles.append(module.register_forward_hook(hook))
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def edit_output(module: nn.Module, edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace a module's hidden output h by edit(h) while inside the context."""

    def hook(_mod: nn.Module, _args: tuple, output: torch.Tensor | tuple) -> torch.Tensor | tuple:
        return replace_hidden(output, edit(hidden_of(output)))

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def add_at_positions(module: nn.Module, vectors: torch.Tensor, positions: Positions) -> Iterator[None]:
    """Add vectors to a block's output at token positions.

    With one position per row, `vectors` is (batch, dim) or (dim,) (broadcast to every row). With a list
    of positions per row, `vectors` is (batch, dim): row i's vector is added at each of row i's positions.
    Autograd flows into `vectors`.
    """

    def add(hidden: torch.Tensor) -> torch.Tensor:
        batch = hidden.shape[0]
        vecs = vectors.expand(batch, -1) if vectors.dim() == 1 else vectors
        if vecs.shape != (batch, hidden.shape[-1]):
            raise ValueError(
                f"add_at_positions: vectors of shape {tuple(vectors.shape)} do not fit hidden states "
                f"of shape {tuple(hidden.shape)}; pass (dim,) or (batch, dim)."
            )
        if isinstance(positions, torch.Tensor):
            rows, cols = torch.arange(batch), positions.cpu()
            row_vectors = vecs
        else:
            rows, cols = _flatten(positions, batch)
            row_vectors = vecs[rows.to(vecs.device)]
        delta = torch.zeros_like(hidden)
        delta = delta.index_put(
            (rows.to(hidden.device), cols.to(hidden.device)), row_vectors.to(hidden.dtype), accumulate=True
        )
        return hidden + delta

    with edit_output(module, add):
        yield


@contextmanager
def stop_after(module: nn.Module) -> Iterator[None]:
    """Raise StopForward once `module` has run; wrap the forward call in `run_until`."""

    def hook(_mod: nn.Module, _args: tuple, _output: object) -> None:
        raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def run_until(model: nn.Module, last_module: nn.Module, **inputs: object) -> None:
    """Run a forward pass that ends right after `last_module` (saves the blocks above it)."""
    with stop_after(last_module), suppress(StopForward):
        model(**inputs)


@contextmanager
def replay_block_output(
    model: nn.Module, layer: int, template: torch.Tensor | tuple, hidden: torch.Tensor
) -> Iterator[None]:
    """While inside, blocks 0..layer-1 pass their input through and block `layer` returns `hidden`
    (formatted like its recorded raw output `template`): a forward pass then computes only the embedding
    and the blocks after `layer`, from a cached output of block `layer`."""

    def passthrough(*args: object, **kwargs: object) -> object:
        return replace_hidden(template, args[0] if args else kwargs["hidden_states"])  # type: ignore[arg-type]

    def replay(*_args: object, **_kwargs: object) -> object:
        return replace_hidden(template, hidden)

    with ExitStack() as stack:
        for i in range(layer):
            stack.enter_context(_forward_replaced(block(model, i), passthrough))
        stack.enter_context(_forward_replaced(block(model, layer), replay))
        yield


@contextmanager
def _forward_replaced(module: nn.Module, forward: Callable[..., object]) -> Iterator[None]:
    module.forward = forward  # an instance attribute shadows the class method
    try:
        yield
    finally:
        del module.forward
