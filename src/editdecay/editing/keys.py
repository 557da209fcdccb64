"""Keys k (inputs of the MLP output projection at the subject's last token) and current block-L_z
outputs, read from the model as it is now (ALGORITHMS §1.4-1.5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from editdecay.data import EditRequest
from editdecay.editing.subject import pad_id, pad_right, prompt_tokens
from editdecay.models import arch_for, block, mlp_out
from editdecay.models.hooks import record, run_until

SEQUENCES_PER_FORWARD = 256


@dataclass
class KeysAndOutputs:
    keys: dict[int, torch.Tensor]  # layer -> (n, m): 0.5 * bare-prompt key + 0.5 * mean of prefixed keys
    z_current: torch.Tensor | None  # (n, d): block L_z output on the bare prompts, if asked for


def compute_keys(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    contexts: Sequence[str],
    layers: Sequence[int],
    *,
    z_layer: int | None = None,
) -> KeysAndOutputs:
    """Averaged keys at each layer (and block-L_z outputs) in one forward pass per chunk of prompts.
    With no layers, only the block-L_z outputs are read (on the bare prompts only).

    Keys are grouped like the reference: the bare "{}" context is one group, the sampled prefixes another;
    each group is averaged, then the two group means (ALGORITHMS §1.4).
    """
    arch = arch_for(model)
    device = next(model.parameters()).device
    key_names = {layer: arch.mlp_out_path(layer) for layer in layers}
    block_name = arch.block_path(z_layer) if z_layer is not None else None
    names = list(key_names.values()) + ([block_name] if block_name else [])
    if z_layer is not None and (not layers or z_layer >= max(layers)):
        last = block(model, z_layer)
    else:
        last = mlp_out(model, max(layers))
    if not layers:
        contexts = contexts[:1]
    prompts = [prompt_tokens(tokenizer, context, request) for request in requests for context in contexts]
    n, c = len(requests), len(contexts)
    keys = {layer: [] for layer in layers}
    outputs: list[torch.Tensor] = []
    pad = pad_id(tokenizer)
    with torch.no_grad():
        for first in range(0, len(prompts), SEQUENCES_PER_FORWARD):
            part = prompts[first: first + SEQUENCES_PER_FORWARD]
            input_ids, mask = pad_right([p.ids for p in part], pad)
            index = torch.tensor([p.subject_index for p in part], device=device)
            rows = torch.arange(len(part), device=device)
            with record(model, [n for n in names if n != block_name], "input") as inputs, \
                    record(model, [block_name] if block_name else [], "output") as outs:
                run_until(model, last, input_ids=input_ids.to(device), attention_mask=mask.to(device),
                          use_cache=False)
            for layer, name in key_names.items():
                keys[layer].append(inputs[name][rows, index].float().cpu())
            if block_name:
                outputs.append(outs[block_name][rows, index].float().cpu())
    averaged = {}
    for layer in layers:
        per_prompt = torch.cat(keys[layer]).view(n, c, -1)
        bare = per_prompt[:, 0]
        averaged[layer] = 0.5 * bare + 0.5 * per_prompt[:, 1:].mean(dim=1) if c > 1 else bare
    z_current = torch.cat(outputs).view(n, c, -1)[:, 0] if block_name else None
    return KeysAndOutputs(averaged, z_current)
