"""Per-edit metrics from a `score_edits` table, and their summary (docs/algorithms.md §3).

Every variant keeps its own name: the probability-comparison "success" metrics (es / ps / ns), the
"magnitude" variants (probability differences), the strict "accuracy" variants (greedy output equals every
target token), the generation-based family (gen_*: the target appears in greedy text, §12) and the zsRE
agreement-with-the-pre-edit-model locality.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

_GENERATED = (
    "the greedy continuation (no teacher forcing) of max(target tokens) + 3 tokens contains {what} as a whole word, "
    "case-insensitive"
)
_GENERATION: dict[str, dict[str, str]] = {
    family: {
        "gen_es": "Generation efficacy: share of rewrite prompts where " + _GENERATED.format(what="target_new"),
        "gen_ps": "Generation paraphrase success: the same on paraphrase prompts",
        "gen_ns": (
            "Generation neighborhood success: share of neighborhood prompts where the continuation does not "
            "contain target_new (the edit did not spill over)"
            if family == "counterfact"
            else "Generation specificity: share of loc questions where " + _GENERATED.format(what="loc_ans")
        ),
        "gen_es_true": "Share of rewrite prompts where "
        + _GENERATED.format(what="target_true")
        + " (the replaced answer is still said; NaN without target_true)",
        "gen_ps_true": "The same on paraphrase prompts",
        "gen_success": "Generation success indicator per edit in {0, 1}: every rewrite prompt's continuation "
        "contains target_new (the indicator of the generation EFR and outcome classes)",
    }
    for family in ("counterfact", "zsre")
}

METRIC_DEFINITIONS: dict[str, dict[str, str]] = {
    "counterfact": {
        "es": "Efficacy success: share of rewrite prompts with nll(target_new) < nll(target_true); nll is the mean "
        "per-token negative log-likelihood, teacher forced (MEMIT protocol)",
        "ps": "Paraphrase success: the same comparison on each paraphrase prompt, averaged per edit",
        "ns": "Neighborhood success: share of neighborhood prompts with nll(true answer) < nll(target_new)",
        "es_magnitude": "Efficacy magnitude: mean exp(-nll(target_new)) - exp(-nll(target_true)) on rewrite prompts",
        "ps_magnitude": "Paraphrase magnitude: the same difference on paraphrase prompts",
        "ns_magnitude": "Neighborhood magnitude: mean exp(-nll(true answer)) - exp(-nll(target_new))",
        "es_accuracy": "Strict efficacy accuracy: greedy decoding of the rewrite prompt reproduces every target_new "
        "token",
        "ps_accuracy": "Strict paraphrase accuracy: the same on paraphrase prompts",
        "ns_accuracy": "Strict neighborhood accuracy: greedy decoding reproduces every token of the true answer",
        "success": "Edit success indicator s_i: the rewrite comparison holds (ES rule), per edit in {0, 1}",
        "knows_true": "The model prefers the true object: nll(target_true) < nll(target_new) on the rewrite prompt "
        "(control facts: the fact is still known)",
        "ns_agreement": "Neighborhood agreement with the pre-edit model: share of neighborhood-answer positions "
        "where the teacher-forced argmax equals the pre-edit model's (toolkit locality variant)",
        **_GENERATION["counterfact"],
    },
    "zsre": {
        "es": "Efficacy (token accuracy): share of target tokens T of ' ' + target_new for which the argmax after "
        "question + T[:j] equals T[j], averaged over tokens then edits (MEMIT zsRE protocol)",
        "ps": "Paraphrase token accuracy: the same on the rephrased question",
        "ns": "Specificity: token accuracy of loc_ans after the loc question, prompted as loc + '?' (MEMIT protocol)",
        "ns_agreement": "Locality as agreement with the pre-edit model: share of loc_ans positions where the "
        "edited model's teacher-forced argmax equals the pre-edit model's (EasyEdit-style; "
        "not the MEMIT specificity)",
        "es_magnitude": "Efficacy magnitude: exp(-nll(target_new)) - exp(-nll(target_true)); only with a competing "
        "target (alt protocol), NaN in the MEMIT protocol",
        "ps_magnitude": "Paraphrase magnitude: the same on the rephrased question",
        "ns_magnitude": "Not defined for zsRE (NaN)",
        "es_accuracy": "Strict efficacy accuracy: greedy decoding reproduces every target token",
        "ps_accuracy": "Strict paraphrase accuracy: the same on the rephrased question",
        "ns_accuracy": "Strict specificity: greedy decoding of the loc question reproduces every loc_ans token",
        "success": "Edit success indicator s_i: every target token correct on the question (token accuracy = 1)",
        "knows_true": "The model produces the reference answer: every token of target_new (MEMIT protocol: the "
        "gold answer) greedy-correct; with a competing target, nll(target_true) < nll(target_new)",
        **_GENERATION["zsre"],
    },
}

PER_EDIT_METRICS = (
    "es",
    "ps",
    "ns",
    "es_magnitude",
    "ps_magnitude",
    "ns_magnitude",
    "es_accuracy",
    "ps_accuracy",
    "ns_accuracy",
    "success",
    "knows_true",
    "gen_es",
    "gen_ps",
    "gen_ns",
    "gen_es_true",
    "gen_ps_true",
    "gen_success",
)
_PREFIX = {"rewrite": "es", "paraphrase": "ps", "neighborhood": "ns"}


def success_flags(table: pd.DataFrame) -> pd.Series:
    """Each row's success under its family's rule (docs/algorithms.md §3).

    CounterFact: 1.0 if nll(target_new) < nll(target_true) on rewrite / paraphrase prompts, 1.0 if
    nll(true answer) < nll(target_new) on neighborhood prompts, else 0.0 (a tie is a failure).
    zsRE: the teacher-forced token accuracy of target_new (rewrite / paraphrase) or of loc_ans (neighborhood).
    """
    neighbor = table["kind"] == "neighborhood"
    nll_new, nll_true = table["nll_new"].astype(float), table["nll_true"].astype(float)
    comparison = np.where(neighbor, nll_true < nll_new, nll_new < nll_true).astype(float)
    accuracy = np.where(neighbor, table["token_acc_true"].astype(float), table["token_acc_new"].astype(float))
    return pd.Series(
        np.where(table["metric_family"] == "zsre", accuracy, comparison), index=table.index, name="success"
    )


def edit_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """One row per edit (case_id): es, ps, ns (NaN where the edit has no such prompts), their magnitude and
    strict-accuracy variants, the success indicator, knows_true, the generation family (gen_es / gen_ps /
    gen_ns, gen_es_true / gen_ps_true, gen_success), and the greedy answer and generation of the rewrite prompt."""
    if table.empty:
        raise ValueError("edit_metrics got an empty table.")
    t = table.copy()
    neighbor = t["kind"] == "neighborhood"
    counterfact = t["metric_family"] == "counterfact"
    has_true = t["target_true"].notna()
    diff = t["prob_new"] - t["prob_true"]
    t["magnitude"] = np.where(neighbor, -diff, diff)
    t.loc[~has_true | (neighbor & ~counterfact), "magnitude"] = math.nan
    t["strict"] = np.where(neighbor, t["exact_true"].astype(float), t["exact_new"].astype(float))
    generated = "gen_success" in t.columns  # score_edits(generation=False) leaves the family out
    columns = ["success", "magnitude", "strict", *(["gen_success", "gen_true"] if generated else [])]
    means = t.groupby(["case_id", "kind"], sort=False)[columns].mean().unstack("kind")
    order = pd.unique(t["case_id"])
    out = pd.DataFrame({"case_id": order})
    for kind, prefix in _PREFIX.items():
        for column, name in (
            ("success", prefix),
            ("magnitude", f"{prefix}_magnitude"),
            ("strict", f"{prefix}_accuracy"),
            *([("gen_success", f"gen_{prefix}")] if generated else []),
            *([("gen_true", f"gen_{prefix}_true")] if generated and kind != "neighborhood" else []),
        ):
            values = means[(column, kind)] if (column, kind) in means.columns else pd.Series(dtype=float)
            out[name] = values.reindex(order).to_numpy(dtype=float)

    rewrite = t[t["kind"] == "rewrite"].copy()
    if rewrite["case_id"].nunique() != len(order):
        missing = sorted(set(order) - set(rewrite["case_id"]))[:5]
        raise ValueError(f"Edits without a rewrite prompt row (first: {missing}); is this a score_edits table?")
    rewrite["ok"] = rewrite["success"] == 1.0
    prefers_true = rewrite["nll_true"] < rewrite["nll_new"]
    rewrite["knows"] = np.where(rewrite["target_true"].notna(), prefers_true, rewrite["exact_new"].astype(bool))
    by_case = rewrite.groupby("case_id", sort=False)
    out["success"] = by_case["ok"].all().reindex(order).astype(float).to_numpy()
    out["knows_true"] = by_case["knows"].all().reindex(order).astype(float).to_numpy()
    if generated:
        out["gen_success"] = by_case["gen_new"].min().reindex(order).astype(float).to_numpy()
    first = by_case.first()
    for column in ("metric_family", "target_new", "target_true"):
        out[column] = first[column].reindex(order).to_numpy()
    out["answer"] = first["greedy"].reindex(order).to_numpy()
    if generated:
        out["generation"] = first["generation"].reindex(order).to_numpy()
    counts = t.groupby(["case_id", "kind"], sort=False).size().unstack("kind")
    for kind in ("paraphrase", "neighborhood"):
        column = counts[kind] if kind in counts.columns else pd.Series(dtype=float)
        out[f"n_{kind}"] = column.reindex(order).fillna(0).astype(int).to_numpy()
    return out


def neighborhood_agreement(pre_table: pd.DataFrame, post_table: pd.DataFrame) -> pd.DataFrame:
    """Per edit: share of neighborhood-answer positions where the post-edit model's teacher-forced argmax
    equals the pre-edit model's (`ns_agreement`, the toolkit locality variant; NaN without neighborhood rows)."""
    keys = ["case_id", "prompt_index"]
    columns = [*keys, "target_true_ids", "argmax_true_ids"]
    pre = pre_table.loc[pre_table["kind"] == "neighborhood", columns]
    post = post_table.loc[post_table["kind"] == "neighborhood", columns]
    merged = post.merge(pre, on=keys, suffixes=("_post", "_pre"), how="left", validate="one_to_one")
    if merged["argmax_true_ids_pre"].isna().any():
        raise ValueError("The pre-edit table lacks neighborhood rows of the post-edit table; score the same requests.")
    agreements = []
    for row in merged.itertuples(index=False):
        if list(row.target_true_ids_pre) != list(row.target_true_ids_post):
            raise ValueError(
                f"Edit {row.case_id}: neighborhood answers tokenized differently in the two tables "
                "(different tokenizers?)."
            )
        pre_ids, post_ids = list(row.argmax_true_ids_pre), list(row.argmax_true_ids_post)
        agreements.append(sum(a == b for a, b in zip(pre_ids, post_ids, strict=True)) / len(pre_ids))
    merged["agreement"] = agreements
    order = pd.unique(post_table["case_id"])
    per_case = merged.groupby("case_id", sort=False)["agreement"].mean().reindex(order)
    return pd.DataFrame({"case_id": order, "ns_agreement": per_case.to_numpy(dtype=float)})


def summarize_edit_metrics(per_edit: pd.DataFrame) -> dict[str, Any]:
    """Means over edits in percent (NaN-skipping; None where no edit has the metric), plus definitions."""
    families = sorted(per_edit["metric_family"].dropna().unique())
    if len(families) != 1:
        raise ValueError(
            f"summarize_edit_metrics needs edits of one metric family, got {families}; "
            "summarize each family separately."
        )
    family = families[0]
    summary: dict[str, Any] = {"n_edits": len(per_edit), "metric_family": family}
    for name in (*PER_EDIT_METRICS, "ns_agreement"):
        if name in per_edit.columns:
            values = per_edit[name].astype(float)
            summary[name] = None if values.isna().all() else float(100 * values.mean())
    summary["metric_definitions"] = {k: v for k, v in METRIC_DEFINITIONS[family].items() if k in summary}
    summary["units"] = "percent of edits (magnitudes: percentage points of probability)"
    return summary
