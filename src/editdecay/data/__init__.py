"""Typed records and their loaders."""

from editdecay.data.edit_requests import BUILTIN_SUITES, load_edit_requests, read_json_records
from editdecay.data.instruction_corpus import CORPUS_FORMATS, InstructionExample, corpus_id, format_prompt, load_corpus
from editdecay.data.records import DataFormatError, EditRequest, LocalityPrompt, template_from_prompt
from editdecay.data.tasks import (
    BUILTIN_TASK,
    STUDY_TASKS,
    TASKS,
    TaskItem,
    TaskSpec,
    load_task,
    register_task,
    task_available,
)

__all__ = [
    "BUILTIN_SUITES",
    "BUILTIN_TASK",
    "CORPUS_FORMATS",
    "STUDY_TASKS",
    "TASKS",
    "DataFormatError",
    "EditRequest",
    "InstructionExample",
    "LocalityPrompt",
    "TaskItem",
    "TaskSpec",
    "corpus_id",
    "format_prompt",
    "load_corpus",
    "load_edit_requests",
    "load_task",
    "read_json_records",
    "register_task",
    "task_available",
    "template_from_prompt",
]
