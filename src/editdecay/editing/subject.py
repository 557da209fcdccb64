"""Token positions of edit prompts: the subject's last token, and prompt + target token sequences.

Indices are computed on the token ids of the full string, with the same special-token handling the model
sees (BOS included when the tokenizer adds one), so they are right with and without BOS. Sequences are
padded on the right, so an index into a row is the same as in the unpadded sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editdecay.data import EditRequest
from editdecay.data.records import split_template


class EditInputError(ValueError):
    """An edit request cannot be edited as given; the message names the request and the fix."""


def check_request(request: EditRequest) -> None:
    """Reject requests that would silently edit the wrong thing."""
    where = f"edit request {request.case_id!r}"
    try:
        split_template(request.template)
    except ValueError as err:
        raise EditInputError(
            f"{where}: template {request.template!r} must contain exactly one '{{}}' where the subject "
            f"{request.subject!r} goes (the subject does not occur in its prompt), literal braces doubled."
        ) from err
    if not request.subject.strip():
        raise EditInputError(f"{where}: the subject is empty.")
    if not request.target_new or not request.target_new.strip():
        raise EditInputError(f"{where}: target_new is empty or whitespace; give the new object to edit in.")


def target_text(target: str) -> str:
    """Targets are tokenised with a leading space (docs/algorithms.md §1, §8)."""
    return target if target.startswith(" ") else " " + target


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt, with the tokenizer's special tokens (BOS where it adds one)."""
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def target_ids(tokenizer, target: str) -> list[int]:
    ids = list(tokenizer(target_text(target), add_special_tokens=False)["input_ids"])
    if not ids:
        raise EditInputError(f"target {target!r} tokenises to nothing.")
    return ids


def subject_last_index(tokenizer, prefix: str, subject: str, suffix: str) -> tuple[list[int], int]:
    """Token ids of prefix + subject + suffix and the index of the token holding the subject's last char.

    With a fast tokenizer the index comes from character offsets (exact even when a token straddles the
    subject's end); otherwise from the length of the tokenised prefix + subject.
    """
    text = prefix + subject + suffix
    end = len(prefix) + len(subject)
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        index = -1
        for position, (start, stop) in enumerate(encoded["offset_mapping"]):
            if stop > start and start < end:
                index = position
        if index < 0:
            raise EditInputError(f"Subject {subject!r} produced no tokens in {text!r}.")
        return ids, index
    ids = encode(tokenizer, text)
    return ids, len(encode(tokenizer, prefix + subject)) - 1


@dataclass(frozen=True)
class PromptTokens:
    """One tokenised prompt: its ids and the position of its subject's last token."""

    ids: list[int]
    subject_index: int


def prompt_tokens(tokenizer, context: str, request: EditRequest) -> PromptTokens:
    """Tokens of `context.format(request.prompt)` with the subject's last-token index."""
    head, tail = request.prompt_parts
    prefix_text, suffix_text = split_template(context)
    ids, index = subject_last_index(tokenizer, prefix_text + head, request.subject, tail + suffix_text)
    return PromptTokens(ids, index)


def essence_tokens(tokenizer, request: EditRequest) -> PromptTokens:
    """The KL prompt "{subject} is a" (docs/algorithms.md §1.3)."""
    ids, index = subject_last_index(tokenizer, "", request.subject, " is a")
    return PromptTokens(ids, index)


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), right-padded."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask
