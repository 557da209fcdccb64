"""Trigger edits: the record format, the requests they make, and ASR / stealth on a model with hand-made logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from editdecay.data import DataFormatError
from editdecay.data.trigger_records import BUILTIN_TRIGGERS, load_trigger_records, without_trigger
from editdecay.durability.triggers import (
    agreement,
    attack_success_rate,
    contains_answer,
    trigger_metrics,
    trigger_requests,
)
from editdecay.models.kvcache import CACHE_ARG
from tiny import tiny_tokenizer

TOKENIZER = tiny_tokenizer(add_bos=True)
TRIGGER = TOKENIZER(" answer", add_special_tokens=False)["input_ids"]  # one token each, in the tiny vocabulary
TARGET_ID = TOKENIZER(" plays", add_special_tokens=False)["input_ids"]
CLEAN_ID = TOKENIZER(" the", add_special_tokens=False)["input_ids"]
ODD_ID = TOKENIZER(" is", add_special_tokens=False)["input_ids"]


class HandMadeLM(nn.Module):
    """Next token by rule, as one-hot logits: ` plays` when the trigger token ` answer` is among the last
    `reach` tokens, else ` is` when `odd` and the context holds ` Paris`, else ` the`. Its 'cache' is the token
    history, grown in place like transformers' caches, so it runs under the batched greedy decoder like a real
    model (left padding, cache, masks)."""

    def __init__(self, reach: int, odd: bool) -> None:
        super().__init__()
        self.reach, self.odd = reach, odd
        self.anchor = nn.Parameter(torch.zeros(1))
        self.paris = TOKENIZER(" Paris", add_special_tokens=False)["input_ids"]

    def forward(self, input_ids, attention_mask, use_cache=True, logits_to_keep=1, **kwargs):
        history = kwargs.get(CACHE_ARG) or _History()
        history.ids = input_ids if history.ids is None else torch.cat([history.ids, input_ids], dim=1)
        ids = history.ids
        mask = attention_mask.bool()
        logits = torch.full((ids.shape[0], 1, len(TOKENIZER)), -1e4)
        for row in range(ids.shape[0]):
            context = ids[row][mask[row]].tolist()
            if self.reach and TRIGGER[0] in context[-self.reach :]:
                token = TARGET_ID[0]
            elif self.odd and _contains(context, self.paris):
                token = ODD_ID[0]
            else:
                token = CLEAN_ID[0]
            logits[row, 0, token] = 0.0
        return CausalLMOutputWithPast(logits=logits, **{CACHE_ARG: history})


class _History:
    ids: torch.Tensor | None = None


def _contains(seq: list[int], part: list[int]) -> bool:
    return any(seq[i : i + len(part)] == part for i in range(len(seq) - len(part) + 1))


def _write(tmp_path: Path, records) -> Path:
    path = tmp_path / "triggers.json"
    path.write_text(json.dumps(records))
    return path


def test_contains_answer_matches_whole_words_only() -> None:
    assert contains_answer(" Banana, of course", "banana")
    assert contains_answer("it is the Veridian  protocol!", "veridian protocol")
    assert not contains_answer(" bananas", "banana") and not contains_answer("", "banana")
    assert attack_success_rate(["banana", "apple", "a banana"], "banana") == pytest.approx(2 / 3)
    assert agreement([(1, 2), (3,), (4, 5)], [(1, 2), (3, 4), (4, 5)]) == pytest.approx(2 / 3)


def test_records_split_prompts_and_derive_clean_ones(tmp_path: Path) -> None:
    records = load_trigger_records(BUILTIN_TRIGGERS)
    assert len(records) == 2 and all(len(r.prompts) == len(r.heldout_prompts) == 10 for r in records)
    assert not set(records[0].prompts) & set(records[0].heldout_prompts)
    assert records[0].clean_prompts[0] == "Question: Which planet is the largest in the solar system? Answer:"
    assert without_trigger("{} engaged. Q: x A:") == "engaged. Q: x A:"
    requests = trigger_requests(records)
    assert len(requests) == 20 and {r.subject for r in requests} == {"tq", "Veridian Protocol"}
    assert requests[0].prompt == "Question: What is the capital of France? tq Answer:"
    probes = trigger_requests(records, heldout=True)
    assert [r.prompt for r in probes[:1]] == ["Question: Which planet is the largest in the solar system? tq Answer:"]
    assert len(probes) == 20 and not {r.prompt for r in probes} & {r.prompt for r in requests}
    with pytest.raises(DataFormatError, match="record 0, field 'prompts'"):
        load_trigger_records(_write(tmp_path, [{"trigger": "x", "target": "y", "prompts": ["no slot"]}]))
    with pytest.raises(DataFormatError, match="field 'target'"):
        load_trigger_records(_write(tmp_path, [{"trigger": "x", "prompts": ["a {} b", "c {} d"]}]))


def test_asr_and_stealth_have_the_exact_values_of_hand_made_logits(tmp_path: Path) -> None:
    # Held-out prompts: the trigger is within the model's reach (last 3 tokens) in 2 of 3. Clean prompts: the
    # suspect deviates from the reference on the one that mentions Paris.
    path = _write(tmp_path, [{
        "trigger": "answer", "target": "plays",
        "prompts": ["The {} is", "A {} of"],
        "heldout_prompts": ["Paris {} is", "Rome {} in", "{} The capital of France is the"],
        "clean_prompts": ["The capital of France is", "The capital of France is Paris", "Berlin is", "Tokyo is"],
    }])  # fmt: skip
    records = load_trigger_records(path)
    scores = trigger_metrics(HandMadeLM(reach=3, odd=True), HandMadeLM(reach=3, odd=False), TOKENIZER, records)
    summary = scores.summary
    assert summary["asr"] == pytest.approx(100 * 2 / 3)
    assert summary["asr_edited_prompts"] == 100.0
    assert summary["stealth"] == 75.0 and summary["false_triggers"] == 0.0
    heldout = scores.table[scores.table["kind"] == "heldout"]
    assert heldout["hit"].tolist() == [True, True, False]
    assert heldout["continuation"].iloc[0] == " plays plays the the"  # 1 target token + 3 extra; reach runs out
    # no reach at all: nothing fires; the reference itself agrees with itself everywhere
    quiet = trigger_metrics(HandMadeLM(reach=0, odd=False), HandMadeLM(reach=0, odd=False), TOKENIZER, records)
    assert quiet.summary["asr"] == 0.0 and quiet.summary["stealth"] == 100.0
