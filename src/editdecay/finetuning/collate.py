"""From instruction examples to padded token batches: Alpaca prompts, cutoff, label masking, length grouping."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from editdecay.data.instruction_corpus import InstructionExample, format_prompt

IGNORE_INDEX = -100
_MEGABATCH = 50  # length grouping sorts within windows of 50 batches, as Hugging Face's LengthGroupedSampler


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE_INDEX where no loss is taken

    @property
    def n_targets(self) -> int:
        """Tokens that contribute to the loss (labels shift by one: the first position predicts nothing)."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, example: InstructionExample, cutoff_len: int, train_on_inputs: bool
) -> TokenizedExample:
    """Tokenize the full Alpaca text plus EOS (when it fits), cut at `cutoff_len` tokens.

    Without `train_on_inputs`, the prompt's tokens (its length measured by tokenizing the prompt alone,
    as at generation time) get no loss.
    """
    ids = list(tokenizer(format_prompt(example, with_response=True), add_special_tokens=True).input_ids)
    eos = tokenizer.eos_token_id
    if eos is not None and len(ids) < cutoff_len and (not ids or ids[-1] != eos):
        ids.append(eos)
    ids = ids[:cutoff_len]
    labels = list(ids)
    if not train_on_inputs:
        n_prompt = len(tokenizer(format_prompt(example, with_response=False), add_special_tokens=True).input_ids)
        labels[:n_prompt] = [IGNORE_INDEX] * min(n_prompt, len(labels))
    return TokenizedExample(tuple(ids), tuple(labels))


def split_validation(
    examples: Sequence[InstructionExample], fraction: float | None, seed: int
) -> tuple[list[InstructionExample], list[InstructionExample]]:
    """(train, validation): a seeded random `fraction` (at least one example) held out, order kept."""
    if not fraction:
        return list(examples), []
    n_val = max(1, round(fraction * len(examples)))
    if n_val >= len(examples):
        raise ValueError(f"val_fraction {fraction} leaves no training examples out of {len(examples)}.")
    held = set(random.Random(seed).sample(range(len(examples)), n_val))
    return ([ex for i, ex in enumerate(examples) if i not in held], [ex for i, ex in enumerate(examples) if i in held])


def examples_fingerprint(examples: Sequence[InstructionExample]) -> str:
    """Content hash of an example list (order matters)."""
    digest = hashlib.blake2b(digest_size=16)
    for example in examples:
        digest.update(json.dumps(example.to_dict(), sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_by_length: bool
) -> list[list[int]]:
    """Micro-batches (lists of example indices) for one epoch, a pure function of (seed, epoch).

    With `group_by_length`, each window of 50 batches is sorted by length so batches need little
    padding; batch order is shuffled again so long and short batches alternate over the epoch.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if group_by_length:
        window = batch_size * _MEGABATCH
        order = [
            i
            for start in range(0, len(order), window)
            for i in sorted(order[start : start + window], key=lambda j: -lengths[j])
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (IGNORE_INDEX on padding)."""
    width = max(len(ex.input_ids) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
