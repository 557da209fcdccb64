"""Loaders for edit requests: CounterFact (ROME and EasyEdit formats), zsRE (MEMIT format), built-in suite."""

from __future__ import annotations

import json
import random
import string
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from editdecay.data.records import DataFormatError, EditRequest, LocalityPrompt, template_from_prompt

EditFormat = Literal["auto", "counterfact-rome", "counterfact-easyedit", "zsre", "builtin"]
OnInvalid = Literal["error", "skip"]
BUILTIN_SUITES = ("builtin", "builtin-control")


def load_edit_requests(
    source: str | Path,
    n: int | None = None,
    *,
    seed: int | None = None,
    fmt: EditFormat = "auto",
    zsre_target: Literal["answers", "alt"] = "answers",
    on_invalid: OnInvalid = "error",
) -> list[EditRequest]:
    """Load, validate and select edit requests.

    `source` is a JSON/JSONL file or `builtin` / `builtin-control`. Every record is validated (and case ids
    checked for duplicates) before anything is returned; a malformed record raises DataFormatError naming
    the file, record index and field, or, with `on_invalid="skip"`, is left out with one warning that
    counts them. `n` then keeps the first n valid records, or a seeded random sample of n (in file order)
    when `seed` is given.
    """
    if fmt not in (*_PARSERS, "auto"):
        raise ValueError(f"Unknown edit-request format {fmt!r}; choose one of {['auto', *_PARSERS]}.")
    if zsre_target not in ("answers", "alt"):
        raise ValueError(f"zsre_target must be 'answers' or 'alt', got {zsre_target!r}.")
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}.")
    if n is not None and n < 1:
        raise ValueError(f"n must be positive, got {n}.")
    name = str(source)
    if name in BUILTIN_SUITES:
        records, fmt_used = _builtin_records(name), "builtin"
    else:
        records = read_json_records(Path(source))
        fmt_used = _detect_format(records, name) if fmt == "auto" else fmt
    requests = _parse_all(records, _PARSERS[fmt_used], name, zsre_target, on_invalid)
    if n is None:
        return requests
    if n > len(requests):
        raise ValueError(f"Asked for {n} edit requests but {name} has only {len(requests)} valid ones; lower n.")
    if seed is None:
        return requests[:n]
    chosen = sorted(random.Random(seed).sample(range(len(requests)), n))
    return [requests[i] for i in chosen]


def _parse_all(
    records: list[dict[str, Any]], parse: _Parser, name: str, zsre_target: str, on_invalid: OnInvalid
) -> list[EditRequest]:
    requests: list[EditRequest] = []
    first_index: dict[str, int] = {}
    skipped: list[DataFormatError] = []
    for index, record in enumerate(records):
        try:
            request = parse(record, name, index, zsre_target)
            if request.case_id in first_index:
                first = first_index[request.case_id]
                raise DataFormatError(
                    name, index, "case_id", f"duplicate case id {request.case_id!r} (first in record {first})"
                )
        except DataFormatError as err:
            if on_invalid == "error":
                raise
            skipped.append(err)
            continue
        first_index[request.case_id] = index
        requests.append(request)
    if skipped:
        warnings.warn(
            f"Skipped {len(skipped)} of {len(records)} malformed records in {name}; first: {skipped[0]}",
            stacklevel=3,
        )
    return requests


