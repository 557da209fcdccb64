"""Text sampled from the model being measured: the `model-sampled` statistics corpus (data/stats_text.py)."""

from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from editdecay.data.stats_text import SAMPLING_BATCH
from editdecay.models import eos_ids_of
from editdecay.models.kvcache import cache_kwargs, output_cache

log = logging.getLogger(__name__)


def sample_sequences(
    model: nn.Module, tokenizer, n_tokens: int, *, length: int, seed: int, batch_size: int = SAMPLING_BATCH
) -> list[torch.Tensor]:
    """Sample ceil(n_tokens / length) sequences of `length` tokens from the model (pure sampling at
    temperature 1, fixed seed, start token included, end-of-sequence tokens suppressed so every sequence
    has full length). A plain KV-cache loop: one forward per new token for the whole batch."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ValueError("model-sampled corpus: the tokenizer has neither a BOS nor an EOS token to start from.")
    n_sequences = -(-n_tokens // length)
    log.info(
        "Statistics corpus: sampling %d sequences x %d tokens from the model itself (seed %d)",
        n_sequences,
        length,
        seed,
    )
    device = next(model.parameters()).device
    banned = torch.tensor(sorted(eos_ids_of(tokenizer, model)), dtype=torch.long, device=device)
    sequences: list[torch.Tensor] = []
    with torch.no_grad(), tqdm(total=n_sequences * length, desc="sampling corpus", unit="tok", unit_scale=True) as bar:
        for first in range(0, n_sequences, batch_size):
            rows = min(batch_size, n_sequences - first)
            # Each batch has its own generator, so its text does not depend on what ran before it.
            generator = torch.Generator(device=device).manual_seed(seed + first)
            ids = torch.full((rows, 1), start, dtype=torch.long, device=device)
            out = model(input_ids=ids, use_cache=True)
            bar.update(rows)
            for _ in range(length - 1):
                logits = out.logits[:, -1].float()
                logits[:, banned] = float("-inf")
                token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
                ids = torch.cat([ids, token], dim=1)
                out = model(input_ids=token, **cache_kwargs(output_cache(out)), use_cache=True)
                bar.update(rows)
            sequences.extend(ids.cpu())
    return sequences
