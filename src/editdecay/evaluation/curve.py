"""Decay curves: the edits and the control facts scored at checkpoints during fine-tuning (docs/algorithms.md §4.1).

`edit_curve_measure` is what the fine-tuning loop calls at each checkpoint (`finetuning.CurveProbe`): one row per
edit and per control fact, with the per-edit metrics of `edit_metrics`. `curve_summary` turns those rows into one
row per step and set: ES/PS/NS, the share still successful (edits) or still known (control facts), and the flip
ratio against the curve's first step, which is Med itself (fine-tuning starts from the edited weights).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
from torch import nn

from editdecay.data import EditRequest
from editdecay.evaluation.edit_metrics import edit_metrics
from editdecay.evaluation.edit_scoring import score_edits

CURVE_SETS = ("edits", "control")
_KEPT = ("case_id", "es", "ps", "ns", "es_magnitude", "success", "knows_true", "answer")


def edit_curve_measure(
    tokenizer: Any,
    requests: Sequence[EditRequest],
    control: Sequence[EditRequest] = (),
    *,
    batch_size: int = 32,
) -> Callable[[nn.Module], list[dict[str, Any]]]:
    """A measurement for `CurveProbe`: `edit_metrics` of the edit requests (set `edits`) and of the control facts
    (set `control`) on the model as it is, one JSON-able row per edit or fact. Control facts are scored on their
    rewrite prompt only: whether the fact is still known is all the curve uses of them (ps / ns are NaN)."""
    facts = [dataclasses.replace(fact, paraphrase_prompts=(), neighborhood=()) for fact in control]
    sets = [(name, list(items)) for name, items in zip(CURVE_SETS, (requests, facts), strict=True) if items]
    if not sets:
        raise ValueError("edit_curve_measure needs edit requests or control facts to score.")

    def measure(model: nn.Module) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for name, items in sets:
            # The probability family only: the generation family would double each checkpoint's scoring time.
            table = score_edits(model, tokenizer, items, batch_size=batch_size, progress=False, generation=False)
            per_edit = edit_metrics(table)
            rows += [{"set": name, **record} for record in per_edit[list(_KEPT)].to_dict("records")]
        return rows

    return measure


def curve_summary(curve: pd.DataFrame) -> pd.DataFrame:
    """One row per (set, step): n, es / ps / ns and `retained` in percent (edits: success; control facts: still
    known), `flip_ratio` = Pr(not retained at step | retained at the first step) with its counts, and the mean
    rewrite margin P(new) - P(true) in percentage points."""
    if curve.empty:
        raise ValueError("curve_summary got an empty curve.")
    rows = []
    for set_name, table in curve.groupby("set", sort=False):
        indicator = "success" if set_name == "edits" else "knows_true"
        first_step = table["step"].min()
        start = table[table["step"] == first_step].set_index("case_id")[indicator].astype(bool)
        for step, at_step in table.groupby("step", sort=True):
            now = at_step.set_index("case_id")[indicator].astype(bool).reindex(start.index)
            kept_before = start & now.notna()
            flips = int((kept_before & ~now.fillna(False).astype(bool)).sum())
            rows.append(
                {
                    "set": set_name,
                    "step": int(step),
                    "n": len(at_step),
                    "es": 100 * at_step["es"].astype(float).mean(),
                    "ps": 100 * at_step["ps"].astype(float).mean(),
                    "ns": 100 * at_step["ns"].astype(float).mean(),
                    "retained": 100 * at_step[indicator].astype(float).mean(),
                    "flips": flips,
                    "retained_at_start": int(kept_before.sum()),
                    "flip_ratio": flips / int(kept_before.sum()) if kept_before.any() else None,
                    "margin_pp": 100 * at_step["es_magnitude"].astype(float).mean(),
                }
            )
    return pd.DataFrame(rows)