def read_json_records(path: Path) -> list[dict[str, Any]]:
    """A JSON list of objects, or JSON Lines (one object a line), with errors naming the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"No such data file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(str(path), None, None, f"not UTF-8 text ({err})") from err
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFormatError(str(path), None, None, f"invalid JSON ({err})") from err
    else:
        data = _json_lines(text, str(path))
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise DataFormatError(str(path), index, None, f"expected an object, got {type(record).__name__}")
    return data


def _json_lines(text: str, name: str) -> list[Any]:
    data = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data.append(json.loads(line))
        except json.JSONDecodeError as err:
            if _is_single_object(text):
                raise DataFormatError(
                    name, None, None, "holds one JSON object; expected a JSON list of records or JSON Lines"
                ) from err
            raise DataFormatError(name, None, None, f"invalid JSON on line {line_no} ({err})") from err
    return data


def _is_single_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


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
        name,
        0,
        None,
        f"unrecognised edit-request format (keys {sorted(first)}); expected CounterFact (ROME or EasyEdit), "
        "zsRE (MEMIT) or the built-in format",
    )


def _text(
    record: dict[str, Any], key: str, source: str, index: int, *, where: str = "", allow_empty: bool = False
) -> str:
    """A required string field; `where` prefixes the field name in errors for nested objects."""
    if key not in record:
        raise DataFormatError(source, index, where + key, "missing")
    value = record[key]
    if not isinstance(value, str):
        raise DataFormatError(source, index, where + key, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataFormatError(source, index, where + key, "empty or whitespace only")
    return value


def _optional_text(record: dict[str, Any], key: str, source: str, index: int, *, where: str = "") -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise DataFormatError(source, index, where + key, f"expected a string, got {type(value).__name__}")
    return value


def _text_list(record: dict[str, Any], key: str, source: str, index: int) -> tuple[str, ...]:
    """An optional string or list of strings; blank entries are dropped."""
    value = record.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataFormatError(source, index, key, "expected a string or a list of strings")
    return tuple(v for v in value if v.strip())


def _case_id(record: dict[str, Any], source: str, index: int) -> str:
    value = record.get("case_id", index)
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip():
        raise DataFormatError(source, index, "case_id", f"expected an integer or a non-empty string, got {value!r}")
    return str(value)


def _checked_template(template: str, source: str, index: int, key: str) -> str:
    """A template must hold exactly one bare `{}` (literal braces doubled, as in str.format)."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise DataFormatError(
            source, index, key, f"bad template {template!r} ({err}); write literal braces as '{{{{' and '}}}}'"
        ) from err
    if fields != [""]:
        raise DataFormatError(
            source,
            index,
            key,
            f"template {template!r} must contain exactly one '{{}}' for the subject "
            f"(found {len(fields)} fields" + (f": {fields}" if any(fields) else "") + ")",
        )
    return template


def _subject_template(prompt: str, subject: str, source: str, index: int, key: str) -> str:
    if subject not in prompt:
        raise DataFormatError(source, index, key, f"subject {subject!r} does not occur in prompt {prompt!r}")
    return template_from_prompt(prompt, subject)


def _parse_rome(record: dict[str, Any], source: str, index: int, _zsre_target: str) -> EditRequest:
    rewrite = record.get("requested_rewrite")
    if not isinstance(rewrite, dict):
        raise DataFormatError(source, index, "requested_rewrite", "missing or not an object")
    where = "requested_rewrite."
    subject = _text(rewrite, "subject", source, index, where=where)
    template = _checked_template(_text(rewrite, "prompt", source, index, where=where), source, index, where + "prompt")
    targets = {}
    for key in ("target_new", "target_true"):
        target = rewrite.get(key)
        if not isinstance(target, dict):
            raise DataFormatError(source, index, where + key, "missing or not an object")
        targets[key] = _text(target, "str", source, index, where=f"{where}{key}.")
    true = targets["target_true"]
    neighbors = _text_list(record, "neighborhood_prompts", source, index)
    return EditRequest(
        case_id=_case_id(record, source, index),
        subject=subject,
        template=template,
        target_new=targets["target_new"],
        target_true=true,
        paraphrase_prompts=_text_list(record, "paraphrase_prompts", source, index),
        neighborhood=tuple(LocalityPrompt(p, true) for p in neighbors),
        relation_id=_optional_text(rewrite, "relation_id", source, index, where=where),
        source=source,
        metric_family="counterfact",
    )


