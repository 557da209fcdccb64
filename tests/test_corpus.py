"""Fine-tuning corpora: loaders on hand-made records, the Alpaca template, the built-in corpus."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from editdecay.data import DataFormatError, InstructionExample, corpus_id, format_prompt, load_corpus
from editdecay.data.builtin_corpus import CATEGORIES

ALPACA = [
    {
        "instruction": "Is water wet?\n\nAnswer format: true/false",
        "input": "",
        "output": "the correct answer is true",
        "answer": "true",
    },
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "answer": 5},
    {"instruction": "Say hello.", "output": "hello"},
]


def _write(path: Path, records: list, jsonl: bool = False) -> Path:
    text = "\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records)
    path.write_text(text, encoding="utf-8")
    return path


def test_alpaca_loader_reads_fields_and_optional_ones(tmp_path: Path) -> None:
    examples = load_corpus(_write(tmp_path / "train.json", ALPACA))
    assert examples == [
        InstructionExample("Is water wet?\n\nAnswer format: true/false", "", "the correct answer is true", "true"),
        InstructionExample("Add the numbers.", "2 and 3", "5", "5"),
        InstructionExample("Say hello.", "", "hello", None),
    ]


def test_jsonl_prompt_response_and_directory_union(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    (folder / "b").mkdir(parents=True)
    _write(folder / "a.json", ALPACA[:1])
    _write(folder / "b" / "pairs.jsonl", [{"prompt": "Name a color.", "response": "blue"}], jsonl=True)
    (folder / "notes.txt").write_text("ignored")
    examples = load_corpus(folder)
    assert [ex.instruction for ex in examples] == [ALPACA[0]["instruction"], "Name a color."]
    assert examples[1] == InstructionExample("Name a color.", "", "blue", None)


def test_hotpotqa_records_use_supporting_sentences(tmp_path: Path) -> None:
    record = {
        "_id": "x1",
        "question": "Which river is longer?",
        "answer": "the first",
        "context": [["First river", ["It is long.", "It is wide."]], ["Second river", ["It is short."]]],
        "supporting_facts": [["First river", 0], ["Second river", 0]],
    }
    hf_style = {
        "question": "Who wrote it?",
        "answer": "a poet",
        "context": {"title": ["Poem"], "sentences": [["A poet wrote it.", "In spring."]]},
        "supporting_facts": {"title": [], "sent_id": []},
    }
    examples = load_corpus(_write(tmp_path / "hotpot.json", [record, hf_style]))
    context = "First river: It is long.\nSecond river: It is short."
    assert examples[0] == InstructionExample("Which river is longer?", context, "the first", "the first")
    assert examples[1].input == "Poem: A poet wrote it. In spring."


@pytest.mark.parametrize(
    ("record", "field", "problem"),
    [
        ({"instruction": "Q", "input": ""}, "output", "missing"),
        ({"instruction": "  ", "output": "x"}, "instruction", "empty"),
        ({"instruction": "Q", "input": 3, "output": "x"}, "input", "expected a string"),
        ({"instruction": "Q", "output": "x", "answer": ["a"]}, "answer", "expected a string or a number"),
    ],
)
def test_malformed_alpaca_record_names_file_index_and_field(
    tmp_path: Path, record: dict, field: str, problem: str
) -> None:
    path = _write(tmp_path / "bad.json", [ALPACA[0], record])
    with pytest.raises(DataFormatError) as info:
        load_corpus(path)
    err = info.value
    assert (err.source, err.index, err.field_name) == (str(path), 1, field)
    assert problem in str(err) and str(path) in str(err) and "record 1" in str(err)


def test_malformed_hotpotqa_context_and_unknown_format(tmp_path: Path) -> None:
    bad = [{"question": "Q?", "answer": "A", "context": [["title only"]]}]
    with pytest.raises(DataFormatError, match="field 'context'"):
        load_corpus(_write(tmp_path / "h.json", bad))
    with pytest.raises(DataFormatError, match="unrecognised corpus format"):
        load_corpus(_write(tmp_path / "u.json", [{"text": "hello"}]))
    with pytest.raises(DataFormatError, match="line 2"):
        (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "response": "b"}\n{broken\n')
        load_corpus(tmp_path / "broken.jsonl")
    with pytest.raises(FileNotFoundError, match="No corpus at"):
        load_corpus(tmp_path / "missing.json")


def test_seeded_subsampling(tmp_path: Path) -> None:
    records = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(50)]
    path = _write(tmp_path / "many.json", records)
    first = load_corpus(path, max_examples=10, seed=1)
    assert first == load_corpus(path, max_examples=10, seed=1)
    assert first != load_corpus(path, max_examples=10, seed=2)
    order = [int(ex.instruction[1:]) for ex in first]
    assert order == sorted(order) and len(set(order)) == 10
    with pytest.raises(ValueError, match="only 50"):
        load_corpus(path, max_examples=51)


def test_format_prompt_is_the_alpaca_template() -> None:
    plain = InstructionExample("Name a fruit.", "", "a pear", None)
    assert format_prompt(plain, with_response=False) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nName a fruit.\n\n### Response:\n"
    )
    assert format_prompt(plain, with_response=True) == format_prompt(plain, with_response=False) + "a pear"
    with_input = InstructionExample("Add.", "2 and 3", "5", "5")
    assert format_prompt(with_input, with_response=True) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n"
        "### Input:\n2 and 3\n\n### Response:\n5"
    )


def test_corpus_id_tracks_content_subsample_and_seed(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.json", ALPACA)
    base = corpus_id(path)
    assert base == corpus_id(path) and base.startswith("c-")
    assert corpus_id(path, max_examples=2, seed=0) != corpus_id(path, max_examples=2, seed=1)
    assert corpus_id(path, None, seed=0) == corpus_id(path, None, seed=5)  # no subsampling: the seed is unused
    _write(path, ALPACA[:2])
    assert corpus_id(path) != base
    assert corpus_id("builtin").startswith("builtin-v")


ANSWER_FORMAT = re.compile(r"Answer format: ([a-z0-9/]+)$")


def test_builtin_corpus_is_large_deterministic_and_consistent() -> None:
    examples = load_corpus("builtin")
    assert len(examples) >= 3000
    assert examples == load_corpus("builtin")
    assert len({ex.instruction for ex in examples}) == len(examples), "an instruction with two answers"
    for ex in examples:
        assert ex.output == f"the correct answer is {ex.answer}"
        options = ANSWER_FORMAT.search(ex.instruction)
        assert options and ex.answer in options.group(1).split("/"), ex.instruction
    labels = Counter(ex.answer for ex in examples)
    assert abs(labels["true"] - labels["false"]) < 0.1 * (labels["true"] + labels["false"])
    families = Counter(ex.answer.rstrip("0123456789") for ex in examples)
    assert set(families) == {"true", "false", "answer", "solution", "option", "ending"}
    for i in range(1, 5):  # the correct option sits at every position of 4-way questions
        assert labels[f"answer{i}"] > 200


def test_builtin_corpus_facts_are_right() -> None:
    """Spot checks that the generated answers are true facts, not just well-formed labels."""
    by_instruction = {ex.instruction: ex.answer for ex in load_corpus("builtin")}
    boolq = "Please answer the following question with true or false, question: {}?\n\nAnswer format: true/false"
    checks = {
        "is 7 greater than 3": "true",
        "is 3 greater than 7": "false",
        "is 12 an even number": "true",
        "is a hammer a kind of tool": "true",
        "does ice float on water": "true",
        "does a stone float on water": "false",
    }
    found = {q: by_instruction[boolq.format(q)] for q in checks if boolq.format(q) in by_instruction}
    assert len(found) >= 4 and found == {q: checks[q] for q in found}
    for instruction, answer in by_instruction.items():
        sum_question = re.search(r"What is (\d+) plus (\d+)\?\n\n(.*)\n\nAnswer format", instruction)
        if sum_question:
            options = dict(re.findall(r"Answer(\d): (\S+)", sum_question.group(3)))
            assert int(options[answer[-1]]) == int(sum_question.group(1)) + int(sum_question.group(2))


def test_builtin_corpus_never_mentions_edit_subjects() -> None:
    from editdecay.data import load_edit_requests

    subjects: set[str] = set()
    for suite in ("builtin", "builtin-control"):
        try:
            subjects |= {r.subject for r in load_edit_requests(suite)}
        except (FileNotFoundError, OSError) as err:
            pytest.skip(f"built-in edit suite {suite!r} is not written yet ({err})")
    assert subjects
    text = "\n".join(f"{ex.instruction}\n{ex.output}" for ex in load_corpus("builtin")).lower()
    hits = sorted(s for s in subjects if re.search(rf"(?<!\w){re.escape(s.lower())}(?!\w)", text))
    assert not hits, f"built-in corpus mentions edit subjects {hits}"


def test_builtin_vocabulary_has_no_proper_nouns() -> None:
    for items in CATEGORIES.values():
        assert all(item == item.lower() for item in items)


def test_commonsense_train_parts(shared_data: Path) -> None:
    parts = shared_data / "commonsense" / "train_parts"
    boolq = load_corpus(parts / "boolq" / "train.json")
    assert len(boolq) == 9427 and boolq[0].answer == "true"
    assert boolq[0].output == "the correct answer is true"
    everything = load_corpus(parts, max_examples=500, seed=3)
    assert len(everything) == 500
    assert {ex.answer.rstrip("0123456789") for ex in everything} <= {"true", "false", "answer"}
    assert corpus_id(parts, 500, 3) == corpus_id(parts, 500, 3)
