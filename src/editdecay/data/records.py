"""Typed records shared by every stage, and the error raised for malformed input files."""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

MetricFamily = Literal["counterfact", "zsre"]


class DataFormatError(ValueError):
    """A record in an input file is malformed; the message names the file, record index and field."""

    def __init__(self, source: str, index: int | None, field_name: str | None, problem: str) -> None:
        where = source if index is None else f"{source}, record {index}"
        if field_name:
            where += f", field {field_name!r}"
        super().__init__(f"{where}: {problem}")
        self.source, self.index, self.field_name, self.problem = source, index, field_name, problem


@dataclass(frozen=True)
class LocalityPrompt:
    """A prompt whose answer the edit must not change, with that expected answer."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class EditRequest:
    """One requested edit: make `template.format(subject)` complete with `target_new`.

    `target_true` is the fact being overwritten (None for zsRE in the MEMIT protocol, which edits in the
    gold answer). `metric_family` chooses how edit success is scored (docs/algorithms.md §3).
    """

    case_id: str
    subject: str
    template: str
    target_new: str
    target_true: str | None
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood: tuple[LocalityPrompt, ...] = ()
    relation_id: str | None = None
    source: str = ""
    metric_family: MetricFamily = "counterfact"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def prompt(self) -> str:
        """The edit prompt with the subject filled in."""
        return self.template.format(self.subject)

    @property
    def prompt_parts(self) -> tuple[str, str]:
        """The prompt's text before and after the subject: `prompt == head + subject + tail`."""
        return split_template(self.template)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EditRequest:
        data = dict(data)
        data["paraphrase_prompts"] = tuple(data.get("paraphrase_prompts", ()))
        data["neighborhood"] = tuple(LocalityPrompt(**n) for n in data.get("neighborhood", ()))
        return cls(**data)


def split_template(template: str) -> tuple[str, str]:
    """The text before and after a template's one bare `{}` field, with literal braces (`{{`, `}}`)
    unescaped as `str.format` does, so that `template.format(s) == head + s + tail`.

    Splitting the raw template at "{}" instead would keep `{{math}}` doubled (and split `{{}}`), so the
    editor would see other text than the scorer. ValueError unless there is exactly one bare `{}`.
    """
    head: list[str] = []
    tail: list[str] = []
    fields = 0
    for literal, name, spec, conversion in string.Formatter().parse(template):
        (tail if fields else head).append(literal)
        if name is None:
            continue
        if name or spec or conversion:
            raise ValueError(f"template {template!r}: only a bare '{{}}' field is allowed, got {{{name}}}")
        fields += 1
    if fields != 1:
        raise ValueError(f"template {template!r} must contain exactly one '{{}}' (found {fields})")
    return "".join(head), "".join(tail)


def template_from_prompt(prompt: str, subject: str) -> str:
    """Turn a filled-in prompt into a `{}` template, escaping braces already in the text."""
    escaped = prompt.replace("{", "{{").replace("}", "}}")
    subject_escaped = subject.replace("{", "{{").replace("}", "}}")
    return escaped.replace(subject_escaped, "{}", 1)
