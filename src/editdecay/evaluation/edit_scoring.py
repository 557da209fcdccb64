"""Score edit requests on one model: one row per edit x prompt kind x prompt (docs/algorithms.md §3, §12).

Every (prompt, target) pair of every request goes through one batched teacher-forced pass; greedy
continuations reuse those argmax tokens and generate only what is missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from torch import nn

from editdecay.data import EditRequest
from editdecay.evaluation.batching import (
    TokenScores,
    continuation_text,
    encode,
    score_continuations,
)
from editdecay.evaluation.edit_metrics import success_flags
from editdecay.evaluation.generation_success import GENERATION_EXTRA_TOKENS, generation_flags
from editdecay.models import pad_id_of

KINDS = ("rewrite", "paraphrase", "neighborhood")


@dataclass(frozen=True)
class _Row:
    case_id: str
    kind: str
    prompt_index: int
    prompt: str
    family: str
    target_new: str
    target_true: str | None


def _rows(requests: Sequence[EditRequest]) -> list[_Row]:
    rows = []
    for request in requests:
        fam = request.metric_family
        rows.append(_Row(request.case_id, "rewrite", 0, request.prompt, fam, request.target_new, request.target_true))
        for i, prompt in enumerate(request.paraphrase_prompts):
            rows.append(_Row(request.case_id, "paraphrase", i, prompt, fam, request.target_new, request.target_true))
        for i, loc in enumerate(request.neighborhood):
            # The neighborhood prompt's own answer is the "true" target (zsRE: loc_ans; CounterFact: the
            # unchanged true object, which must still beat the edited-in target).
            rows.append(_Row(request.case_id, "neighborhood", i, loc.prompt, fam, request.target_new, loc.answer))
    return rows


def score_edits(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    *,
    batch_size: int = 32,
    progress: bool = True,
    generation: bool = True,
) -> pd.DataFrame:
    """Score every prompt of every request: NLL of both targets, greedy continuation, token accuracy, success.

    Columns: case_id, kind, prompt_index, prompt, metric_family, target_new, target_true, nll_new, nll_true
    (mean per-token NLL), prob_new, prob_true (exp(-nll)), token_acc_new/true (teacher-forced token accuracy),
    exact_new/true (every target token is the greedy prediction), n_tokens_new/true, greedy (greedy
    continuation of max(n_tokens_new, n_tokens_true) tokens), success (the family's rule, docs/algorithms.md §3),
    generation (the same continuation, GENERATION_EXTRA_TOKENS tokens longer) with gen_new / gen_true /
    gen_success (the generation-based family, §12), and the token ids (target_*_ids, argmax_*_ids, greedy_ids,
    generation_ids); `neighborhood_agreement` compares the argmax ids. `generation=False` leaves the generation
    family out (about half the scoring time: for decay curves, which track the probability family only).
    Results do not depend on the tokenizer's padding side (batching pads explicitly).
    """
    if not requests:
        raise ValueError("score_edits got no edit requests.")
    missing = [r.case_id for r in requests if r.metric_family == "counterfact" and r.target_true is None]
    if missing:
        raise ValueError(
            f"CounterFact edits {missing[:5]} have no target_true; the probability-comparison metrics "
            "need the fact being replaced."
        )
    rows = _rows(requests)
    prompts = sorted({row.prompt for row in rows})
    prompt_ids = dict(zip(prompts, encode(tokenizer, prompts, specials=True), strict=True))
    targets = sorted({continuation_text(t) for row in rows for t in (row.target_new, row.target_true) if t})
    target_ids = dict(zip(targets, encode(tokenizer, targets, specials=False), strict=True))
    for text, ids in target_ids.items():
        if not ids:
            raise ValueError(f"Target {text!r} tokenizes to nothing; check the edit requests.")

    pairs, slots = [], []
    for r, row in enumerate(rows):
        for which, target in (("new", row.target_new), ("true", row.target_true)):
            if target is not None:
                slots.append((r, which))
                pairs.append((prompt_ids[row.prompt], target_ids[continuation_text(target)]))
    # Greedy answers of max(n_tokens_new, n_tokens_true) tokens, decoded GENERATION_EXTRA_TOKENS further for the
    # generation family (greedy decoding is prefix-stable, so `greedy` is the first part of `generation`); EOS is
    # kept in the ids (it decodes to nothing), never a stop signal. A prompt shared by rows is decoded once.
    row_lengths = [
        max(len(target_ids[continuation_text(t)]) for t in (row.target_new, row.target_true) if t) for row in rows
    ]
    lengths: dict[tuple[int, ...], int] = {}
    for row, n in zip(rows, row_lengths, strict=True):
        longest = n + (GENERATION_EXTRA_TOKENS if generation else 0)
        lengths[prompt_ids[row.prompt]] = max(longest, lengths.get(prompt_ids[row.prompt], 0))
    scores, answers = score_continuations(
        model,
        pad_id_of(tokenizer),
        pairs,
        greedy=lengths,
        batch_size=batch_size,
        progress=progress,
        desc="scoring edit prompts",
    )
    by_slot: dict[tuple[int, str], TokenScores] = dict(zip(slots, scores, strict=True))
    extra = GENERATION_EXTRA_TOKENS if generation else 0
    generated = [answers[prompt_ids[row.prompt]][: n + extra] for row, n in zip(rows, row_lengths, strict=True)]
    greedy = [ids[:n] for ids, n in zip(generated, row_lengths, strict=True)]
    records = []
    for r, row in enumerate(rows):
        new, true = by_slot[(r, "new")], by_slot.get((r, "true"))
        record = {
            "case_id": row.case_id,
            "kind": row.kind,
            "prompt_index": row.prompt_index,
            "prompt": row.prompt,
            "metric_family": row.family,
            "target_new": row.target_new,
            "target_true": row.target_true,
            **_scores("new", new),
            **_scores("true", true),
            "greedy": tokenizer.decode(list(greedy[r]), skip_special_tokens=True),
            "greedy_ids": list(greedy[r]),
        }
        if generation:
            record["generation"] = tokenizer.decode(list(generated[r]), skip_special_tokens=True)
            record["generation_ids"] = list(generated[r])
        records.append(record)
    table = pd.DataFrame.from_records(records)
    table["success"] = success_flags(table)
    return pd.concat([table, generation_flags(table)], axis=1) if generation else table


def _scores(which: str, scores: TokenScores | None) -> dict[str, object]:
    if scores is None:
        return {
            f"nll_{which}": math.nan,
            f"prob_{which}": math.nan,
            f"token_acc_{which}": math.nan,
            f"exact_{which}": None,
            f"n_tokens_{which}": 0,
            f"target_{which}_ids": [],
            f"argmax_{which}_ids": [],
        }
    return {
        f"nll_{which}": scores.nll,
        f"prob_{which}": math.exp(-scores.nll),
        f"token_acc_{which}": scores.token_accuracy,
        f"exact_{which}": scores.exact,
        f"n_tokens_{which}": len(scores.tokens),
        f"target_{which}_ids": list(scores.tokens),
        f"argmax_{which}_ids": list(scores.argmax),
    }
