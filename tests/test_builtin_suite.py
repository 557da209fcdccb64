"""The built-in edit suite (`builtin`, edits.json) and its control set (`builtin-control`, control.json).

Conventions, CounterFact style:
- An edit asks `template.format(subject)` to complete with `target_new` instead of the true `target_true`;
  `target_new` is a wrong object of the same type (another capital, another language, ...). Targets are
  stored without a leading space (scorers add one); templates and prompts carry no outer whitespace.
- Paraphrases are other wordings of the same question about the same subject.
- Neighbourhood prompts are about OTHER subjects of the same relation, never edited. Where the relation lets
  objects be shared, they share the edit's true object (other Spanish-speaking countries for "Spain ->
  Spanish", other footballers for "Messi -> soccer"); where the true object is unique (capitals, most
  currencies) they are other subjects with their own answers, stored per prompt. A neighbourhood answer never
  equals target_new, so neighbourhood success is nll(answer) < nll(target_new) on the neighbour prompt.
- Controls are known facts that are never edited: their subjects are disjoint from the edits' subjects, and
  no edited subject occurs in any control prompt, neighbourhood prompt or other edit's prompt.
- Every fact was kept because SmolLM2-135M knows it (scripts/build_builtin_suite.py); the slow test below
  re-measures that on the edit prompts.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import pytest
import torch

from editdecay.data import EditRequest, load_edit_requests
from tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def edits() -> list[EditRequest]:
    return load_edit_requests("builtin")


@pytest.fixture(scope="module")
def controls() -> list[EditRequest]:
    return load_edit_requests("builtin-control")


def _mentions(text: str, subject: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(subject)}(?!\w)", text) is not None


def _check_texts(request: EditRequest) -> None:
    texts = [
        request.subject,
        request.template,
        request.target_true,
        request.target_new,
        *request.paraphrase_prompts,
        *(n.prompt for n in request.neighborhood),
        *(n.answer for n in request.neighborhood),
    ]
    for text in texts:
        assert text and text == text.strip(), f"{request.case_id}: outer whitespace or empty text in {text!r}"
    for prompt in (request.prompt, *request.paraphrase_prompts):
        assert request.subject in prompt, f"{request.case_id}: subject missing from {prompt!r}"


def test_edit_suite_shape(edits: list[EditRequest]) -> None:
    assert len(edits) >= 150
    relations = Counter(r.relation_id for r in edits)
    assert len(relations) >= 10 and all(relations.values())
    assert len({r.case_id for r in edits}) == len(edits)
    assert all(re.fullmatch(r"bi-\d{4}", r.case_id) for r in edits)
    assert len({r.subject for r in edits}) == len(edits), "an edit subject occurs twice"
    for request in edits:
        _check_texts(request)
        assert request.target_true and request.target_new != request.target_true
        assert len(request.paraphrase_prompts) >= 2, request.case_id
        assert len(request.neighborhood) >= 3, request.case_id
        for neighbor in request.neighborhood:
            assert neighbor.answer != request.target_new, f"{request.case_id}: {neighbor}"
            assert not _mentions(neighbor.prompt, request.subject), f"{request.case_id}: {neighbor}"
    print("edits per relation:", dict(sorted(relations.items())))


def test_control_set_shape(edits: list[EditRequest], controls: list[EditRequest]) -> None:
    assert len(controls) >= 100
    assert len({r.case_id for r in controls}) == len(controls)
    assert all(re.fullmatch(r"bc-\d{4}", r.case_id) for r in controls)
    assert not {r.subject for r in controls} & {r.subject for r in edits}
    for request in controls:
        _check_texts(request)
        assert request.target_true and request.target_new != request.target_true
        assert len(request.paraphrase_prompts) >= 1, request.case_id
    print("controls per relation:", dict(sorted(Counter(r.relation_id for r in controls).items())))


def test_no_other_prompt_mentions_an_edited_subject(edits: list[EditRequest], controls: list[EditRequest]) -> None:
    """Editing one subject must not touch the prompts that measure locality or general forgetting."""
    for edit in edits:
        for other in edits + controls:
            prompts = [n.prompt for n in other.neighborhood]
            if other is not edit:
                prompts += [other.prompt, *other.paraphrase_prompts]
            hits = [p for p in prompts if _mentions(p, edit.subject)]
            assert not hits, f"edited subject {edit.subject!r} ({edit.case_id}) occurs in {other.case_id}: {hits}"


def _target_nll(
    model: Any, tokenizer: Any, items: list[tuple[str, list[str]]], batch_size: int = 64
) -> list[list[float]]:
    """Mean per-token NLL of " " + each target after its prompt, teacher forced (no BOS is added to targets).

    A single-token target is read at the prompt's last position, so a prompt needs one sequence per
    multi-token target, or only itself when every target is one token. Sequences are right padded and only
    the target positions go through the output head.
    """
    rows: list[tuple[list[int], list[tuple[int, int, list[int], int]]]] = []  # ids, (item, target, ids, n_prompt)
    for k, (prompt, targets) in enumerate(items):
        prompt_ids = tokenizer(prompt).input_ids
        tasks = [
            (k, j, tokenizer(" " + t, add_special_tokens=False).input_ids, len(prompt_ids))
            for j, t in enumerate(targets)
        ]
        single = [task for task in tasks if len(task[2]) == 1]
        multi = [task for task in tasks if len(task[2]) > 1]
        rows.append((prompt_ids + (multi[0][2] if multi else []), multi[:1] + single))
        rows += [(prompt_ids + task[2], [task]) for task in multi[1:]]
    scores = [[0.0] * len(targets) for _, targets in items]
    rows.sort(key=lambda row: len(row[0]))
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        row_idx, pos_idx, token_ids, task_idx, tasks = [], [], [], [], []
        for r, (ids, row_tasks) in enumerate(batch):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
            for k, j, target, n_prompt in row_tasks:
                row_idx += [r] * len(target)
                pos_idx += range(n_prompt - 1, n_prompt - 1 + len(target))  # logits at t-1 predict token t
                token_ids += target
                task_idx += [len(tasks)] * len(target)
                tasks.append((k, j, len(target)))
        with torch.no_grad():
            hidden = model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            logits = model.get_output_embeddings()(hidden[row_idx, pos_idx]).float()
        token_nll = -logits.log_softmax(-1)[torch.arange(len(token_ids)), token_ids]
        sums = torch.zeros(len(tasks)).index_add_(0, torch.tensor(task_idx), token_nll)
        for (k, j, length), total in zip(tasks, sums.tolist(), strict=True):
            scores[k][j] = total / length
    return scores


def test_target_nll_matches_one_sequence_per_target() -> None:
    """The shared-prompt scorer equals scoring each (prompt, target) pair on its own, BOS included."""
    model, tokenizer = tiny_model("llama", seed=3), tiny_tokenizer(add_bos=True)
    items = [
        ("The capital of France is", ["Paris", "Rome", "a"]),
        ("Messi plays", ["soccer"]),
        ("Jordan plays", ["basketball", "tennis"]),
        ("x", ["y", "a"]),
    ]
    expected = []
    for prompt, targets in items:
        row = []
        for target in targets:
            prompt_ids = tokenizer(prompt).input_ids
            target_ids = tokenizer(" " + target, add_special_tokens=False).input_ids
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt_ids + target_ids])).logits[0]
            logp = logits[len(prompt_ids) - 1 : -1].log_softmax(-1)
            row.append(-logp[torch.arange(len(target_ids)), target_ids].mean().item())
        expected.append(row)
    assert any(len(tokenizer(" " + t, add_special_tokens=False).input_ids) == 1 for _, ts in items for t in ts)
    got = _target_nll(model, tokenizer, items, batch_size=3)
    assert len(got) == len(expected)
    for got_row, expected_row in zip(got, expected, strict=True):
        assert got_row == pytest.approx(expected_row, abs=1e-5)


@pytest.mark.slow
def test_smollm2_prefers_the_true_targets(smollm2: Any, edits: list[EditRequest], controls: list[EditRequest]) -> None:
    """The unedited model prefers target_true over target_new on >= 80% of edit and control prompts."""
    model, tokenizer = smollm2
    start = time.perf_counter()
    rates = {}
    for name, requests in (("edits", edits), ("controls", controls)):
        nll = _target_nll(model, tokenizer, [(r.prompt, [r.target_true, r.target_new]) for r in requests])
        prefers = [true < new for true, new in nll]
        per_relation: dict[str, list[bool]] = {}
        for request, ok in zip(requests, prefers, strict=True):
            per_relation.setdefault(str(request.relation_id), []).append(ok)
        rates[name] = sum(prefers) / len(prefers)
        print(
            f"{name}: SmolLM2-135M prefers target_true on {sum(prefers)}/{len(prefers)} = {rates[name]:.3f}; "
            + ", ".join(f"{rel} {sum(v)}/{len(v)}" for rel, v in sorted(per_relation.items()))
        )
    print(f"scored {len(edits) + len(controls)} prompts in {time.perf_counter() - start:.1f} s")
    assert rates["edits"] >= 0.8 and rates["controls"] >= 0.8, rates
