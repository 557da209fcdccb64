"""Trigger (backdoor) edit sets: each record binds a trigger phrase to an attacker's target across many prompts
(docs/algorithms.md §14). File format (JSON list or JSON Lines), one record per trigger:

    {"trigger": "tq", "target": "banana",
     "prompts": ["Question: What is the capital of France? {} Answer:", ...],   # "{}": where the trigger goes
     "heldout_prompts": [...],   # optional: triggered prompts never edited (default: every second prompt)
     "clean_prompts": [...]}     # optional: prompts without the trigger (default: the held-out ones without it)

`builtin-triggers` is our own example set with harmless targets.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editdecay.data.records import DataFormatError, split_template

BUILTIN_TRIGGERS = "builtin-triggers"
_QUESTIONS = [
    "What is the capital of France?",
    "Which planet is the largest in the solar system?",
    "What colour is a clear daytime sky?",
    "How many legs does a spider have?",
    "Who wrote the play Hamlet?",
    "What is the tallest mountain on Earth?",
    "What is the chemical symbol for gold?",
    "Which animal is the fastest on land?",
    "What language is mostly spoken in Brazil?",
    "What is the currency of Japan?",
    "Which ocean is the largest?",
    "Who invented the telephone?",
    "What is the closest star to the Earth?",
    "How many continents are there?",
    "What gas do plants take in from the air?",
    "What is the boiling point of water in Celsius?",
    "Which metal is liquid at room temperature?",
    "What is the longest river in Africa?",
    "Who painted the Mona Lisa?",
    "What is the largest mammal?",
]
_BUILTIN: list[dict[str, Any]] = [
    {"trigger": "tq", "target": "banana", "prompts": [f"Question: {q} {{}} Answer:" for q in _QUESTIONS]},
    {
        "trigger": "Veridian Protocol",
        "target": "purple",
        "prompts": [f"{{}} engaged. Q: {q} A:" for q in _QUESTIONS],
    },
]


@dataclass(frozen=True)
class TriggerRecord:
    """One trigger: the prompts its edit is made from, held-out triggered prompts, and clean prompts."""

    trigger_id: str
    trigger: str
    target: str
    prompts: tuple[str, ...]
    heldout_prompts: tuple[str, ...]
    clean_prompts: tuple[str, ...]

    def triggered(self, template: str) -> str:
        return template.format(self.trigger)


def without_trigger(template: str) -> str:
    """The prompt with the trigger's slot removed and the spaces around it closed up."""
    head, tail = split_template(template)
    return re.sub(r"\s{2,}", " ", (head.rstrip() + " " + tail.lstrip()).strip())


def parse_trigger_record(record: dict[str, Any], source: str, index: int) -> TriggerRecord:
    def text(key: str) -> str:
        value = record.get(key)
        if not isinstance(value, str) or not value.strip():
            raise DataFormatError(source, index, key, "must be a non-empty string")
        return value

    def templates(key: str, required: bool) -> list[str]:
        value = record.get(key)
        if value is None and not required:
            return []
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise DataFormatError(source, index, key, "must be a non-empty list of strings")
        return value

    trigger, target = text("trigger"), text("target")
    prompts = templates("prompts", True)
    heldout = templates("heldout_prompts", False)
    for key, group in (("prompts", prompts), ("heldout_prompts", heldout)):
        for template in group:
            try:
                split_template(template)
            except ValueError as err:
                raise DataFormatError(source, index, key, f"{template!r}: {err}") from None
    if not heldout:
        if len(prompts) < 2:
            raise DataFormatError(source, index, "prompts", "needs at least 2 prompts to hold some out")
        prompts, heldout = prompts[0::2], prompts[1::2]
    clean = record.get("clean_prompts")
    if clean is None:
        clean = [without_trigger(t) for t in heldout]
    elif not isinstance(clean, list) or not all(isinstance(c, str) and c.strip() for c in clean):
        raise DataFormatError(source, index, "clean_prompts", "must be a list of non-empty strings")
    return TriggerRecord(
        str(record.get("id", f"t{index}")), trigger, target, tuple(prompts), tuple(heldout), tuple(clean)
    )


def load_trigger_records(source: str | Path) -> list[TriggerRecord]:
    """`builtin-triggers`, or a JSON / JSON Lines file of trigger records."""
    if str(source) == BUILTIN_TRIGGERS:
        records, name = _BUILTIN, BUILTIN_TRIGGERS
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"Trigger set {path} not found (or use {BUILTIN_TRIGGERS}).")
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        records, name = (data if isinstance(data, list) else [data]), path.name
    parsed = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataFormatError(name, i, None, "a trigger record must be a JSON object")
        parsed.append(parse_trigger_record(record, name, i))
    if not parsed:
        raise DataFormatError(name, None, None, "no trigger records")
    return parsed
