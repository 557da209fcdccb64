"""Decay metrics across the model groups M, Med, Mft, Med_ft (docs/algorithms.md §4).

Inputs are `edit_metrics` tables (one row per edit) keyed by group. ES / PS / NS are in percent; ratios
(EFR, reverse flip ratio, decrease rate, forget ratio) are fractions in [0, 1] with their counts beside
them. The same functions serve the control set of unedited known facts: `control_summary` tracks whether
each fact is still known (`knows_true`) through editing and fine-tuning, so edit decay can be compared with
general forgetting; `decay_summary` on control tables also reports that under "knowledge".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from editdecay.evaluation.edit_metrics import PER_EDIT_METRICS

GROUPS = ("M", "Med", "Mft", "Med_ft")
TRANSITIONS = (("M", "Med"), ("M", "Mft"), ("Med", "Med_ft"), ("Mft", "Med_ft"))
OUTCOMES = ("stable", "erased", "emergent", "impossible")

DECAY_DEFINITIONS = {
    "delta_es_pp": "ES(Med) - ES(Med_ft) in percentage points, on the edits present in both groups",
    "decrease_rate": "(ES(Med) - ES(Med_ft)) / ES(Med), a fraction",
    "efr": "Edit Flip Ratio Pr(s^Med_ft = 0 | s^Med = 1) = flips / successes_after_edit, a fraction",
    "reverse_flip_ratio": "Pr(s^Med_ft = 1 | s^Med = 0) = reverse_flips / failures_after_edit (emergent edits)",
    "outcomes": "stable: success in Med and Med_ft; erased: success then failure; emergent: failure then success; "
    "impossible: failure in both. Erased edits went back to the 'original' answer (M's greedy answer, "
    "or target_true when M is not given) or to a 'third' answer",
    "knowledge": "Per transition A->B: forget_ratio = Pr(knows_true in B = 0 | knows_true in A = 1), with counts",
    "generation": "The same ΔES, EFR, reverse flips and outcome classes for the generation-based family "
    "(indicator gen_success, ES gen_es; docs/algorithms.md §12)",
}


def _indexed(per_edit: pd.DataFrame, group: str) -> pd.DataFrame:
    if per_edit["case_id"].duplicated().any():
        raise ValueError(f"Group {group}: duplicate case_ids; pass one edit_metrics table per group.")
    return per_edit.set_index("case_id")


def _pct(values: pd.Series) -> float | None:
    values = values.astype(float)
    return None if values.isna().all() else float(100 * values.mean())


def _ratio(count: int, base: int) -> float | None:
    return count / base if base else None


def flip_counts(before: pd.Series, after: pd.Series) -> dict[str, Any]:
    """Counts and ratios of 1 -> 0 and 0 -> 1 changes of a {0, 1} indicator, aligned on the index."""
    before, after = before.align(after, join="inner")
    b, a = before.astype(bool).to_numpy(), after.astype(bool).to_numpy()
    flips, successes = int((b & ~a).sum()), int(b.sum())
    reverse, failures = int((~b & a).sum()), int((~b).sum())
    return {
        "flips": flips,
        "successes_before": successes,
        "flip_ratio": _ratio(flips, successes),
        "reverse_flips": reverse,
        "failures_before": failures,
        "reverse_flip_ratio": _ratio(reverse, failures),
        "n": len(b),
    }


def _group_means(table: pd.DataFrame) -> dict[str, Any]:
    means: dict[str, Any] = {"n": len(table)}
    for name in (*PER_EDIT_METRICS, "ns_agreement"):
        if name in table.columns:
            means[name] = _pct(table[name])
    return means


def decay_summary(per_edit: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """ES/PS/NS per group, ΔES, decrease rate, EFR and reverse flips with counts, outcome-class counts, and
    knowledge retention per transition. Works with any subset of the groups (missing parts are omitted)."""
    unknown = sorted(set(per_edit) - set(GROUPS))
    if unknown:
        raise ValueError(f"Unknown model groups {unknown}; expected keys among {GROUPS}.")
    tables = {g: _indexed(t, g) for g, t in per_edit.items()}
    summary: dict[str, Any] = {"groups": {g: _group_means(t) for g, t in tables.items()}}
    if "Med" in tables and "Med_ft" in tables:
        med, med_ft = tables["Med"].align(tables["Med_ft"], join="inner", axis=0)
        es_before, es_after = _pct(med["es"]), _pct(med_ft["es"])
        summary["n_paired"] = len(med)
        for name in ("es", "ps", "ns"):
            before, after = _pct(med[name]), _pct(med_ft[name])
            summary[f"delta_{name}_pp"] = None if before is None or after is None else before - after
        summary["decrease_rate"] = None if not es_before or es_after is None else (es_before - es_after) / es_before
        flips = flip_counts(med["success"], med_ft["success"])
        summary.update(_flip_fields(flips))
        classes = outcome_classes(per_edit["Med"], per_edit["Med_ft"], per_edit.get("M"))
        summary["outcomes"] = _outcome_counts(classes)
        if "gen_success" in med.columns:
            summary["generation"] = _generation_decay(per_edit, med, med_ft)
    summary["knowledge"] = _knowledge(tables)
    summary["metric_definitions"] = DECAY_DEFINITIONS
    return summary


def _flip_fields(flips: dict[str, Any]) -> dict[str, Any]:
    """`flip_counts` of Med -> Med_ft under the names of the decay summary."""
    return {
        "efr": flips["flip_ratio"],
        "flips": flips["flips"],
        "successes_after_edit": flips["successes_before"],
        "reverse_flip_ratio": flips["reverse_flip_ratio"],
        "reverse_flips": flips["reverse_flips"],
        "failures_after_edit": flips["failures_before"],
    }


def _generation_decay(per_edit: Mapping[str, pd.DataFrame], med: pd.DataFrame, med_ft: pd.DataFrame) -> dict[str, Any]:
    """Decay of the generation family (§12) on the edits paired between Med and Med_ft."""
    before, after = _pct(med["gen_es"]), _pct(med_ft["gen_es"])
    flips = flip_counts(med["gen_success"], med_ft["gen_success"])
    classes = outcome_classes(per_edit["Med"], per_edit["Med_ft"], per_edit.get("M"), indicator="gen_success")
    return {
        "delta_es_pp": None if before is None or after is None else before - after,
        **_flip_fields(flips),
        "outcomes": {name: int((classes["outcome"] == name).sum()) for name in OUTCOMES},
    }


def _outcome_counts(classes: pd.DataFrame) -> dict[str, Any]:
    counts: dict[str, Any] = {name: int((classes["outcome"] == name).sum()) for name in OUTCOMES}
    erased = classes[classes["outcome"] == "erased"]
    counts["erased_to_original"] = int((erased["erased_to"] == "original").sum())
    counts["erased_to_third"] = int((erased["erased_to"] == "third").sum())
    third = Counter(erased.loc[erased["erased_to"] == "third", "answer_Med_ft"].map(_normalize))
    counts["top_third_answers"] = [[answer, n] for answer, n in third.most_common(5)]
    return counts


def _knowledge(tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    knowledge: dict[str, Any] = {"known": {g: _pct(t["knows_true"]) for g, t in tables.items()}}
    for a, b in TRANSITIONS:
        if a in tables and b in tables:
            flips = flip_counts(tables[a]["knows_true"], tables[b]["knows_true"])
            known_a, known_b = knowledge["known"][a], knowledge["known"][b]
            knowledge[f"{a}->{b}"] = {
                "forgotten": flips["flips"],
                "known_before": flips["successes_before"],
                "forget_ratio": flips["flip_ratio"],
                "learned": flips["reverse_flips"],
                "unknown_before": flips["failures_before"],
                "learn_ratio": flips["reverse_flip_ratio"],
                "delta_known_pp": None if known_a is None or known_b is None else known_a - known_b,
            }
    return knowledge


def control_summary(per_edit: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """General forgetting on unedited control facts: share still known per group and, per transition
    (M->Med, M->Mft, Med->Med_ft, Mft->Med_ft), how many known facts were forgotten (and learned)."""
    unknown = sorted(set(per_edit) - set(GROUPS))
    if unknown:
        raise ValueError(f"Unknown model groups {unknown}; expected keys among {GROUPS}.")
    tables = {g: _indexed(t, g) for g, t in per_edit.items()}
    summary = _knowledge(tables)
    summary["n"] = {g: len(t) for g, t in tables.items()}
    summary["metric_definitions"] = {"knowledge": DECAY_DEFINITIONS["knowledge"]}
    return summary


def _normalize(answer: object) -> str:
    return " ".join(str(answer).split()).casefold() if isinstance(answer, str) else ""


def outcome_classes(
    per_edit_med: pd.DataFrame,
    per_edit_med_ft: pd.DataFrame,
    per_edit_m: pd.DataFrame | None = None,
    *,
    indicator: str = "success",
) -> pd.DataFrame:
    """Per edit: outcome (stable / erased / emergent / impossible) from the `indicator` (success: the
    probability family; gen_success: the generation family) in Med and Med_ft, the greedy answers of each group,
    and for erased edits whether Med_ft returned to the original answer (M's greedy answer; target_true when M is
    not given) or drifted to a third answer."""
    med = _indexed(per_edit_med, "Med")
    med_ft = _indexed(per_edit_med_ft, "Med_ft")
    order = [c for c in pd.unique(per_edit_med["case_id"]) if c in med_ft.index]
    before = med.loc[order, indicator].astype(bool).to_numpy()
    after = med_ft.loc[order, indicator].astype(bool).to_numpy()
    outcome = np.select([before & after, before & ~after, ~before & after], list(OUTCOMES[:3]), OUTCOMES[3])
    out = pd.DataFrame(
        {
            "case_id": order,
            "outcome": outcome,
            "success_Med": before,
            "success_Med_ft": after,
            "answer_Med": med.loc[order, "answer"].to_numpy(),
            "answer_Med_ft": med_ft.loc[order, "answer"].to_numpy(),
        }
    )
    if per_edit_m is not None:
        m = _indexed(per_edit_m, "M")
        out["answer_M"] = m["answer"].reindex(order).to_numpy()
        reference = out["answer_M"].map(_normalize)
        reverted = out["answer_Med_ft"].map(_normalize) == reference
        out["reference"] = "M"
    else:
        out["answer_M"] = None
        truth = med.loc[order, "target_true"].map(_normalize).to_numpy()
        post = out["answer_Med_ft"].map(_normalize).to_numpy()
        reverted = pd.Series([bool(t) and p.startswith(t) for p, t in zip(post, truth, strict=True)])
        # numpy's stubs reject None as a value of np.where (at run time: an object array, as meant).
        out["reference"] = np.where(truth != "", "target_true", None)  # type: ignore[call-overload]
    erased = out["outcome"] == "erased"
    erased_to = np.where(reverted.to_numpy(), "original", "third")
    out["erased_to"] = np.where(erased, erased_to, None)  # type: ignore[call-overload]  # numpy stubs reject None
    if per_edit_m is None:
        out.loc[erased & out["reference"].isna(), "erased_to"] = None
    out["third_answer"] = np.where(out["erased_to"] == "third", out["answer_Med_ft"], None)
    return out
