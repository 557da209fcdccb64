"""Special token ids every stage needs: what to pad with and which tokens end a sequence."""

from __future__ import annotations

from torch import nn


def pad_id_of(tokenizer) -> int:
    """The padding id (padded positions are masked, so any valid id works when the tokenizer has none)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def eos_ids_of(tokenizer, model: nn.Module | None = None) -> frozenset[int]:
    """Every id that ends a sequence: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif isinstance(config_eos, list):
        ids.update(int(i) for i in config_eos)
    return frozenset(ids)
