"""Downstream tasks: loaders (real LLM-Adapters files and a hand-made HellaSwag file), answer extraction,
log-likelihood and generate modes on tiny models with a planted answer, accuracy tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from editdecay.data import DataFormatError, TaskItem
from editdecay.data.tasks import BUILTIN_TASK, STUDY_TASKS, alpaca_prompt, builtin_task_items, task_spec
from editdecay.evaluation import evaluate_tasks, extract_answer, load_task, option_pairs, task_accuracy, task_available
from editdecay.evaluation.downstream import generation_record
from tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

EXPECTED_COUNTS = {
    "boolq": 3270,
    "piqa": 1838,
    "social_i_qa": 1954,
    "winogrande": 1267,
    "ARC-Easy": 2376,
    "ARC-Challenge": 1172,
    "openbookqa": 500,
}


def test_every_shared_record_parses(shared_data: Path) -> None:
    eval_dir = shared_data / "commonsense" / "eval"
    for task, count in EXPECTED_COUNTS.items():
        items = load_task(task, shared_data)  # a data root holding commonsense/eval works too
        assert len(items) == count
        for item in items:
            assert item.answer in item.labels and len(item.options) == len(item.labels) and item.stem
    assert not task_available("hellaswag", eval_dir) and task_available("piqa", eval_dir)
    wino = load_task("winogrande", eval_dir, limit=1)[0]
    assert wino.options == ("Sarah", "Maria") and "_" in wino.stem and wino.answer == "option2"
    piqa = load_task("piqa", eval_dir, limit=1)[0]
    assert piqa.stem == "How do I ready a guinea pig cage for it's new occupants?"
    assert piqa.options[0].endswith(
        "ripped paper strips, you will also need to supply it with a water bottle and a food dish."
    )
    siqa = load_task("siqa", eval_dir, limit=1)[0]
    assert siqa.labels == ("answer1", "answer2", "answer3") and siqa.options[2] == "Find somewhere to go"
    boolq = load_task("boolq", eval_dir, limit=1)[0]
    assert boolq.options == ("true", "false") and boolq.stem.startswith("does ethanol take more energy")


HELLASWAG = [
    {
        "instruction": "Please choose the correct ending to complete the given sentence: Making tea: A woman fills a "
        "kettle with water. she\n\nEnding1: puts the kettle on the stove. Ending2: throws the kettle "
        "into a lake. Ending3: paints the kettle blue while singing. Ending4: sells the water to a "
        "passing cyclist.\n\nAnswer format: ending1/ending2/ending3/ending4",
        "input": "",
        "output": "the correct answer is ending1",
        "answer": "ending1",
    },
    {
        "instruction": "Please choose the correct ending to complete the given sentence: Riding a bike: A boy climbs "
        "onto a bicycle. he\n\nEnding1: eats the handlebars. Ending2: folds the bike into a letter. "
        "Ending3: starts pedaling down the street. Ending4: becomes a tree.\n\nAnswer format: "
        "ending1/ending2/ending3/ending4",
        "input": "",
        "output": "the correct answer is ending3",
        "answer": "ending3",
    },
]


def test_hellaswag_loader_on_handmade_file(tmp_path: Path) -> None:
    (tmp_path / "hellaswag").mkdir()
    (tmp_path / "hellaswag" / "test.json").write_text(json.dumps(HELLASWAG))
    items = load_task("hellaswag", tmp_path)
    assert [i.answer for i in items] == ["ending1", "ending3"]
    assert items[0].stem == "Making tea: A woman fills a kettle with water. she"
    assert items[0].options == (
        "puts the kettle on the stove.",
        "throws the kettle into a lake.",
        "paints the kettle blue while singing.",
        "sells the water to a passing cyclist.",
    )
    assert items[1].cloze_style == "continuation" and items[1].item_id == "hellaswag-1"
    assert option_pairs(items[0], "cloze")[0] == (items[0].stem, " puts the kettle on the stove.")
    assert len(load_task("hellaswag", tmp_path, limit=1)) == 1


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "hellaswag" / "test.json")):
        load_task("hellaswag", tmp_path)
    with pytest.raises(FileNotFoundError, match="pass data_dir"):
        load_task("boolq", None)
    assert task_available(BUILTIN_TASK, None) and not task_available("boolq", None)
    (tmp_path / "hellaswag").mkdir()
    bad = dict(HELLASWAG[0], answer="ending7")
    (tmp_path / "hellaswag" / "test.json").write_text(json.dumps([HELLASWAG[1], bad]))
    with pytest.raises(DataFormatError, match=r"record 1, field 'answer'"):
        load_task("hellaswag", tmp_path)
    swapped = dict(HELLASWAG[0], instruction=HELLASWAG[0]["instruction"].replace("Ending2:", "Ending5:"))
    (tmp_path / "hellaswag" / "test.json").write_text(json.dumps([swapped]))
    with pytest.raises(DataFormatError, match="in order"):
        load_task("hellaswag", tmp_path)
    with pytest.raises(ValueError, match="Unknown downstream task"):
        task_spec("mmlu")


def test_aliases_and_registry() -> None:
    assert task_spec("SIQA").name == "social_i_qa" and task_spec("arc-c").name == "ARC-Challenge"
    assert task_spec("obqa").name == "openbookqa" and task_spec("ARC-Easy").name == "ARC-Easy"
    assert all(task_spec(t).name == t for t in STUDY_TASKS)


@pytest.mark.parametrize(
    ("task", "generation", "expected"),
    [
        ("boolq", "the correct answer is true", "true"),
        ("boolq", "False. Ethanol production needs more energy than it gives.", "false"),
        ("boolq", "I am not sure about this one.", None),
        ("piqa", "the correct answer is solution2\n\n### Instruction:", "solution2"),
        ("piqa", "Solution1 is better because paper is absorbent", "solution1"),
        ("social_i_qa", "the correct answer is answer3", "answer3"),
        ("social_i_qa", "answer2, since Tracy needs somewhere to go; answer1 is wrong", "answer2"),
        ("hellaswag", "the correct answer is ending4", "ending4"),
        ("hellaswag", "Ending2: is ripping level tiles off.", "ending2"),
        ("winogrande", "the correct answer is option1", "option1"),
        ("winogrande", "Option2 Maria", "option2"),
        ("ARC-Easy", "the correct answer is answer1", "answer1"),
        ("ARC-Challenge", "Answer4: Planetary gravity will become stronger.", "answer4"),
        ("openbookqa", "the correct answer is answer2 because eating out costs money", "answer2"),
        ("openbookqa", "the correct answer is the second one", None),
    ],
)
def test_answer_extraction_first_hit(task: str, generation: str, expected: str | None) -> None:
    assert extract_answer(task, generation) == expected


@pytest.mark.parametrize(
    ("task", "generation", "lenient", "study"),
    [
        ("boolq", "Answer: True", "true", None),
        ("boolq", "the answer is true", "true", "true"),
        ("boolq", "True, although false is also heard", "true", "false"),
        ("piqa", "Solution1 is worse than solution2", "solution1", "solution2"),
        ("ARC-Easy", "ANSWER3", "answer3", None),
    ],
)
def test_study_extraction_is_case_sensitive(task: str, generation: str, lenient: str | None, study: str | None) -> None:
    assert extract_answer(task, generation) == extract_answer(task, generation, "lenient") == lenient
    assert extract_answer(task, generation, "study") == study


def test_generation_records_name_the_extraction() -> None:
    item = TaskItem(
        "boolq", "b-0", "Is 3 larger than 2?", "", "true", ("true", "false"), ("true", "false"), "Is 3 larger than 2?"
    )
    expected = {
        "task": "boolq",
        "item_id": "b-0",
        "mode": "generate",
        "answer": "true",
        "generation": "Answer: True",
        "num_beams": 4,
    }
    assert generation_record(item, "Answer: True", 4, "lenient") == {
        **expected,
        "prediction": "true",
        "correct": True,
        "answer_extraction": "lenient",
    }
    assert generation_record(item, "Answer: True", 4, "study") == {
        **expected,
        "prediction": None,
        "correct": False,
        "answer_extraction": "study",
    }
    with pytest.raises(ValueError, match="answer_extraction"):
        extract_answer("boolq", "true", "strict")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="answer_extraction"):
        evaluate_tasks(
            None,
            None,
            [BUILTIN_TASK],
            data_dir=None,
            mode="generate",  # type: ignore[arg-type]
            answer_extraction="strict",
        )


def test_option_pairs_styles() -> None:
    wino = TaskItem(
        "winogrande",
        "w-0",
        "",
        "",
        "option2",
        ("option1", "option2"),
        ("Sarah", "Maria"),
        "Sarah was a better surgeon than Maria so _ got the easier cases.",
        "blank",
    )
    assert option_pairs(wino, "cloze") == [
        ("Sarah was a better surgeon than Maria so Sarah", " got the easier cases."),
        ("Sarah was a better surgeon than Maria so Maria", " got the easier cases."),
    ]
    arc = TaskItem("ARC-Easy", "a-0", "Please choose ...", "", "answer1", ("answer1", "answer2"), ("x", "y"), "Q?")
    assert option_pairs(arc, "cloze") == [("Question: Q?\nAnswer:", " x"), ("Question: Q?\nAnswer:", " y")]
    context = alpaca_prompt("Please choose ...") + "the correct answer is"
    assert option_pairs(arc, "label") == [(context, " answer1"), (context, " answer2")]


def _plant(model: torch.nn.Module, tokenizer, texts: list[str], steps: int = 40) -> torch.nn.Module:
    """Make the tiny model likely to produce `texts` (a few Adam steps of language-model training)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model.eval()


