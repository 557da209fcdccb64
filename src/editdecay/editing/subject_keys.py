"""Keys k (inputs of the MLP output projection at the subject's last token) and current block-L_z
outputs, read from the model as it is now (docs/algorithms.md §1.4-1.5)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from editdecay.data import EditRequest
from editdecay.editing.subject import prompt_tokens
from editdecay.models import arch_for, block, mlp_out
from editdecay.models.hooks import hidden_of, record, replay_block_output, run_until

SEQUENCES_PER_FORWARD = 256


@dataclass
class BlockInputs:
    """The inputs of block `layer` in every forward chunk of one `compute_keys` call. A later call on the
    same prompts can start there (`resume`) while the blocks below `layer` are unchanged."""

    layer: int
    template: torch.Tensor | tuple  # a raw output of block layer - 1 (for its format)
    hidden: list[torch.Tensor]  # per chunk: (sequences, length, d)


@dataclass
class KeysAndOutputs:
    keys: dict[int, torch.Tensor]  # layer -> (n, m): 0.5 * bare-prompt key + 0.5 * mean of prefixed keys
    z_current: torch.Tensor | None  # (n, d): block L_z output on the bare prompts, if asked for
    values: dict[int, torch.Tensor]  # layer -> (n, d): output projection outputs on the bare prompts
    inputs: BlockInputs | None = None  # with `keep_inputs_of`: that block's inputs


def compute_keys(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    contexts: Sequence[str],
    layers: Sequence[int],
    *,
    z_layer: int | None = None,
    values_at: Sequence[int] = (),
    resume: BlockInputs | None = None,
    keep_inputs_of: int | None = None,
) -> KeysAndOutputs:
    """Averaged keys at each layer (and block-L_z outputs) in one forward pass per chunk of prompts.
    With no layers, only the block-L_z outputs are read (on the bare prompts only). `values_at` layers
    (a subset of `layers`) also report their output projection's output. `resume` (inputs kept by an
    earlier call with the same requests and contexts) starts each pass at that block instead of the
    embedding; `keep_inputs_of` (a block >= 1) returns that block's inputs for a later call.

    Keys are grouped like the reference: the bare "{}" context is one group, the sampled prefixes another;
    each group is averaged, then the two group means (docs/algorithms.md §1.4).
    """
    arch = arch_for(model)
    device = next(model.parameters()).device
    key_names = {layer: arch.mlp_out_path(layer) for layer in layers}
    block_name = arch.block_path(z_layer) if z_layer is not None else None
    if z_layer is not None and (not layers or z_layer >= max(layers)):
        last = block(model, z_layer)
    else:
        last = mlp_out(model, max(layers))
    if not layers:
        contexts = contexts[:1]
    # Keys and outputs are read at the subject's last token: later tokens cannot affect them (causal), so
    # each prompt is cut there, and prompts of equal length run together (no padding).
    prompts = [prompt_tokens(tokenizer, context, request) for request in requests for context in contexts]
    sequences = [p.ids[: p.subject_index + 1] for p in prompts]
    n, c = len(requests), len(contexts)
    keys: dict[int, list[torch.Tensor | None]] = {layer: [None] * len(sequences) for layer in layers}
    outputs: list[torch.Tensor | None] = [None] * len(sequences)
    value_names = {layer: key_names[layer] for layer in values_at}
    values: dict[int, list[torch.Tensor | None]] = {layer: [None] * len(sequences) for layer in values_at}
    read = ([block_name] if block_name else []) + list(value_names.values())
    by_length: dict[int, list[int]] = {}
    for index, seq in enumerate(sequences):
        by_length.setdefault(len(seq), []).append(index)
    chunks = [
        (length, members[first : first + SEQUENCES_PER_FORWARD])
        for length, members in sorted(by_length.items())
        for first in range(0, len(members), SEQUENCES_PER_FORWARD)
    ]
    _check_resume(resume, keep_inputs_of, [*layers, *([z_layer] if z_layer is not None else [])], len(chunks))
    kept: list[torch.Tensor] = []
    raw: dict[str, torch.Tensor | tuple] = {}
    with torch.no_grad():
        for index, (length, part) in enumerate(chunks):
            input_ids = torch.tensor([sequences[i] for i in part], dtype=torch.long, device=device)
            with ExitStack() as stack:
                if resume is not None:
                    stack.enter_context(
                        replay_block_output(model, resume.layer - 1, resume.template, resume.hidden[index])
                    )
                if keep_inputs_of is not None:
                    handle = block(model, keep_inputs_of - 1).register_forward_hook(
                        lambda _m, _a, output: raw.update(out=output)
                    )
                    stack.callback(handle.remove)
                inputs = stack.enter_context(record(model, list(key_names.values()), "input"))
                outs = stack.enter_context(record(model, read, "output"))
                run_until(model, last, input_ids=input_ids, use_cache=False)
            if keep_inputs_of is not None:
                kept.append(hidden_of(raw["out"]))
            for layer, name in key_names.items():
                for row, i in enumerate(part):
                    keys[layer][i] = _upcast(inputs[name][row, length - 1])
            for row, i in enumerate(part):
                if block_name:
                    outputs[i] = _upcast(outs[block_name][row, length - 1])
                for layer, name in value_names.items():
                    values[layer][i] = _upcast(outs[name][row, length - 1])
    averaged = {}
    for layer in layers:
        per_prompt = torch.stack(keys[layer]).view(n, c, -1)  # type: ignore[arg-type]
        bare = per_prompt[:, 0]
        averaged[layer] = 0.5 * bare + 0.5 * per_prompt[:, 1:].mean(dim=1) if c > 1 else bare
    z_current = torch.stack(outputs).view(n, c, -1)[:, 0] if block_name else None  # type: ignore[arg-type]
    bare_values = {layer: torch.stack(v).view(n, c, -1)[:, 0] for layer, v in values.items()}  # type: ignore[arg-type]
    block_inputs = BlockInputs(keep_inputs_of, raw["out"], kept) if keep_inputs_of is not None else None
    return KeysAndOutputs(averaged, z_current, bare_values, block_inputs)


def _check_resume(resume: BlockInputs | None, keep_inputs_of: int | None, read_at: list[int], chunks: int) -> None:
    if resume is not None and len(resume.hidden) != chunks:
        raise ValueError("compute_keys(resume=...) needs the inputs kept for the same requests and contexts.")
    if resume is not None and min(read_at) < resume.layer:
        raise ValueError(f"Cannot read layer {min(read_at)} when resuming at block {resume.layer}.")
    lowest = max(resume.layer if resume is not None else 0, 1)
    if keep_inputs_of is not None and not lowest <= keep_inputs_of <= max(read_at):
        raise ValueError(f"keep_inputs_of={keep_inputs_of}: choose a block in {lowest}..{max(read_at)}.")


def _upcast(vector: torch.Tensor) -> torch.Tensor:
    """float32 (float64 for float64 models), on the CPU."""
    return vector.to("cpu", torch.promote_types(vector.dtype, torch.float32))
