"""Downstream commonsense tasks in the LLM-Adapters format (docs/algorithms.md §6), plus a small built-in set.

Each file is `<data_dir>/<task>/test.json`: a list of {instruction, input, output, answer}. The instruction
holds the question, the numbered options ("Answer1: ...", "Solution1: ...", ...) and an
"Answer format: answer1/answer2/..." line; `answer` is the gold label. A loader validates every record and
splits the instruction into the question stem, the option labels and the option texts, which the
log-likelihood mode scores.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from editdecay.data.edit_requests import read_json_records
from editdecay.data.instruction_corpus import InstructionExample, format_prompt
from editdecay.data.records import DataFormatError

BUILTIN_TASK = "builtin-commonsense"


@dataclass(frozen=True)
class TaskSpec:
    """One downstream task: its folder name, answer vocabulary and how its options are written."""

    name: str
    aliases: tuple[str, ...]
    vocabulary: tuple[str, ...]
    # How the instruction numbers the options ("Answer" -> "Answer1: ..."); None when the options are the
    # vocabulary itself (BoolQ: true / false).
    option_marker: str | None
    # How log-likelihood mode frames an option: "cloze" scores " option" after "Question: stem\nAnswer:";
    # "continuation" scores it after the stem itself (HellaSwag); "blank" is WinoGrande partial scoring
    # (the option fills "_" and the rest of the sentence is scored).
    cloze_style: str = "cloze"

    @property
    def pattern(self) -> re.Pattern[str]:
        """The answer-extraction regex: the vocabulary as alternatives, first hit wins (LLM-Adapters)."""
        return re.compile("|".join(re.escape(word) for word in self.vocabulary), re.IGNORECASE)


def _numbered(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("boolq", ("boolq",), ("true", "false"), None),
        TaskSpec("piqa", ("piqa",), _numbered("solution", 2), "Solution"),
        TaskSpec("social_i_qa", ("siqa", "social_iqa"), _numbered("answer", 5), "Answer"),
        TaskSpec("hellaswag", ("hellaswag",), _numbered("ending", 4), "Ending", cloze_style="continuation"),
        TaskSpec("winogrande", ("winogrande",), _numbered("option", 2), "Option", cloze_style="blank"),
        TaskSpec("ARC-Easy", ("arc-e", "arc_e", "arc-easy", "arc_easy"), _numbered("answer", 5), "Answer"),
        TaskSpec(
            "ARC-Challenge", ("arc-c", "arc_c", "arc-challenge", "arc_challenge"), _numbered("answer", 5), "Answer"
        ),
        TaskSpec("openbookqa", ("obqa", "openbookqa"), _numbered("answer", 5), "Answer"),
        TaskSpec(BUILTIN_TASK, ("builtin",), ("true", "false", *_numbered("answer", 4), *_numbered("option", 2)), None),
    )
}


def register_task(spec: TaskSpec) -> None:
    """Add (or replace) a downstream task in the LLM-Adapters format under `spec.name`."""
    if not spec.vocabulary or spec.cloze_style not in ("cloze", "continuation", "blank"):
        raise ValueError(
            f"Task {spec.name!r}: needs an answer vocabulary and a cloze style of cloze, continuation or blank."
        )
    TASKS[spec.name] = spec


# The study's eight tasks, in the order of its tables.
STUDY_TASKS = ("boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa")


@dataclass(frozen=True)
class TaskItem:
    """One downstream question.

    `labels` are the answer words of this item in order (e.g. answer1..answer4), `options` the option
    texts in the same order, `stem` the question without the preamble, options and answer-format line.
    """

    task: str
    item_id: str
    instruction: str
    input: str
    answer: str
    labels: tuple[str, ...]
    options: tuple[str, ...]
    stem: str
    cloze_style: str = "cloze"

    @property
    def answer_index(self) -> int:
        return self.labels.index(self.answer)


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca / LLM-Adapters prompt the fine-tuning corpus uses, ending where the response starts."""
    return format_prompt(InstructionExample(instruction, input_text, ""), with_response=False)


def task_spec(name: str) -> TaskSpec:
    """Look a task up by folder name or alias (case-insensitive)."""
    wanted = name.strip().lower()
    for spec in TASKS.values():
        if wanted == spec.name.lower() or wanted in spec.aliases:
            return spec
    known = ", ".join(f"{s.name} ({'/'.join(s.aliases)})" for s in TASKS.values())
    raise ValueError(f"Unknown downstream task {name!r}. Known tasks (aliases): {known}.")


def task_path(name: str, data_dir: str | Path | None) -> Path | None:
    """Where a task's test.json lives (None for the built-in task).

    `data_dir` may be the LLM-Adapters eval folder itself or a data root holding `commonsense/eval`.
    """
    spec = task_spec(name)
    if spec.name == BUILTIN_TASK:
        return None
    if data_dir is None:
        raise FileNotFoundError(
            f"Task {spec.name!r} needs its LLM-Adapters test file; pass data_dir (the folder holding "
            f"{spec.name}/test.json, or a data root with commonsense/eval/), or use the {BUILTIN_TASK!r} task."
        )
    root = Path(data_dir)
    if not (root / spec.name).is_dir() and (root / "commonsense" / "eval").is_dir():
        root = root / "commonsense" / "eval"
    return root / spec.name / "test.json"


def task_available(name: str, data_dir: str | Path | None) -> bool:
    """True when `load_task(name, data_dir)` will find its file (always for the built-in task)."""
    spec = task_spec(name)
    if spec.name == BUILTIN_TASK:
        return True
    if data_dir is None:
        return False
    path = task_path(name, data_dir)
    return path is not None and path.is_file()


