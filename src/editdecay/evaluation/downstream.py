"""Downstream accuracy on the commonsense tasks (docs/algorithms.md §6).

Two modes:
- `generate` (the study's): Alpaca prompt, up to 32 new tokens (batched greedy, or beam search with
  num_beams > 1), prediction = first hit of the task's answer-vocabulary regex: `lenient` extraction ignores
  case ("True" counts as "true"); `study` extraction is case-sensitive, as the LLM-Adapters evaluator.
- `loglik`: the option with the highest log-likelihood. Both scores are computed and kept under their own
  names: `sum` (total log-probability of the option's tokens) and `mean` (per-token mean); `loglik_score`
  picks which one fills `prediction` / `correct`. `loglik_target` chooses what is scored: `cloze` (the
  option text after "Question: ... Answer:", after the context for HellaSwag, WinoGrande partial scoring)
  or `label` (" answer3" etc. after the Alpaca prompt and "the correct answer is", the fine-tuning format).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from torch import nn

from editdecay.data.tasks import TaskItem, alpaca_prompt, load_task, task_spec
from editdecay.evaluation.batching import (
    beam_generate,
    encode,
    greedy_generate,
    score_continuations,
)
from editdecay.models import eos_ids_of, pad_id_of

Mode = Literal["generate", "loglik"]
LoglikTarget = Literal["cloze", "label"]
LoglikScore = Literal["sum", "mean"]
AnswerExtraction = Literal["lenient", "study"]
RESPONSE_PREFIX = "the correct answer is"


def extract_answer(task: str, text: str, extraction: AnswerExtraction = "lenient") -> str | None:
    """The first hit of the task's answer vocabulary in a generation, or None.

    `lenient` matches case-insensitively and lower-cases the hit; `study` is the LLM-Adapters evaluator's
    rule: case-sensitive, so "True" or "Answer1" is no answer.
    """
    match = _answer_pattern(task, extraction).search(text)
    return match.group(0).lower() if match else None


@functools.cache
def _answer_pattern(task: str, extraction: AnswerExtraction) -> re.Pattern[str]:
    if extraction not in ("lenient", "study"):
        raise ValueError(f"answer_extraction must be 'lenient' or 'study', got {extraction!r}")
    pattern = task_spec(task).pattern
    return pattern if extraction == "lenient" else re.compile(pattern.pattern)


def option_pairs(item: TaskItem, target: LoglikTarget) -> list[tuple[str, str]]:
    """(context, continuation) for each option of an item, in label order."""
    if target == "label":
        context = alpaca_prompt(item.instruction, item.input) + RESPONSE_PREFIX
        return [(context, " " + label) for label in item.labels]
    if item.cloze_style == "blank":
        blank = item.stem.find("_")
        if blank < 0 or not item.stem[blank + 1 :].strip():
            raise ValueError(f"{item.item_id}: fill-in-the-blank sentence needs a '_' followed by text: {item.stem!r}")
        return [(item.stem[:blank] + option, item.stem[blank + 1 :]) for option in item.options]
    context = item.stem if item.cloze_style == "continuation" else f"Question: {item.stem}\nAnswer:"
    return [(context, " " + option) for option in item.options]


def evaluate_tasks(
    model: nn.Module,
    tokenizer,
    tasks: Sequence[str],
    *,
    data_dir: str | Path | None,
    mode: Mode = "loglik",
    limit: int | None = None,
    batch_size: int = 16,
    num_beams: int = 1,
    progress: bool = True,
    loglik_target: LoglikTarget = "cloze",
    loglik_score: LoglikScore = "mean",
    max_new_tokens: int = 32,
    answer_extraction: AnswerExtraction = "lenient",
) -> pd.DataFrame:
    """Per-item records (task, item_id, mode, prediction, answer, correct, ...) for every item of the tasks.

    A task whose file is missing raises FileNotFoundError naming the path (check `task_available` first).
    """
    if mode not in ("generate", "loglik"):
        raise ValueError(f"mode must be 'generate' or 'loglik', got {mode!r}")
    if loglik_target not in ("cloze", "label") or loglik_score not in ("sum", "mean"):
        raise ValueError(
            f"loglik_target must be cloze/label and loglik_score sum/mean, got {loglik_target!r}, {loglik_score!r}"
        )
    if answer_extraction not in ("lenient", "study"):
        raise ValueError(f"answer_extraction must be 'lenient' or 'study', got {answer_extraction!r}")
    items = [item for task in tasks for item in load_task(task, data_dir, limit=limit)]
    if not items:
        raise ValueError(f"No downstream items to evaluate (tasks {list(tasks)}).")
    if mode == "generate":
        return _generate(model, tokenizer, items, batch_size, num_beams, max_new_tokens, answer_extraction, progress)
    return _loglik(model, tokenizer, items, batch_size, loglik_target, loglik_score, progress)


def _generate(
    model: nn.Module,
    tokenizer,
    items: list[TaskItem],
    batch_size: int,
    num_beams: int,
    max_new_tokens: int,
    extraction: AnswerExtraction,
    progress: bool,
) -> pd.DataFrame:
    contexts = encode(tokenizer, [alpaca_prompt(i.instruction, i.input) for i in items], specials=True)
    pad, eos = pad_id_of(tokenizer), eos_ids_of(tokenizer, model)
    if num_beams > 1:
        outputs = beam_generate(
            model,
            pad,
            contexts,
            max_new_tokens,
            num_beams=num_beams,
            eos_ids=eos,
            batch_size=batch_size,
            progress=progress,
            desc="downstream (beam)",
        )
    else:
        outputs = greedy_generate(
            model,
            pad,
            contexts,
            max_new_tokens,
            eos_ids=eos,
            batch_size=batch_size,
            progress=progress,
            desc="downstream (greedy)",
        )
    records = []
    for item, tokens in zip(items, outputs, strict=True):
        text = tokenizer.decode(list(tokens), skip_special_tokens=True)
        records.append(generation_record(item, text, num_beams, extraction))
    return pd.DataFrame.from_records(records)


def generation_record(item: TaskItem, text: str, num_beams: int, extraction: AnswerExtraction) -> dict[str, object]:
    """The downstream record of one generated answer (generate mode)."""
    prediction = extract_answer(item.task, text, extraction)
    return {
        "task": item.task,
        "item_id": item.item_id,
        "mode": "generate",
        "prediction": prediction,
        "answer": item.answer,
        "correct": prediction == item.answer,
        "generation": text,
        "num_beams": num_beams,
        "answer_extraction": extraction,
    }


def _loglik(
    model: nn.Module,
    tokenizer,
    items: list[TaskItem],
    batch_size: int,
    target: LoglikTarget,
    score: LoglikScore,
    progress: bool,
) -> pd.DataFrame:
    per_item = [option_pairs(item, target) for item in items]
    flat = [pair for pairs in per_item for pair in pairs]
    contexts_text = sorted({c for c, _ in flat})
    conts_text = sorted({t for _, t in flat})
    contexts = dict(zip(contexts_text, encode(tokenizer, contexts_text, specials=True), strict=True))
    conts = dict(zip(conts_text, encode(tokenizer, conts_text, specials=False), strict=True))
    scores, _ = score_continuations(
        model,
        pad_id_of(tokenizer),
        [(contexts[c], conts[t]) for c, t in flat],
        batch_size=batch_size,
        progress=progress,
        desc="downstream (loglik)",
    )
    records, start = [], 0
    for item, pairs in zip(items, per_item, strict=True):
        option_scores = scores[start : start + len(pairs)]
        start += len(pairs)
        sums = [s.sum_logprob for s in option_scores]
        means = [s.sum_logprob / len(s.tokens) for s in option_scores]
        pred_sum, pred_mean = item.labels[int(np.argmax(sums))], item.labels[int(np.argmax(means))]
        prediction = pred_mean if score == "mean" else pred_sum
        records.append(
            {
                "task": item.task,
                "item_id": item.item_id,
                "mode": "loglik",
                "prediction": prediction,
                "answer": item.answer,
                "correct": prediction == item.answer,
                "loglik_target": target,
                "loglik_score": score,
                "prediction_sum": pred_sum,
                "correct_sum": pred_sum == item.answer,
                "prediction_mean": pred_mean,
                "correct_mean": pred_mean == item.answer,
                "loglik_sum": sums,
                "loglik_mean": means,
            }
        )
    return pd.DataFrame.from_records(records)


def task_accuracy(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) per task, plus an "average" row: the unweighted mean over tasks (the study's Avg.)."""
    if df.empty:
        raise ValueError("task_accuracy got no records.")
    columns = [c for c in ("correct", "correct_sum", "correct_mean") if c in df.columns]
    grouped = df[columns].astype(float).groupby(df["task"], sort=False).mean() * 100
    table = grouped.rename(columns={c: c.replace("correct", "accuracy") for c in columns})
    table.insert(0, "n", df.groupby("task", sort=False).size())
    average = table.mean(numeric_only=True)
    average["n"] = table["n"].sum()
    table.loc["average"] = average
    table["n"] = table["n"].astype(int)
    return table.reset_index(names="task")
