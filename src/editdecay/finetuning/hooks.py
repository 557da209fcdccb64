"""`TrainingHooks`: how a fine-tuning run may be changed beyond its spec (edit-preserving strategies, CorDA).

The default hooks do nothing: `prepare` is the method's, `after_step` leaves the weights alone and `save` is the
method's. A subclass overrides what it changes and names itself in `identity()`, which becomes part of the run's
key, so a result made with other hooks is never reused (editdecay.durability implements them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from editdecay.finetuning.methods import FinetuneMethod
from editdecay.finetuning.spec import FinetuneSpec


class TrainingHooks:
    """No change to training; subclasses override `identity` and what they change."""

    def identity(self) -> dict[str, Any] | None:
        """What these hooks change, JSON-able (None: nothing, the plain run)."""
        return None

    def check(self, spec: FinetuneSpec, modules: list[str]) -> None:
        """Raise ValueError when the hooks cannot act on this run (a clear error before any training)."""

    def prepare(self, method: FinetuneMethod, model: nn.Module, modules: list[str], spec: FinetuneSpec) -> nn.Module:
        return method.prepare(model, modules, spec)

    def after_step(self, trained: nn.Module) -> None:
        """Called after every optimizer step, without gradients."""

    def save(self, method: FinetuneMethod, trained: nn.Module, base: nn.Module, directory: Path) -> None:
        method.save(trained, base, directory)