def load_task(name: str, data_dir: str | Path | None, limit: int | None = None) -> list[TaskItem]:
    """Load and validate a task's items (the first `limit` when given)."""
    spec = task_spec(name)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    if spec.name == BUILTIN_TASK:
        items = builtin_task_items()
        return items[:limit] if limit is not None else items
    path = task_path(name, data_dir)
    assert path is not None
    if not path.is_file():
        raise FileNotFoundError(
            f"Task {spec.name!r}: no file {path}. Expected the LLM-Adapters file dataset/{spec.name}/test.json "
            f"there; check data_dir or drop {spec.name!r} from the task list."
        )
    records = read_json_records(path)
    if limit is not None:
        records = records[:limit]
    return [_parse_item(spec, record, str(path), index) for index, record in enumerate(records)]


_PREAMBLE = re.compile(r"^\s*Please [^:]*:\s*")
_FORMAT_LINE = re.compile(r"Answer format:\s*(\S+)\s*$")


def _parse_item(spec: TaskSpec, record: dict, source: str, index: int) -> TaskItem:
    for key in ("instruction", "answer"):
        value = record.get(key)
        if not isinstance(value, str) or not value.strip():
            raise DataFormatError(source, index, key, "missing, not a string, or empty")
    input_text = record.get("input", "")
    if not isinstance(input_text, str):
        raise DataFormatError(source, index, "input", "expected a string")
    instruction: str = record["instruction"]
    answer = record["answer"].strip().lower()
    format_match = _FORMAT_LINE.search(instruction)
    labels = tuple(format_match.group(1).lower().split("/")) if format_match else spec.vocabulary
    unknown = [label for label in labels if label not in spec.vocabulary]
    if unknown:
        raise DataFormatError(
            source,
            index,
            "instruction",
            f"answer format lists {unknown}, not in the {spec.name} vocabulary {spec.vocabulary}",
        )
    if answer not in labels:
        raise DataFormatError(source, index, "answer", f"gold answer {answer!r} is not one of the options {labels}")
    body = instruction[: format_match.start()] if format_match else instruction
    stem, options = _split_options(spec, body, labels, source, index)
    return TaskItem(
        spec.name, f"{spec.name}-{index}", instruction, input_text, answer, labels, options, stem, spec.cloze_style
    )


def _split_options(
    spec: TaskSpec, body: str, labels: tuple[str, ...], source: str, index: int
) -> tuple[str, tuple[str, ...]]:
    if spec.option_marker is None:
        return _PREAMBLE.sub("", body).strip(), labels
    marks = list(re.finditer(rf"{spec.option_marker}(\d+):\s*", body))
    numbers = [int(m.group(1)) for m in marks]
    if numbers != list(range(1, len(labels) + 1)):
        raise DataFormatError(
            source,
            index,
            "instruction",
            f"expected options {spec.option_marker}1..{spec.option_marker}{len(labels)} in order, "
            f"found numbers {numbers}",
        )
    ends = [m.start() for m in marks[1:]] + [len(body)]
    options = tuple(body[m.end() : end].strip() for m, end in zip(marks, ends, strict=True))
    if any(not option for option in options):
        raise DataFormatError(source, index, "instruction", "an option text is empty")
    return _PREAMBLE.sub("", body[: marks[0].start()]).strip(), options


def builtin_task_items(n_per_kind: int = 16, seed: int = 0) -> list[TaskItem]:
    """A small generated commonsense set (true/false, 4-way choice, fill-the-blank) for offline smoke runs.

    Deterministic given `seed`; written in the LLM-Adapters format so every evaluation mode runs on it.
    """
    rng = random.Random(seed)
    records: list[tuple[str, str, tuple[str, ...], tuple[str, ...], str, str]] = []
    for _ in range(n_per_kind):
        a, b = rng.sample(range(2, 60), 2)
        question = f"is {a} larger than {b}?"
        instruction = (
            "Please answer the following question with true or false, question: "
            f"{question}\n\nAnswer format: true/false"
        )
        records.append(
            (instruction, "true" if a > b else "false", ("true", "false"), ("true", "false"), question, "cloze")
        )
    for _ in range(n_per_kind):
        numbers = rng.sample(range(1, 100), 4)
        largest = numbers.index(max(numbers)) + 1
        question = "Which of these numbers is the largest?"
        options = tuple(str(n) for n in numbers)
        listed = " ".join(f"Answer{i}: {n}" for i, n in enumerate(options, 1))
        instruction = (
            f"Please choose the correct answer to the question: {question}\n\n{listed}\n\n"
            "Answer format: answer1/answer2/answer3/answer4"
        )
        records.append((instruction, f"answer{largest}", _numbered("answer", 4), options, question, "cloze"))
    names = ["Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo"]
    for _ in range(n_per_kind):
        tall, short = rng.sample(names, 2)
        first, second = (tall, short) if rng.random() < 0.5 else (short, tall)
        relation = "taller" if first == tall else "shorter"
        sentence = f"{first} is {relation} than {second}, so _ can reach the top shelf more easily."
        instruction = (
            "Please choose the correct answer to fill in the blank to complete the given sentence: "
            f"{sentence}\n\nOption1: {first} Option2: {second} Answer format: option1/option2"
        )
        answer = "option1" if tall == first else "option2"
        records.append((instruction, answer, _numbered("option", 2), (first, second), sentence, "blank"))
    return [
        TaskItem(BUILTIN_TASK, f"{BUILTIN_TASK}-{i}", instruction, "", answer, labels, options, stem, style)
        for i, (instruction, answer, labels, options, stem, style) in enumerate(records)
    ]
