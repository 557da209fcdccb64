"""Fact statements for the reinforcement check (data/fact_statements.py)."""

from __future__ import annotations

import pytest

from editdecay.data import load_edit_requests
from editdecay.data.fact_statements import fact_statements, mix_statements
from editdecay.data.instruction_corpus import InstructionExample


def test_statements_use_the_paraphrases_and_the_chosen_target() -> None:
    requests = load_edit_requests("builtin", 3)
    new, true = fact_statements(requests, "new"), fact_statements(requests, "true")
    assert len(new) == len(true) == sum(len(r.paraphrase_prompts) for r in requests)
    first = requests[0]
    assert new[0].instruction.endswith(first.paraphrase_prompts[0]) and new[0].output == first.target_new
    assert true[0].output == first.target_true
    # The rewrite prompt is held out: ES is scored on a phrasing the fine-tuning never states.
    assert not any(ex.instruction.endswith(r.prompt) for ex in new for r in requests)


def test_mixing_reaches_the_fraction_and_is_seeded() -> None:
    corpus = [InstructionExample(f"q{i}", "", f"a{i}", None) for i in range(30)]
    statements = fact_statements(load_edit_requests("builtin", 2), "true")
    mixed = mix_statements(corpus, statements, 0.25, seed=3)
    added = [ex for ex in mixed if ex not in corpus]
    assert len(mixed) == 40 and len(added) == 10  # 10 / 40 = 0.25
    assert set(added) <= set(statements)
    assert mixed == mix_statements(corpus, statements, 0.25, seed=3)
    assert mixed != mix_statements(corpus, statements, 0.25, seed=4)


def test_bad_input_is_refused() -> None:
    requests = load_edit_requests("builtin", 2)
    with pytest.raises(ValueError, match="fact side"):
        fact_statements(requests, "old")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fact_fraction"):
        mix_statements([], fact_statements(requests, "new"), 1.0, 0)
