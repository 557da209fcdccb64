"""`ResidentGroups`: the four model groups of a run on ONE resident model (evaluation/model_groups.py).

A group is M plus a sequence of changes, each a weight patch or a fine-tuning result: Med = [patch], Mft = [ft of
M], Med_ft = [patch, ft of Med] (or [ft of M, re-edit patch] with the `reedit` strategy). `use(group)` applies the
changes in order and undoes them in reverse order on exit:
- a patch with `WeightPatch.apply` / `revert` (which keeps the originals of the patched tensors);
- a fine-tuning result by swapping each changed parameter's storage for its merged value
  (`FinetuneMethod.merged_weights`, the values `load_finetuned(..., merge=True)` gives it) and swapping the
  previous storage back on exit.
Nothing is added or subtracted to undo a change, so M's weights come back bit for bit, and each group's weights
are exactly those of the separate models a run used to build. What a group holds besides M is its changed
tensors, only while the group is in use: the patched matrices' originals, and the fine-tuned matrices (the storage
they replace waits in host memory, so a GPU holds one copy of each matrix). While a fine-tuning is merged, its
adapted matrices also exist once in float32 (the merge happens in float32, as `load_finetuned` merges).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from editdecay.editing import WeightPatch
from editdecay.finetuning import FinetuneResult
from editdecay.finetuning.methods import FINETUNE_METHODS
from editdecay.models import model_fingerprint

Change = WeightPatch | FinetuneResult


@dataclass
class ResidentGroups:
    """`model` is M, left in M's weights outside `use`; `fingerprint` is M's."""

    model: nn.Module
    fingerprint: str
    changes: dict[str, list[Change]] = field(default_factory=dict)
    _active: str | None = field(default=None, init=False)
    _checked: set[tuple[str, int]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.changes.setdefault("M", [])

    @property
    def names(self) -> Sequence[str]:
        return list(self.changes)

    def define(self, group: str, changes: Sequence[Change]) -> None:
        """Group `group` is M with `changes` applied in order (a redefined group is checked again)."""
        self.changes[group] = list(changes)
        self._checked = {checked for checked in self._checked if checked[0] != group}

    @contextmanager
    def use(self, group: str) -> Iterator[nn.Module]:
        if group not in self.changes:
            raise KeyError(f"No model group {group!r}; defined: {self.names}.")
        if self._active is not None:
            raise RuntimeError(f"Group {self._active!r} is in use: one resident model holds one group at a time.")
        self._active = group
        undo: list[tuple[Change, dict[str, torch.Tensor]]] = []
        try:
            for index, change in enumerate(self.changes[group]):
                # Each change is checked against the model it was made from once per group and position
                # (hashing every weight costs a pass over the model); M's fingerprint is known.
                check = (group, index) not in self._checked
                known = self.fingerprint if index == 0 else None
                if isinstance(change, WeightPatch):
                    change.apply(self.model, check=check, fingerprint=known)
                    undo.append((change, {}))
                else:
                    if check:
                        self._check_base(group, change, known)
                    undo.append((change, self._merge(change)))
                self._checked.add((group, index))
            yield self.model
        finally:
            for change, previous in reversed(undo):
                if isinstance(change, WeightPatch):
                    change.revert(self.model)
                else:
                    self._put_back(previous)
            self._active = None

    def _check_base(self, group: str, result: FinetuneResult, known: str | None) -> None:
        """The model the result was fine-tuned from is the one the earlier changes built."""
        expected = result.manifest["model_fingerprint"]
        actual = known or model_fingerprint(self.model)
        if actual != expected:
            raise ValueError(
                f"{result.path} was fine-tuned from a model with fingerprint {expected}, but group {group!r} "
                f"applies it to one with {actual}."
            )

    def _merge(self, result: FinetuneResult) -> dict[str, torch.Tensor]:
        if result.method not in FINETUNE_METHODS:
            raise ValueError(f"{result.path} used method {result.method!r}, which is not registered here.")
        merged = FINETUNE_METHODS[result.method].merged_weights(self.model, result.path)
        return self._swap(merged)

    def _put_back(self, previous: dict[str, torch.Tensor]) -> None:
        for name, value in previous.items():
            param = self.model.get_parameter(name)
            param.data = value.to(param.device)

    def _swap(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Point each named parameter at the given storage; returns the storage each pointed at before, moved to
        host memory when the model is on a GPU (so the accelerator holds one copy of each matrix)."""
        params = {name: self.model.get_parameter(name) for name in values}
        for name, value in values.items():
            param = params[name]
            if value.shape != param.shape or value.dtype != param.dtype:
                # every group in M's precision (a precision change would pass for a fine-tuning effect) and shape
                raise ValueError(
                    f"{name}: the fine-tuned value is {value.dtype} {tuple(value.shape)}, the resident parameter "
                    f"{param.dtype} {tuple(param.shape)}."
                )
        previous = {}
        for name, value in values.items():  # checked first, so a refused change leaves every parameter as it was
            previous[name] = params[name].data.to("cpu")
            params[name].data = value
        return previous
