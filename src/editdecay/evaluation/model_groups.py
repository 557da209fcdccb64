"""How the evaluation reaches the model of each group (M, Med, Mft, Med_ft).

`ModelGroups.use(group)` is a context manager that yields the group's model for the duration of the block. Two
kinds implement it:
- `SeparateModels`: one model object per group (what `editdecay evaluate` loads);
- `experiments.resident.ResidentGroups`: ONE resident model, put into each group's weights on entry (the patch
  applied, the fine-tuning merged) and back into M's on exit, so a run holds one model instead of four.
Every evaluation function reads models through `use`, one group at a time, so it works with both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class ModelGroups(Protocol):
    @property
    def names(self) -> Sequence[str]:
        """The groups available, in evaluation order."""

    def use(self, group: str) -> AbstractContextManager[nn.Module]:
        """The group's model, valid inside the `with` block only."""


@dataclass(frozen=True)
class SeparateModels:
    """Groups that are separate model objects."""

    models: Mapping[str, nn.Module]

    @property
    def names(self) -> Sequence[str]:
        return list(self.models)

    def use(self, group: str) -> AbstractContextManager[nn.Module]:
        return nullcontext(self.models[group])


def as_model_groups(models: Mapping[str, nn.Module] | ModelGroups) -> ModelGroups:
    return models if isinstance(models, ModelGroups) else SeparateModels(models)