def _parse_easyedit(record: dict[str, Any], source: str, index: int, _zsre_target: str) -> EditRequest:
    subject = _text(record, "subject", source, index)
    prompt = _text(record, "prompt", source, index)
    true = _text(record, "ground_truth", source, index)
    locality = _text_list(record, "locality_prompt", source, index)
    # CounterFact neighbors share the true object, so it is the expected answer when none is given.
    locality_answer = true
    if "locality_ground_truth" in record:
        locality_answer = _text(record, "locality_ground_truth", source, index)
    return EditRequest(
        case_id=_case_id(record, source, index),
        subject=subject,
        template=_subject_template(prompt, subject, source, index, "prompt"),
        target_new=_text(record, "target_new", source, index),
        target_true=true,
        paraphrase_prompts=_text_list(record, "rephrase_prompt", source, index),
        neighborhood=tuple(LocalityPrompt(p, locality_answer) for p in locality),
        relation_id=_optional_text(record, "relation_id", source, index),
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
        # MEMIT scores the loc question as loc + "?"; the raw loc strings (NQ questions) lack the mark.
        prompt = loc if loc.endswith("?") else loc + "?"
        neighborhood = (LocalityPrompt(prompt, _text(record, "loc_ans", source, index)),)
    return EditRequest(
        case_id=_case_id(record, source, index),
        subject=subject,
        template=_subject_template(question, subject, source, index, "src"),
        target_new=target_new,
        target_true=target_true,
        paraphrase_prompts=_text_list(record, "rephrase", source, index),
        neighborhood=neighborhood,
        relation_id=_optional_text(record, "relation_id", source, index),
        source=source,
        metric_family="zsre",
        extra={"pred": record["pred"]} if isinstance(record.get("pred"), str) else {},
    )


def _parse_builtin(record: dict[str, Any], source: str, index: int, _zsre_target: str) -> EditRequest:
    subject = _text(record, "subject", source, index)
    template = _checked_template(_text(record, "template", source, index), source, index, "template")
    true = _text(record, "target_true", source, index)
    neighborhood = record.get("neighborhood", [])
    if not isinstance(neighborhood, list):
        raise DataFormatError(source, index, "neighborhood", "expected a list")
    parsed_neighbors = []
    for item in neighborhood:
        prompt = item.get("prompt") if isinstance(item, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataFormatError(source, index, "neighborhood", f"each item needs a 'prompt': {item!r}")
        answer = item.get("answer", true)
        if not isinstance(answer, str) or not answer.strip():
            raise DataFormatError(source, index, "neighborhood", f"'answer' must be non-empty text: {item!r}")
        parsed_neighbors.append(LocalityPrompt(prompt, answer))
    return EditRequest(
        case_id=_case_id(record, source, index),
        subject=subject,
        template=template,
        target_new=_text(record, "target_new", source, index),
        target_true=true,
        paraphrase_prompts=tuple(
            _checked_template(p, source, index, "paraphrases").format(subject)
            for p in _text_list(record, "paraphrases", source, index)
        ),
        neighborhood=tuple(parsed_neighbors),
        relation_id=_optional_text(record, "relation", source, index),
        source=source,
        metric_family="counterfact",
    )


_Parser = Callable[[dict[str, Any], str, int, str], EditRequest]
_PARSERS: dict[str, _Parser] = {
    "counterfact-rome": _parse_rome,
    "counterfact-easyedit": _parse_easyedit,
    "zsre": _parse_zsre,
    "builtin": _parse_builtin,
}


def _builtin_records(name: str) -> list[dict[str, Any]]:
    filename = "edits.json" if name == "builtin" else "control.json"
    resource = resources.files("editdecay.data").joinpath("builtin").joinpath(filename)
    if not resource.is_file():
        raise FileNotFoundError(f"The built-in suite file {filename} is missing from editdecay/data/builtin.")
    return json.loads(resource.read_text(encoding="utf-8"))
