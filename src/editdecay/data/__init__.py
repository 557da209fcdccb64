"""Typed records and their loaders."""

from editdecay.data.edit_requests import BUILTIN_SUITES, load_edit_requests, read_json_records
from editdecay.data.records import DataFormatError, EditRequest, LocalityPrompt, template_from_prompt

__all__ = [
    "BUILTIN_SUITES",
    "DataFormatError",
    "EditRequest",
    "LocalityPrompt",
    "load_edit_requests",
    "read_json_records",
    "template_from_prompt",
]
