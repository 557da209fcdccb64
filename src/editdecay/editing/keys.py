"""Keys k (inputs of the MLP output projection at the subject's last token) and current block-L_z
outputs, read from the model as it is now (ALGORITHMS §1.4-1.5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from editdecay.data import EditRequest
from editdecay.editing.subject import prompt_tokens
from editdecay.models import arch_for, block, mlp_out
from editdecay.models.hooks import record, run_until

SEQUENCES_PER_FORWARD = 256


@dataclass
class KeysAndOutputs:
    keys: dict[int, torch.Tensor]  # layer -> (n, m): 0.5 * bare-prompt key + 0.5 * mean of prefixed keys
    z_current: torch.Tensor | None  # (n, d): block L_z output on the bare prompts, if asked for
    values: dict[int, torch.Tensor]  # layer -> (n, d): output projection outputs on the bare prompts


def compute_keys(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    contexts: Sequence[str],
    layers: Sequence[int],
    *,
    z_layer: int | None = None,
    values_at: Sequence[int] = (),
) -> KeysAndOutputs:
    """Averaged keys at each layer (and block-L_z outputs) in one forward pass per chunk of prompts.
    With no layers, only the block-L_z outputs are read (on the bare prompts only). `values_at` layers
    (a subset of `layers`) also report their output projection's output.

    Keys are grouped like the reference: the bare "{}" context is one group, the sampled prefixes another;
    each group is averaged, then the two group means (ALGORITHMS §1.4).
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
    with torch.no_grad():
        for length, members in sorted(by_length.items()):
            for first in range(0, len(members), SEQUENCES_PER_FORWARD):
                part = members[first: first + SEQUENCES_PER_FORWARD]
                input_ids = torch.tensor([sequences[i] for i in part], dtype=torch.long, device=device)
                with record(model, list(key_names.values()), "input") as inputs, \
                        record(model, read, "output") as outs:
                    run_until(model, last, input_ids=input_ids, use_cache=False)
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
    return KeysAndOutputs(averaged, z_current, bare_values)


def _upcast(vector: torch.Tensor) -> torch.Tensor:
    """float32 (float64 for float64 models), on the CPU."""
    return vector.to("cpu", torch.promote_types(vector.dtype, torch.float32))
