"""The worked examples of CONTRIBUTING.md run, and what they register passes the registries' contract tests."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from editdecay.data import TASKS
from editdecay.editing import EDITORS
from editdecay.experiments import EXECUTORS, make_executor
from editdecay.finetuning.methods import FINETUNE_METHODS
from test_contracts import check_editor_contract, check_method_contract

GUIDE = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


@pytest.fixture
def registries() -> Iterator[None]:
    """Whatever the examples register is gone after the test."""
    kinds = (EDITORS, FINETUNE_METHODS, TASKS, EXECUTORS)
    snapshots = [dict(registry) for registry in kinds]
    yield
    for registry, snapshot in zip(kinds, snapshots, strict=True):
        registry.clear()
        registry.update(snapshot)


def test_every_worked_example_runs_and_its_entry_passes_the_contract(
    registries, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 4
    for index, code in enumerate(blocks):
        module = types.ModuleType(f"contributing_example_{index}")  # dataclasses look their module up
        monkeypatch.setitem(sys.modules, module.__name__, module)
        exec(compile(code, str(GUIDE), "exec"), module.__dict__)
    assert {"placebo"} <= set(EDITORS) and "rslora" in FINETUNE_METHODS and "mathqa" in TASKS
    for part in ("editor", "method"):
        (tmp_path / part).mkdir()
    check_editor_contract("placebo", {"layers": [1, 2], "scale": 0.01}, tmp_path / "editor")
    check_method_contract("rslora", tmp_path / "method")
    assert make_executor("subprocess").name == "subprocess"
