"""Grouping sequences of different lengths into padded batches."""

from __future__ import annotations

from collections.abc import Sequence


def padded_groups(lengths: Sequence[int], *, overhead: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices of `lengths`, grouped into batches that minimise padded tokens + `overhead` per batch.

    A batch is padded to its longest member, so each batch is a run of the lengths in sorted order; a
    dynamic programme over the sorted lengths finds the best runs (at most `max_rows` long). `overhead` is
    what one more forward costs, in tokens. Batches come longest first, members longest first.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    window = max_rows or len(order)
    best = [0] + [float("inf")] * len(order)  # best[e]: cost of grouping the e longest
    start = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for begin in range(max(0, end - window), end):
            cost = best[begin] + (end - begin) * lengths[order[begin]] + overhead
            if cost < best[end]:
                best[end], start[end] = cost, begin
    groups = []
    end = len(order)
    while end:
        groups.append(order[start[end] : end])
        end = start[end]
    return groups[::-1]
