"""Pure helpers of the experiment stages, on hand-made tables."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from editdecay.config import ExperimentConfig, load_grid
from editdecay.evaluation import GroupScores, SeparateModels, groups
from editdecay.evaluation.groups import downstream_accuracy
from editdecay.experiments import stages

PRESETS = Path(__file__).resolve().parents[1] / "configs"


def _records(task: str, correct: list[bool]) -> pd.DataFrame:
    return pd.DataFrame(
        {"task": task, "item_id": [str(i) for i in range(len(correct))], "mode": "generate", "correct": correct}
    )


def test_downstream_accuracy_is_keyed_by_group_when_a_group_lacks_records() -> None:
    # M and Med were evaluated before the task data existed: only Mft and Med_ft have downstream tables.
    tables = {
        "M": GroupScores(pd.DataFrame()),
        "Med": GroupScores(pd.DataFrame()),
        "Mft": GroupScores(pd.DataFrame(), downstream=_records("boolq", [True, False, False, False])),
        "Med_ft": GroupScores(pd.DataFrame(), downstream=_records("boolq", [True, True, True, False])),
    }
    accuracy = downstream_accuracy(tables)
    assert accuracy == {"Mft": {"boolq": 25.0, "average": 25.0}, "Med_ft": {"boolq": 75.0, "average": 75.0}}


def test_evaluate_stage_passes_the_generate_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_tasks(model: object, tokenizer: object, tasks: list[str], **kwargs: Any) -> pd.DataFrame:
        calls.append({"tasks": tasks, **kwargs})
        return _records(tasks[0], [True])

    monkeypatch.setattr(groups, "score_edits", lambda *args, **kwargs: pd.DataFrame({"case_id": ["0"]}))
    monkeypatch.setattr(groups, "evaluate_tasks", fake_tasks)
    config = ExperimentConfig.model_validate(
        {
            "evaluation": {
                "tasks": ["builtin-commonsense"],
                "task_mode": "generate",
                "num_beams": 4,
                "batch_size": 1,
                "answer_extraction": "study",
            }
        }
    )

    def stage(name: str, kind: str, key: str, compute: Callable[[Path], None]) -> Path:
        path = tmp_path / kind / key
        path.mkdir(parents=True)
        compute(path)
        return path

    # The stage reads only the config, the base tokenizer, the group's model and `stage`.
    run = SimpleNamespace(config=config, base=SimpleNamespace(tokenizer="tok"), stage=stage)
    models = SeparateModels({"M": "model"})  # type: ignore[dict-item]
    scores = stages.evaluate_stage(run, models, "M", [], [], "key")  # type: ignore[arg-type]
    assert set(scores.tables()) == {"edits", "downstream"}
    assert calls == [
        {
            "tasks": ["builtin-commonsense"],
            "data_dir": None,
            "mode": "generate",
            "limit": 20,
            "batch_size": 1,
            "num_beams": 4,
            "answer_extraction": "study",
            "progress": True,
        }
    ]


def test_evaluation_config_generate_defaults_and_the_paper_preset() -> None:
    evaluation = ExperimentConfig().evaluation
    assert (evaluation.num_beams, evaluation.answer_extraction) == (1, "lenient")
    with pytest.raises(ValueError, match="num_beams"):
        ExperimentConfig.model_validate({"evaluation": {"num_beams": 0}})
    with pytest.raises(ValueError, match="answer_extraction"):
        ExperimentConfig.model_validate({"evaluation": {"answer_extraction": "strict"}})
    paper = load_grid(PRESETS / "paper.yaml").expand()[0].evaluation
    assert (paper.task_mode, paper.num_beams, paper.batch_size, paper.answer_extraction) == ("generate", 4, 1, "study")


def test_stages_take_a_run_context_and_never_import_the_runner() -> None:
    source = Path(stages.__file__).read_text()
    assert "experiments.runner" not in source and "RunContext" in source
