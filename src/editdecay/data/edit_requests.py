"""Loaders for edit requests: CounterFact (ROME and EasyEdit formats), zsRE (MEMIT format), built-in suite."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from editdecay.data.records import DataFormatError, EditRequest, LocalityPrompt, template_from_prompt

EditFormat = Literal["auto", "counterfact-rome", "counterfact-easyedit", "zsre", "builtin"]
BUILTIN_SUITES = ("builtin", "builtin-control")


def load_edit_requests(
    source: str | Path,
    n: int | None = None,
    *,
    seed: int | None = None,
    fmt: EditFormat = "auto",
    zsre_target: Literal["answers", "alt"] = "answers",
) -> list[EditRequest]:
    """Load, validate and select edit requests.

    `source` is a JSON/JSONL file or `builtin` / `builtin-control`. `n` keeps the first n records, or a
    seeded random sample of n when `seed` is given. Every record is validated before anything is returned.
    """
    name = str(source)
    if name in BUILTIN_SUITES:
        records, fmt_used = _builtin_records(name), "builtin"
    else:
        records = read_json_records(Path(source))
        fmt_used = _detect_format(records, name) if fmt == "auto" else fmt
    parse = _PARSERS[fmt_used]
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        if n > len(records):
            raise ValueError(f"Asked for {n} edit requests but {name} has only {len(records)}.")
    indices = list(range(len(records)))
    if n is not None:
        indices = sorted(random.Random(seed).sample(indices, n)) if seed is not None else indices[:n]
    requests = [parse(records[i], name, i, zsre_target) for i in indices]
    _check_unique_ids(requests, name)
    return requests


def read_json_records(path: Path) -> list[dict[str, Any]]:
    """A JSON list of objects, or JSON Lines, with errors that name the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"No such data file: {path}")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFormatError(str(path), None, None, f"invalid JSON ({err})") from err
    else:
        data = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataFormatError(str(path), None, None, f"invalid JSON on line {line_no} ({err})") from err
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise DataFormatError(str(path), index, None, f"expected an object, got {type(record).__name__}")
    return data


def _detect_format(records: list[dict[str, Any]], name: str) -> str:
    if not records:
        raise DataFormatError(name, None, None, "the file holds no records")
    first = records[0]
    if "requested_rewrite" in first:
        return "counterfact-rome"
    if "src" in first and ("answers" in first or "alt" in first):
        return "zsre"
    if "prompt" in first and "target_new" in first:
        return "counterfact-easyedit"
    if "template" in first and "target_new" in first:
        return "builtin"
    raise DataFormatError(
        name, 0, None,
        f"unrecognised edit-request format (keys {sorted(first)}); expected CounterFact (ROME or EasyEdit), "
        "zsRE (MEMIT) or the built-in format",
    )


