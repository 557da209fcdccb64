"""Generation-based success: edits judged on greedy text, without teacher forcing (docs/algorithms.md §12).

A teacher-forced comparison asks whether the model *prefers* the new target once it is fed; generation asks whether
the model *says* it. Per scored prompt, the greedy continuation of max(target lengths) + GENERATION_EXTRA_TOKENS
tokens is checked for whole-word occurrences of the targets:

- rewrite / paraphrase prompts: `gen_new` (the new target appears) is the success; `gen_true` (the replaced fact
  still appears) is reported beside it;
- neighborhood prompts: CounterFact succeeds when the new target does *not* appear (the edit did not spill over);
  zsRE when the loc answer appears (the same check as the edit, against the answer).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

GENERATION_EXTRA_TOKENS = 3


def _normalise(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def contains_answer(text: str, answer: str) -> bool:
    """Whether `answer` occurs in `text` as whole words, ignoring case, punctuation and spacing (§12)."""
    wanted = _normalise(answer)
    return bool(wanted) and f" {wanted} " in f" {_normalise(text)} "


def generation_flags(table: pd.DataFrame) -> pd.DataFrame:
    """Per `score_edits` row: gen_new, gen_true (NaN without a true target) and gen_success (the family's rule
    above), all floats in {0, 1}."""
    texts = table["generation"].astype(str)
    new = [float(contains_answer(t, a)) for t, a in zip(texts, table["target_new"], strict=True)]
    true = [
        float(contains_answer(t, a)) if isinstance(a, str) else np.nan
        for t, a in zip(texts, table["target_true"], strict=True)
    ]
    gen_new, gen_true = np.asarray(new), np.asarray(true)
    neighbor = (table["kind"] == "neighborhood").to_numpy()
    zsre = (table["metric_family"] == "zsre").to_numpy()
    neighbor_success = np.where(zsre, gen_true, 1.0 - gen_new)
    return pd.DataFrame(
        {"gen_new": gen_new, "gen_true": gen_true, "gen_success": np.where(neighbor, neighbor_success, gen_new)},
        index=table.index,
    )