ARC_ITEMS = [
    {
        "instruction": "Please choose the correct answer to the question: Which is heavier?\n\nAnswer1: a feather "
        "Answer2: a brick\n\nAnswer format: answer1/answer2",
        "input": "",
        "output": "the correct answer is answer2",
        "answer": "answer2",
    },
    {
        "instruction": "Please choose the correct answer to the question: What do fish live in?\n\nAnswer1: water "
        "Answer2: sand Answer3: air\n\nAnswer format: answer1/answer2/answer3",
        "input": "",
        "output": "the correct answer is answer1",
        "answer": "answer1",
    },
]


@pytest.fixture
def arc_dir(tmp_path: Path) -> Path:
    (tmp_path / "ARC-Easy").mkdir()
    (tmp_path / "ARC-Easy" / "test.json").write_text(json.dumps(ARC_ITEMS))
    return tmp_path


@pytest.mark.parametrize("side", ["left", "right"])
def test_loglik_picks_planted_option(arc_dir: Path, side: str) -> None:
    tokenizer = tiny_tokenizer(add_bos=True, padding_side=side)
    items = load_task("arc-e", arc_dir)
    planted = [c + t for item in items for c, t in [option_pairs(item, "cloze")[item.answer_index]]]
    model = _plant(tiny_model("llama", seed=0), tokenizer, planted)
    records = evaluate_tasks(model, tokenizer, ["ARC-Easy"], data_dir=arc_dir, progress=False, batch_size=2)
    assert records["prediction"].tolist() == ["answer2", "answer1"] and records["correct"].all()
    assert records["correct_sum"].all() and records["correct_mean"].all()
    sums, means = records.loc[0, "loglik_sum"], records.loc[0, "loglik_mean"]
    assert len(sums) == 2 and sums[1] > sums[0] and means[1] > means[0]


