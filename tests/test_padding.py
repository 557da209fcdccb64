"""Grouping sequences into padded batches: the dynamic programme's optimum on hand-made lengths."""

from __future__ import annotations

from editdecay.models.padding import padded_groups


def _shape(lengths: list[int], **kwargs: int) -> list[tuple[int, int]]:
    return [(max(lengths[i] for i in group), len(group)) for group in padded_groups(lengths, **kwargs)]


def test_groups_minimise_padded_tokens_plus_a_cost_per_group() -> None:
    lengths = [1] * 16 + [2] * 24 + [4] * 24 + [5] * 24 + [6] * 24
    # One group: 112 x 6 = 672 tokens; {4,5,6} + {1,2}: 432 + 80 = 512; each length apart: 424 + 5 costs.
    assert _shape(lengths, overhead=10_000) == [(6, 112)]
    assert _shape(lengths, overhead=64) == [(6, 72), (2, 40)]
    assert _shape(lengths, overhead=0) == [(6, 24), (5, 24), (4, 24), (2, 24), (1, 16)]


def test_groups_cover_every_index_once_longest_first_and_respect_max_rows() -> None:
    lengths = [3, 9, 1, 9, 4, 7, 2, 8]
    groups = padded_groups(lengths, overhead=2, max_rows=3)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    assert all(len(group) <= 3 for group in groups)
    flat = [lengths[i] for group in groups for i in group]
    assert flat == sorted(lengths, reverse=True)
    # Ten sequences of 20 and ninety of 5 under 32 rows: the long ones get a batch of their own.
    mixed = [20] * 10 + [5] * 90
    assert _shape(mixed, overhead=32, max_rows=32)[0] == (20, 10)
    assert padded_groups([], overhead=1) == []
