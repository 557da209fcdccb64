"""`verify`: a regression test for edits. Scores each edit (and optional control facts) on a model, compares
with the model before its last change, and decides pass/fail against thresholds; writes the verdict for people
(terminal, Markdown) and for CI systems (JSON, JUnit XML with one test case per edit).

Success is the evaluation path's own rule (docs/algorithms.md §3, `edit_metrics`); the margin is
nll(target_true) - nll(target_new) on the rewrite prompt, in nats per token (> 0: the new target is preferred).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from editdecay.data import EditRequest
from editdecay.evaluation.edit_metrics import edit_metrics
from editdecay.evaluation.edit_scoring import score_edits
from editdecay.storage import atomic_write_json, atomic_write_text

EDIT_COLUMNS = ["case_id", "prompt", "target_new", "target_true", "success", "margin", "answer"]


@dataclass
class VerifyResult:
    """Per-edit and per-control-fact tables, and the summary with the verdict (`passed`)."""

    edits: pd.DataFrame
    control: pd.DataFrame | None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.summary["passed"])


def _per_edit(model: nn.Module, tokenizer: Any, requests: Sequence[EditRequest], batch_size: int) -> pd.DataFrame:
    table = score_edits(model, tokenizer, requests, batch_size=batch_size, progress=False)
    metrics = edit_metrics(table)
    rewrite = table[table["kind"] == "rewrite"].groupby("case_id", sort=False).first()
    out = metrics[["case_id", "target_new", "target_true", "success", "knows_true", "answer"]].copy()
    out["prompt"] = rewrite["prompt"].reindex(out["case_id"]).to_numpy()
    out["margin"] = (rewrite["nll_true"] - rewrite["nll_new"]).reindex(out["case_id"]).to_numpy(dtype=float)
    out["success"] = out["success"].astype(bool)
    out["knows_true"] = out["knows_true"].astype(bool)
    return out


def verify_edits(
    model: nn.Module,
    tokenizer: Any,
    requests: Sequence[EditRequest],
    control: Sequence[EditRequest] = (),
    *,
    before: nn.Module | None = None,
    min_success: float = 1.0,
    min_control: float = 0.0,
    batch_size: int = 32,
) -> VerifyResult:
    """Pass when the share of successful edits is >= min_success and the share of control facts still known is
    >= min_control. `before` (the model before its last change, e.g. Med for a fine-tuned model) adds each edit's
    success and answer there."""
    if not requests:
        raise ValueError("verify needs at least one edit request.")
    for name, value in (("min_success", min_success), ("min_control", min_control)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    edits = _per_edit(model, tokenizer, requests, batch_size)[[*EDIT_COLUMNS]]
    if before is not None:
        earlier = _per_edit(before, tokenizer, requests, batch_size).set_index("case_id")
        edits["success_before"] = earlier["success"].reindex(edits["case_id"]).to_numpy()
        edits["answer_before"] = earlier["answer"].reindex(edits["case_id"]).to_numpy()
    control_table = None
    if control:
        facts = _per_edit(model, tokenizer, control, batch_size)
        control_table = facts[["case_id", "prompt", "target_true", "knows_true", "answer"]].copy()
    success_rate = float(edits["success"].mean())
    control_rate = float(control_table["knows_true"].mean()) if control_table is not None else None
    passed = success_rate >= min_success and (control_rate is None or control_rate >= min_control)
    summary: dict[str, Any] = {
        "n_edits": len(edits),
        "surviving": int(edits["success"].sum()),
        "success_rate": success_rate,
        "min_success": min_success,
        "n_control": 0 if control_table is None else len(control_table),
        "control_known": None if control_table is None else int(control_table["knows_true"].sum()),
        "control_known_rate": control_rate,
        "min_control": min_control if control_table is not None else None,
        "passed": passed,
        "success_definition": "the rewrite prompt prefers target_new (docs/algorithms.md §3, per metric family)",
    }
    if before is not None:
        summary["successful_before"] = int(edits["success_before"].sum())
        summary["broken"] = int((edits["success_before"] & ~edits["success"]).sum())
    return VerifyResult(edits, control_table, summary)


def _records(table: pd.DataFrame | None) -> list[dict[str, Any]]:
    if table is None:
        return []
    records = json.loads(table.to_json(orient="records"))
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in records]


def write_json(result: VerifyResult, path: str | Path) -> Path:
    payload = {"summary": result.summary, "edits": _records(result.edits), "control": _records(result.control)}
    atomic_write_json(Path(path), payload)
    return Path(path)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def summary_line(result: VerifyResult) -> str:
    s = result.summary
    line = f"{'PASS' if s['passed'] else 'FAIL'}: {s['surviving']}/{s['n_edits']} edits hold "
    line += f"({100 * s['success_rate']:.1f}%, required {100 * s['min_success']:.1f}%)"
    if s["control_known_rate"] is not None:
        line += f"; control facts known {s['control_known']}/{s['n_control']} ({100 * s['control_known_rate']:.1f}%"
        line += f", required {100 * s['min_control']:.1f}%)"
    if "broken" in s:
        line += f"; broken since before: {s['broken']} of {s['successful_before']}"
    return line


def markdown(result: VerifyResult) -> str:
    columns = [c for c in (*EDIT_COLUMNS, "success_before", "answer_before") if c in result.edits.columns]
    lines = ["# editdecay verify", "", summary_line(result), "", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for _, row in result.edits.iterrows()]
    if result.control is not None:
        control_columns = list(result.control.columns)
        lines += ["", "## Control facts", "", "| " + " | ".join(control_columns) + " |"]
        lines.append("|" + "---|" * len(control_columns))
        lines += [
            "| " + " | ".join(_cell(row[c]) for c in control_columns) + " |" for _, row in result.control.iterrows()
        ]
    return "\n".join(lines) + "\n"


def write_markdown(result: VerifyResult, path: str | Path) -> Path:
    atomic_write_text(Path(path), markdown(result))
    return Path(path)


def junit_xml(result: VerifyResult) -> str:
    """JUnit XML: suite `edits` with one test case per edit (failed when the edit does not hold) and suite
    `control` with one per control fact (failed when it is no longer known)."""
    root = ET.Element("testsuites", name="editdecay verify")
    suites = [("edits", result.edits, "success")]
    if result.control is not None:
        suites.append(("control", result.control, "knows_true"))
    for suite_name, table, ok_column in suites:
        failures = int((~table[ok_column].astype(bool)).sum())
        suite = ET.SubElement(root, "testsuite", name=suite_name, tests=str(len(table)), failures=str(failures))
        for _, row in table.iterrows():
            target = row["target_new"] if suite_name == "edits" else row["target_true"]
            case = ET.SubElement(suite, "testcase", classname=f"editdecay.{suite_name}", name=f"{row['case_id']}")
            ET.SubElement(case, "system-out").text = f"{row['prompt']} -> {target!r}; answer {row['answer']!r}"
            if not row[ok_column]:
                what = "edit does not hold" if suite_name == "edits" else "control fact no longer known"
                margin = f", margin {row['margin']:.3f} nats/token" if "margin" in table.columns else ""
                failure = ET.SubElement(case, "failure", message=f"{what}: {row['prompt']!r} -> {target!r}")
                failure.text = f"answer {row['answer']!r}{margin}"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(result: VerifyResult, path: str | Path) -> Path:
    atomic_write_text(Path(path), junit_xml(result))
    return Path(path)