def _text(record: dict[str, Any], key: str, source: str, index: int, *, allow_empty: bool = False) -> str:
    if key not in record:
        raise DataFormatError(source, index, key, "missing")
    value = record[key]
    if not isinstance(value, str):
        raise DataFormatError(source, index, key, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataFormatError(source, index, key, "empty or whitespace only")
    return value


def _text_list(record: dict[str, Any], key: str, source: str, index: int) -> tuple[str, ...]:
    value = record.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataFormatError(source, index, key, "expected a string or a list of strings")
    return tuple(v for v in value if v.strip())


def _checked_template(template: str, subject: str, source: str, index: int, key: str) -> str:
    try:
        filled = template.format(subject)
    except (IndexError, KeyError, ValueError) as err:
        raise DataFormatError(source, index, key, f"bad template {template!r} ({err})") from err
    if template.count("{}") != 1:
        raise DataFormatError(source, index, key, f"template {template!r} must contain exactly one '{{}}'")
    del filled
    return template


def _subject_template(prompt: str, subject: str, source: str, index: int, key: str) -> str:
    if subject not in prompt:
        raise DataFormatError(source, index, key, f"subject {subject!r} does not occur in prompt {prompt!r}")
    return template_from_prompt(prompt, subject)


def _parse_rome(record: dict[str, Any], source: str, index: int, _zsre_target: str) -> EditRequest:
    rewrite = record.get("requested_rewrite")
    if not isinstance(rewrite, dict):
        raise DataFormatError(source, index, "requested_rewrite", "missing or not an object")
    subject = _text(rewrite, "subject", source, index)
    template = _checked_template(_text(rewrite, "prompt", source, index), subject, source, index,
                                 "requested_rewrite.prompt")
    targets = {}
    for key in ("target_new", "target_true"):
        target = rewrite.get(key)
        if not isinstance(target, dict):
            raise DataFormatError(source, index, f"requested_rewrite.{key}", "missing or not an object")
        targets[key] = _text(target, "str", source, index)
    true = targets["target_true"]
    return EditRequest(
        case_id=str(record.get("case_id", index)),
        subject=subject,
        template=template,
        target_new=targets["target_new"],
        target_true=true,
        paraphrase_prompts=_text_list(record, "paraphrase_prompts", source, index),
        neighborhood=tuple(LocalityPrompt(p, true) for p in _text_list(record, "neighborhood_prompts", source, index)),
        relation_id=rewrite.get("relation_id"),
        source=source,
        metric_family="counterfact",
    )


def _parse_easyedit(record: dict[str, Any], source: str, index: int, _zsre_target: str) -> EditRequest:
    subject = _text(record, "subject", source, index)
    prompt = _text(record, "prompt", source, index)
    true = _text(record, "ground_truth", source, index)
    locality = _text_list(record, "locality_prompt", source, index)
    locality_answer = record.get("locality_ground_truth", true)
    if not isinstance(locality_answer, str) or not locality_answer.strip():
        raise DataFormatError(source, index, "locality_ground_truth", "expected a non-empty string")
    return EditRequest(
        case_id=str(record.get("case_id", index)),
        subject=subject,
        template=_subject_template(prompt, subject, source, index, "prompt"),
        target_new=_text(record, "target_new", source, index),
        target_true=true,
        paraphrase_prompts=_text_list(record, "rephrase_prompt", source, index),
        neighborhood=tuple(LocalityPrompt(p, locality_answer) for p in locality),
        relation_id=record.get("relation_id"),
        source=source,
        metric_family="counterfact",
    )


def _parse_zsre(record: dict[str, Any], source: str, index: int, zsre_target: str) -> EditRequest:
    subject = _text(record, "subject", source, index)
    question = _text(record, "src", source, index)
    answers = record.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise DataFormatError(source, index, "answers", "expected a non-empty list of strings")
    if not answers[0].strip():
        raise DataFormatError(source, index, "answers", "first answer is empty")
    if zsre_target == "alt":
        target_new, target_true = _text(record, "alt", source, index), answers[0]
    else:  # MEMIT protocol: edit the gold answer in; there is no competing "true" target.
        target_new, target_true = answers[0], None
    neighborhood: tuple[LocalityPrompt, ...] = ()
    if "loc" in record:
        loc = _text(record, "loc", source, index)
        neighborhood = (LocalityPrompt(loc, _text(record, "loc_ans", source, index)),)
    return EditRequest(
        case_id=str(record.get("case_id", index)),
        subject=subject,
        template=_subject_template(question, subject, source, index, "src"),
        target_new=target_new,
        target_true=target_true,
        paraphrase_prompts=_text_list(record, "rephrase", source, index),
        neighborhood=neighborhood,
        relation_id=record.get("relation_id"),
        source=source,
        metric_family="zsre",
        extra={"pred": record["pred"]} if isinstance(record.get("pred"), str) else {},
    )


def _parse_builtin(record: dict[str, Any], source: str, index: int, _zsre_target: str) -> EditRequest:
    subject = _text(record, "subject", source, index)
    template = _checked_template(_text(record, "template", source, index), subject, source, index, "template")
    true = _text(record, "target_true", source, index)
    neighborhood = record.get("neighborhood", [])
    if not isinstance(neighborhood, list):
        raise DataFormatError(source, index, "neighborhood", "expected a list")
    parsed_neighbors = []
    for item in neighborhood:
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise DataFormatError(source, index, "neighborhood", "each item needs a 'prompt' string")
        parsed_neighbors.append(LocalityPrompt(item["prompt"], item.get("answer", true)))
    return EditRequest(
        case_id=str(record.get("case_id", index)),
        subject=subject,
        template=template,
        target_new=_text(record, "target_new", source, index),
        target_true=true,
        paraphrase_prompts=tuple(
            _checked_template(p, subject, source, index, "paraphrases").format(subject)
            for p in _text_list(record, "paraphrases", source, index)
        ),
        neighborhood=tuple(parsed_neighbors),
        relation_id=record.get("relation"),
        source=source,
        metric_family="counterfact",
    )


_PARSERS: dict[str, Callable[[dict[str, Any], str, int, str], EditRequest]] = {
    "counterfact-rome": _parse_rome,
    "counterfact-easyedit": _parse_easyedit,
    "zsre": _parse_zsre,
    "builtin": _parse_builtin,
}


def _builtin_records(name: str) -> list[dict[str, Any]]:
    filename = "edits.json" if name == "builtin" else "control.json"
    text = resources.files("editdecay.data").joinpath("builtin", filename).read_text(encoding="utf-8")
    return json.loads(text)


def _check_unique_ids(requests: list[EditRequest], source: str) -> None:
    seen: set[str] = set()
    for index, request in enumerate(requests):
        if request.case_id in seen:
            raise DataFormatError(source, index, "case_id", f"duplicate case id {request.case_id!r}")
        seen.add(request.case_id)