def test_generate_mode_reads_planted_answer(arc_dir: Path) -> None:
    tokenizer = tiny_tokenizer(add_bos=True, padding_side="left")
    items = load_task("ARC-Easy", arc_dir)
    model = _plant(
        tiny_model("llama", seed=1),
        tokenizer,
        [alpaca_prompt(i.instruction) + f"the correct answer is {i.answer}</s>" for i in items],
        steps=60,
    )
    greedy = evaluate_tasks(model, tokenizer, ["ARC-Easy"], data_dir=arc_dir, mode="generate", progress=False)
    assert greedy["generation"].tolist() == [f"the correct answer is {i.answer}" for i in items]
    assert greedy["correct"].all() and greedy["prediction"].tolist() == ["answer2", "answer1"]
    assert greedy["answer_extraction"].tolist() == ["lenient", "lenient"]
    study = evaluate_tasks(
        model, tokenizer, ["ARC-Easy"], data_dir=arc_dir, mode="generate", progress=False, answer_extraction="study"
    )
    assert study["prediction"].tolist() == ["answer2", "answer1"] and set(study["answer_extraction"]) == {"study"}
    beam = evaluate_tasks(
        model, tokenizer, ["ARC-Easy"], data_dir=arc_dir, mode="generate", num_beams=2, progress=False
    )
    assert beam["prediction"].tolist() == ["answer2", "answer1"]
    label = evaluate_tasks(model, tokenizer, ["ARC-Easy"], data_dir=arc_dir, loglik_target="label", progress=False)
    assert label["correct"].all()


def test_task_accuracy_per_task_and_average() -> None:
    records = pd.DataFrame({"task": ["boolq"] * 4 + ["piqa"] * 2, "correct": [True, True, False, True, False, True]})
    table = task_accuracy(records).set_index("task")
    assert table.loc["boolq", "accuracy"] == 75.0 and table.loc["piqa", "accuracy"] == 50.0
    assert table.loc["average", "accuracy"] == 62.5 and table.loc["average", "n"] == 6  # unweighted over tasks


def test_builtin_commonsense_runs_offline() -> None:
    items = load_task(BUILTIN_TASK, None)
    assert len(items) == 48 and load_task("builtin", None, limit=5) == items[:5]
    for item in items:
        assert item.answer in item.labels and len(item.options) == len(item.labels)
        if item.labels == ("true", "false"):
            a, b = (int(w) for w in item.stem.removeprefix("is ").removesuffix("?").split(" larger than "))
            assert item.answer == ("true" if a > b else "false")
    assert items == builtin_task_items()  # deterministic
    tokenizer = tiny_tokenizer()
    records = evaluate_tasks(
        tiny_model("gpt2"), tokenizer, [BUILTIN_TASK], data_dir=None, limit=48, progress=False, batch_size=32
    )
    assert len(records) == 48 and set(records["prediction"]) <= {
        "true",
        "false",
        "answer1",
        "answer2",
        "answer3",
        "answer4",
        "option1",
        "option2",
    }
