"""`editdecay verify`: planted successes and failures give the right verdicts, exit codes and reports."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import test_edit_support
from editdecay.cli import app
from editdecay.data import EditRequest
from editdecay.durability.verify import junit_xml, markdown, verify_edits
from tiny import tiny_model, tiny_tokenizer

single_thread = test_edit_support.single_thread  # autouse
CANDIDATES = [" Paris", " the", " is", " of", " capital", " plays", " in", " answer"]  # one token each here
SUBJECTS = ["France", "Italy", "Spain", "Germany"]


def _first_token_logprob(model, tokenizer, prompt: str, target: str) -> float:
    """An independent reference: the model's own next-token log-probability of a one-token target."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    (target_id,) = tokenizer(target, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].float()
    return float(torch.log_softmax(logits, -1)[target_id])


def planted_requests(model, tokenizer, fail: set[int]) -> list[EditRequest]:
    """Per subject, target_new is the one-token candidate the model prefers most (a planted success) or least (a
    planted failure, for indices in `fail`); target_true is the other extreme."""
    singles = [c for c in CANDIDATES if len(tokenizer(c, add_special_tokens=False)["input_ids"]) == 1]
    assert len(singles) >= 2, "the tiny tokenizer must keep some candidates as one token"
    requests = []
    for i, subject in enumerate(SUBJECTS):
        prompt = f"The capital of {subject} is"
        ranked = sorted(singles, key=lambda c: _first_token_logprob(model, tokenizer, prompt, c))
        best, worst = ranked[-1], ranked[0]
        new, true = (worst, best) if i in fail else (best, worst)
        requests.append(EditRequest(f"c{i}", subject, "The capital of {} is", new.strip(), true.strip()))
    return requests


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama"), tiny_tokenizer(add_bos=True)


def test_verdicts_follow_the_planted_outcomes_and_thresholds(tiny) -> None:
    model, tokenizer = tiny
    requests = planted_requests(model, tokenizer, fail={1})
    result = verify_edits(model, tokenizer, requests)
    assert result.edits["success"].tolist() == [True, False, True, True]
    assert (result.edits["margin"] > 0).tolist() == [True, False, True, True]
    assert result.summary["surviving"] == 3 and not result.passed
    assert verify_edits(model, tokenizer, requests, min_success=0.75).passed
    assert not verify_edits(model, tokenizer, requests, min_success=0.76).passed
    # the control set's threshold: planted failures are facts the model does know (target_true preferred)
    control = verify_edits(model, tokenizer, requests[:1], control=requests, min_success=1.0, min_control=0.25)
    assert control.summary["control_known"] == 1 and control.passed
    assert not verify_edits(model, tokenizer, requests[:1], control=requests, min_control=0.5).passed


def test_before_columns_count_broken_edits(tiny) -> None:
    model, tokenizer = tiny
    requests = planted_requests(model, tokenizer, fail=set())
    other = tiny_model("llama", seed=1)
    result = verify_edits(other, tokenizer, requests, before=model)
    assert result.edits["success_before"].all()
    assert result.summary["broken"] == int((~result.edits["success"]).sum())


def test_junit_xml_has_one_case_per_edit_and_marks_failures(tiny) -> None:
    model, tokenizer = tiny
    requests = planted_requests(model, tokenizer, fail={0, 3})
    result = verify_edits(model, tokenizer, requests, control=requests[:2])
    root = ET.fromstring(junit_xml(result))
    edits, control = root.findall("testsuite")
    assert edits.get("name") == "edits" and edits.get("tests") == "4" and edits.get("failures") == "2"
    failed = [case.get("name") for case in edits.findall("testcase") if case.find("failure") is not None]
    assert failed == ["c0", "c3"]
    assert control.get("tests") == "2" and control.get("failures") == "1"  # c0's true target is preferred
    text = markdown(result)
    assert len(re.findall(r"^\| c\d \|", text, flags=re.M)) == 6 and "FAIL: 2/4 edits hold" in text


def _write(tmp_path: Path, model, tokenizer, requests: list[EditRequest]) -> tuple[Path, Path]:
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "edits.json"
    records = [
        {"case_id": r.case_id, "subject": r.subject, "template": r.template, "target_new": r.target_new,
         "target_true": r.target_true}
        for r in requests
    ]  # fmt: skip
    data.write_text(json.dumps(records))
    return model_dir, data


def test_cli_exit_codes_and_report_files(tmp_path: Path, tiny) -> None:
    model, tokenizer = tiny
    model_dir, data = _write(tmp_path, model, tokenizer, planted_requests(model, tokenizer, fail={2}))
    runner = CliRunner()
    common = ["verify", "--model", str(model_dir), "--dataset", str(data)]
    failing = runner.invoke(app, [*common, "--junit", str(tmp_path / "j.xml"), "--json", str(tmp_path / "v.json")])
    assert failing.exit_code == 1, failing.output
    assert "FAIL: 3/4 edits hold" in failing.output
    report = json.loads((tmp_path / "v.json").read_text())
    assert [e["success"] for e in report["edits"]] == [True, True, False, True]
    assert ET.parse(tmp_path / "j.xml").getroot().find("testsuite").get("failures") == "1"
    passing = runner.invoke(app, [*common, "--min-success", "0.75", "--markdown", str(tmp_path / "v.md")])
    assert passing.exit_code == 0, passing.output
    assert (tmp_path / "v.md").read_text().startswith("# editdecay verify")
    assert runner.invoke(app, [*common, "--min-success", "1.5"]).exit_code == 2
    assert runner.invoke(app, ["verify", "--model", str(model_dir)]).exit_code == 2  # no edits to verify
    assert runner.invoke(app, [*common, "--patch", str(tmp_path / "missing")]).exit_code == 2
