"""The edit loss of gradient-based editors (FT-L §11, MEND §10): teacher-forced NLL of a target after its prompt.

Prompts keep the tokenizer's special tokens (BOS where it adds one) and targets are tokenised with a leading space,
as everywhere else (§8). Sequences are right-padded; labels are -100 except at the target tokens' positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from editdecay.editing.subject import encode, pad_right, target_ids
from editdecay.models import pad_id_of


@dataclass(frozen=True)
class TargetBatch:
    """Prompt + target token sequences: input_ids / attention_mask (n, T) and labels (n, T), -100 off target."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> TargetBatch:
        return TargetBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


def target_batch(tokenizer, prompts: Sequence[str], targets: Sequence[str]) -> TargetBatch:
    """The batch that scores `targets[i]` after `prompts[i]`."""
    if len(prompts) != len(targets) or not prompts:
        raise ValueError(
            f"target_batch needs as many prompts as targets (at least one), got {len(prompts)}, {len(targets)}."
        )
    sequences, spans = [], []
    for prompt, target in zip(prompts, targets, strict=True):
        head, tail = encode(tokenizer, prompt), target_ids(tokenizer, target)
        sequences.append(head + tail)
        spans.append((len(head), len(head) + len(tail)))
    ids, mask = pad_right(sequences, pad_id_of(tokenizer))
    labels = torch.full_like(ids, -100)
    for row, (start, end) in enumerate(spans):
        labels[row, start:end] = ids[row, start:end]
    return TargetBatch(ids, mask, labels)


def target_nll(logits: torch.Tensor, batch: TargetBatch) -> torch.Tensor:
    """Mean NLL per target token, one value per sequence (n,): logits at position t predict token t + 1."""
    shifted = logits[:, :-1].float()
    labels = batch.labels[:, 1:]
    losses = F.cross_entropy(shifted.transpose(1, 2), labels.clamp_min(0), reduction="none")
    on_target = (labels != -100).float()
    return (losses * on_target).sum(1) / on_target.sum(1)


def model_logits(model: nn.Module, batch: TargetBatch) -> torch.Tensor:
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
